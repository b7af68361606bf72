/**
 * A guest driver following Linux's intel-iommu init order (QI enable, root table + SRTP,
 * global context / IOTLB invalidation, fault interrupt, TE; IRTA + SIRTP, IEC, IRE) drives
 * DMA through the unit, unmaps with the right invalidation and proves nothing stale survives.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { PERM_READ, PERM_RW } from "../../src/engine/access.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { VtdUnit } from "../../src/vtd/vtd.ts";
import { D, GuestDriver, PageAllocator, PageTable, rig } from "./guest.ts";

const SID = 0x0010; // 00:02.0

function linuxInit(scalable: boolean) {
  const sink = new RecordingInterruptSink();
  const r = rig({
    config: `intremap=on,scalable-mode=${scalable ? "on" : "off"},aw-bits=48`,
    interrupts: sink,
  });
  const d = r.driver;
  d.enableQueuedInvalidation(scalable);
  d.setRootTable(scalable);
  assert.ok(
    d.submitAndWait(
      scalable
        ? [D.contextGlobal(), D.pasidCacheGlobal(), D.iotlbGlobal()]
        : [D.contextGlobal(), D.iotlbGlobal()],
    ),
  );
  d.w32(REG.FEDATA, 0x41);
  d.w32(REG.FEADDR, 0xfee00000);
  d.w32(REG.FECTL, 0);
  return { ...r, sink };
}

for (const scalable of [false, true]) {
  const mode = scalable ? "scalable" : "legacy";

  test(`Linux init order (${mode}): map, DMA, unmap + page-selective invalidation leaves no stale translation`, () => {
    const { unit, memory, alloc, driver: d } = linuxInit(scalable);
    const pt = new PageTable(memory, alloc, 4);
    if (scalable) {
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 2, did: 7, aw: 2, slptptr: pt.root });
    } else {
      d.setLegacyContext(SID, { did: 7, aw: 2, slptptr: pt.root });
    }
    const dma = unit.addEndpoint(SID);
    d.setPersistent(GCMD.TE, true);
    // Before any mapping: a DMA faults (not present).
    assert.notEqual(dma.readUint(0x10000, 4), 0x12345678);
    // Legacy second stage has no not-present reason: R=W=0 is a read-denied fault (0x6).
    assert.equal(dma.lastFault?.reason, scalable ? "unmapped" : "permission");
    assert.equal(dma.lastFault?.code, scalable ? 0x79 : 0x6);
    // Map iova 0x10000 -> gpa 0x200000 read/write, and 0x11000 read-only.
    pt.map(0x10000, 0x200000, 1, PageTable.ss(true, true));
    pt.map(0x11000, 0x201000, 1, PageTable.ss(true, false));
    memory.writeU32(0x200000, 0x12345678);
    assert.equal(dma.readUint(0x10000, 4), 0x12345678);
    assert.equal(dma.writeUint(0x10004, 4, 0xcafef00d), null);
    assert.equal(memory.readU32(0x200004), 0xcafef00d);
    assert.equal(dma.writeUint(0x11000, 4, 1)?.reason, "permission");
    // Cached now: a second access hits the IOTLB (no new walk).
    const missesBefore = unit.stats().iotlbMisses;
    assert.equal(dma.readUint(0x10008, 4), 0);
    dma.flushCache();
    assert.equal(dma.readUint(0x10008, 4), 0);
    assert.equal(unit.stats().iotlbMisses, missesBefore);
    // Unmap in the tables: without invalidation the IOTLB may still serve it (hardware may cache).
    pt.unmap(0x10000);
    assert.equal(dma.readUint(0x10000, 4), 0x12345678);
    // Page-selective invalidation of exactly that page: the translation is gone.
    assert.ok(d.submitAndWait([D.iotlbPage(7, 0x10000, 0)]));
    assert.equal(dma.readUint(0x10000, 4), -1);
    assert.equal(dma.lastFault?.reason, scalable ? "unmapped" : "permission");
    // Remap elsewhere; the guest invalidates; new target is used.
    pt.map(0x10000, 0x300000, 1, PageTable.ss(true, true));
    assert.ok(d.submitAndWait([D.iotlbPage(7, 0x10000, 0)]));
    memory.writeU32(0x300000, 0xabcdef01);
    assert.equal(dma.readUint(0x10000, 4), 0xabcdef01);
    const st = unit.stats();
    assert.ok(st.iotlbHits > 0);
    assert.ok(st.queue.descriptors >= 6);
  });

  test(`Linux init order (${mode}): interrupt remapping after SIRTP + IEC + IRE`, () => {
    const { unit, memory, alloc, driver: d } = linuxInit(scalable);
    const irt = alloc.page();
    d.w64(REG.IRTA, BigInt(irt) | 7n); // 256 entries
    d.oneShot(GCMD.SIRTP);
    assert.ok(d.submitAndWait([D.iecGlobal()]));
    d.setPersistent(GCMD.IRE, true);
    // IRTE 5: vector 0x31, xAPIC destination 3, SVT=1 SQ=0 SID=SID.
    memory.writeU64(irt + 5 * 16, 1n | (0x31n << 16n) | (3n << 40n));
    memory.writeU64(irt + 5 * 16 + 8, BigInt(SID) | (1n << 18n));
    const res = unit.remap(SID, (0xfee00000 | (5 << 5) | 0x10) >>> 0, 0);
    assert.ok(res.ok && res.remapped, JSON.stringify(res));
    if (res.ok && res.interrupt) {
      assert.equal(res.interrupt.vector, 0x31);
      assert.equal(res.interrupt.destination, 3);
      assert.equal(res.message.address, 0xfee03000);
      assert.equal(res.message.data & 0xff, 0x31);
    }
    // Change the IRTE: the cache keeps the old one until an index-selective IEC invalidation.
    memory.writeU64(irt + 5 * 16, 1n | (0x32n << 16n) | (3n << 40n));
    const stale = unit.remap(SID, (0xfee00000 | (5 << 5) | 0x10) >>> 0, 0);
    assert.ok(stale.ok && stale.interrupt?.vector === 0x31);
    assert.ok(d.submitAndWait([D.iecIndex(5, 0)]));
    const fresh = unit.remap(SID, (0xfee00000 | (5 << 5) | 0x10) >>> 0, 0);
    assert.ok(fresh.ok && fresh.interrupt?.vector === 0x32);
  });
}

test("second-stage 2 MiB superpage translates a whole block and PSI with AM=9 drops it", () => {
  const { unit, memory, alloc, driver: d } = linuxInit(false);
  const pt = new PageTable(memory, alloc, 3);
  d.setLegacyContext(SID, { did: 3, aw: 1, slptptr: pt.root });
  const dma = unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  pt.map(0x40000000, 0x400000, 2, PageTable.ss(true, true));
  memory.writeU32(0x400000 + 0x1ff000, 77);
  assert.equal(dma.readUint(0x40000000 + 0x1ff000, 4), 77);
  pt.unmap(0x40000000, 2);
  assert.ok(d.submitAndWait([D.iotlbPage(3, 0x40000000, 9)]));
  assert.equal(dma.readUint(0x40000000 + 0x1ff000, 4), -1);
  assert.equal(unit.stats().faults.recorded, 1);
  void PERM_READ;
  void PERM_RW;
});

test("trace events: IOTLB fill, invalidation descriptors and faults are observable", () => {
  const events: string[] = [];
  const { unit, memory, alloc, driver: d } = linuxInit(false);
  unit.tracer.listen((e) => events.push(`${e.category}:${e.name}`), ["map", "invalidate", "fault"]);
  const pt = new PageTable(memory, alloc, 4);
  d.setLegacyContext(SID, { did: 2, slptptr: pt.root });
  const dma = unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  pt.map(0x1000, 0x100000, 1, PageTable.ss(true, true));
  dma.readUint(0x1000, 4);
  dma.readUint(0x9000, 4);
  d.submitAndWait([D.iotlbPage(2, 0x1000)]);
  assert.ok(events.includes("map:iotlb-fill"));
  assert.ok(events.includes("fault:fault"));
  assert.ok(events.includes("invalidate:descriptor"));
  assert.ok(events.includes("invalidate:iotlb"));
});

test("Linux scalable mode with a first-stage DMA domain: map, DMA, unmap + PASID-based PSI", () => {
  const { unit, memory, alloc, driver: d } = linuxInit(true);
  const fs = new PageTable(memory, alloc, 4, true);
  const dir = d.setScalableContext(SID);
  d.setPasidEntry(dir, 0, { pgtt: 1, did: 11, flptptr: fs.root });
  const dma = unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  // Linux first-stage leaves: P | RW | US | A, and XD.
  fs.map(0x20000, 0x240000, 1, 0x27n | (1n << 63n));
  memory.writeU32(0x240000, 0x5151);
  assert.equal(dma.readUint(0x20000, 4), 0x5151);
  fs.unmap(0x20000);
  assert.equal(dma.readUint(0x20000, 4), 0x5151, "cached until invalidated");
  assert.ok(d.submitAndWait([D.pasidIotlbPage(11, 0, 0x20000)]));
  assert.equal(dma.readUint(0x20000, 4), -1);
  assert.equal(dma.lastFault?.code, 0x71);
});

test("RAM above 2 GiB (VT-d 9.1-9.8, 6.5.2): tables, queue and wait status with address bit 31 set", () => {
  for (const scalable of [false, true]) {
    const high = 0x8000_0000;
    const memory = GuestMemory.anonymous([
      { gpa: 0, sizeBytes: 16 << 20 },
      { gpa: high, sizeBytes: 16 << 20 },
    ]);
    const unit = new VtdUnit(memory, { config: `scalable-mode=${scalable ? "on" : "off"}` });
    const alloc = new PageAllocator(memory, high, 16 << 20);
    const d = new GuestDriver(unit, memory, alloc);
    d.enableQueuedInvalidation(scalable);
    d.setRootTable(scalable);
    assert.ok(d.queueBase >= high && d.rootTable >= high);
    const pt = new PageTable(memory, alloc, 4);
    const page = alloc.page();
    pt.map(0x10000, page, 1, PageTable.ss(true, true));
    if (scalable) d.setPasidEntry(d.setScalableContext(SID), 0, { pgtt: 2, did: 7, aw: 2, slptptr: pt.root });
    else d.setLegacyContext(SID, { did: 7, aw: 2, slptptr: pt.root });
    const dma = unit.addEndpoint(SID);
    d.setPersistent(GCMD.TE, true);
    memory.writeU32(page, 0x600d);
    assert.equal(dma.readUint(0x10000, 4), 0x600d, `scalable=${scalable}`);
    pt.unmap(0x10000);
    assert.ok(d.submitAndWait([D.iotlbPage(7, 0x10000)]), "the wait status landed above 2 GiB");
    assert.equal(dma.readUint(0x10000, 4), -1, "no stale translation");
  }
});
