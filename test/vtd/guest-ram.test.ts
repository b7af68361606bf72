/**
 * The VT-d walkers' region table (src/vtd/guest-ram.ts) follows GuestMemory.generation: regions
 * that appear or go after the table was taken are seen on the next entry read.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory, type RamRegion } from "../../src/engine/guest-memory.ts";
import { GuestRam } from "../../src/vtd/guest-ram.ts";

/** Memory whose region list changes, bumping `generation` as the interface says. */
class ChangingMemory extends GuestMemory {
  private extra: RamRegion[] = [];
  override get regions(): readonly RamRegion[] {
    return [...super.regions, ...this.extra];
  }
  setExtra(regions: RamRegion[]): void {
    this.extra = regions;
    this.generation++;
  }
}

test("GuestRam rebuilds its region table when the memory's generation changes", () => {
  const m = new ChangingMemory([{ gpa: 0, sizeBytes: 0x10000, bytes: new Uint8Array(0x10000) }]);
  const ram = new GuestRam(m);
  assert.equal(ram.read64(0x100000), false, "not RAM yet");
  const bytes = new Uint8Array(0x1000);
  new DataView(bytes.buffer).setUint32(8, 0xdead_beef, true);
  m.setExtra([{ gpa: 0x100000, sizeBytes: 0x1000, bytes }]);
  assert.equal(ram.read64(0x100008), true, "a region added later is read");
  assert.equal(ram.lo, 0xdead_beef);
  m.setExtra([]);
  assert.equal(ram.read64(0x100008), false, "a region that went is no longer read");
  assert.equal(ram.read64(0x8), true, "the fixed region stays");
});

test("fixed RAM has generation 0 and never changes it", () => {
  const m = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 4096 }]);
  assert.equal(m.generation, 0);
  m.writeU32(0, 1);
  assert.equal(m.generation, 0);
});
