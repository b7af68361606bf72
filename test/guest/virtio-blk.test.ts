// (c) virtio-blk behind QEMU's virtio-iommu (VIRTIO_F_ACCESS_PLATFORM on, so every ring and
// buffer address is an IOVA): the guest writes a pattern, drops its caches, reads it back,
// and the host file holds exactly that pattern.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { describeRun, findResult, runGuest } from "../../tools/guest-lab/lab.ts";
import { skipWithoutLab } from "./lab-skip.ts";

const DISK_BYTES = 8 << 20;
const PATTERN_BYTES = 2 << 20;
const OFFSET_BYTES = 1 << 20; // written at 1 MiB into the disk

function pattern(n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = 0x12345678;
  for (let i = 0; i < n; i += 4) {
    // xorshift32: no repeating blocks, so a misplaced sector shows up.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

const SCRIPT = `
blk=$(pci_find 1af4 1042)
g=$(pci_group "$blk")
[ -n "$g" ] && result blk-translated pass "bdf=$blk group=$g type=$(cat /sys/kernel/iommu_groups/$g/type)" || result blk-translated fail "bdf=$blk not in an IOMMU group"
# Feature bit 33 (VIRTIO_F_ACCESS_PLATFORM) negotiated: the driver uses the DMA API.
dev=$(ls /sys/bus/virtio/drivers/virtio_blk | grep '^virtio' | head -1)
feat=$(cat /sys/bus/virtio/devices/$dev/features)
[ "$(echo "$feat" | cut -c34)" = 1 ] && result blk-access-platform pass "features=$feat" || result blk-access-platform fail "features=$feat"
want=$(sha256sum /viommu/pattern.bin | cut -d' ' -f1)
dd if=/viommu/pattern.bin of=/dev/vda bs=4096 seek=256 conv=fsync 2>/dev/null || result blk-write fail "dd failed"
sync
echo 3 > /proc/sys/vm/drop_caches
got=$(dd if=/dev/vda bs=4096 skip=256 count=${PATTERN_BYTES / 4096} 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] && result blk-readback pass "sha256=$got" || result blk-readback fail "want=$want got=$got"
`;

test("virtio-blk behind QEMU's virtio-iommu: pattern write, readback, host checksum", {
  timeout: 240_000,
}, async (t) => {
  if (skipWithoutLab(t)) return;
  const dir = mkdtempSync(join(tmpdir(), "viommu-blk-"));
  try {
    const disk = join(dir, "disk.raw");
    writeFileSync(disk, Buffer.alloc(DISK_BYTES));
    const data = pattern(PATTERN_BYTES);
    const run = await runGuest({
      script: SCRIPT,
      files: { "pattern.bin": data },
      timeoutMs: 180_000,
      qemuArgs: [
        "-device",
        "virtio-iommu-pci",
        "-drive",
        `file=${disk},format=raw,if=none,id=d0,cache=writethrough`,
        "-device",
        "virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on",
      ],
    });
    const why = describeRun(run);
    for (const r of run.results) t.diagnostic(r.line);
    assert.equal(run.timedOut, false, why);
    assert.equal(run.scriptExit, 0, why);
    for (const name of ["blk-translated", "blk-access-platform", "blk-readback"]) {
      assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
    }
    const host = readFileSync(disk);
    const want = sha256(data);
    assert.equal(sha256(host.subarray(OFFSET_BYTES, OFFSET_BYTES + PATTERN_BYTES)), want, "host file region");
    assert.equal(findResult(run.results, "blk-readback")!.detail, `sha256=${want}`, why);
    // Nothing written outside the region.
    assert.ok(
      host.subarray(0, OFFSET_BYTES).every((b) => b === 0),
      "bytes before the region changed",
    );
    assert.ok(
      host.subarray(OFFSET_BYTES + PATTERN_BYTES).every((b) => b === 0),
      "bytes after the region changed",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
