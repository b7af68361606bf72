import assert from "node:assert/strict";
import { test } from "node:test";
import { PL011_INT_TX, Pl011 } from "../../src/devices/pl011.ts";

function uart() {
  const out: number[] = [];
  const levels: boolean[] = [];
  const u = new Pl011({ write: (b) => out.push(b), flush: () => {} }, (l) => levels.push(l));
  return { u, out, levels };
}

test("PL011 PrimeCell IDs (DDI 0183 3.3.14-3.3.18): PeriphID 0x00141011, CellID 0xB105F00D", () => {
  const { u } = uart();
  const ids = [0xfe0, 0xfe4, 0xfe8, 0xfec, 0xff0, 0xff4, 0xff8, 0xffc].map((o) => u.read(o, 4));
  assert.deepEqual(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
});

test("PL011 DR write transmits; FR reports TX FIFO empty, RX FIFO empty, not busy", () => {
  const { u, out } = uart();
  u.write(0x000, 2, 0x41);
  u.write(0x000, 4, 0x142); // bits above 7 are not data
  assert.deepEqual(out, [0x41, 0x42]);
  assert.equal(u.read(0x018, 2), (1 << 7) | (1 << 4));
  assert.equal(u.stats().bytesOut, 2);
});

test("PL011 interrupt: level = RIS & IMSC; TX raw status set by a write, cleared by ICR (3.3.13)", () => {
  const { u, levels } = uart();
  u.write(0x000, 2, 0x41);
  assert.equal(u.read(0x03c, 2) & PL011_INT_TX, PL011_INT_TX, "RIS.TX");
  assert.equal(u.read(0x040, 2), 0, "MIS masked");
  assert.deepEqual(levels, []);
  u.write(0x038, 2, PL011_INT_TX); // IMSC.TXIM
  assert.deepEqual(levels, [true]);
  assert.equal(u.read(0x040, 2), PL011_INT_TX);
  u.write(0x044, 2, PL011_INT_TX); // ICR
  assert.deepEqual(levels, [true, false]);
  assert.equal(u.read(0x03c, 2), 0);
});

test("PL011: misaligned and 8-byte accesses are ignored and counted; registers keep their widths", () => {
  const { u, out } = uart();
  u.write(0x001, 1, 0x41);
  u.write(0x000, 8, 0x41);
  assert.equal(u.read(0x002, 2), 0);
  assert.deepEqual(out, []);
  assert.equal(u.stats().badAccesses, 3);
  u.write(0x030, 4, 0xffff_ffff);
  assert.equal(u.read(0x030, 4), 0xffff);
  assert.equal(u.read(0x030, 4) & 0x300, 0x300);
});
