// (b) Guest userspace drives QEMU's edu device through VFIO behind QEMU's virtio-iommu: DMA
// through VFIO_IOMMU_MAP_DMA mappings works both ways, and after VFIO_IOMMU_UNMAP_DMA the
// device's DMA is blocked and the guest's virtio-iommu driver logs the fault.
// Also runs vfio-map-bench (map/unmap rate, one 1 GiB hugepage-backed MAP_DMA).
import assert from "node:assert/strict";
import { test } from "node:test";
import { describeRun, findResult, runGuest } from "../../tools/guest-lab/lab.ts";
import { skipWithoutLab } from "./lab-skip.ts";

const VIOMMU_EDU = ["-device", "virtio-iommu-pci", "-device", "edu"];
// No interrupt remapping behind virtio-iommu: type1 must be told to accept that.
const CMDLINE = "vfio_iommu_type1.allow_unsafe_interrupts=1";

const EDU_SCRIPT = `
edu=$(pci_find 1234 11e8)
[ -n "$edu" ] || { result edu-present fail "no 1234:11e8 device"; exit 1; }
result edu-present pass "bdf=$edu"
vfio-edu-test "$edu"
rc=$?
faults=$(dmesg | grep -c 'page fault from EP')
dmesg | grep 'page fault from EP' | head -3
if [ "$faults" -gt 0 ]; then result viommu-fault-logged pass "lines=$faults"
else result viommu-fault-logged fail "no 'page fault from EP' line in dmesg"; fi
exit $rc
`;

test("vfio-edu-test: edu DMA through VFIO mappings on QEMU's virtio-iommu, blocked after unmap", {
  timeout: 240_000,
}, async (t) => {
  if (skipWithoutLab(t)) return;
  const run = await runGuest({
    script: EDU_SCRIPT,
    qemuArgs: VIOMMU_EDU,
    cmdline: CMDLINE,
    timeoutMs: 180_000,
  });
  const why = describeRun(run);
  for (const r of run.results) t.diagnostic(r.line);
  assert.equal(run.timedOut, false, why);
  for (const name of [
    "edu-present",
    "vfio-open",
    "edu-id",
    "dma-map",
    "dma-roundtrip",
    "dma-roundtrip-2",
    "dma-unmap",
    "dma-after-unmap-blocked",
    "dma-read-after-unmap-blocked",
    "vfio-edu-test",
    "viommu-fault-logged",
  ]) {
    assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
  }
  assert.equal(run.results.filter((r) => r.status === "fail").length, 0, why);
  // The Linux driver's fault report: "virtio_iommu virtioN: page fault from EP <bdf> at <iova> [flags]".
  assert.match(run.log, /virtio_iommu virtio\d+: page fault from EP \d+ at 0x101/, why);
  assert.equal(run.scriptExit, 0, why);
});

const BENCH_SCRIPT = `
edu=$(pci_find 1234 11e8)
grep -E 'HugePages_(Total|Free)' /proc/meminfo
vfio-map-bench "$edu" --count 1000 --huge-mib 1024
`;

test("vfio-map-bench: map/unmap rate and one 1 GiB hugepage-backed VFIO_IOMMU_MAP_DMA", {
  timeout: 240_000,
}, async (t) => {
  if (skipWithoutLab(t)) return;
  const run = await runGuest({
    script: BENCH_SCRIPT,
    qemuArgs: VIOMMU_EDU,
    cmdline: `${CMDLINE} hugepages=512`,
    memMiB: 2048,
    timeoutMs: 180_000,
  });
  const why = describeRun(run);
  for (const r of run.results) t.diagnostic(r.line);
  assert.equal(run.timedOut, false, why);
  for (const name of ["map-4k", "unmap-4k", "map-huge", "unmap-huge", "vfio-map-bench"]) {
    assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
  }
  assert.match(findResult(run.results, "map-huge")!.detail, /mib=1024 hugepage_kb=2048 map_ms=[\d.]+/, why);
  assert.equal(run.scriptExit, 0, why);
});
