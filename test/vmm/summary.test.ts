import assert from "node:assert/strict";
import { test } from "node:test";
import { formatCounters } from "../../src/vmm/x86/summary.ts";

test("run summary: a device's counters show the non-zero ones, nested records with dotted names", () => {
  assert.equal(
    formatCounters({
      dmaTransfers: 4,
      dmaFaults: 0,
      pci: { configReads: 9, dma: { faults: 2, lastFault: null, lastKind: "" } },
      intxMasked: false,
      busMaster: true,
      note: "read-only",
    }),
    "dmaTransfers 4, pci.configReads 9, pci.dma.faults 2, busMaster, note read-only",
  );
});

test("run summary: a device that did nothing says so instead of a row of zeros", () => {
  assert.equal(formatCounters({ reads: 0, nested: { writes: 0 } }), "no activity");
});
