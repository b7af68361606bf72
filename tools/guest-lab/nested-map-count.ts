// How many MAP requests one L2 workload costs at each level of nested assignment, with the
// virtio-iommu page-size-mask at 4 KiB only and at 4 KiB | 2 MiB (the same mask at L0, our
// `viommu serve`, and at L1, our `viommu run`): the seeds' "2 MiB mappings" claim measured on
// real VFIO. One L1 boot per mask.
//
//   node --import tsx tools/guest-lab/nested-map-count.ts [--huge-mib M] [--count N]
//
// L2 runs vfio-map-bench: N separate 4 KiB VFIO mappings (all live at once), then one
// hugepage-backed VFIO_IOMMU_MAP_DMA of M MiB. Printed per mask: L2's MAP requests to our
// virtio-iommu in L1, L1's VFIO_IOMMU_MAP_DMA calls (our container), and the MAP requests L0's
// virtio-iommu answered.
import { runNestedAssignment } from "./nested-assign.ts";

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
}

const hugeMib = arg("--huge-mib", 32);
const count = arg("--count", 64);
const masks = ["4k", "4k:2m"];
const rows: string[][] = [];
for (const mask of masks) {
  const started = Date.now();
  const out = await runNestedAssignment({
    l0PageSizeMask: mask,
    runs: [
      {
        iommu: "virtio",
        iommuProps: `page-size-mask=${mask}`,
        l2Cmdline: `hugepages=${Math.ceil(hugeMib / 2) + 8}`,
        l2Script: `edu=$(pci_find 1234 11e8)\nvfio-map-bench "$edu" --count ${count} --huge-mib ${hugeMib}\n`,
      },
    ],
    timeoutMs: 900_000,
  });
  const run = out.runs[0];
  const l1Map = /virtio-iommu: requests [^\n]*\bmap (\d+)/.exec(run.output)?.[1] ?? "?";
  const vfioMaps =
    /container\.maps (\d+)/.exec(run.output)?.[1] ?? /"maps":(\d+)/.exec(run.output)?.[1] ?? "?";
  const devices = (out.l0Stats?.devices ?? []) as {
    name: string;
    device?: { engine?: { requests: { map: Record<string, number> } } };
  }[];
  const l0 = devices.find((d) => d.name === "virtio-iommu")?.device?.engine?.requests.map;
  const l0Map = l0 === undefined ? "?" : String(Object.values(l0).reduce((a, b) => a + b, 0));
  for (const r of run.results) console.log(`  [${mask}] ${r.line}`);
  if (run.exitCode !== 0 || out.lab.failedStep !== null) {
    console.log(`  [${mask}] run failed: ${out.lab.failedStep} ${out.lab.failure} exit ${run.exitCode}`);
    console.log(run.output.slice(-3000));
  }
  rows.push([mask, l1Map, vfioMaps, l0Map, `${Math.round((Date.now() - started) / 1000)} s`]);
}
console.log(`\nL2 workload: vfio-map-bench --count ${count} --huge-mib ${hugeMib} (one L1 boot per mask)`);
console.log(["page-size-mask", "L2->L1 MAP", "L1 VFIO MAP_DMA", "L1->L0 MAP", "wall"].join("\t"));
for (const r of rows) console.log(r.join("\t"));
