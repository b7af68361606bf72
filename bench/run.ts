/**
 * Runs the benchmarks in bench/*.bench.ts and prints one table per group:
 * what was measured, operations per sample x samples, median time per operation (p10-p90),
 * and operations per second. Usage: npm run bench [-- <filter>] [--quick] [--baseline=DIR]
 *
 * `--baseline=DIR`: DIR is another checkout of this repository (e.g. `git worktree add` or a
 * `git archive` of the commit to compare with). Its benchmark cases run in the same process,
 * alternating with this tree's (baseline, this, baseline, this), and each line shows both
 * medians (the lower of the two rounds each) and their ratio: before and after in one run.
 */
import { existsSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type BenchCase, type BenchResult, formatNs, formatRate, measure } from "./harness.ts";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes("--quick");
const filter = args.find((a) => !a.startsWith("--"));
const baselineArg = args.find((a) => a.startsWith("--baseline="));
const baselineDir =
  baselineArg === undefined ? null : resolve(baselineArg.slice("--baseline=".length), "bench");

async function loadCases(dir: string): Promise<BenchCase[]> {
  const out: BenchCase[] = [];
  for (const f of readdirSync(dir)
    .filter((f) => f.endsWith(".bench.ts"))
    .sort()) {
    const mod = (await import(pathToFileURL(join(dir, f)).href)) as { cases?: BenchCase[] };
    for (const c of mod.cases ?? []) {
      if (!filter || `${c.group} ${c.name}`.includes(filter)) out.push(c);
    }
  }
  return out;
}

if (baselineDir !== null && !existsSync(baselineDir)) {
  console.error(`--baseline: no bench/ folder in ${dirname(baselineDir)}`);
  process.exit(1);
}
const cases = await loadCases(here);
if (cases.length === 0) {
  console.error(`no benchmark matches ${filter ?? "(all)"}`);
  process.exit(1);
}
const baseline = new Map<string, BenchCase>();
if (baselineDir !== null)
  for (const c of await loadCases(baselineDir)) baseline.set(`${c.group}\n${c.name}`, c);

console.log(
  `viommu benchmarks: node ${process.version}, ${new Date().toISOString()}${quick ? " (quick)" : ""}` +
    (baselineDir === null ? "" : `, baseline ${dirname(baselineDir)}`),
);
const options = quick ? { samples: 5, targetSampleMs: 10 } : {};
let group = "";
const results: BenchResult[] = [];
for (const c of cases) {
  if (c.group !== group) {
    group = c.group;
    console.log(`\n## ${group}`);
    if (baselineDir === null) {
      console.log(
        `${"case".padEnd(52)} ${"ops x samples".padStart(16)} ${"median/op".padStart(11)} ${"p10..p90".padStart(22)} ${"rate".padStart(11)}`,
      );
    } else {
      console.log(
        `${"case".padEnd(52)} ${"baseline".padStart(11)} ${"this tree".padStart(11)} ${"this/base".padStart(10)}`,
      );
    }
  }
  const base = baseline.get(`${c.group}\n${c.name}`);
  if (baselineDir !== null) {
    if (base === undefined) {
      const r = measure(c, options);
      results.push(r);
      console.log(`${r.name.padEnd(52)} ${"(none)".padStart(11)} ${formatNs(r.medianNsPerOp).padStart(11)}`);
      continue;
    }
    const b1 = measure(base, options);
    const a1 = measure(c, options);
    const b2 = measure(base, options);
    const a2 = measure(c, options);
    const b = Math.min(b1.medianNsPerOp, b2.medianNsPerOp);
    const a = Math.min(a1.medianNsPerOp, a2.medianNsPerOp);
    results.push(a1.medianNsPerOp <= a2.medianNsPerOp ? a1 : a2);
    console.log(
      `${c.name.padEnd(52)} ${formatNs(b).padStart(11)} ${formatNs(a).padStart(11)} ${(a / b).toFixed(2).padStart(10)}`,
    );
    continue;
  }
  const r = measure(c, options);
  results.push(r);
  console.log(
    `${r.name.padEnd(52)} ${`${r.opsPerSample} x ${r.samples}`.padStart(16)} ${formatNs(r.medianNsPerOp).padStart(11)} ${`${formatNs(r.p10NsPerOp)}..${formatNs(r.p90NsPerOp)}`.padStart(22)} ${formatRate(r.opsPerSecond).padStart(11)}`,
  );
}
