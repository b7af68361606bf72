/**
 * Trace points declared in one place per folder (defineTracePoints) and the catalogue that
 * `viommu run --trace help` prints.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { formatTraceCatalogue } from "../../src/cli/trace-help.ts";
import { defineTracePoints, type TraceEvent, Tracer, traceCatalogue } from "../../src/engine/trace.ts";

test("a declared trace point emits its fields in declaration order, and nothing while its category is off", () => {
  const points = defineTracePoints("test-source", {
    mapped: { category: "map", fields: ["domain", "iova", "ok"], doc: "test point" },
    renamed: { name: "with-dash", category: "fault", fields: [], doc: "test point with a name" },
  });
  const off = new Tracer();
  let calls = 0;
  off.listen(() => calls++, []);
  points.mapped(off, 1, 0x1000, true);
  assert.equal(calls, 0);
  assert.equal(points.mapped.enabled(off), false);
  const seen: TraceEvent[] = [];
  const on = new Tracer();
  on.listen((e) => seen.push(e), ["map", "fault"]);
  points.mapped(on, 7, 0x2000, false);
  points.renamed(on);
  assert.deepEqual(seen, [
    {
      category: "map",
      source: "test-source",
      name: "mapped",
      fields: { domain: 7, iova: 0x2000, ok: false },
    },
    { category: "fault", source: "test-source", name: "with-dash", fields: {} },
  ]);
  assert.ok(traceCatalogue().some((p) => p.source === "test-source" && p.name === "with-dash"));
});

test("viommu run --trace help prints the catalogue of the three models and exits 0 without a guest", () => {
  let out = "";
  const status = runVmm(["--trace", "help"], { stdout: (t) => (out += t), stderr: () => {} });
  assert.equal(status, 0);
  assert.equal(out, `${formatTraceCatalogue()}\n`);
  for (const source of ["smmuv3", "vtd", "virtio-iommu"]) assert.match(out, new RegExp(`^${source}:$`, "m"));
  for (const name of [
    "tlbi_nh_va",
    "f_translation",
    "iotlb-fill",
    "context-cache",
    "map",
    "domain-destroy",
  ]) {
    assert.match(out, new RegExp(`^  ${name} `, "m"), name);
  }
});
