/**
 * The one guest-memory interface over pluggable backings (src/engine/memory-backing.ts): the
 * forms that return a fault instead of throwing, regions that come and go with `generation`,
 * and a backing without views (message-backed, as vfio-user's) served by the same accessors.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  GuestMemory,
  GuestMemoryError,
  type MemoryBacking,
  type RamRegion,
} from "../../src/engine/guest-memory.ts";
import { SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";

test("tryRead / tryWrite return the GuestMemoryError instead of throwing, and touch nothing", () => {
  const m = GuestMemory.anonymous([{ gpa: 0x1000, sizeBytes: 0x1000 }]);
  const dest = new Uint8Array(8).fill(0xaa);
  const e = m.tryRead(0x1ffc, dest);
  assert.ok(e instanceof GuestMemoryError, "crosses the end of RAM");
  assert.deepEqual([...dest], new Array(8).fill(0xaa));
  assert.ok(m.tryWrite(0x0, new Uint8Array(4).fill(1)) instanceof GuestMemoryError);
  assert.equal(m.tryWrite(0x1000, Uint8Array.of(1, 2, 3, 4)), null);
  assert.equal(m.tryRead(0x1000, dest.subarray(0, 4)), null);
  assert.deepEqual([...dest.subarray(0, 4)], [1, 2, 3, 4]);
});

test("read64 fills lo/hi without throwing; tryWriteU32 refuses outside RAM", () => {
  const m = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 0x1000 }]);
  m.writeU64(0x10, 0x1122_3344_5566_7788n);
  assert.equal(m.read64(0x10), true);
  assert.equal(m.lo, 0x5566_7788);
  assert.equal(m.hi, 0x1122_3344);
  assert.equal(m.read64(0xffc), false, "8 bytes across the end");
  assert.equal(m.read64(Number.NaN), false);
  assert.equal(m.lo, 0x5566_7788, "a failed read leaves the last result");
  assert.equal(m.tryWriteU32(0x1000, 1), false);
  assert.equal(m.tryWriteU32(0x20, 0xfeed_beef), true);
  assert.equal(m.readU32(0x20), 0xfeed_beef);
});

test("adding and removing regions changes the generation; overlaps and the last region are refused", () => {
  const m = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 0x1000 }]);
  const g0 = m.generation;
  const bytes = new Uint8Array(0x1000);
  m.addRegion({ gpa: 0x10_0000, sizeBytes: 0x1000, bytes, name: "hot" });
  assert.notEqual(m.generation, g0);
  assert.equal(m.isRam(0x10_0000, 0x1000), true);
  m.writeU32(0x10_0010, 7);
  assert.equal(bytes[0x10], 7, "the region's own bytes");
  assert.throws(
    () => m.addRegion({ gpa: 0x800, sizeBytes: 0x1000, bytes: new Uint8Array(0x1000) }),
    /overlap/,
  );
  const g1 = m.generation;
  assert.equal(m.removeRegion(0x10_0000), true);
  assert.notEqual(m.generation, g1);
  assert.equal(m.isRam(0x10_0000, 1), false);
  assert.equal(m.removeRegion(0x10_0000), false, "already gone");
  assert.equal(m.removeRegion(0), false, "guest memory keeps at least one region");
});

/** A backing that has no bytes to view: every access is a copy, like a message transport. */
class CopyOnlyBacking implements MemoryBacking {
  generation = 0;
  offset = 0;
  copies = 0;
  readonly store = new Uint8Array(0x100);
  readonly regions: readonly RamRegion[] = [];
  readonly totalBytes = 0x100;
  private inside(gpa: number, sizeBytes: number): boolean {
    return gpa >= 0x1000 && gpa + sizeBytes <= 0x1100;
  }
  locate(): DataView | null {
    return null;
  }
  isRam(gpa: number, sizeBytes: number): boolean {
    return this.inside(gpa, sizeBytes);
  }
  contiguousBytesAt(gpa: number): number {
    return this.inside(gpa, 1) ? 0x1100 - gpa : 0;
  }
  view(gpa: number, sizeBytes: number): Uint8Array | GuestMemoryError {
    return new GuestMemoryError(gpa, sizeBytes, "no bytes to view");
  }
  read(gpa: number, dest: Uint8Array): GuestMemoryError | null {
    if (!this.inside(gpa, dest.length)) return new GuestMemoryError(gpa, dest.length);
    this.copies++;
    dest.set(this.store.subarray(gpa - 0x1000, gpa - 0x1000 + dest.length));
    return null;
  }
  write(gpa: number, src: Uint8Array): GuestMemoryError | null {
    if (!this.inside(gpa, src.length)) return new GuestMemoryError(gpa, src.length);
    this.copies++;
    this.store.set(src, gpa - 0x1000);
    return null;
  }
  fill(gpa: number, sizeBytes: number, value: number): GuestMemoryError | null {
    return this.write(gpa, new Uint8Array(sizeBytes).fill(value));
  }
  describe(): string {
    return "copy-only";
  }
}

test("a backing without views serves every scalar accessor by copies, and faults the same way", () => {
  const backing = new CopyOnlyBacking();
  const m = new GuestMemory(backing);
  m.writeU64(0x1008, 0x0102_0304_0506_0708n);
  assert.equal(m.readU64(0x1008), 0x0102_0304_0506_0708n);
  m.writeU16(0x1020, 0xbeef);
  assert.equal(m.readU16(0x1020), 0xbeef);
  m.writeU8(0x1022, 0x5a);
  assert.equal(m.readU8(0x1022), 0x5a);
  assert.equal(m.readU32(0x1008), 0x0506_0708);
  assert.equal(m.read64(0x1008), true);
  assert.equal(m.hi, 0x0102_0304);
  assert.ok(backing.copies >= 8, "every access went through the backing's copies");
  assert.throws(() => m.readU32(0x10fe), GuestMemoryError);
  assert.throws(() => m.view(0x1000, 4), /no bytes to view/);
  assert.equal(m.read64(0x10fc), false);
  assert.equal(m.tryWriteU32(0x2000, 1), false);
  assert.throws(() => m.addRegion({ gpa: 0, sizeBytes: 1, bytes: new Uint8Array(1) }), /backing/);
});

test("SharedGuestMemory is GuestMemory over the vfio-user backing: it overrides no accessor", () => {
  const own = Object.getOwnPropertyNames(SharedGuestMemory.prototype);
  for (const name of Object.getOwnPropertyNames(GuestMemory.prototype)) {
    if (name === "constructor") continue;
    assert.ok(!own.includes(name), `SharedGuestMemory overrides ${name}`);
  }
});
