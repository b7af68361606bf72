/**
 * Caching mode (CAP.CM) with an assigned endpoint: invalidations replay guest mappings onto the
 * host IOMMU (the engine's VFIO type1 model), without duplicate maps or stray unmaps.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { VfioType1Container } from "../../src/engine/host-iommu.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { D, PageTable, rig } from "./guest.ts";

const SID = 0x0200;

function assigned(config = "caching-mode=on") {
  const r = rig({ config });
  const host = new VfioType1Container();
  r.driver.enableQueuedInvalidation(config.includes("scalable-mode=on"));
  r.driver.setRootTable(config.includes("scalable-mode=on"));
  const pt = new PageTable(r.memory, r.alloc, 4);
  if (config.includes("scalable-mode=on")) {
    const dir = r.driver.setScalableContext(SID);
    r.driver.setPasidEntry(dir, 0, { pgtt: 2, did: 1, slptptr: pt.root });
  } else {
    r.driver.setLegacyContext(SID, { did: 1, slptptr: pt.root });
  }
  const dma = r.unit.addEndpoint(SID, { host });
  return { ...r, host, pt, dma };
}

/**
 * An assigned endpoint (host limited to 4096 entries) whose 4-level second stage points every
 * entry of each level at the same next table: 512^4 leaves.
 */
function assignedSelfReferencing() {
  const r = rig({ config: "caching-mode=on" });
  const host = new VfioType1Container({ dmaEntryLimit: 4096 });
  r.driver.enableQueuedInvalidation();
  r.driver.setRootTable(false);
  const pml4 = r.alloc.page();
  const pdpt = r.alloc.page();
  const pd = r.alloc.page();
  const pt = r.alloc.page();
  for (let i = 0; i < 512; i++) {
    r.memory.writeU64(pml4 + 8 * i, BigInt(pdpt) | 3n);
    r.memory.writeU64(pdpt + 8 * i, BigInt(pd) | 3n);
    r.memory.writeU64(pd + 8 * i, BigInt(pt) | 3n);
    r.memory.writeU64(pt + 8 * i, BigInt(0x100000 + 4096 * i) | 3n);
  }
  r.driver.setLegacyContext(SID, { did: 1, slptptr: pml4 });
  r.unit.addEndpoint(SID, { host });
  return { r, host };
}

test("an assigned endpoint without caching mode is refused with the option to add", () => {
  const r = rig();
  assert.throws(() => r.unit.addEndpoint(SID, { host: new VfioType1Container() }), /caching-mode=on/);
});

test("before TE the host maps guest RAM identity; TE replaces it with the (empty) guest tables", () => {
  const { host, driver: d } = assigned();
  assert.deepEqual(host.list(), [{ iova: 0, gpa: 0, sizeBytes: 64 << 20, perms: 3 }]);
  d.setPersistent(GCMD.TE, true);
  assert.equal(host.entryCount, 0);
});

test("legacy: a new mapping reaches the host only after its page-selective invalidation", () => {
  const { host, pt, driver: d, unit } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.equal(host.lookup(0x10000), undefined);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  assert.deepEqual(host.lookup(0x10000), { iova: 0x10000, gpa: 0x100000, sizeBytes: 4096, perms: 3 });
  // The same invalidation again changes nothing on the host.
  const maps = host.maps;
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  assert.equal(host.maps, maps);
  assert.ok(unit.stats().hosts[0].duplicateMapsSuppressed >= 1);
});

test("unmap + page-selective invalidation unmaps on the host; a stray invalidation unmaps nothing", () => {
  const { host, pt, driver: d, unit } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  pt.unmap(0x10000);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  assert.equal(host.lookup(0x10000), undefined);
  const unmaps = host.unmaps;
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x50000)]));
  assert.equal(host.unmaps, unmaps);
  assert.equal(host.stats().refused.EINVAL, 0);
  assert.ok(unit.stats().hosts[0].strayUnmapsSuppressed >= 1);
});

test("a changed mapping (new gpa or permissions) is unmapped then remapped", () => {
  const { host, pt, driver: d } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  pt.map(0x10000, 0x300000, 1, 1n);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  assert.deepEqual(host.lookup(0x10000), { iova: 0x10000, gpa: 0x300000, sizeBytes: 4096, perms: 1 });
});

test("domain-selective invalidation resynchronises the whole space (2 MiB leaf, many pages)", () => {
  const { host, pt, driver: d } = assigned();
  d.setPersistent(GCMD.TE, true);
  for (let i = 0; i < 16; i++) pt.map(0x100000 + i * 4096, 0x400000 + i * 4096, 1, 3n);
  pt.map(0x40000000, 0x200000, 2, 3n);
  assert.ok(d.submitAndWait([D.iotlbDomain(1)]));
  assert.equal(host.entryCount, 17);
  assert.equal(host.lookup(0x40000000)?.sizeBytes, 2 << 20);
  pt.unmap(0x40000000, 2);
  assert.ok(d.submitAndWait([D.iotlbGlobal()]));
  assert.equal(host.entryCount, 16);
});

test("a context switch to another table resyncs after the context-cache invalidation", () => {
  const { host, pt, driver: d, memory, alloc } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  const pt2 = new PageTable(memory, alloc, 4);
  pt2.map(0x20000, 0x200000, 1, 3n);
  d.setLegacyContext(SID, { did: 2, slptptr: pt2.root });
  assert.ok(d.submitAndWait([D.contextDevice(1, SID)]));
  assert.equal(host.lookup(0x10000), undefined);
  assert.equal(host.lookup(0x20000)?.gpa, 0x200000);
});

test("scalable mode: an IOTLB invalidation replays the RID_PASID second stage, a PASID-based one does not", () => {
  const { host, pt, driver: d } = assigned("caching-mode=on,scalable-mode=on");
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.ok(d.submitAndWait([D.pasidIotlbPage(1, 0, 0x10000)]));
  assert.equal(host.lookup(0x10000), undefined, "type 6 covers first-stage and nested entries only");
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  assert.equal(host.lookup(0x10000)?.gpa, 0x100000);
});

test("the guest's DMA through the unit and the host mapping agree", () => {
  const { host, pt, driver: d, dma, memory } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  memory.writeU32(0x100000, 99);
  assert.equal(dma.readUint(0x10000, 4), 99);
  const e = host.lookup(0x10000);
  assert.ok(e !== undefined && memory.readU32(e.gpa) === 99);
});

test("scalable mode: a first-stage RID_PASID table is shadowed too", () => {
  const r = rig({ config: "caching-mode=on,scalable-mode=on" });
  const host = new VfioType1Container();
  r.driver.enableQueuedInvalidation(true);
  r.driver.setRootTable(true);
  const fs = new PageTable(r.memory, r.alloc, 4, true);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 1, did: 6, flptptr: fs.root });
  r.unit.addEndpoint(SID, { host });
  r.driver.setPersistent(GCMD.TE, true);
  fs.map(0x30000, 0x130000, 1, 0x7n);
  fs.map(0x31000, 0x131000, 1, 0x5n);
  assert.ok(r.driver.submitAndWait([D.pasidIotlbPage(6, 0, 0x30000, 1)]));
  assert.deepEqual(host.list(), [
    { iova: 0x30000, gpa: 0x130000, sizeBytes: 4096, perms: 3 },
    { iova: 0x31000, gpa: 0x131000, sizeBytes: 4096, perms: 1 },
  ]);
  // Enumeration for the host does not touch Accessed bits.
  assert.equal(r.memory.readU64(fs.root) & 0x20n, 0n);
});

test("a self-referencing table (512^4 leaves) cannot stall the replay: the sync is bounded", () => {
  const { r, host } = assignedSelfReferencing();
  const t0 = Date.now();
  r.driver.setPersistent(GCMD.TE, true);
  assert.ok(r.driver.submitAndWait([D.iotlbGlobal()]));
  const ms = Date.now() - t0;
  const st = r.unit.stats().hosts[0];
  assert.ok(st.truncatedSyncs >= 1, "the sync reports it was cut short");
  assert.ok(host.entryCount <= host.dmaEntryLimit);
  assert.ok(ms < 20000, `bounded (${ms} ms)`);
  console.log(`self-referencing table replay: ${ms} ms, ${host.entryCount} host entries`);
});

test("a queue full of global invalidations and waits over a hostile table stays bounded", () => {
  const { r } = assignedSelfReferencing();
  const descs: bigint[][] = [];
  for (let i = 0; i < 100; i++) descs.push(D.iotlbGlobal(), D.wait(i, r.driver.statusGpa));
  const t0 = Date.now();
  r.driver.submit([[0x12n, 0n]]); // TE-less warm-up: queue works
  r.driver.w32(REG.GCMD, GCMD.QIE | GCMD.TE);
  r.driver.submit(descs);
  const ms = Date.now() - t0;
  assert.equal(r.memory.readU32(r.driver.statusGpa), 99, "every wait completed");
  assert.ok(r.unit.stats().hostResyncsDeferred > 0, "resyncs past the batch budget are deferred");
  assert.ok(ms < 20000, `bounded (${ms} ms)`);
  console.log(`hostile queue batch: ${ms} ms, ${r.unit.stats().hostResyncsDeferred} deferred resyncs`);
});

test("full resyncs requested in one queue batch are coalesced until the wait", () => {
  const { host, pt, driver: d } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  const maps = host.maps;
  assert.ok(d.submitAndWait([D.iotlbDomain(1), D.iotlbDomain(1), D.iotlbGlobal(), D.contextGlobal()]));
  assert.equal(host.maps, maps + 1, "one replay, one host map");
  assert.equal(host.lookup(0x10000)?.gpa, 0x100000);
});

test("removing an assigned endpoint unmaps everything it had on the host", () => {
  const { host, pt, driver: d, unit } = assigned();
  d.setPersistent(GCMD.TE, true);
  pt.map(0x10000, 0x100000, 1, 3n);
  assert.ok(d.submitAndWait([D.iotlbPage(1, 0x10000)]));
  assert.equal(host.entryCount, 1);
  assert.equal(unit.removeEndpoint(SID), true);
  assert.equal(host.entryCount, 0);
  assert.equal(unit.removeEndpoint(SID), false);
  // Re-adding works (a hot-plug after the unplug).
  unit.addEndpoint(SID, { host });
  assert.equal(host.lookup(0x10000)?.gpa, 0x100000);
});
