// Nested device assignment, end to end in the KVM lab (issue 11 item 4). L0 `viommu serve`
// gives L1 a virtio-iommu and an edu,iommu=on; L1 binds the edu to vfio-pci and `viommu run`
// assigns it to an L2 Linux, behind our virtio-iommu and then behind our VT-d with caching mode
// (one L1 boot, two L2 runs). In L2, vfio-edu-test's DMA crosses three translations: L2 vIOMMU
// -> L1 VFIO -> L0 virtio-iommu. Its DMA after unmap must be stopped at L0: L0's fault counters
// and L1's virtio-iommu driver name the endpoint and L2's own IOVA.
import assert from "node:assert/strict";
import { test } from "node:test";
import { kvmLabAvailable } from "../../tools/guest-lab/kvm-lab.ts";
import { runNestedAssignment } from "../../tools/guest-lab/nested-assign.ts";

const lab = kvmLabAvailable();
const NO_LAB = `KVM lab not provisioned (${lab.why}): run tools/provision/provision.sh; nested assignment test SKIPPED`;
if (!lab.ok) console.error(`\n*** ${NO_LAB}\n`);

const EDU_CHECKS = [
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
];

type EngineStats = {
  requests: { map: { OK: number }; unmap: { OK: number } };
  faultCauses: { unmapped: number; blocked: number; permission: number };
  host: { refusals: number };
};

/** L0's virtio-iommu engine stats from `viommu serve stats`. */
function l0Engine(stats: Record<string, unknown> | null): EngineStats | undefined {
  const devices = (stats?.devices ?? []) as { name: string; device?: { engine?: EngineStats } }[];
  return devices.find((d) => d.name === "virtio-iommu")?.device?.engine;
}

test("nested assignment: vfio-edu-test in L2 behind our virtio-iommu and our VT-d (caching mode), DMA after unmap stopped at L0", {
  timeout: 900_000,
}, async (t) => {
  if (!lab.ok) return t.skip(NO_LAB);
  const out = await runNestedAssignment({
    runs: [{ iommu: "virtio" }, { iommu: "intel" }],
    timeoutMs: 840_000,
  });
  const why = () =>
    `lab: ${out.lab.failedStep} ${out.lab.failure}\n--- L1 stdout ---\n${out.lab.stdout.slice(-6000)}\n` +
    `--- L1 stderr ---\n${out.lab.stderr.slice(-3000)}\n--- L1 console ---\n${out.lab.console.slice(-3000)}\n` +
    `--- L0 ---\n${out.l0Stderr.slice(-2000)}`;
  t.diagnostic(`L1 boot ${out.lab.bootMs} ms, whole run ${out.lab.durationMs} ms`);
  assert.equal(out.lab.failedStep, null, why());
  for (const r of out.runs) {
    for (const res of r.results) t.diagnostic(`${r.run.iommu}: ${res.line}`);
    assert.equal(r.exitCode, 0, `${r.run.iommu}: viommu run exit\n${why()}`);
    for (const name of EDU_CHECKS) {
      const found = r.results.find((x) => x.name === name);
      assert.equal(found?.status, "pass", `${r.run.iommu}: ${name}\n${why()}`);
    }
    assert.equal(r.results.filter((x) => x.status === "fail").length, 0, why());
  }
  assert.equal(out.lab.exitCode, 0, why());
  // Where the DMA after unmap stopped: L0's virtio-iommu, at L2's own IOVAs (0x101000 written,
  // 0x100000 read), as L1's virtio-iommu driver reports the fault events L0 sent it.
  const engine = l0Engine(out.l0Stats);
  assert.ok(engine !== undefined, `no L0 stats\n${why()}`);
  t.diagnostic(
    `L0 virtio-iommu: MAP ok ${engine.requests.map.OK}, UNMAP ok ${engine.requests.unmap.OK}, faults ${JSON.stringify(engine.faultCauses)}`,
  );
  assert.ok(
    engine.faultCauses.unmapped >= 2 * out.runs.length,
    `L0 faults ${JSON.stringify(engine.faultCauses)}`,
  );
  assert.ok(engine.requests.map.OK >= out.runs.length, "L1's VFIO mappings reached L0 as MAP requests");
  const faultLines =
    out.lab.console.match(/virtio_iommu virtio\d+: page fault from EP \d+ at 0x101000 \[W\]/g) ?? [];
  assert.equal(faultLines.length, out.runs.length, why());
});
