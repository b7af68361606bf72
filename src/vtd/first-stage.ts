/**
 * First-stage paging in scalable mode (VT-d 3.6, 9.7): IA-32e 4-level or 5-level tables with
 * P, R/W, U/S, A, D, PS and XD, translating a (canonical) IOVA for one PASID.
 *
 * Hardware sets Accessed on every entry it uses and Dirty on the leaf of a write (VT-d 3.6.2);
 * the walk does so with a plain store (the emulated unit is the only writer during a walk).
 * A supervisor request may write through read-only entries unless the PASID entry sets WPE.
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
import { addressBitsAboveHaw, WALK, type WalkOut } from "./second-stage.ts";

export interface FirstStageFormat {
  readonly hawBits: number;
  /** CAP.FL1GP: 1 GiB leaves at level 3. */
  readonly superpage1G: boolean;
}

export interface FirstStageRequest {
  /** Supervisor (privileged) request. */
  readonly privileged: boolean;
  /** PASID entry WPE: supervisor writes honour R/W. */
  readonly writeProtect: boolean;
  /** PASID entry NXE (recorded; XD never faults since execute requests are not supported). */
  readonly noExecute: boolean;
  /** Set A/D bits (true for DMA; false when enumerating for caching-mode replay). */
  readonly updateAccessed: boolean;
}

// Imported bindings are read through accessors under tsx: hot paths use module-local copies.
const READ: number = PERM_READ;
const WRITE: number = PERM_WRITE;
const RW: number = PERM_RW;
const W_OK: number = WALK.OK;

/** What a nested second-stage lookup is for (it decides the fault reason). */
export const NEST_ROOT_TABLE = 0;
export const NEST_TABLE = 1;
export const NEST_TABLE_WRITE = 2;
export const NEST_OUTPUT_READ = 3;
export const NEST_OUTPUT_WRITE = 4;

/** The second stage under a nested first stage (VT-d 3.8). */
export interface NestedStage {
  /** Translates guest-physical `gpa`; returns the host address, or -1 with `reason` set. */
  toHost(gpa: number, purpose: number): number;
  /** Size and permissions of the second-stage block the last successful `toHost` used. */
  readonly lastSizeBytes: number;
  readonly lastPerms: number;
  readonly reason: number;
}

export class FirstStageWalker {
  /** Entries are read with `read64` (lo / hi): a bad address is a false, never a throw. */
  private readonly ram: GuestMemory;
  private readonly format: FirstStageFormat;
  entryReads = 0;
  /** Bounds and cost of `forEachLeaf`. */
  readonly enumeration = new EnumerationBudget();
  accessedUpdates = 0;

  private readonly addressLimit: number;
  /**
   * Reserved high-dword bits: address bits at and above the host address width. XD (bit 63) is
   * accepted whatever the PASID entry's NXE says: the unit takes no execute requests (ECAP.ERS
   * clear), and Linux sets XD in every first-stage entry it writes.
   */
  private readonly resHigh: number;

  constructor(memory: GuestMemory, format: FirstStageFormat) {
    this.resHigh = addressBitsAboveHaw(format.hawBits);
    this.addressLimit = 2 ** Math.min(format.hawBits, 52);
    this.ram = memory;
    this.format = format;
  }

  private reserved(lo: number, hi: number, level: number, resHigh: number): boolean {
    if ((hi & resHigh) !== 0) return true;
    if (level > 1 && (lo & 0x80) !== 0) {
      if (level === 2) return (lo & 0x1fe000) !== 0; // 2 MiB: bits 20:13 (12 is PAT)
      if (level === 3) return !this.format.superpage1G || (lo & 0x3fffe000) !== 0;
      return true; // PS is reserved in PML4E / PML5E
    }
    return false;
  }

  /** Largest input address + 1 for 4 or 5 levels (canonical lower half). */
  static inputLimit(levels: number): number {
    return levels === 5 ? 2 ** 56 : 2 ** 47;
  }

  walk(
    rootGpa: number,
    levels: number,
    iova: number,
    access: number,
    req: FirstStageRequest,
    out: WalkOut,
    nest: NestedStage | null = null,
  ): number {
    // Canonical lower half only: the engine cannot express upper-half (>= 2^53) addresses.
    if (iova >= FirstStageWalker.inputLimit(levels)) return WALK.NON_CANONICAL;
    if (rootGpa >= this.addressLimit) return WALK.ROOT_INVALID;
    const ram = this.ram;
    const resHigh = this.resHigh;
    let table = rootGpa;
    let writable = true;
    let user = true;
    for (let level = levels; level >= 1; level--) {
      const size = LEVEL_BYTES[level];
      const entryGpa = table + ((iova / size) & 511) * 8;
      out.leafLevel = level;
      // Nested (VT-d 3.8): every first-stage structure address is a guest-physical address.
      let entryAddr = entryGpa;
      if (nest !== null) {
        entryAddr = nest.toHost(entryGpa, level === levels ? NEST_ROOT_TABLE : NEST_TABLE);
        if (entryAddr < 0) return WALK.NESTED;
      }
      if (!ram.read64(entryAddr)) return level === levels ? WALK.ROOT_INVALID : WALK.ACCESS;
      this.entryReads++;
      let lo = ram.lo;
      const hi = ram.hi;
      if ((lo & 1) === 0) return WALK.NOT_PRESENT;
      if (this.reserved(lo, hi, level, resHigh)) return WALK.RESERVED;
      if ((lo & 2) === 0) writable = false;
      if ((lo & 4) === 0) user = false;
      const leaf = level === 1 || (lo & 0x80) !== 0;
      if (req.updateAccessed) {
        let set = 0x20; // A
        if (leaf && access & WRITE) set |= 0x40; // D
        if ((lo & set) !== set) {
          // Setting A/D is a write: nested, the second stage must allow it.
          if (nest !== null && nest.toHost(entryGpa, NEST_TABLE_WRITE) < 0) return WALK.NESTED;
          lo = (lo | set) >>> 0;
          ram.tryWriteU32(entryAddr, lo);
          this.accessedUpdates++;
        }
      }
      const addr = entryAddress(lo, hi);
      if (leaf) {
        if (!req.privileged && !user) return WALK.USER_SUPERVISOR;
        const writeAllowed = writable || (req.privileged && !req.writeProtect);
        // A write needs D set: report write permission only when the leaf is already dirty.
        const dirty = (lo & 0x40) !== 0;
        out.iovaBase = iova - (iova % size);
        out.gpaBase = level === 1 ? addr : addr - (addr % size);
        out.sizeBytes = size;
        out.perms = READ | (writeAllowed && dirty ? WRITE : 0);
        if (access & WRITE && !writeAllowed) return WALK.PERMISSION;
        if (access & WRITE && !dirty) out.perms |= WRITE;
        if (nest !== null) {
          // The output is a guest-physical address too: the block is what both stages share.
          const gpa = out.gpaBase + (iova - out.iovaBase);
          const hpa = nest.toHost(gpa, access & WRITE ? NEST_OUTPUT_WRITE : NEST_OUTPUT_READ);
          if (hpa < 0) return WALK.NESTED;
          const block = Math.min(size, nest.lastSizeBytes);
          out.iovaBase = iova - (iova % block);
          out.gpaBase = hpa - (hpa % block);
          out.sizeBytes = block;
          out.perms &= nest.lastPerms;
        }
        return W_OK;
      }
      table = addr;
    }
    return WALK.NOT_PRESENT;
  }

  /** Every translating leaf in [startIova, lastIova], without touching A/D bits. */
  forEachLeaf(
    rootGpa: number,
    levels: number,
    startIova: number,
    lastIova: number,
    req: FirstStageRequest,
    leaf: LeafCallback,
  ): void {
    this.enumeration.begin();
    if (rootGpa >= this.addressLimit) return;
    const last = Math.min(lastIova, FirstStageWalker.inputLimit(levels) - 1);
    const format: LeafFormat = {
      skip: (lo, hi, level) => (lo & 1) === 0 || this.reserved(lo, hi, level, this.resHigh),
      // R/W and U/S are ANDed down the walk (VT-d 9.7): attribute bits 1 (writable), 2 (user).
      attributes: (above, lo) => above & (((lo & 2) !== 0 ? 1 : 0) | ((lo & 4) !== 0 ? 2 : 0)),
      leafPerms: (attributes) => {
        if (!req.privileged && (attributes & 2) === 0) return 0; // a user request, supervisor page
        return (attributes & 1) !== 0 || (req.privileged && !req.writeProtect) ? RW : READ;
      },
    };
    enumerateLeaves(this.ram, this.enumeration, format, rootGpa, levels, 0, startIova, last, 3, leaf);
  }
}
