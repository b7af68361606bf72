/** Scalable-mode translation: PASID tables, first stage (A/D), pass-through, 5-level paging. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GCMD } from "../../src/vtd/registers.ts";
import { D, PageTable, rig } from "./guest.ts";

const SID = 0x0040;

function scalable(config = "scalable-mode=on,pasid=on") {
  const r = rig({ config });
  r.driver.enableQueuedInvalidation(true);
  r.driver.setRootTable(true);
  return r;
}

test("first-stage translation sets Accessed on every level and Dirty on a written leaf (VT-d 3.6.2)", () => {
  const r = scalable();
  const fs = new PageTable(r.memory, r.alloc, 4, true);
  const leaf = fs.map(0x7000, 0x180000, 1, 7n);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 1, did: 3, flptptr: fs.root });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  r.memory.writeU32(0x180010, 42);
  assert.equal(dma.readUint(0x7010, 4), 42);
  assert.equal(r.memory.readU64(leaf) & 0x60n, 0x20n, "A set, D clear after a read");
  assert.equal(r.memory.readU64(fs.root) & 0x20n, 0x20n, "A set on the PML4E");
  assert.equal(dma.writeUint(0x7010, 4, 43), null);
  assert.equal(r.memory.readU64(leaf) & 0x60n, 0x60n, "D set by the write");
  assert.equal(r.memory.readU32(0x180010), 43);
});

test("supervisor requests with PASID: SRE needed; WPE decides writes to read-only pages", () => {
  // SRE is reserved without ECAP.SRS, so supervisor requests fault with 0x5D.
  const r = scalable();
  const fs = new PageTable(r.memory, r.alloc, 4, true);
  fs.map(0x7000, 0x180000, 1, 5n);
  const dir = r.driver.setScalableContext(SID, { paside: true });
  r.driver.setPasidEntry(dir, 33, { pgtt: 1, did: 3, flptptr: fs.root });
  r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  const user = r.unit.pasidAddressSpace(SID, 33);
  assert.equal(user.readUint(0x7000, 4), 0);
  assert.equal(user.writeUint(0x7000, 4, 1)?.code, 0x85);
  const sup = r.unit.pasidAddressSpace(SID, 33, true);
  assert.equal(sup.readUint(0x7000, 4), -1);
  assert.equal(sup.lastFault?.code, 0x5d);
});

test("requests with PASID use their own PASID entry and IOTLB tag", () => {
  const r = scalable();
  const ss0 = new PageTable(r.memory, r.alloc, 4);
  const ss5 = new PageTable(r.memory, r.alloc, 4);
  ss0.map(0x1000, 0x100000, 1, 3n);
  ss5.map(0x1000, 0x200000, 1, 3n);
  r.memory.writeU32(0x100000, 0xa0);
  r.memory.writeU32(0x200000, 0xa5);
  const dir = r.driver.setScalableContext(SID, { paside: true });
  r.driver.setPasidEntry(dir, 0, { pgtt: 2, did: 3, slptptr: ss0.root });
  r.driver.setPasidEntry(dir, 5, { pgtt: 2, did: 3, slptptr: ss5.root });
  const dma = r.unit.addEndpoint(SID);
  const p5 = r.unit.pasidAddressSpace(SID, 5);
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(0x1000, 4), 0xa0);
  assert.equal(p5.readUint(0x1000, 4), 0xa5);
});

test("PGTT pass-through maps iova to the same gpa, except the interrupt window", () => {
  const r = scalable("scalable-mode=on,pt=on");
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 4, did: 1 });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  r.memory.writeU32(0x345678, 7);
  assert.equal(dma.readUint(0x345678, 4), 7);
  assert.equal(dma.readUint(0xfee00000, 4), -1);
  assert.equal(dma.lastFault?.code, 0x87);
});

test("legacy pass-through context (TT=10) maps iova to the same gpa", () => {
  const r = rig({ config: "pt=on" });
  r.driver.setRootTable(false);
  r.driver.setLegacyContext(SID, { did: 1, tt: 2, slptptr: 0 });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  r.memory.writeU32(0x222220, 9);
  assert.equal(dma.readUint(0x222220, 4), 9);
});

test("5-level second stage (aw-bits=57) translates an IOVA above 2^48", () => {
  const r = scalable("scalable-mode=on,aw-bits=57");
  const ss = new PageTable(r.memory, r.alloc, 5);
  const iova = 2 ** 50 + 0x3000;
  ss.map(iova, 0x300000, 1, 3n);
  r.memory.writeU32(0x300000, 5);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 2, did: 2, aw: 3, slptptr: ss.root });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(iova, 4), 5);
});

test("5-level first stage (FLPM=01) translates an IOVA above 2^47", () => {
  const r = scalable("scalable-mode=on,aw-bits=57");
  const fs = new PageTable(r.memory, r.alloc, 5, true);
  const iova = 2 ** 52 + 0x5000;
  fs.map(iova, 0x300000, 1, 7n);
  r.memory.writeU32(0x300000, 6);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 1, did: 2, flpm: 1, flptptr: fs.root });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(iova, 4), 6);
});

test("FLPM=01 (5-level) on a 48-bit unit is an invalid PASID entry (0x5B)", () => {
  const r = scalable();
  const fs = new PageTable(r.memory, r.alloc, 5, true);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 1, did: 2, flpm: 1, flptptr: fs.root });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(0, 4), -1);
  assert.equal(dma.lastFault?.code, 0x5b);
});

test("1 GiB second-stage leaf and 2 MiB first-stage leaf", () => {
  const r = scalable();
  const ss = new PageTable(r.memory, r.alloc, 4);
  ss.map(0x40000000, 0, 3, 3n);
  const fs = new PageTable(r.memory, r.alloc, 4, true);
  fs.map(0x600000, 0x200000, 2, 7n);
  const dir = r.driver.setScalableContext(SID, { paside: true });
  r.driver.setPasidEntry(dir, 0, { pgtt: 2, did: 2, slptptr: ss.root });
  r.driver.setPasidEntry(dir, 1, { pgtt: 1, did: 2, flptptr: fs.root });
  const dma = r.unit.addEndpoint(SID);
  const p1 = r.unit.pasidAddressSpace(SID, 1);
  r.driver.setPersistent(GCMD.TE, true);
  r.memory.writeU32(0x3ffff00, 11);
  assert.equal(dma.readUint(0x40000000 + 0x3ffff00, 4), 11);
  r.memory.writeU32(0x2fff00, 12);
  assert.equal(p1.readUint(0x600000 + 0xfff00, 4), 12);
});

test("translation disabled (TE clear): DMA is untranslated", () => {
  const r = scalable();
  const dma = r.unit.addEndpoint(SID);
  r.memory.writeU32(0x1234, 3);
  assert.equal(dma.readUint(0x1234, 4), 3);
  assert.ok(r.driver.submitAndWait([D.iotlbGlobal()]));
});

test("a flood of PASIDs cannot grow the target cache without bound", () => {
  const r = rig({ config: "scalable-mode=on,pasid=on", targetCacheCapacity: 16 });
  r.driver.enableQueuedInvalidation(true);
  r.driver.setRootTable(true);
  const ss = new PageTable(r.memory, r.alloc, 4);
  ss.map(0x1000, 0x100000, 1, 3n);
  r.memory.writeU32(0x100000, 9);
  const dir = r.driver.setScalableContext(SID, { paside: true, pdts: 7 });
  for (let pasid = 0; pasid < 64; pasid++)
    r.driver.setPasidEntry(dir, pasid, { pgtt: 2, did: 5, slptptr: ss.root });
  r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  const spaces = Array.from({ length: 64 }, (_, p) => r.unit.pasidAddressSpace(SID, p));
  for (const s of spaces) assert.equal(s.readUint(0x1000, 4), 9);
  const st = r.unit.stats().contextCache;
  assert.ok(st.entries <= 16);
  assert.ok(st.overflows >= 3);
  // Nothing stale after the overflows: a remap plus its invalidation is seen by every PASID.
  ss.map(0x1000, 0x200000, 1, 3n);
  r.memory.writeU32(0x200000, 10);
  assert.ok(r.driver.submitAndWait([D.iotlbDomain(5)]));
  for (const s of spaces) assert.equal(s.readUint(0x1000, 4), 10);
});

test("pass-through for a request with PASID: an output in the interrupt window faults 0x87", () => {
  const r = scalable("scalable-mode=on,pasid=on,pt=on");
  const dir = r.driver.setScalableContext(SID, { paside: true });
  r.driver.setPasidEntry(dir, 9, { pgtt: 4, did: 1 });
  r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  const p9 = r.unit.pasidAddressSpace(SID, 9);
  assert.equal(p9.readUint(0xfee00010, 4), -1);
  assert.equal(p9.lastFault?.code, 0x87);
});
