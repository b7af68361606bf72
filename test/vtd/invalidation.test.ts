/**
 * Invalidation: register-based (CCMD, IOTLB/IVA; VT-d 6.5.1) and queued (6.5.2), one test per
 * descriptor type and per queue error, each observed through what the cache then serves.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import { ECTL, FSTS, GCMD, REG } from "../../src/vtd/registers.ts";
import { D, PageTable, q, type Rig, rig } from "./guest.ts";

const SID = 0x0020;

/** Legacy unit with one endpoint mapped at iova 0x10000 -> 0x100000 in domain 4. */
function legacyMapped(options: { qi?: boolean; config?: string; sink?: RecordingInterruptSink } = {}) {
  const r = rig({ config: options.config ?? "device-iotlb=on,intremap=on", interrupts: options.sink });
  const d = r.driver;
  if (options.qi !== false) d.enableQueuedInvalidation();
  d.setRootTable(false);
  const pt = new PageTable(r.memory, r.alloc, 4);
  d.setLegacyContext(SID, { did: 4, slptptr: pt.root });
  pt.map(0x10000, 0x100000, 1, 3n);
  pt.map(0x11000, 0x101000, 1, 3n);
  const dma = r.unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  r.memory.writeU32(0x100000, 111);
  r.memory.writeU32(0x101000, 222);
  assert.equal(dma.readUint(0x10000, 4), 111);
  assert.equal(dma.readUint(0x11000, 4), 222);
  return { ...r, d, pt, dma };
}

/** Repoints both pages at new frames without invalidating. */
function repoint(r: Rig, pt: PageTable): void {
  pt.map(0x10000, 0x200000, 1, 3n);
  pt.map(0x11000, 0x201000, 1, 3n);
  r.memory.writeU32(0x200000, 333);
  r.memory.writeU32(0x201000, 444);
}

test("IOTLB page-selective descriptor drops exactly the named page", () => {
  const { d, pt, dma, ...r } = legacyMapped();
  repoint(r as Rig, pt);
  assert.equal(dma.readUint(0x10000, 4), 111, "stale until invalidated");
  assert.ok(d.submitAndWait([D.iotlbPage(4, 0x10000)]));
  assert.equal(dma.readUint(0x10000, 4), 333);
  assert.equal(dma.readUint(0x11000, 4), 222, "the neighbour page is still cached");
});

test("IOTLB page-selective with AM=1 covers two pages", () => {
  const { d, pt, dma, ...r } = legacyMapped();
  repoint(r as Rig, pt);
  assert.ok(d.submitAndWait([D.iotlbPage(4, 0x10000, 1)]));
  assert.equal(dma.readUint(0x11000, 4), 444);
});

test("IOTLB page-selective for another domain leaves this domain's entries", () => {
  const { d, pt, dma, ...r } = legacyMapped();
  repoint(r as Rig, pt);
  assert.ok(d.submitAndWait([D.iotlbPage(5, 0x10000, 1)]));
  assert.equal(dma.readUint(0x10000, 4), 111);
});

test("IOTLB domain-selective descriptor drops the whole domain", () => {
  const { d, pt, dma, ...r } = legacyMapped();
  repoint(r as Rig, pt);
  assert.ok(d.submitAndWait([D.iotlbDomain(4)]));
  assert.equal(dma.readUint(0x10000, 4), 333);
  assert.equal(dma.readUint(0x11000, 4), 444);
});

test("IOTLB global descriptor drops everything", () => {
  const { d, pt, dma, ...r } = legacyMapped();
  repoint(r as Rig, pt);
  assert.ok(d.submitAndWait([D.iotlbGlobal()]));
  assert.equal(dma.readUint(0x11000, 4), 444);
});

test("context-cache device-selective descriptor makes the unit re-read the context entry", () => {
  const { d, dma, unit, memory, alloc } = legacyMapped();
  const pt2 = new PageTable(memory, alloc, 4);
  pt2.map(0x10000, 0x300000, 1, 3n);
  memory.writeU32(0x300000, 555);
  d.setLegacyContext(SID, { did: 6, slptptr: pt2.root });
  assert.equal(dma.readUint(0x10000, 4), 111, "cached context (and IOTLB) still used");
  assert.ok(d.submitAndWait([D.contextDevice(4, SID), D.iotlbDomain(4)]));
  assert.equal(dma.readUint(0x10000, 4), 555);
  assert.equal(unit.stats().contextCache.entries, 1);
});

test("context-cache device-selective with a function mask covers the masked functions", () => {
  const { d, dma, memory } = legacyMapped();
  memory.writeU64(d.legacyContextGpa(SID), 0n);
  assert.ok(d.submitAndWait([D.contextDevice(4, SID | 7, 3), D.iotlbGlobal()]));
  assert.equal(dma.readUint(0x10000, 4), -1);
});

test("context-cache domain-selective descriptor drops contexts of that domain only", () => {
  const { d, dma, memory } = legacyMapped();
  memory.writeU64(d.legacyContextGpa(SID), 0n);
  assert.ok(d.submitAndWait([D.contextDomain(9), D.iotlbGlobal()]));
  assert.equal(dma.readUint(0x10000, 4), 111, "other domain: context still cached");
  assert.ok(d.submitAndWait([D.contextDomain(4)]));
  assert.equal(dma.readUint(0x10000, 4), -1);
});

test("context-cache global descriptor drops every context", () => {
  const { d, dma, memory } = legacyMapped();
  memory.writeU64(d.legacyContextGpa(SID), 0n);
  assert.ok(d.submitAndWait([D.contextGlobal(), D.iotlbGlobal()]));
  assert.equal(dma.readUint(0x10000, 4), -1);
});

test("device-TLB descriptor reaches the endpoint's device-TLB with the ATS-encoded range", () => {
  const r = rig({ config: "device-iotlb=on" });
  r.driver.enableQueuedInvalidation();
  const seen: [number, number, number][] = [];
  r.unit.addEndpoint(SID, { ats: { invalidate: (iova, size, pasid) => seen.push([iova, size, pasid]) } });
  assert.ok(r.driver.submitAndWait([D.deviceTlb(SID, 0x5000), D.deviceTlb(SID, 0x1000 | 0x2000, true)]));
  // S=1 with address bits 13:12 set and bit 14 clear: 32 KiB aligned block.
  assert.deepEqual(seen, [
    [0x5000, 0x1000, -1],
    [0x0, 0x8000, -1],
  ]);
});

test("device-TLB descriptor without ECAP.DT is an invalid descriptor type", () => {
  const r = rig();
  r.driver.enableQueuedInvalidation();
  assert.equal(r.driver.submitAndWait([D.deviceTlb(SID, 0x5000)]), false);
  assert.equal(r.unit.read(REG.IQERCD, 4) & 0xf, 3);
});

test("interrupt entry cache: index-selective with IM covers 2^IM entries, global covers all", () => {
  const r = rig({ config: "intremap=on" });
  const d = r.driver;
  d.enableQueuedInvalidation();
  const irt = r.alloc.page();
  d.w64(REG.IRTA, BigInt(irt) | 3n);
  d.oneShot(GCMD.SIRTP);
  d.setPersistent(GCMD.IRE, true);
  for (let i = 0; i < 4; i++) r.memory.writeU64(irt + 16 * i, 1n | (BigInt(0x40 + i) << 16n));
  for (let i = 0; i < 4; i++) r.unit.remap(SID, (0xfee00010 | (i << 5)) >>> 0, 0);
  assert.equal(r.unit.stats().interruptEntryCache.entries, 4);
  assert.ok(d.submitAndWait([D.iecIndex(2, 1)]));
  assert.equal(r.unit.stats().interruptEntryCache.entries, 2);
  assert.ok(d.submitAndWait([D.iecGlobal()]));
  assert.equal(r.unit.stats().interruptEntryCache.entries, 0);
});

test("invalidation wait with SW writes the status data to the status address", () => {
  const { d, memory } = legacyMapped();
  d.submit([D.wait(0xdeadbeef, d.statusGpa + 8)]);
  assert.equal(memory.readU32(d.statusGpa + 8), 0xdeadbeef);
});

test("invalidation wait with IF sets ICS.IWC and sends the completion event from IEDATA/IEADDR", () => {
  const sink = new RecordingInterruptSink();
  const { d } = legacyMapped({ sink });
  d.w32(REG.IEDATA, 0x61);
  d.w32(REG.IEADDR, 0xfee00000);
  d.w32(REG.IECTL, 0);
  d.submit([D.waitIntrOnly()]);
  assert.equal(d.r32(REG.ICS), 1);
  assert.equal(sink.msis.length, 1);
  assert.equal(sink.msis[0].message.data, 0x61);
  // IWC still set: a second wait is not a new completion event.
  d.submit([D.waitIntrOnly()]);
  assert.equal(sink.msis.length, 1);
  d.w32(REG.ICS, 1);
  d.submit([D.waitIntrOnly()]);
  assert.equal(sink.msis.length, 2);
});

test("IECTL.IM holds the completion event in IP until unmasked", () => {
  const sink = new RecordingInterruptSink();
  const { d } = legacyMapped({ sink });
  d.w32(REG.IECTL, ECTL.IM);
  d.submit([D.waitIntrOnly()]);
  assert.equal(sink.msis.length, 0);
  assert.ok(d.r32(REG.IECTL) & ECTL.IP);
  d.w32(REG.IECTL, 0);
  assert.equal(sink.msis.length, 1);
  assert.equal(d.r32(REG.IECTL) & ECTL.IP, 0);
});

/** Submits `desc` then a status-writing wait: the queue stops at `desc` with IQEI `iqei`. */
function queueError(r: Rig, desc: bigint[], iqei: number): void {
  const d = r.driver;
  r.memory.writeU32(d.statusGpa, 0);
  const headBefore = Number(d.r64(REG.IQH));
  d.submit([desc, D.wait(1, d.statusGpa)]);
  assert.ok(d.r32(REG.FSTS) & FSTS.IQE, "IQE set");
  assert.equal(d.r32(REG.IQERCD) & 0xf, iqei);
  assert.equal(Number(d.r64(REG.IQH)), headBefore, "IQH stays at the offending descriptor");
  assert.equal(r.memory.readU32(d.statusGpa), 0, "later descriptors did not run");
}

test("an unknown descriptor type stops the queue with IQE (IQEI=3)", () => {
  const r = legacyMapped();
  queueError(r, [q(0xf), 0n], 3);
});

test("a reserved field set in a descriptor stops the queue with IQE (IQEI=4)", () => {
  const r = legacyMapped();
  queueError(r, [q(0x2 | (1 << 4) | (1 << 8)), 0n], 4);
});

test("context-cache descriptor with granularity 0 is a reserved-field error", () => {
  const r = legacyMapped();
  queueError(r, [q(0x1), 0n], 4);
});

test("page-selective IOTLB descriptor with AM above MAMV is a reserved-field error", () => {
  const r = legacyMapped();
  queueError(r, D.iotlbPage(4, 0, 19), 4);
});

test("PASID-based descriptors in legacy mode are invalid for the TTM (IQEI=7)", () => {
  const r = rig({ config: "scalable-mode=on" });
  r.driver.enableQueuedInvalidation();
  r.driver.setRootTable(false);
  queueError(r, D.pasidCacheGlobal(), 7);
});

test("clearing IQE after fixing the descriptor resumes the queue from IQH", () => {
  const r = legacyMapped();
  const d = r.d;
  r.memory.writeU32(d.statusGpa, 0);
  d.submit([[q(0xf), 0n], D.wait(9, d.statusGpa)]);
  assert.equal(r.memory.readU32(d.statusGpa), 0);
  const head = Number(d.r64(REG.IQH));
  r.memory.writeU64(d.queueBase + head, q(0x2 | (1 << 4)));
  d.w32(REG.FSTS, FSTS.IQE);
  assert.equal(r.memory.readU32(d.statusGpa), 9);
  assert.equal(Number(d.r64(REG.IQH)), Number(d.r64(REG.IQT)));
});

test("a tail beyond the queue size is an IQE (IQEI=1)", () => {
  const r = rig();
  r.driver.enableQueuedInvalidation();
  r.driver.w64(REG.IQT, 0x1000n + 0x10n);
  assert.ok(r.unit.read(REG.FSTS, 4) & FSTS.IQE);
  assert.equal(r.unit.read(REG.IQERCD, 4) & 0xf, 1);
});

test("with 256-bit descriptors a tail not 32-byte aligned is an IQE (IQEI=6)", () => {
  const r = rig({ config: "scalable-mode=on" });
  r.driver.enableQueuedInvalidation(true);
  r.driver.w64(REG.IQT, 0x10n);
  assert.equal(r.unit.read(REG.IQERCD, 4) & 0xf, 6);
});

test("256-bit descriptors: upper 128 bits must be zero (IQEI=4)", () => {
  const r = rig({ config: "scalable-mode=on" });
  r.driver.enableQueuedInvalidation(true);
  r.driver.setRootTable(true);
  assert.ok(r.driver.submitAndWait([D.iotlbGlobal()]));
  r.driver.submit([[...D.iotlbGlobal(), 1n, 0n]]);
  assert.equal(r.unit.read(REG.IQERCD, 4) & 0xf, 4);
});

test("a queue outside RAM is a descriptor fetch error (IQEI=2)", () => {
  const r = rig();
  const d = r.driver;
  d.w64(REG.IQA, 0x10000000n);
  d.setPersistent(GCMD.QIE, true);
  d.w64(REG.IQT, 0x10n);
  assert.equal(r.unit.read(REG.IQERCD, 4) & 0xf, 2);
});

test("register-based IOTLB page-selective invalidation uses IVA and reports IAIG", () => {
  const { d, pt, dma, ...r } = legacyMapped({ qi: false });
  repoint(r as Rig, pt);
  d.w64(REG.IVA, 0x10000n);
  d.w64(REG.IOTLB, (1n << 63n) | (3n << 60n) | (4n << 32n));
  const v = d.r64(REG.IOTLB);
  assert.equal(v >> 63n, 0n, "IVT clears when done");
  assert.equal((v >> 57n) & 3n, 3n, "IAIG = page-selective");
  assert.equal(dma.readUint(0x10000, 4), 333);
  assert.equal(dma.readUint(0x11000, 4), 222);
});

test("register-based IOTLB invalidation with AM above MAMV is performed domain-selective", () => {
  const { d, pt, dma, ...r } = legacyMapped({ qi: false });
  repoint(r as Rig, pt);
  d.w64(REG.IVA, 0x10000n | 30n);
  d.w64(REG.IOTLB, (1n << 63n) | (3n << 60n) | (4n << 32n));
  assert.equal((d.r64(REG.IOTLB) >> 57n) & 3n, 2n);
  assert.equal(dma.readUint(0x11000, 4), 444);
});

test("register-based context invalidation (CCMD) device-selective reports CAIG", () => {
  const { d, dma, memory } = legacyMapped({ qi: false });
  memory.writeU64(d.legacyContextGpa(SID), 0n);
  d.w64(REG.CCMD, (1n << 63n) | (3n << 61n) | (BigInt(SID) << 16n) | 4n);
  assert.equal((d.r64(REG.CCMD) >> 59n) & 3n, 3n);
  d.w64(REG.IOTLB, (1n << 63n) | (1n << 60n));
  assert.equal(dma.readUint(0x10000, 4), -1);
});

test("register-based invalidation is not performed while queued invalidation is enabled", () => {
  const { d, pt, dma, ...r } = legacyMapped();
  repoint(r as Rig, pt);
  d.w64(REG.IOTLB, (1n << 63n) | (1n << 60n));
  const v = d.r64(REG.IOTLB);
  assert.equal(v >> 63n, 0n);
  assert.equal((v >> 57n) & 3n, 0n, "IAIG = 0: not performed");
  assert.equal(dma.readUint(0x10000, 4), 111);
});

function scalableFirstStage() {
  const r = rig({ config: "scalable-mode=on,pasid=on" });
  const d = r.driver;
  d.enableQueuedInvalidation(true);
  d.setRootTable(true);
  const fs = new PageTable(r.memory, r.alloc, 4, true);
  const dir = d.setScalableContext(SID);
  const pte = d.setPasidEntry(dir, 0, { pgtt: 1, did: 8, flptptr: fs.root });
  fs.map(0x10000, 0x100000, 1, 7n);
  r.memory.writeU32(0x100000, 1);
  r.memory.writeU32(0x200000, 2);
  const dma = r.unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(0x10000, 4), 1);
  fs.map(0x10000, 0x200000, 1, 7n);
  return { ...r, d, fs, pte, dma };
}

test("PASID-based IOTLB page-selective descriptor drops the first-stage page of that PASID only", () => {
  const { d, dma } = scalableFirstStage();
  assert.ok(d.submitAndWait([D.pasidIotlbPage(8, 1, 0x10000)]));
  assert.equal(dma.readUint(0x10000, 4), 1, "another PASID's invalidation leaves RID_PASID 0 cached");
  assert.ok(d.submitAndWait([D.pasidIotlbPage(8, 0, 0x10000)]));
  assert.equal(dma.readUint(0x10000, 4), 2);
});

test("IOTLB descriptors do not cover first-stage entries in scalable mode (6.5.2.4)", () => {
  const { d, dma } = scalableFirstStage();
  assert.ok(d.submitAndWait([D.iotlbPage(8, 0x10000), D.iotlbDomain(8)]));
  assert.equal(dma.readUint(0x10000, 4), 1, "still the first-stage entry cached before");
  assert.ok(d.submitAndWait([D.pasidIotlbAll(8, 0)]));
  assert.equal(dma.readUint(0x10000, 4), 2);
});

test("PASID-based IOTLB descriptors do not cover second-stage entries (6.5.2.6)", () => {
  const r = rig({ config: "scalable-mode=on" });
  const d = r.driver;
  d.enableQueuedInvalidation(true);
  d.setRootTable(true);
  const pt = new PageTable(r.memory, r.alloc, 4);
  const dir = d.setScalableContext(SID);
  d.setPasidEntry(dir, 0, { pgtt: 2, did: 8, slptptr: pt.root });
  pt.map(0x10000, 0x100000, 1, 3n);
  r.memory.writeU32(0x100000, 1);
  r.memory.writeU32(0x200000, 2);
  const dma = r.unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(0x10000, 4), 1);
  pt.map(0x10000, 0x200000, 1, 3n);
  assert.ok(d.submitAndWait([D.pasidIotlbAll(8, 0)]));
  assert.equal(dma.readUint(0x10000, 4), 1);
  assert.ok(d.submitAndWait([D.iotlbPage(8, 0x10000)]));
  assert.equal(dma.readUint(0x10000, 4), 2);
});

test("PASID-cache PASID-selective descriptor makes the unit re-read the PASID entry", () => {
  const { d, dma, pte, memory } = scalableFirstStage();
  memory.writeU64(pte, 0n);
  assert.ok(d.submitAndWait([D.pasidIotlbAll(8, 0)]));
  assert.equal(dma.readUint(0x10000, 4), 2, "PASID cache still serves the torn-down entry");
  assert.ok(d.submitAndWait([D.pasidCachePasid(8, 1)]));
  assert.equal(dma.readUint(0x10000, 4), 2, "another PASID's invalidation keeps it");
  assert.ok(d.submitAndWait([D.pasidCachePasid(8, 0), D.pasidIotlbAll(8, 0)]));
  assert.equal(dma.readUint(0x10000, 4), -1);
  assert.equal(dma.lastFault?.code, 0x59);
});

test("PASID-based device-TLB descriptor reaches the endpoint with the PASID", () => {
  const r = rig({ config: "scalable-mode=on,pasid=on,device-iotlb=on" });
  r.driver.enableQueuedInvalidation(true);
  r.driver.setRootTable(true);
  const seen: number[][] = [];
  r.unit.addEndpoint(SID, { ats: { invalidate: (iova, size, pasid) => seen.push([iova, size, pasid]) } });
  assert.ok(r.driver.submitAndWait([D.pasidDeviceTlb(SID, 42, 0x7000)]));
  assert.deepEqual(seen, [[0x7000, 0x1000, 42]]);
});

test("a completion event handler that moves the tail is folded into the running queue walk", () => {
  let r: ReturnType<typeof rig> | undefined;
  let reentered = 0;
  const sink = {
    signalMsi() {
      if (r === undefined || reentered++ > 0) return;
      r.memory.writeU32(r.driver.statusGpa + 16, 0);
      r.driver.submit([D.wait(0x77, r.driver.statusGpa + 16)]);
    },
    setPin() {},
  };
  r = rig({ interrupts: sink });
  r.driver.enableQueuedInvalidation();
  r.driver.w32(REG.IECTL, 0);
  r.driver.submit([D.waitIntrOnly()]);
  assert.equal(r.memory.readU32(r.driver.statusGpa + 16), 0x77);
  assert.equal(r.driver.r64(REG.IQH), r.driver.r64(REG.IQT));
  assert.equal(r.unit.stats().queue.descriptors, 2);
});

test("cached translations are served without reading guest tables; only a covering invalidation re-reads", () => {
  const { d, dma, unit } = legacyMapped();
  const reads = () => unit.stats().tableEntryReads;
  dma.flushCache();
  const before = reads();
  for (let i = 0; i < 10; i++) {
    dma.flushCache();
    assert.equal(dma.readUint(0x10000, 4), 111);
  }
  assert.equal(reads(), before, "IOTLB and context cache hits read nothing");
  assert.ok(d.submitAndWait([D.iotlbPage(4, 0x11000)]));
  dma.flushCache();
  dma.readUint(0x10000, 4);
  assert.equal(reads(), before, "an invalidation of another page leaves this one cached");
  assert.ok(d.submitAndWait([D.iotlbPage(4, 0x10000)]));
  dma.readUint(0x10000, 4);
  // One 4-level walk, then the neighbour prefetch reads 0x11000 (invalidated above: re-cached)
  // and 0x12000 (not present: the prefetch stops).
  assert.equal(reads(), before + 4 + 2, "the covering invalidation costs one walk and its prefetch");
  assert.ok(d.submitAndWait([D.contextDevice(4, SID)]));
  dma.readUint(0x10000, 4);
  assert.equal(
    reads(),
    before + 4 + 2 + 2,
    "a context-cache invalidation re-reads root and context entries only",
  );
});

test("IQH resets to 0 when queued invalidation is disabled (11.4.9.1)", () => {
  const r = rig();
  r.driver.enableQueuedInvalidation();
  assert.ok(r.driver.submitAndWait([D.iotlbGlobal()]));
  assert.notEqual(r.driver.r64(REG.IQH), 0n);
  r.driver.setPersistent(GCMD.QIE, false);
  assert.equal(r.driver.r64(REG.IQH), 0n);
});
