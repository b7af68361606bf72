/** Nested translation (PGTT=011, VT-d 3.8): first stage over second stage, and its faults. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FR } from "../../src/vtd/fault-reasons.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { decodeFrcd, frcd, PageTable, rig } from "./guest.ts";

const SID = 0x0050;

/**
 * Second stage: identity over [32 MiB, 64 MiB) with 2 MiB pages (where the first-stage tables
 * live) and gpa 0x100000 -> 0x500000. First stage: iova 0x7000 -> gpa 0x100000.
 */
function nested(ssAw = 2) {
  const r = rig({ config: "scalable-mode=on,nested=on" });
  r.driver.enableQueuedInvalidation(true);
  r.driver.setRootTable(true);
  const ss = new PageTable(r.memory, r.alloc, ssAw === 1 ? 3 : 4);
  for (let g = 32 << 20; g < 64 << 20; g += 2 << 20) ss.map(g, g, 2, 3n);
  ss.map(0x100000, 0x500000, 1, 3n);
  const fs = new PageTable(r.memory, r.alloc, 4, true);
  const leaf = fs.map(0x7000, 0x100000, 1, 7n);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 3, did: 4, aw: ssAw, slptptr: ss.root, flptptr: fs.root });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  return { ...r, ss, fs, leaf, dma };
}

function expectFault(r: ReturnType<typeof nested>, iova: number, write: boolean, reason: number) {
  if (write) r.dma.writeUint(iova, 4, 1);
  else r.dma.readUint(iova, 4);
  const f = r.dma.lastFault;
  assert.equal(f?.code, reason);
  assert.equal(decodeFrcd(frcd(r.unit, 0)).reason, reason);
}

test("ECAP.NEST is reported with nested=on, which needs scalable-mode", () => {
  const r = nested();
  assert.equal((r.unit.readWide(REG.ECAP) >> 26n) & 1n, 1n);
  assert.throws(() => rig({ config: "nested=on" }), /nested=on requires scalable-mode=on/);
});

test("nested: iova -> (first stage) gpa -> (second stage) host address, A/D set through both", () => {
  const r = nested();
  r.memory.writeU32(0x500010, 0xfeed);
  assert.equal(r.dma.readUint(0x7010, 4), 0xfeed);
  assert.equal(r.dma.writeUint(0x7020, 4, 0xbeef), null);
  assert.equal(r.memory.readU32(0x500020), 0xbeef);
  assert.equal(r.memory.readU64(r.leaf) & 0x60n, 0x60n);
});

test("nested without ECAP.NEST is an invalid PASID entry (0x5B)", () => {
  const r = rig({ config: "scalable-mode=on" });
  r.driver.setRootTable(true);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 3, did: 4, slptptr: r.alloc.page(), flptptr: r.alloc.page() });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  dma.readUint(0, 4);
  assert.equal(dma.lastFault?.code, FR.SM_PASID_ENTRY_INVALID);
});

test("fault 0x74: first-stage output beyond the second stage's address width", () => {
  const r = nested(1);
  r.fs.map(0x8000, 2 ** 40, 1, 7n);
  expectFault(r, 0x8000, false, FR.SM_NESTED_ADDRESS_BEYOND_AW);
});

test("fault 0x75: the second stage denies reading the first-stage root table", () => {
  const r = nested();
  r.ss.map(r.fs.root - (r.fs.root % (2 << 20)), r.fs.root - (r.fs.root % (2 << 20)), 2, 2n);
  expectFault(r, 0x7000, false, FR.SM_NESTED_FS_ROOT_READ_DENIED);
});

test("fault 0x76: the second stage denies reading a lower first-stage table", () => {
  const r = nested();
  // Give the PML4 its own readable 4 KiB mapping, then make the rest of its 2 MiB block write-only.
  const block = r.fs.root - (r.fs.root % (2 << 20));
  r.memory.writeU64(r.ss.entry(block, 2), 0n);
  for (let p = block; p < block + (2 << 20); p += 4096) r.ss.map(p, p, 1, p === r.fs.root ? 3n : 2n);
  expectFault(r, 0x7000, false, FR.SM_NESTED_FS_READ_DENIED);
});

test("fault 0x77: setting Accessed needs second-stage write access to the table", () => {
  const r = nested();
  const block = r.fs.root - (r.fs.root % (2 << 20));
  r.ss.map(block, block, 2, 1n);
  expectFault(r, 0x7000, false, FR.SM_NESTED_FS_WRITE_DENIED);
});

test("fault 0x86 / 0x85: the second stage denies the final access", () => {
  const r = nested();
  r.ss.map(0x100000, 0x500000, 1, 2n);
  expectFault(r, 0x7000, false, FR.SM_READ_DENIED);
  const w = nested();
  w.ss.map(0x100000, 0x500000, 1, 1n);
  expectFault(w, 0x7000, true, FR.SM_WRITE_DENIED);
});

test("fault 0x79: the first-stage output has no second-stage mapping", () => {
  const r = nested();
  r.fs.map(0x9000, 0x180000, 1, 7n);
  expectFault(r, 0x9000, false, FR.SM_SS_NOT_PRESENT);
});

test("fault 0x80: a nested first stage takes canonical (4-level) input addresses only", () => {
  const r = nested();
  expectFault(r, 2 ** 47, false, FR.SM_NON_CANONICAL);
});
