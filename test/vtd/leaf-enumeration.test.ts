/**
 * The leaf enumeration both VT-d paging formats share (src/vtd/paging.ts), used by caching-mode
 * replay: the leaves it reports, and its bounds against hostile tables, for each format. The
 * budget is spent before each entry is read, so an enumeration that runs out is always flagged
 * truncated, even when the entry it stopped at is not RAM.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { PERM_READ, PERM_RW } from "../../src/engine/access.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { type FirstStageRequest, FirstStageWalker } from "../../src/vtd/first-stage.ts";
import { SecondStageWalker } from "../../src/vtd/second-stage.ts";

const MiB = 1 << 20;
/** Beyond the 16 MiB of RAM but below the 39-bit host address width: not RAM, not reserved. */
const NOT_RAM = 0x4000_0000;

function memory(): GuestMemory {
  return GuestMemory.anonymous([{ gpa: 0, sizeBytes: 16 * MiB }]);
}

function entry(m: GuestMemory, table: number, index: number, lo: number, hi = 0): void {
  m.writeU32(table + index * 8, lo >>> 0);
  m.writeU32(table + index * 8 + 4, hi >>> 0);
}

const REPLAY: FirstStageRequest = {
  privileged: false,
  writeProtect: false,
  noExecute: false,
  updateAccessed: false,
};

interface Walker {
  readonly name: string;
  /** Entry bits of a present table pointer and of a present, writable, user leaf. */
  readonly table: number;
  readonly leaf: number;
  readonly make: (m: GuestMemory) => {
    forEachLeaf(root: number, levels: number, start: number, last: number, leaf: LeafFn): void;
    readonly enumeration: { entryBudget: number; truncated: boolean; reads: number };
  };
}
type LeafFn = (iova: number, gpa: number, sizeBytes: number, perms: number) => void;

const WALKERS: readonly Walker[] = [
  {
    name: "second stage",
    table: 0b11, // R, W
    leaf: 0b11,
    make: (m) =>
      new SecondStageWalker(m, { hawBits: 39, superpage2M: true, superpage1G: true, snoopControl: false }),
  },
  {
    name: "first stage",
    table: 0b111, // P, R/W, U/S
    leaf: 0b111,
    make: (m) => {
      const w = new FirstStageWalker(m, { hawBits: 39, superpage1G: true });
      return {
        enumeration: w.enumeration,
        forEachLeaf: (root, levels, start, last, leaf) =>
          w.forEachLeaf(root, levels, start, last, REPLAY, leaf),
      };
    },
  },
];

for (const f of WALKERS) {
  test(`${f.name} enumeration: reports each translating leaf once, in IOVA order, with its permissions`, () => {
    const m = memory();
    const [l4, l3, l2, l1] = [0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000];
    entry(m, l4, 0, l3 | f.table);
    entry(m, l3, 0, l2 | f.table);
    entry(m, l2, 0, l1 | f.table);
    entry(m, l1, 1, 0x20_0000 | f.leaf);
    entry(m, l1, 3, 0x30_0000 | (f.leaf & ~0b10)); // read-only
    entry(m, l1, 2, 0x40_0000); // not present: skipped
    const seen: number[][] = [];
    const w = f.make(m);
    w.forEachLeaf(l4, 4, 0, 2 ** 39 - 1, (iova, gpa, size, perms) => seen.push([iova, gpa, size, perms]));
    assert.deepEqual(seen, [
      [0x1000, 0x20_0000, 4096, PERM_RW],
      [0x3000, 0x30_0000, 4096, PERM_READ],
    ]);
    assert.equal(w.enumeration.truncated, false);
  });

  test(`${f.name} enumeration: a table that points at itself costs at most the entry budget`, () => {
    const m = memory();
    const t = 0x10_0000;
    // Every entry of the table points back at the table: 512^4 paths without a budget.
    for (let i = 0; i < 512; i++) entry(m, t, i, t | f.table);
    const w = f.make(m);
    w.enumeration.entryBudget = 1000;
    const before = w.enumeration.reads;
    let leaves = 0;
    w.forEachLeaf(t, 4, 0, 2 ** 39 - 1, () => leaves++);
    assert.equal(w.enumeration.truncated, true);
    assert.ok(w.enumeration.reads - before <= 1000, `read ${w.enumeration.reads - before} entries`);
    assert.ok(leaves <= 1000, `${leaves} leaves`);
  });

  test(`${f.name} enumeration: the budget is spent before an entry is read (truncated even at a non-RAM table)`, () => {
    const m = memory();
    const l4 = 0x10_0000;
    entry(m, l4, 0, NOT_RAM | f.table);
    const w = f.make(m);
    // One entry of budget: the root entry. The next entry, in a table that is not RAM, must not
    // be read, and the enumeration has stopped at its budget.
    w.enumeration.entryBudget = 1;
    w.forEachLeaf(l4, 4, 0, 4095, () => assert.fail("no leaf"));
    assert.equal(w.enumeration.truncated, true);
  });
}
