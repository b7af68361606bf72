/**
 * The VT-d walkers read entries through GuestMemory's `read64` (src/vtd/second-stage.ts,
 * first-stage.ts, paging.ts): it follows the memory's regions as they change (`generation`),
 * and a walk over a second stage sees a region added after the unit was built.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { SecondStageWalker, WALK, WalkOut } from "../../src/vtd/second-stage.ts";

test("entry reads follow the memory's regions when its generation changes", () => {
  const m = new GuestMemory([{ gpa: 0, sizeBytes: 0x10000, bytes: new Uint8Array(0x10000) }]);
  const ram = m;
  assert.equal(ram.read64(0x100000), false, "not RAM yet");
  const bytes = new Uint8Array(0x1000);
  new DataView(bytes.buffer).setUint32(8, 0xdead_beef, true);
  const before = m.generation;
  m.addRegion({ gpa: 0x100000, sizeBytes: 0x1000, bytes });
  assert.ok(m.generation !== before, "adding a region changes the generation");
  assert.equal(ram.read64(0x100008), true, "a region added later is read");
  assert.equal(ram.lo, 0xdead_beef);
  const added = m.generation;
  assert.ok(m.removeRegion(0x100000));
  assert.ok(m.generation !== added, "removing a region changes the generation");
  assert.equal(ram.read64(0x100008), false, "a region that went is no longer read");
  assert.equal(ram.read64(0x8), true, "the fixed region stays");
});

test("fixed RAM has generation 0 and never changes it", () => {
  const m = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 4096 }]);
  assert.equal(m.generation, 0);
  m.writeU32(0, 1);
  assert.equal(m.generation, 0);
});

test("a second-stage walk reaches tables in a region added after the walker was built", () => {
  const m = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 0x10000 }]);
  const walker = new SecondStageWalker(m, {
    hawBits: 48,
    superpage2M: true,
    superpage1G: true,
    snoopControl: false,
  });
  const out = new WalkOut();
  // A 3-level table whose root is at 0x20_0000: not RAM yet.
  const root = 0x20_0000;
  assert.equal(walker.walk(root, 3, 0x5000, 1, out), WALK.ROOT_INVALID);
  const bytes = new Uint8Array(0x3000);
  m.addRegion({ gpa: root, sizeBytes: bytes.length, bytes });
  m.writeU64(root, BigInt(root + 0x1000) | 3n);
  m.writeU64(root + 0x1000, BigInt(root + 0x2000) | 3n);
  m.writeU64(root + 0x2000 + 5 * 8, 0x8000n | 3n);
  assert.equal(walker.walk(root, 3, 0x5123, 1, out), WALK.OK);
  assert.equal(out.gpaBase, 0x8000);
});
