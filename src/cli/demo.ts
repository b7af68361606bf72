/**
 * `viommu demo`: the built-in guest under each virtual IOMMU in turn (none, virtio-iommu,
 * Intel VT-d with interrupt remapping), each with its COM1 report and the VMM's summary.
 * Exit status 0 only when every run passed. Extra arguments go to every run.
 */
import { runVmm } from "./run.ts";

export const DEMO_RUNS: readonly (readonly string[])[] = [
  [],
  ["--iommu", "virtio"],
  ["--iommu", "intel,intremap=on"],
];

export function runDemo(argv: readonly string[]): number {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(
      "usage: viommu demo [run options]\n  the built-in guest with no IOMMU, --iommu virtio and --iommu intel,intremap=on\n",
    );
    return 0;
  }
  const results: { args: string; status: number }[] = [];
  for (const args of DEMO_RUNS) {
    const line = ["viommu", "run", ...args, ...argv].join(" ");
    process.stdout.write(`\n=== ${line} ===\n`);
    const status = runVmm([...args, ...argv]);
    results.push({ args: line, status });
    // A missing /dev/kvm or a bad argument fails every run the same way: stop at the first.
    if (status === 2) break;
  }
  process.stdout.write("\n=== demo ===\n");
  for (const r of results) process.stdout.write(`${r.status === 0 ? "PASS" : "FAIL"}  ${r.args}\n`);
  return results.length === DEMO_RUNS.length && results.every((r) => r.status === 0) ? 0 : 1;
}
