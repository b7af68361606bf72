/**
 * What the VT-d second-stage and first-stage paging formats share: the entry address field,
 * the bytes an entry maps per level, and the leaf enumeration used by caching-mode replay, with
 * the format (which entries map nothing, how permissions accumulate down the walk, what a
 * leaf allows) as data (`LeafFormat`).
 *
 * One order for both formats: each entry's budget is spent before the entry is read. A hostile
 * table (every entry pointing at the same table, or at memory that is not RAM) then costs at
 * most `entryBudget` reads, and an enumeration that runs out is always flagged `truncated`,
 * whatever the next entry holds. (The walkers used to differ: the first stage read first.)
 */
import type { GuestMemory } from "../engine/guest-memory.ts";

const TWO32 = 0x1_0000_0000;

/** The address in a paging entry (VT-d 9.7, 9.8): bits 51:12, high dword bits 19:0. */
export function entryAddress(lo: number, hi: number): number {
  return (hi & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
}

/**
 * Bytes one entry maps at each level (index = level): a table, since `2 ** n` with a variable
 * exponent is a slow generic power in V8 and sits on the walk path.
 */
export const LEVEL_BYTES: readonly number[] = [0, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39, 2 ** 48];

/** Bounds of one leaf enumeration (caching-mode replay): entries read and leaves reported. */
export const ENUMERATION_ENTRY_BUDGET = 1 << 22;
export const ENUMERATION_LEAF_BUDGET = 1 << 17;

/**
 * The bounds of one leaf enumeration and what enumerations have cost so far. A guest can point
 * every entry of a level at the same table (512^4 leaves), so each enumeration may read at most
 * `entryBudget` entries and report at most `leafBudget` leaves.
 */
export class EnumerationBudget {
  entryBudget = ENUMERATION_ENTRY_BUDGET;
  leafBudget = ENUMERATION_LEAF_BUDGET;
  /** True when the last enumeration stopped at a budget. */
  truncated = false;
  /** Entries read and leaves reported by enumerations so far. */
  reads = 0;
  leaves = 0;
  private entriesLeft = 0;
  private leavesLeft = 0;

  /** Starts an enumeration with the full budgets. */
  begin(): void {
    this.entriesLeft = this.entryBudget;
    this.leavesLeft = this.leafBudget;
    this.truncated = false;
  }

  /** Spends one entry; false (and `truncated`) once either budget is used up. */
  take(): boolean {
    if (this.entriesLeft-- <= 0 || this.leavesLeft <= 0) {
      this.truncated = true;
      return false;
    }
    return true;
  }

  /** Counts one reported leaf. */
  leaf(): void {
    this.leavesLeft--;
    this.leaves++;
  }
}

/** A paging format as the enumeration sees it. */
export interface LeafFormat {
  /** The entry maps nothing (not present, or reserved bits set): it is skipped. */
  skip(lo: number, hi: number, level: number): boolean;
  /** The attributes below this entry, from those above it and the entry's own bits. */
  attributes(above: number, lo: number): number;
  /** Engine permissions of a leaf reached with `attributes`; 0 when it is not reported. */
  leafPerms(attributes: number): number;
}

export type LeafCallback = (iova: number, gpa: number, sizeBytes: number, perms: number) => void;

/**
 * Calls `leaf` for every leaf of the `level` table at `table` (covering IOVAs from `baseIova`)
 * that overlaps [startIova, lastIova] and that `format` reports, in IOVA order. An entry that is
 * not RAM ends its table (the rest of it is unreadable too).
 */
export function enumerateLeaves(
  ram: GuestMemory,
  budget: EnumerationBudget,
  format: LeafFormat,
  table: number,
  level: number,
  baseIova: number,
  startIova: number,
  lastIova: number,
  above: number,
  leaf: LeafCallback,
): void {
  const size = LEVEL_BYTES[level];
  const first = Math.max(0, Math.floor((startIova - baseIova) / size));
  const last = Math.min(511, Math.floor((lastIova - baseIova) / size));
  for (let i = first; i <= last; i++) {
    if (!budget.take()) return;
    if (!ram.read64(table + i * 8)) return;
    budget.reads++;
    const lo = ram.lo;
    const hi = ram.hi;
    if (format.skip(lo, hi, level)) continue;
    const attributes = format.attributes(above, lo);
    const addr = entryAddress(lo, hi);
    const iova = baseIova + i * size;
    if (level === 1 || (lo & 0x80) !== 0) {
      const perms = format.leafPerms(attributes);
      if (perms !== 0) {
        budget.leaf();
        leaf(iova, addr - (addr % size), size, perms);
      }
    } else {
      enumerateLeaves(ram, budget, format, addr, level - 1, iova, startIova, lastIova, attributes, leaf);
    }
  }
}
