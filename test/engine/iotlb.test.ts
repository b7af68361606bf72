import assert from "node:assert/strict";
import { test } from "node:test";
import { PERM_READ, PERM_RW } from "../../src/engine/access.ts";
import { Iotlb } from "../../src/engine/iotlb.ts";
import { Translation } from "../../src/engine/translation.ts";

const K4 = 0x1000;
const M2 = 0x200000;
const G1 = 0x40000000;

test("hits return the block of the page size that was inserted", () => {
  const tlb = new Iotlb(16);
  const t = new Translation();
  tlb.insert(1, 0x5000, 0x9000, 12, PERM_READ);
  tlb.insert(1, 4 * M2, 8 * M2, 21, PERM_RW);
  tlb.insert(2, G1, 2 * G1, 30, PERM_RW);
  assert.equal(tlb.lookup(1, 0x5abc, t), true);
  assert.deepEqual([t.iovaBase, t.gpaBase, t.sizeBytes, t.perms], [0x5000, 0x9000, K4, PERM_READ]);
  assert.equal(tlb.lookup(1, 4 * M2 + 0x12345, t), true);
  assert.deepEqual([t.iovaBase, t.gpaBase, t.sizeBytes], [4 * M2, 8 * M2, M2]);
  assert.equal(tlb.lookup(2, G1 + 0x3fffffff, t), true);
  assert.equal(t.gpaBase, 2 * G1);
  assert.equal(tlb.lookup(2, 0x5abc, t), false, "tags separate address spaces");
  assert.equal(tlb.hits, 3);
  assert.equal(tlb.misses, 1);
});

test("misaligned inserts are refused", () => {
  const tlb = new Iotlb(4);
  assert.throws(() => tlb.insert(0, 0x1000, 0x0, 21, PERM_RW), /misaligned/);
});

test("capacity is bounded and evictions are counted", () => {
  const tlb = new Iotlb(8);
  for (let i = 0; i < 100; i++) tlb.insert(0, i * K4, i * K4, 12, PERM_RW);
  assert.equal(tlb.entries, 8);
  assert.equal(tlb.evictions, 92);
  const t = new Translation();
  let present = 0;
  for (let i = 0; i < 100; i++) if (tlb.lookup(0, i * K4, t)) present++;
  assert.equal(present, 8);
});

test("a range invalidation drops a 2 MiB entry that it only partly covers", () => {
  const tlb = new Iotlb(16);
  const t = new Translation();
  tlb.insert(3, M2, 0, 21, PERM_RW);
  const epoch = tlb.epoch;
  assert.equal(tlb.invalidateRange(3, M2 + 5 * K4, K4), 1);
  assert.ok(tlb.epoch > epoch);
  assert.equal(tlb.lookup(3, M2, t), false);
});

test("invalidation by space, by tag predicate, by page and of everything", () => {
  const tlb = new Iotlb(64);
  for (let tag = 0; tag < 4; tag++) for (let i = 0; i < 4; i++) tlb.insert(tag, i * K4, i * K4, 12, PERM_RW);
  assert.equal(tlb.invalidateSpace(1), 4);
  assert.equal(
    tlb.invalidateTags((tag) => tag >= 3),
    4,
  );
  assert.equal(tlb.invalidatePage(0, 2 * K4 + 7), 1);
  assert.equal(tlb.entries, 7);
  assert.equal(tlb.invalidateRange(null, 0, K4), 2, "a tag-less range hits every space");
  assert.equal(tlb.invalidateAll(), 5);
  assert.equal(tlb.entries, 0);
});

test("randomised: the IOTLB agrees with a reference map through inserts, evictions and invalidations", () => {
  const seed = 0x5eed1;
  let s = seed;
  const rnd = (n: number): number => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % n;
  };
  const tlb = new Iotlb(32);
  const ref = new Map<string, number>();
  const t = new Translation();
  for (let step = 0; step < 20000; step++) {
    const tag = rnd(3);
    const page = rnd(256);
    const op = rnd(10);
    if (op < 5) {
      tlb.insert(tag, page * K4, (page + 1000) * K4, 12, PERM_RW);
      ref.set(`${tag}:${page}`, (page + 1000) * K4);
    } else if (op < 7) {
      const sizeBytes = rnd(8) * K4 + 1;
      tlb.invalidateRange(tag, page * K4, sizeBytes);
      for (let p = page; p * K4 < page * K4 + sizeBytes; p++) ref.delete(`${tag}:${p}`);
      for (let p = page; p * K4 < page * K4 + sizeBytes; p++) {
        assert.equal(tlb.lookup(tag, p * K4, t), false, `stale entry tag ${tag} page ${p} (seed ${seed})`);
      }
    } else if (op === 7 && rnd(20) === 0) {
      tlb.invalidateSpace(tag);
      for (const key of [...ref.keys()]) if (key.startsWith(`${tag}:`)) ref.delete(key);
      assert.equal(tlb.entriesOf(tag), 0);
      for (let p = 0; p < 256; p++)
        assert.equal(tlb.lookup(tag, p * K4, t), false, `stale after space flush`);
    } else if (tlb.lookup(tag, page * K4 + rnd(K4), t)) {
      assert.equal(t.gpaBase, ref.get(`${tag}:${page}`), `wrong translation (seed ${seed})`);
    }
    assert.ok(tlb.entries <= 32);
    assert.equal(tlb.entriesOf(0) + tlb.entriesOf(1) + tlb.entriesOf(2), tlb.entries, "per-tag counts");
  }
});

test("fills are classified: cold, refilled after an invalidation (unchanged or changed), after an eviction", () => {
  const tlb = new Iotlb(64);
  const page = (n: number) => n * 0x1000;
  for (let n = 0; n < 4; n++) tlb.insert(1, page(n), page(100 + n), 12, PERM_RW);
  assert.equal(tlb.coldFills, 4);
  tlb.invalidateRange(1, page(0), 2 * 0x1000); // drops pages 0 and 1
  tlb.insert(1, page(0), page(100), 12, PERM_RW); // the same translation again
  tlb.insert(1, page(1), page(555), 12, PERM_RW); // remapped meanwhile
  assert.deepEqual([tlb.refillsUnchanged, tlb.refillsChanged], [1, 1]);
  tlb.invalidateSpace(1);
  tlb.insert(1, page(2), page(102), 12, PERM_READ); // same output, fewer permissions: changed
  assert.deepEqual([tlb.refillsUnchanged, tlb.refillsChanged], [1, 2]);
  const s = tlb.stats();
  assert.equal(s.coldFills + s.refillsUnchanged + s.refillsChanged + s.refillsAfterEviction, s.inserts);

  const small = new Iotlb(1);
  small.insert(1, page(0), page(100), 12, PERM_RW);
  small.insert(1, page(1), page(101), 12, PERM_RW); // evicts page 0
  assert.equal(small.evictions, 1);
  small.insert(1, page(0), page(100), 12, PERM_RW); // evicts page 1, refills page 0
  assert.deepEqual([small.coldFills, small.refillsAfterEviction], [2, 1]);
});
