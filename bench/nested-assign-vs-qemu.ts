/**
 * Side by side, one run (issue 11 item 5): nested device assignment with our VMM in L1 against
 * QEMU in the same L1. L0 `viommu serve` gives L1 an edu behind a virtio-iommu; L1 binds it to
 * vfio-pci and assigns it to an L2 Linux four ways, one after the other in one L1 boot:
 * `viommu run` behind our virtio-iommu, QEMU's vfio-pci behind its virtio-iommu-pci, `viommu
 * run` behind our VT-d (caching-mode=on), QEMU's vfio-pci behind intel-iommu,caching-mode=on.
 * In each L2: vfio-map-bench (4 KiB VFIO_IOMMU_MAP_DMA / UNMAP_DMA, ns per call) and
 * vfio-edu-dma-bench (edu DMA round trips per second through VFIO mappings).
 *
 *   node --import tsx bench/nested-assign-vs-qemu.ts [--maps N] [--dmas N]
 *
 * L1 runs under TCG on a shared machine: compare ratios within one run, not across runs.
 */
import { kvmLabAvailable } from "../tools/guest-lab/kvm-lab.ts";
import type { GuestResult } from "../tools/guest-lab/lab.ts";
import { type NestedL2Run, runNestedAssignment } from "../tools/guest-lab/nested-assign.ts";

const args = process.argv.slice(2);
const argValue = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const MAPS = argValue("--maps", 200);
const DMAS = argValue("--dmas", 100);

const lab = kvmLabAvailable();
if (!lab.ok) {
  console.error(`*** ${lab.why}: run tools/provision/provision.sh; nested side-by-side SKIPPED`);
  process.exit(0);
}

const SCRIPT = `
edu=$(pci_find 1234 11e8)
vfio-map-bench "$edu" --count ${MAPS} --huge-mib 2
vfio-edu-dma-bench "$edu" --count ${DMAS}
`;

const CMDLINE = "hugepages=2";
const configs: { label: string; run: NestedL2Run }[] = [
  { label: "virtio-iommu, ours", run: { iommu: "virtio", l2Script: SCRIPT, l2Cmdline: CMDLINE } },
  {
    label: "virtio-iommu, QEMU",
    run: { iommu: "virtio", vmm: "qemu", l2Script: SCRIPT, l2Cmdline: CMDLINE },
  },
  { label: "VT-d caching mode, ours", run: { iommu: "intel", l2Script: SCRIPT, l2Cmdline: CMDLINE } },
  {
    label: "VT-d caching mode, QEMU",
    run: { iommu: "intel", vmm: "qemu", l2Script: SCRIPT, l2Cmdline: CMDLINE },
  },
];

function number(results: readonly GuestResult[], name: string, key: string): number | null {
  const r = results.find((x) => x.name === name);
  const m = r === undefined ? null : new RegExp(`${key}=([\\d.]+)`).exec(r.detail);
  return m === null ? null : Number(m[1]);
}

const out = await runNestedAssignment({ runs: configs.map((c) => c.run), timeoutMs: 1_500_000 });
if (out.lab.failedStep !== null) console.error(`lab: ${out.lab.failedStep}: ${out.lab.failure}`);
const rows = out.runs.map((r, i) => ({
  label: configs[i].label,
  mapNs: number(r.results, "map-4k", "ns_per_op"),
  unmapNs: number(r.results, "unmap-4k", "ns_per_op"),
  dmaRate: number(r.results, "dma-bench", "roundtrips_per_s"),
  failed:
    r.exitCode !== 0 ||
    r.results.some((x) => ["map-4k", "unmap-4k", "dma-bench"].includes(x.name) && x.status !== "pass"),
}));
const fmt = (x: number | null, unit: string) =>
  x === null ? "-" : `${Math.round(x).toLocaleString("en-US")} ${unit}`;
console.log(
  `nested assignment, L2 workload: ${MAPS} x 4 KiB map/unmap, ${DMAS} edu DMA round trips (64 B each way)`,
);
console.log(
  `${"L1 VMM and L2 IOMMU".padEnd(26)} ${"map".padStart(14)} ${"unmap".padStart(14)} ${"edu DMA".padStart(16)}`,
);
for (const r of rows) {
  console.log(
    `${r.label.padEnd(26)} ${fmt(r.mapNs, "ns").padStart(14)} ${fmt(r.unmapNs, "ns").padStart(14)} ${fmt(r.dmaRate, "rt/s").padStart(16)}${r.failed ? "  (run had failures)" : ""}`,
  );
}
const ratio = (ours: number | null, qemu: number | null, higherIsBetter: boolean) =>
  ours === null || qemu === null ? "-" : (higherIsBetter ? ours / qemu : qemu / ours).toFixed(2);
console.log("\nours / QEMU (above 1: ours faster)");
for (const [o, q, name] of [
  [rows[0], rows[1], "virtio-iommu"],
  [rows[2], rows[3], "VT-d"],
] as const) {
  const pairsOurs = o.mapNs === null || o.unmapNs === null ? null : 1e9 / (o.mapNs + o.unmapNs);
  const pairsQemu = q.mapNs === null || q.unmapNs === null ? null : 1e9 / (q.mapNs + q.unmapNs);
  console.log(
    `${name.padEnd(14)} map+unmap pairs/s ${ratio(pairsOurs, pairsQemu, true)}  edu DMA round trips/s ${ratio(o.dmaRate, q.dmaRate, true)}`,
  );
}
for (const [i, r] of out.runs.entries()) {
  if (rows[i].failed) console.error(`--- ${configs[i].label} ---\n${r.output.slice(-3000)}`);
}
