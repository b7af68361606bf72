/**
 * Runs the benchmarks in bench/*.bench.ts and prints one table per group:
 * what was measured, operations per sample x samples, median time per operation (p10-p90),
 * and operations per second. Usage: npm run bench [-- <filter>] [--quick]
 */
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type BenchCase, type BenchResult, formatNs, formatRate, measure } from "./harness.ts";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes("--quick");
const filter = args.find((a) => !a.startsWith("--"));

const files = readdirSync(here)
  .filter((f) => f.endsWith(".bench.ts"))
  .sort();
const cases: BenchCase[] = [];
for (const f of files) {
  const mod = (await import(pathToFileURL(join(here, f)).href)) as { cases?: BenchCase[] };
  for (const c of mod.cases ?? []) {
    if (!filter || `${c.group} ${c.name}`.includes(filter)) cases.push(c);
  }
}
if (cases.length === 0) {
  console.error(`no benchmark matches ${filter ?? "(all)"}`);
  process.exit(1);
}

console.log(
  `viommu benchmarks: node ${process.version}, ${new Date().toISOString()}${quick ? " (quick)" : ""}`,
);
let group = "";
const results: BenchResult[] = [];
for (const c of cases) {
  if (c.group !== group) {
    group = c.group;
    console.log(`\n## ${group}`);
    console.log(
      `${"case".padEnd(52)} ${"ops x samples".padStart(16)} ${"median/op".padStart(11)} ${"p10..p90".padStart(22)} ${"rate".padStart(11)}`,
    );
  }
  const r = measure(c, quick ? { samples: 5, targetSampleMs: 10 } : {});
  results.push(r);
  console.log(
    `${r.name.padEnd(52)} ${`${r.opsPerSample} x ${r.samples}`.padStart(16)} ${formatNs(r.medianNsPerOp).padStart(11)} ${`${formatNs(r.p10NsPerOp)}..${formatNs(r.p90NsPerOp)}`.padStart(22)} ${formatRate(r.opsPerSecond).padStart(11)}`,
  );
}
