/**
 * Second-stage (second-level) paging (VT-d 3.7, 9.8): 3, 4 or 5 levels of 512 eight-byte
 * entries translating an IOVA (or guest-physical address) into a host-visible guest-physical
 * address, with R/W permissions ANDed down the walk and 2 MiB / 1 GiB leaves when CAP.SLLPS
 * advertises them.
 *
 * Entries are read as two u32 halves; nothing allocates. The leaves in a range (caching-mode
 * replay) are enumerated by the shared enumeration of paging.ts, skipping what does not translate.
 */
import { PERM_READ, PERM_RW, PERM_WRITE } from "../engine/access.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import {
  EnumerationBudget,
  entryAddress,
  enumerateLeaves,
  LEVEL_BYTES,
  type LeafCallback,
  type LeafFormat,
} from "./paging.ts";

// Imported bindings are read through accessors under tsx: hot paths use module-local copies.
const READ: number = PERM_READ;
const WRITE: number = PERM_WRITE;
const RW: number = PERM_RW;

/** Why a walk stopped (mapped to legacy or scalable fault reasons by the caller). */
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
  /** Guest-physical address of the table holding the leaf entry (for `readNeighbour`). */
  leafTableGpa = 0;
  /** Permissions the levels above the leaf allow (their R/W bits ANDed). */
  tablePerms = 0;
}

export interface SecondStageFormat {
  /** Host address width: address bits at and above it are reserved in entries. */
  readonly hawBits: number;
  readonly superpage2M: boolean;
  readonly superpage1G: boolean;
  /** ECAP.SC: the SNP bit (11) of leaves is defined; otherwise reserved. */
  readonly snoopControl: boolean;
}

const _TWO32 = 0x1_0000_0000;

/** High-dword mask of the entry address bits at and above the host address width (up to 51). */
export function addressBitsAboveHaw(hawBits: number): number {
  const h = Math.min(hawBits, 52);
  return h >= 52 ? 0 : ((2 ** (52 - h) - 1) * 2 ** (h - 32)) >>> 0;
}

/** Reserved high-dword bits: address bits haw..51 and bit 62 (VT-d 9.8). */
function reservedHigh(hawBits: number): number {
  return (addressBitsAboveHaw(hawBits) | (1 << 30)) >>> 0;
}

export class SecondStageWalker {
  /** Entries are read with `read64` (lo / hi): a bad address is a false, never a throw. */
  private readonly ram: GuestMemory;
  private readonly format: SecondStageFormat;
  private readonly resHigh: number;
  private readonly addressLimit: number;
  /** Entries read by walks so far (a cost counter for stats). */
  entryReads = 0;
  /** Bounds and cost of `forEachLeaf`. */
  readonly enumeration = new EnumerationBudget();

  constructor(memory: GuestMemory, format: SecondStageFormat) {
    this.ram = memory;
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
      const tablePerms = perms;
      perms &= (lo & 1 ? READ : 0) | (lo & 2 ? WRITE : 0);
      const addr = entryAddress(lo, hi);
      if (level === 1 || (lo & 0x80) !== 0) {
        out.leafTableGpa = table;
        out.tablePerms = tablePerms;
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
   * Reads 4 KiB leaf entry `index` (0-511) of the last-level table at `tableGpa`, below levels
   * that allow `tablePerms`: true, with `out.gpaBase` and `out.perms`, when it translates (present,
   * no reserved bits, some permission). For prefetching the neighbours of a walked leaf: the
   * same checks as `walk` at level 1.
   */
  readNeighbour(tableGpa: number, index: number, tablePerms: number, out: WalkOut): boolean {
    const ram = this.ram;
    if (!ram.read64(tableGpa + index * 8)) return false;
    this.entryReads++;
    const lo = ram.lo;
    const hi = ram.hi;
    if ((lo & 3) === 0 || this.reserved(lo, hi, 1)) return false;
    const perms = tablePerms & ((lo & 1 ? READ : 0) | (lo & 2 ? WRITE : 0));
    if (perms === 0) return false;
    out.gpaBase = entryAddress(lo, hi);
    out.perms = perms;
    return true;
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
    leaf: LeafCallback,
  ): void {
    this.enumeration.begin();
    if (!this.rootValid(rootGpa)) return;
    enumerateLeaves(
      this.ram,
      this.enumeration,
      this.leafFormat,
      rootGpa,
      levels,
      0,
      startIova,
      lastIova,
      RW,
      leaf,
    );
  }

  /** Second-stage entries for the enumeration: R and W ANDed down the walk (VT-d 9.8). */
  private readonly leafFormat: LeafFormat = {
    skip: (lo, hi, level) => (lo & 3) === 0 || this.reserved(lo, hi, level),
    attributes: (above, lo) => above & ((lo & 1 ? READ : 0) | (lo & 2 ? WRITE : 0)),
    leafPerms: (attributes) => attributes,
  };
}
