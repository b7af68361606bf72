/**
 * Second-stage (second-level) paging (VT-d 3.7, 9.8): 3, 4 or 5 levels of 512 eight-byte
 * entries translating an IOVA (or guest-physical address) into a host-visible guest-physical
 * address, with R/W permissions ANDed down the walk and 2 MiB / 1 GiB leaves when CAP.SLLPS
 * advertises them.
 *
 * Entries are read as two u32 halves; nothing allocates. The same walk enumerates every leaf
 * in a range (for caching-mode replay), skipping what does not translate.
 */
import { PERM_READ, PERM_RW, PERM_WRITE } from "../engine/access.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import { GuestRam } from "./guest-ram.ts";

/** Why a walk stopped (mapped to legacy or scalable fault reasons by the caller). */
// Imported bindings are read through accessors under tsx: hot paths use module-local copies.
const READ: number = PERM_READ;
const WRITE: number = PERM_WRITE;
const RW: number = PERM_RW;

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

export const WALK = {
  OK: 0,
  /** An entry could not be read (not RAM). */
  ACCESS: 1,
  /** R and W both clear (second stage) / P clear (first stage). */
  NOT_PRESENT: 2,
  RESERVED: 3,
  /** The leaf forbids the access. */
  PERMISSION: 4,
  /** The table pointer itself is unusable (beyond the host address width). */
  ROOT_INVALID: 5,
  /** First stage: the input address is not canonical for the paging mode. */
  NON_CANONICAL: 6,
  /** First stage: a user request reached a supervisor-only page. */
  USER_SUPERVISOR: 7,
  /** Nested: the second-stage translation of a first-stage address failed (reason in the stage). */
  NESTED: 8,
} as const;

/** The result of a successful walk: a page-sized block. */
export class WalkOut {
  iovaBase = 0;
  gpaBase = 0;
  sizeBytes = 0;
  perms = 0;
  /** Level of the leaf (1: 4 KiB, 2: 2 MiB, 3: 1 GiB). */
  leafLevel = 0;
}

export interface SecondStageFormat {
  /** Host address width: address bits at and above it are reserved in entries. */
  readonly hawBits: number;
  readonly superpage2M: boolean;
  readonly superpage1G: boolean;
  /** ECAP.SC: the SNP bit (11) of leaves is defined; otherwise reserved. */
  readonly snoopControl: boolean;
}

const TWO32 = 0x1_0000_0000;

/** The address in a paging entry (VT-d 9.7, 9.8): bits 51:12, high dword bits 19:0. */
export function entryAddress(lo: number, hi: number): number {
  return (hi & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
}

/** High-dword mask of the entry address bits at and above the host address width (up to 51). */
export function addressBitsAboveHaw(hawBits: number): number {
  const h = Math.min(hawBits, 52);
  return h >= 52 ? 0 : ((2 ** (52 - h) - 1) * 2 ** (h - 32)) >>> 0;
}

/**
 * Bytes one entry maps at each level (index = level): a table, since `2 ** n` with a variable
 * exponent is a slow generic power in V8 and sits on the walk path.
 */
export const LEVEL_BYTES: readonly number[] = [0, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39, 2 ** 48];

/** Reserved high-dword bits: address bits haw..51 and bit 62 (VT-d 9.8). */
function reservedHigh(hawBits: number): number {
  return (addressBitsAboveHaw(hawBits) | (1 << 30)) >>> 0;
}

export class SecondStageWalker {
  private readonly ram: GuestRam;
  private readonly format: SecondStageFormat;
  private readonly resHigh: number;
  private readonly addressLimit: number;
  /** Entries read by walks so far (a cost counter for stats). */
  entryReads = 0;
  /** Bounds and cost of `forEachLeaf`. */
  readonly enumeration = new EnumerationBudget();

  constructor(memory: GuestMemory, format: SecondStageFormat) {
    this.ram = new GuestRam(memory);
    this.format = format;
    this.resHigh = reservedHigh(format.hawBits);
    this.addressLimit = 2 ** Math.min(format.hawBits, 52);
  }

  /** True when an entry has reserved bits set for its level and kind (VT-d 9.8). */
  private reserved(lo: number, hi: number, level: number): boolean {
    if ((hi & this.resHigh) !== 0) return true;
    const ps = (lo & 0x80) !== 0 && level > 1;
    if (ps) {
      if (level === 2 && (!this.format.superpage2M || (lo & 0x1ff000) !== 0)) return true;
      if (level === 3 && (!this.format.superpage1G || (lo & 0x3ffff000) !== 0)) return true;
      if (level > 3) return true;
    }
    const leaf = level === 1 || ps;
    if (leaf && !this.format.snoopControl && (lo & 0x800) !== 0) return true;
    return false;
  }

  /** Top-level table pointer usable? (bits at or above the host address width are reserved.) */
  rootValid(rootGpa: number): boolean {
    return rootGpa < this.addressLimit;
  }

  /**
   * Walks `levels` levels from `rootGpa` for `iova` and `access`. Fills `out` on success and
   * returns WALK.OK, or returns why it stopped (`out.leafLevel` then names the level).
   */
  walk(rootGpa: number, levels: number, iova: number, access: number, out: WalkOut): number {
    if (!this.rootValid(rootGpa)) return WALK.ROOT_INVALID;
    const ram = this.ram;
    let table = rootGpa;
    let perms = RW;
    for (let level = levels; level >= 1; level--) {
      const size = LEVEL_BYTES[level];
      // ToInt32 keeps the low 32 bits of the (integral part of the) quotient: bits 8:0 are the index.
      const entryGpa = table + ((iova / size) & 511) * 8;
      out.leafLevel = level;
      if (!ram.read64(entryGpa)) return level === levels ? WALK.ROOT_INVALID : WALK.ACCESS;
      this.entryReads++;
      const lo = ram.lo;
      const hi = ram.hi;
      if ((lo & 3) === 0) return WALK.NOT_PRESENT;
      if (this.reserved(lo, hi, level)) return WALK.RESERVED;
      perms &= (lo & 1 ? READ : 0) | (lo & 2 ? WRITE : 0);
      const addr = entryAddress(lo, hi);
      if (level === 1 || (lo & 0x80) !== 0) {
        out.iovaBase = iova - (iova % size);
        out.gpaBase = addr - (addr % size);
        out.sizeBytes = size;
        out.perms = perms;
        return (perms & access) === access ? WALK.OK : WALK.PERMISSION;
      }
      table = addr;
    }
    return WALK.NOT_PRESENT;
  }

  /**
   * Calls `leaf` for every translating leaf overlapping [startIova, lastIova] (clipped to the
   * leaf, in IOVA order). Entries that do not translate (not present, reserved bits, not RAM)
   * are skipped: they map nothing.
   */
  forEachLeaf(
    rootGpa: number,
    levels: number,
    startIova: number,
    lastIova: number,
    leaf: (iova: number, gpa: number, sizeBytes: number, perms: number) => void,
  ): void {
    this.enumeration.begin();
    if (!this.rootValid(rootGpa)) return;
    this.visit(rootGpa, levels, 0, startIova, lastIova, RW, leaf);
  }

  private visit(
    table: number,
    level: number,
    baseIova: number,
    startIova: number,
    lastIova: number,
    perms: number,
    leaf: (iova: number, gpa: number, sizeBytes: number, perms: number) => void,
  ): void {
    const ram = this.ram;
    const budget = this.enumeration;
    const size = LEVEL_BYTES[level];
    const first = Math.max(0, Math.floor((startIova - baseIova) / size));
    const last = Math.min(511, Math.floor((lastIova - baseIova) / size));
    for (let i = first; i <= last; i++) {
      const entryGpa = table + i * 8;
      if (!budget.take()) return;
      if (!ram.read64(entryGpa)) return;
      budget.reads++;
      const lo = ram.lo;
      const hi = ram.hi;
      if ((lo & 3) === 0 || this.reserved(lo, hi, level)) continue;
      const p = perms & ((lo & 1 ? READ : 0) | (lo & 2 ? WRITE : 0));
      const addr = entryAddress(lo, hi);
      const iova = baseIova + i * size;
      if (level === 1 || (lo & 0x80) !== 0) {
        if (p !== 0) {
          budget.leaf();
          leaf(iova, addr - (addr % size), size, p);
        }
      } else {
        this.visit(addr, level - 1, iova, startIova, lastIova, p, leaf);
      }
    }
  }
}
