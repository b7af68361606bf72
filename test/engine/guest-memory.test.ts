import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory, GuestMemoryError } from "../../src/engine/guest-memory.ts";

const MiB = 1 << 20;

function twoRegions(): GuestMemory {
  return GuestMemory.anonymous([
    { gpa: 0, sizeBytes: 2 * MiB, name: "low" },
    { gpa: 4 * MiB, sizeBytes: 1 * MiB, name: "high" },
  ]);
}

test("little-endian scalar access round-trips in every region", () => {
  const mem = twoRegions();
  mem.writeU16(0x10, 0xbeef);
  mem.writeU32(4 * MiB + 8, 0x11223344);
  mem.writeU64(0x20, 0x0102030405060708n);
  assert.equal(mem.readU8(0x10), 0xef);
  assert.equal(mem.readU16(0x10), 0xbeef);
  assert.equal(mem.readU32(4 * MiB + 8), 0x11223344);
  assert.equal(mem.readU8(4 * MiB + 8), 0x44);
  assert.equal(mem.readU64(0x20), 0x0102030405060708n);
});

test("an access outside RAM throws GuestMemoryError naming the range", () => {
  const mem = twoRegions();
  assert.throws(() => mem.readU32(3 * MiB), GuestMemoryError);
  assert.throws(() => mem.readU32(2 * MiB - 2), /not inside guest RAM/);
  assert.throws(() => mem.view(4 * MiB + MiB - 4, 8), GuestMemoryError);
  assert.throws(() => mem.readU8(-1), GuestMemoryError);
});

test("an access spanning two regions is refused even when both sides are RAM", () => {
  const mem = GuestMemory.anonymous([
    { gpa: 0, sizeBytes: MiB },
    { gpa: MiB, sizeBytes: MiB },
  ]);
  assert.equal(mem.isRam(MiB - 2, 4), false);
  assert.equal(mem.contiguousBytesAt(MiB - 2), 2);
  assert.throws(() => mem.readU32(MiB - 2), GuestMemoryError);
});

test("views alias guest memory without copying", () => {
  const mem = twoRegions();
  const v = mem.view(0x1000, 16);
  v[3] = 0x5a;
  assert.equal(mem.readU8(0x1003), 0x5a);
  assert.equal(v.buffer, mem.regions[0].bytes.buffer);
});

test("overlapping or malformed regions are rejected at construction", () => {
  assert.throws(
    () =>
      GuestMemory.anonymous([
        { gpa: 0, sizeBytes: MiB },
        { gpa: MiB / 2, sizeBytes: MiB },
      ]),
    /overlap/,
  );
  assert.throws(() => new GuestMemory([{ gpa: 0, sizeBytes: 8, bytes: new Uint8Array(4) }]), /sizeBytes/);
  assert.throws(() => new GuestMemory([]), /at least one/);
});
