/**
 * The IOTLB under the invalidation sequences Linux's intel-iommu driver issues (6.12):
 *   - strict mode (forced by caching mode): dma_map_sg puts a scatter-gather list at consecutive
 *     IOVAs, flushes that range (caching mode: not-present to present), the device touches each
 *     page once, dma_unmap_sg clears the PTEs and flushes the range page-selectively;
 *   - lazy mode: unmaps clear PTEs and queue the IOVAs; one domain-selective flush per batch.
 * Measured under Linux (issue 16): almost every fill is the first touch of a new translation, so
 * the walk count is what a prefetch of the walked leaf's neighbours can cut. These tests pin that
 * it does, that invalidations still remove everything they cover (prefetched entries included),
 * and that nothing stale is ever served.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GCMD } from "../../src/vtd/registers.ts";
import { IOTLB_PREFETCH_PAGES, type VtdOptions } from "../../src/vtd/vtd.ts";
import { D, PageTable, rig } from "./guest.ts";

const SID = 0x0010;
const DID = 3;
const PAGE = 4096;

function linuxDomain(options: VtdOptions) {
  const r = rig({ config: "caching-mode=on,aw-bits=48", ...options });
  const d = r.driver;
  d.enableQueuedInvalidation();
  d.setRootTable(false);
  assert.ok(d.submitAndWait([D.contextGlobal(), D.iotlbGlobal()]));
  const pt = new PageTable(r.memory, r.alloc, 4);
  d.setLegacyContext(SID, { did: DID, aw: 2, slptptr: pt.root });
  const dma = r.unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  return { ...r, pt, dma };
}

/** Page-selective invalidation covering [iova, iova + pages) as Linux computes it (aligned AM). */
function psi(iova: number, pages: number): bigint[] {
  let am = 0;
  const first = iova / PAGE;
  while (Math.floor(first / 2 ** am) !== Math.floor((first + pages - 1) / 2 ** am)) am++;
  return D.iotlbPage(DID, Math.floor(first / 2 ** am) * 2 ** am * PAGE, am);
}

/** One strict-mode request: map `pages` pages at `iova`, flush, device reads each, unmap, flush. */
function strictRequest(
  s: ReturnType<typeof linuxDomain>,
  iova: number,
  pages: number,
  gpaOf: (i: number) => number,
): void {
  for (let i = 0; i < pages; i++) s.pt.map(iova + i * PAGE, gpaOf(i), 1, PageTable.ss(true, true));
  assert.ok(s.driver.submitAndWait([psi(iova, pages)]), "caching mode: the map flush");
  for (let i = 0; i < pages; i++) {
    s.memory.writeU32(gpaOf(i), 0xa000 + i);
    assert.equal(s.dma.readUint(iova + i * PAGE, 4), 0xa000 + i, `page ${i}`);
  }
  for (let i = 0; i < pages; i++) s.pt.unmap(iova + i * PAGE);
  assert.ok(s.driver.submitAndWait([psi(iova, pages)]), "strict unmap flush");
  for (let i = 0; i < pages; i += 7) {
    assert.equal(s.dma.readUint(iova + i * PAGE, 4), -1, `unmapped page ${i} faults`);
  }
}

test("strict mode, a 56-page scatter-gather list: one walk per 32 pages with prefetch, one per page without", () => {
  for (const prefetch of [0, IOTLB_PREFETCH_PAGES]) {
    const s = linuxDomain({ iotlbPrefetchPages: prefetch });
    const before = s.unit.stats().iotlb;
    strictRequest(s, 0x7ff00000, 56, (i) => 0x300000 + i * 2 * PAGE);
    const after = s.unit.stats().iotlb;
    const translatingMisses = after.inserts - before.inserts;
    if (prefetch === 0) {
      assert.equal(translatingMisses, 56);
      assert.equal(after.prefetches, 0);
    } else {
      assert.equal(translatingMisses, 2, "pages 0 and 32 walk; the others were prefetched");
      assert.equal(after.prefetches, 54);
      assert.equal(after.prefetchesUsed, 54);
    }
    assert.equal(s.unit.stats().iotlb.entries, 0, "the unmap flush removed every entry, prefetched ones too");
  }
});

test("a prefetch stops at the first entry that does not translate and at the end of the leaf table", () => {
  const s = linuxDomain({});
  const base = 0x40000000; // index 0 of a leaf table
  for (const i of [0, 1, 2, 4]) s.pt.map(base + i * PAGE, 0x300000 + i * PAGE, 1, PageTable.ss(true, true));
  s.pt.map(base + 511 * PAGE, 0x500000, 1, PageTable.ss(true, false));
  s.pt.map(base + 512 * PAGE, 0x501000, 1, PageTable.ss(true, true)); // the next leaf table
  assert.ok(s.driver.submitAndWait([psi(base, 513)]));
  assert.equal(s.dma.readUint(base, 4), 0);
  assert.equal(s.unit.stats().iotlb.prefetches, 2, "pages 1 and 2; page 3 is not present");
  assert.equal(s.dma.readUint(base + 3 * PAGE, 4), -1, "not-present page 3 still faults");
  assert.equal(s.dma.readUint(base + 511 * PAGE, 4), 0);
  assert.equal(s.unit.stats().iotlb.prefetches, 2, "nothing after index 511 in this table");
  assert.notEqual(s.dma.writeUint(base + 511 * PAGE, 4, 1), null, "read-only leaf: write faults");
});

test("a remapped page is never served from a prefetched entry once the guest has invalidated it", () => {
  const s = linuxDomain({});
  const iova = 0x10000000;
  for (let i = 0; i < 4; i++) s.pt.map(iova + i * PAGE, 0x300000 + i * PAGE, 1, PageTable.ss(true, true));
  assert.ok(s.driver.submitAndWait([psi(iova, 4)]));
  assert.equal(s.dma.readUint(iova, 4), 0); // walks page 0, prefetches 1-3
  s.pt.map(iova + 2 * PAGE, 0x600000, 1, PageTable.ss(true, true));
  assert.ok(s.driver.submitAndWait([psi(iova + 2 * PAGE, 1)]));
  s.memory.writeU32(0x600000, 0x600);
  assert.equal(s.dma.readUint(iova + 2 * PAGE, 4), 0x600);
  assert.equal(s.dma.readUint(iova + 3 * PAGE, 4), 0, "an unrelated prefetched page stayed cached");
  assert.equal(s.unit.stats().iotlb.prefetchesUsed, 1);
});

test("lazy mode: a domain-selective flush after a batch of unmaps drops walked and prefetched entries alike", () => {
  const s = linuxDomain({});
  const requests = [0x20000000, 0x20040000, 0x20080000];
  for (const iova of requests) {
    for (let i = 0; i < 8; i++) s.pt.map(iova + i * PAGE, 0x300000 + i * PAGE, 1, PageTable.ss(true, true));
    assert.ok(s.driver.submitAndWait([psi(iova, 8)]));
    for (let i = 0; i < 8; i++) assert.equal(s.dma.readUint(iova + i * PAGE, 4), 0);
  }
  assert.equal(s.unit.stats().iotlb.entries, 24);
  for (const iova of requests) for (let i = 0; i < 8; i++) s.pt.unmap(iova + i * PAGE);
  assert.ok(s.driver.submitAndWait([D.iotlbDomain(DID)]), "the flush queue's batch flush");
  assert.equal(s.unit.stats().iotlb.entries, 0);
  for (const iova of requests) assert.equal(s.dma.readUint(iova + 4 * PAGE, 4), -1);
});

test("iotlbPrefetchPages is validated: an integer in [0, 511]", () => {
  for (const bad of [-1, 512, 1.5, Number.NaN]) {
    assert.throws(() => rig({ iotlbPrefetchPages: bad }), /iotlbPrefetchPages/);
  }
});
