// (a) Linux 6.12 boots under QEMU 11 (TCG), the virtio-iommu driver binds to QEMU's
// virtio-iommu-pci, and the endpoints behind it get IOMMU groups.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { describeRun, findResult, runGuest } from "../../tools/guest-lab/lab.ts";
import { lab, skipWithoutLab } from "./lab-skip.ts";

const SCRIPT = `
# The driver is bound to a virtio device.
drv=/sys/bus/virtio/drivers/virtio_iommu
if ls "$drv" | grep -q '^virtio'; then result viommu-driver pass "$(ls "$drv" | grep '^virtio' | tr '\\n' ' ')"
else result viommu-driver fail "no device bound to virtio_iommu"; fi
# Groups, and which devices are in them.
groups=$(ls /sys/kernel/iommu_groups | tr '\\n' ' ')
result iommu-groups pass "groups=$groups"
for g in /sys/kernel/iommu_groups/*; do
  echo "group $(basename $g) type=$(cat $g/type) devices=$(ls $g/devices | tr '\\n' ' ')"
done
blk=$(pci_find 1af4 1042)
g=$(pci_group "$blk")
if [ -n "$blk" ] && [ -n "$g" ]; then result blk-in-group pass "bdf=$blk group=$g type=$(cat /sys/kernel/iommu_groups/$g/type)"
else result blk-in-group fail "bdf=$blk group=$g"; fi
rng=$(pci_find 1af4 1044)
g=$(pci_group "$rng")
if [ -n "$rng" ] && [ -n "$g" ]; then result rng-in-group pass "bdf=$rng group=$g"
else result rng-in-group fail "bdf=$rng group=$g"; fi
# The IOMMU itself is not an endpoint.
viommu=$(pci_find 1af4 1057)
if [ -n "$viommu" ] && [ -z "$(pci_group "$viommu")" ]; then result viommu-not-endpoint pass "bdf=$viommu"
else result viommu-not-endpoint fail "bdf=$viommu group=$(pci_group "$viommu")"; fi
dmesg | grep -E 'virtio_iommu|iommu group|VIOT' | head -20
result uname pass "$(uname -r)"
`;

test("Linux boots behind QEMU's virtio-iommu-pci and its endpoints get IOMMU groups", {
  timeout: 240_000,
}, async (t) => {
  if (skipWithoutLab(t)) return;
  const dir = mkdtempSync(join(tmpdir(), "viommu-boot-"));
  try {
    const disk = join(dir, "disk.raw");
    writeFileSync(disk, Buffer.alloc(1 << 20));
    const run = await runGuest({
      script: SCRIPT,
      timeoutMs: 180_000,
      qemuArgs: [
        "-device",
        "virtio-iommu-pci",
        "-drive",
        `file=${disk},format=raw,if=none,id=d0`,
        "-device",
        "virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on",
        "-device",
        "virtio-rng-pci,iommu_platform=on,disable-legacy=on",
      ],
    });
    const why = describeRun(run);
    t.diagnostic(`${lab.why}; boot to ready ${run.bootMs} ms (guest uptime ${run.guestReadyUptime} s)`);
    assert.equal(run.timedOut, false, why);
    assert.equal(run.scriptExit, 0, why);
    assert.ok(run.bootMs > 0, why);
    for (const name of [
      "viommu-driver",
      "iommu-groups",
      "blk-in-group",
      "rng-in-group",
      "viommu-not-endpoint",
    ]) {
      assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
    }
    assert.match(findResult(run.results, "uname")!.detail, /^6\.12\./, why);
    assert.match(run.log, /virtio_iommu virtio\d+: input address: \d+ bits/, why);
    assert.match(run.log, /Adding to iommu group \d+/, why);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
