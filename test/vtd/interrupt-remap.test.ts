/** Interrupt remapping (VT-d 5.1, 9.10) and its faults 0x20-0x26 with the recorded FRCD. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FR } from "../../src/vtd/fault-reasons.ts";
import { ioapicRemappableRequest } from "../../src/vtd/interrupt-remap.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { D, decodeFrcd, frcd, rig } from "./guest.ts";

const SID = 0x0108; // 01:01.0
const IOAPIC_SID = 0xff00;

function setup(config = "intremap=on", sizeField = 7) {
  const r = rig({ config });
  const d = r.driver;
  d.enableQueuedInvalidation();
  const irt = r.alloc.page(2);
  d.w64(REG.IRTA, BigInt(irt) | BigInt(sizeField) | (config.includes("eim=on") ? 0x800n : 0n));
  d.oneShot(GCMD.SIRTP);
  assert.ok(d.submitAndWait([D.iecGlobal()]));
  d.setPersistent(GCMD.IRE, true);
  const irte = (i: number, lo: bigint, hi = 0n) => {
    r.memory.writeU64(irt + 16 * i, lo);
    r.memory.writeU64(irt + 16 * i + 8, hi);
  };
  return { ...r, irt, irte };
}

const remappable = (handle: number, shv = false) =>
  (0xfee00000 | ((handle & 0x7fff) << 5) | 0x10 | (shv ? 8 : 0) | ((handle >> 15) << 2)) >>> 0;

function expectFault(
  r: ReturnType<typeof setup>,
  res: ReturnType<typeof r.unit.remap>,
  reason: number,
  handle: number,
  sid = SID,
) {
  assert.equal(res.ok, false);
  if (!res.ok) assert.equal(res.reason, reason);
  const rec = decodeFrcd(frcd(r.unit, 0));
  assert.equal(rec.reason, reason);
  assert.equal(rec.sid, sid);
  assert.equal(rec.address >> 48n, BigInt(handle), "fault info carries the interrupt index in 63:48");
  assert.equal(rec.read, false, "interrupt requests are writes");
}

test("remappable MSI: IRTE fields produce vector, destination, trigger and delivery mode", () => {
  const r = setup();
  // Level-triggered, logical destination, lowest priority (DLM 1), vector 0x99, destination 0x0f.
  r.irte(9, 1n | 4n | 0x10n | (1n << 5n) | (0x99n << 16n) | (0x0fn << 40n));
  const res = r.unit.remap(SID, remappable(9), 0);
  assert.ok(res.ok && res.interrupt);
  if (res.ok && res.interrupt) {
    assert.equal(res.interrupt.vector, 0x99);
    assert.equal(res.interrupt.destination, 0x0f);
    assert.ok(res.interrupt.destinationLogical && res.interrupt.levelTriggered);
    assert.equal(res.interrupt.deliveryMode, 1);
    assert.equal(res.message.address, 0xfee0f004);
    assert.equal(res.message.data, 0x99 | (1 << 8) | (1 << 15) | (1 << 14));
  }
});

test("SHV: the data's subhandle is added to the handle (5.1.2.2)", () => {
  const r = setup();
  r.irte(12, 1n | (0x44n << 16n));
  const res = r.unit.remap(SID, remappable(10, true), 2);
  assert.ok(res.ok && res.interrupt?.vector === 0x44);
});

test("handle bit 15 comes from address bit 2", () => {
  const r = setup("intremap=on", 15);
  r.irte(0x8000 + 1, 1n | (0x21n << 16n));
  const res = r.unit.remap(SID, remappable(0x8001), 0);
  assert.ok(res.ok && res.interrupt?.vector === 0x21);
});

test("fault 0x20: SHV with data bits 31:16 set", () => {
  const r = setup();
  expectFault(r, r.unit.remap(SID, remappable(3, true), 0x10000), FR.IR_REQUEST_RESERVED, 3);
});

test("fault 0x21: handle beyond the table size 2^(S+1)", () => {
  const r = setup("intremap=on", 3); // 16 entries
  expectFault(r, r.unit.remap(SID, remappable(16), 0), FR.IR_INDEX_OVER_LIMIT, 16);
});

test("fault 0x22: IRTE not present", () => {
  const r = setup();
  expectFault(r, r.unit.remap(SID, remappable(4), 0), FR.IR_NOT_PRESENT, 4);
});

test("fault 0x22 is not recorded when the IRTE's FPD is set", () => {
  const r = setup();
  r.irte(4, 2n);
  const res = r.unit.remap(SID, remappable(4), 0);
  assert.equal(res.ok, false);
  assert.equal(r.unit.read(REG.FSTS, 4), 0);
});

test("fault 0x23: interrupt remapping table outside RAM", () => {
  const r = setup();
  r.driver.w64(REG.IRTA, 0x10000000n | 7n);
  r.driver.oneShot(GCMD.SIRTP);
  expectFault(r, r.unit.remap(SID, remappable(1), 0), FR.IR_TABLE_ACCESS, 1);
});

test("fault 0x24: IRTE reserved bits (xAPIC destination bits 39:32, SVT=3, posted mode)", () => {
  for (const [lo, hi] of [
    [1n | (1n << 32n), 0n],
    [1n, 3n << 18n],
    [1n | (1n << 15n), 0n],
    [1n | (1n << 12n), 0n],
  ] as const) {
    const r = setup();
    r.irte(6, lo, hi);
    expectFault(r, r.unit.remap(SID, remappable(6), 0), FR.IR_ENTRY_RESERVED, 6);
  }
});

test("fault 0x25: compatibility-format interrupt blocked while CFI is off", () => {
  const r = setup();
  expectFault(r, r.unit.remap(SID, 0xfee01000, 0x30), FR.IR_COMPAT_BLOCKED, 0);
});

test("compatibility-format interrupt passes unchanged with GCMD.CFI set", () => {
  const r = setup();
  r.driver.setPersistent(GCMD.CFI, true);
  const res = r.unit.remap(SID, 0xfee01000, 0x30);
  assert.ok(res.ok && !res.remapped && res.message.address === 0xfee01000 && res.message.data === 0x30);
});

test("compatibility format is blocked in x2APIC mode (EIME) even with CFI", () => {
  const r = setup("intremap=on,eim=on");
  r.driver.setPersistent(GCMD.CFI, true);
  expectFault(r, r.unit.remap(SID, 0xfee01000, 0x30), FR.IR_COMPAT_BLOCKED, 0);
});

test("fault 0x26: SVT=1 SQ=0 requester id mismatch", () => {
  const r = setup();
  r.irte(7, 1n | (0x50n << 16n), BigInt(SID) | (1n << 18n));
  expectFault(r, r.unit.remap(SID + 1, remappable(7), 0), FR.IR_SOURCE_ID, 7, SID + 1);
});

test("SVT=1 SQ=3 ignores function bits 2:0", () => {
  const r = setup();
  r.irte(7, 1n | (0x50n << 16n), BigInt(SID) | (3n << 16n) | (1n << 18n));
  assert.ok(r.unit.remap(SID | 7, remappable(7), 0).ok);
});

test("SVT=2 checks the requester bus against the SID bus range", () => {
  const r = setup();
  r.irte(8, 1n | (0x51n << 16n), (2n << 8n) | 4n | (2n << 18n));
  assert.ok(r.unit.remap(0x0300, remappable(8), 0).ok);
  expectFault(r, r.unit.remap(0x0500, remappable(8), 0), FR.IR_SOURCE_ID, 8, 0x0500);
});

test("EIM: 32-bit x2APIC destinations, extended id bits carried in the message address", () => {
  const r = setup("intremap=on,eim=on");
  r.irte(2, 1n | (0x60n << 16n) | (0x1234n << 32n));
  const res = r.unit.remap(SID, remappable(2), 0);
  assert.ok(res.ok && res.interrupt);
  if (res.ok && res.interrupt) {
    assert.equal(res.interrupt.destination, 0x1234);
    assert.equal(res.message.address, 0x12 * 2 ** 40 + 0xfee34000);
  }
});

test("the IOAPIC path remaps with the IOAPIC's source id", () => {
  const r = setup();
  r.irte(1, 1n | (0x30n << 16n), BigInt(IOAPIC_SID) | (1n << 18n));
  assert.ok(r.unit.remap(IOAPIC_SID, remappable(1), 0).ok);
});

test("with IRE clear interrupts pass through untouched", () => {
  const r = setup();
  r.driver.setPersistent(GCMD.IRE, false);
  const res = r.unit.remap(SID, remappable(1), 5);
  assert.ok(res.ok && !res.remapped && res.message.data === 5);
});

test("SIRTP empties the interrupt entry cache", () => {
  const r = setup();
  r.irte(1, 1n | (0x30n << 16n));
  r.unit.remap(SID, remappable(1), 0);
  assert.equal(r.unit.stats().interruptEntryCache.entries, 1);
  r.driver.oneShot(GCMD.SIRTP);
  assert.equal(r.unit.stats().interruptEntryCache.entries, 0);
});

test("an I/O APIC RTE in remappable format becomes a request remapped with the IOAPIC source id", () => {
  const r = setup("intremap=on", 15);
  r.irte(0x8003, 1n | (0x3an << 16n), BigInt(IOAPIC_SID) | (1n << 18n));
  // RTE: vector 0x3a, Interrupt_Index[15] in bit 11, format bit 48, Interrupt_Index[14:0] in 63:49.
  const rteLo = 0x3a | (1 << 11);
  const rteHi = (1 << 16) | (3 << 17);
  const req = ioapicRemappableRequest(rteLo, rteHi);
  assert.ok(req !== null);
  const res = r.unit.remap(IOAPIC_SID, req.address, req.data);
  assert.ok(res.ok && res.interrupt?.vector === 0x3a);
  assert.equal(ioapicRemappableRequest(0x3a, 0), null);
});
