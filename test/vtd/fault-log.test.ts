/** Primary fault logging and the fault event (VT-d 7.3, 11.4.7, 11.4.8). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import type { FaultInfo } from "../../src/vtd/faults.ts";
import { ECTL, FSTS, REG } from "../../src/vtd/registers.ts";
import { decodeFrcd, frcd, rig } from "./guest.ts";

function fault(sid: number, page: number): FaultInfo {
  return {
    sourceId: sid,
    reason: 6,
    address: BigInt(page) * 4096n,
    write: false,
    pasid: -1,
    privileged: false,
    addressType: 0,
  };
}

function setup() {
  const sink = new RecordingInterruptSink();
  const r = rig({ interrupts: sink });
  r.driver.w32(REG.FEDATA, 0x50);
  r.driver.w32(REG.FEADDR, 0xfee00000);
  r.driver.w32(REG.FECTL, 0); // unmask, as a driver does (IM is set at reset)
  return { ...r, sink };
}

test("records fill FRCDs in circular order; FRI names the first pending record", () => {
  const { unit: u, driver: d } = setup();
  u.faults.record(fault(1, 1));
  u.faults.record(fault(2, 2));
  assert.equal((d.r32(REG.FSTS) >> 8) & 0xff, 0);
  assert.equal(decodeFrcd(frcd(u, 1)).sid, 2);
  // Service both; the next fault lands in record 2 and FRI follows it.
  d.w32(REG.FRCD + 12, 0x80000000);
  d.w32(REG.FRCD + 16 + 12, 0x80000000);
  assert.equal(d.r32(REG.FSTS) & FSTS.PPF, 0);
  u.faults.record(fault(3, 3));
  assert.equal((d.r32(REG.FSTS) >> 8) & 0xff, 2);
  assert.equal(decodeFrcd(frcd(u, 2)).sid, 3);
});

test("a fault arriving at a record whose F is still set sets PFO and is dropped", () => {
  const { unit: u, driver: d } = setup();
  for (let i = 0; i < 4; i++) assert.equal(u.faults.record(fault(i, i)), true);
  assert.equal(u.faults.record(fault(9, 9)), false);
  assert.ok(d.r32(REG.FSTS) & FSTS.PFO);
  assert.equal(decodeFrcd(frcd(u, 0)).sid, 0);
  assert.equal(u.stats().faults.droppedOverflow, 1);
});

test("while PFO is set no new fault is recorded, even into a free record", () => {
  const { unit: u, driver: d } = setup();
  for (let i = 0; i < 5; i++) u.faults.record(fault(i, i));
  d.w32(REG.FRCD + 12, 0x80000000); // free record 0
  assert.equal(u.faults.record(fault(7, 7)), false);
  d.w32(REG.FSTS, FSTS.PFO);
  assert.equal(u.faults.record(fault(7, 7)), true);
  assert.equal(decodeFrcd(frcd(u, 0)).sid, 7);
});

test("the first fault raises the fault event; later ones while status is pending do not", () => {
  const { unit: u, sink } = setup();
  u.faults.record(fault(1, 1));
  u.faults.record(fault(2, 2));
  assert.equal(sink.msis.length, 1);
  assert.equal(sink.msis[0].message.data, 0x50);
  assert.equal(sink.msis[0].message.address, 0xfee00000);
});

test("FECTL.IM holds the event pending in IP; unmasking sends it and clears IP", () => {
  const { unit: u, driver: d, sink } = setup();
  d.w32(REG.FECTL, ECTL.IM);
  u.faults.record(fault(1, 1));
  assert.equal(sink.msis.length, 0);
  assert.equal(d.r32(REG.FECTL) >>> 0, (ECTL.IM | ECTL.IP) >>> 0);
  d.w32(REG.FECTL, 0);
  assert.equal(sink.msis.length, 1);
  assert.equal(d.r32(REG.FECTL), 0);
});

test("servicing every status field while masked clears IP without an event", () => {
  const { unit: u, driver: d, sink } = setup();
  d.w32(REG.FECTL, ECTL.IM);
  u.faults.record(fault(1, 1));
  d.w32(REG.FRCD + 12, 0x80000000);
  assert.equal(d.r32(REG.FECTL) & ECTL.IP, 0);
  d.w32(REG.FECTL, 0);
  assert.equal(sink.msis.length, 0);
});

test("after software services all faults, the next fault raises a new event", () => {
  const { unit: u, driver: d, sink } = setup();
  u.faults.record(fault(1, 1));
  d.w32(REG.FRCD + 12, 0x80000000);
  u.faults.record(fault(2, 2));
  assert.equal(sink.msis.length, 2);
});

test("an IQE raised while PPF is pending is not a new interrupt condition", () => {
  const { unit: u, sink } = setup();
  u.faults.record(fault(1, 1));
  u.faults.setStatus(FSTS.IQE);
  assert.equal(sink.msis.length, 1);
});
