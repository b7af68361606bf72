/**
 * Root, context and PASID structures in guest memory (VT-d 3.4, 3.4.3, 9.1-9.6), decoded and
 * checked. Each reader returns a decoded entry or the fault reason the architecture assigns
 * (access error, not present, reserved bits, invalid programming).
 *
 * Legacy mode: a 4 KiB root table of 256 16-byte entries (one per bus) pointing at context
 * tables of 256 16-byte entries (one per devfn). Scalable mode: each root entry holds a lower
 * (devfn 0-127) and an upper (128-255) context-table pointer; context entries are 32 bytes and
 * point at a PASID directory (8-byte entries, PASID[19:6]) of PASID tables (64-byte entries,
 * PASID[5:0]).
 */
import type { GuestMemory } from "../engine/guest-memory.ts";
import { levelsForAw, type VtdConfig } from "./config.ts";
import { FR } from "./fault-reasons.ts";

const TWO32 = 0x1_0000_0000;

/** Translation types of a legacy context entry (VT-d 9.3). */
export const TT = { UNTRANSLATED: 0, DEVICE_TLB: 1, PASS_THROUGH: 2 } as const;
/** PASID-granular translation types (VT-d 9.6). */
export const PGTT = { FIRST_STAGE: 1, SECOND_STAGE: 2, NESTED: 3, PASS_THROUGH: 4 } as const;

export interface LegacyContext {
  readonly kind: "legacy";
  readonly fpd: boolean;
  readonly translationType: number;
  readonly slptptr: number;
  /** Second-stage levels (3, 4 or 5); 0 for pass-through. */
  readonly levels: number;
  readonly domainId: number;
}

export interface ScalableContext {
  readonly kind: "scalable";
  readonly fpd: boolean;
  readonly deviceTlbEnable: boolean;
  readonly pasidEnable: boolean;
  /** Number of PASID directory entries: 2^(PDTS + 7). */
  readonly pasidDirEntries: number;
  readonly pasidDirPtr: number;
  readonly ridPasid: number;
  readonly ridPriv: boolean;
}

export type ContextEntry = LegacyContext | ScalableContext;

export interface PasidEntry {
  readonly fpd: boolean;
  readonly pgtt: number;
  readonly domainId: number;
  /** Second-stage table and levels (PGTT 2). */
  readonly slptptr: number;
  readonly ssLevels: number;
  /** First-stage table and levels (PGTT 1). */
  readonly flptptr: number;
  readonly fsLevels: number;
  readonly supervisorEnable: boolean;
  readonly writeProtect: boolean;
  readonly noExecute: boolean;
}

/** A decoded entry, or a fault reason (`fpd`: a present entry up the path disabled recording). */
export type Lookup<T> = { ok: true; entry: T } | { ok: false; reason: number; fpd: boolean };

function fail<T>(reason: number, fpd = false): Lookup<T> {
  return { ok: false, reason, fpd };
}

export class TableReader {
  private readonly memory: GuestMemory;
  private readonly config: VtdConfig;
  /** Address bits at or above the host address width are reserved in every pointer. */
  private readonly hiAddrReserved: number;
  private readonly limit: number;
  entryReads = 0;

  constructor(memory: GuestMemory, config: VtdConfig) {
    this.memory = memory;
    this.config = config;
    const h = Math.min(config.awBits, 52);
    this.limit = 2 ** h;
    this.hiAddrReserved = (0xffffffff - (2 ** (h - 32) - 1)) >>> 0;
  }

  private read(gpa: number, out: Uint32Array, dwords: number): boolean {
    if (!this.memory.isRam(gpa, dwords * 4)) return false;
    for (let i = 0; i < dwords; i++) out[i] = this.memory.readU32(gpa + 4 * i);
    this.entryReads++;
    return true;
  }

  private pointer(lo: number, hi: number): number {
    return hi * TWO32 + ((lo & 0xfffff000) >>> 0);
  }

  private readonly buf = new Uint32Array(16);

  /** Legacy root + context entry for `sourceId` (VT-d 9.1, 9.3). */
  legacyContext(rootTable: number, sourceId: number): Lookup<ContextEntry> {
    const b = this.buf;
    const bus = sourceId >> 8;
    const devfn = sourceId & 0xff;
    if (!this.read(rootTable + bus * 16, b, 4)) return fail(FR.ROOT_TABLE_ACCESS);
    if ((b[0] & 1) === 0) return fail(FR.ROOT_NOT_PRESENT);
    if ((b[0] & 0xffe) !== 0 || (b[1] & this.hiAddrReserved) !== 0 || b[2] !== 0 || b[3] !== 0) {
      return fail(FR.ROOT_RESERVED);
    }
    const ctp = this.pointer(b[0], b[1]);
    if (!this.read(ctp + devfn * 16, b, 4)) return fail(FR.CONTEXT_TABLE_ACCESS);
    if ((b[0] & 1) === 0) return fail(FR.CONTEXT_NOT_PRESENT);
    const fpd = (b[0] & 2) !== 0;
    // Reserved: low 11:4; high-qword bit 7 and 63:24; address bits beyond HAW.
    if (
      (b[0] & 0xff0) !== 0 ||
      (b[1] & this.hiAddrReserved) !== 0 ||
      (b[2] & 0xff000080) !== 0 ||
      b[3] !== 0
    ) {
      return fail(FR.CONTEXT_RESERVED);
    }
    const tt = (b[0] >> 2) & 3;
    const aw = b[2] & 7;
    const domainId = (b[2] >>> 8) & 0xffff;
    // VT-d 9.3: TT and AW must name something the unit supports, else "invalid context entry".
    if (tt === 3) return fail(FR.CONTEXT_INVALID, fpd);
    if (tt === TT.DEVICE_TLB && !this.config.deviceIotlb) return fail(FR.CONTEXT_INVALID, fpd);
    if (tt === TT.PASS_THROUGH && !this.config.passThrough) return fail(FR.CONTEXT_INVALID, fpd);
    let levels = 0;
    if (tt !== TT.PASS_THROUGH) {
      levels = levelsForAw(this.config, aw);
      if (levels === 0) return fail(FR.CONTEXT_INVALID, fpd);
    }
    return {
      ok: true,
      entry: {
        kind: "legacy",
        fpd,
        translationType: tt,
        slptptr: this.pointer(b[0], b[1]),
        levels,
        domainId,
      },
    };
  }

  /** Scalable-mode root + context entry for `sourceId` (VT-d 9.2, 9.4). */
  scalableContext(rootTable: number, sourceId: number): Lookup<ContextEntry> {
    const b = this.buf;
    const bus = sourceId >> 8;
    const devfn = sourceId & 0xff;
    if (!this.read(rootTable + bus * 16, b, 4)) return fail(FR.SM_ROOT_ACCESS);
    const half = devfn < 128 ? 0 : 2;
    const lo = b[half];
    const hi = b[half + 1];
    if ((lo & 1) === 0) return fail(FR.SM_ROOT_NOT_PRESENT);
    if ((lo & 0xffe) !== 0 || (hi & this.hiAddrReserved) !== 0) return fail(FR.SM_ROOT_RESERVED);
    const ctp = this.pointer(lo, hi);
    if (!this.read(ctp + (devfn & 0x7f) * 32, b, 8)) return fail(FR.SM_CONTEXT_ACCESS);
    if ((b[0] & 1) === 0) return fail(FR.SM_CONTEXT_NOT_PRESENT);
    const fpd = (b[0] & 2) !== 0;
    const dte = (b[0] & 4) !== 0;
    const paside = (b[0] & 8) !== 0;
    const pre = (b[0] & 0x10) !== 0;
    let reserved =
      (b[0] & 0x1e0) !== 0 ||
      (b[1] & this.hiAddrReserved) !== 0 ||
      (b[2] & 0xffe00000) !== 0 ||
      b[3] !== 0 ||
      b[4] !== 0 ||
      b[5] !== 0 ||
      b[6] !== 0 ||
      b[7] !== 0;
    // Fields for features the unit does not report are reserved (VT-d 9.4).
    if ((dte && !this.config.deviceIotlb) || (paside && !this.config.pasid) || pre) reserved = true;
    const ridPasid = b[2] & 0xfffff;
    const ridPriv = (b[2] & 0x100000) !== 0;
    if (ridPasid !== 0 || ridPriv) reserved = true; // ECAP.RPS and RPRIVS are clear
    if (reserved) return fail(FR.SM_CONTEXT_RESERVED);
    return {
      ok: true,
      entry: {
        kind: "scalable",
        fpd,
        deviceTlbEnable: dte,
        pasidEnable: paside,
        pasidDirEntries: 2 ** (((b[0] >> 9) & 7) + 7),
        pasidDirPtr: this.pointer(b[0], b[1]),
        ridPasid,
        ridPriv,
      },
    };
  }

  /** PASID directory + table entry for `pasid` under a scalable context (VT-d 9.5, 9.6). */
  pasidEntry(ctx: ScalableContext, pasid: number): Lookup<PasidEntry> {
    const b = this.buf;
    const dirIndex = pasid >>> 6;
    if (dirIndex >= ctx.pasidDirEntries) return fail(FR.SM_PASID_OVER_PDTS, ctx.fpd);
    if (!this.read(ctx.pasidDirPtr + dirIndex * 8, b, 2)) return fail(FR.SM_PASID_DIR_ACCESS, ctx.fpd);
    if ((b[0] & 1) === 0) return fail(FR.SM_PASID_DIR_NOT_PRESENT, ctx.fpd);
    const dirFpd = ctx.fpd || (b[0] & 2) !== 0;
    if ((b[0] & 0xffc) !== 0 || (b[1] & this.hiAddrReserved) !== 0) {
      return fail(FR.SM_PASID_DIR_RESERVED, ctx.fpd);
    }
    const table = this.pointer(b[0], b[1]);
    if (!this.read(table + (pasid & 0x3f) * 64, b, 16)) return fail(FR.SM_PASID_ENTRY_ACCESS, dirFpd);
    if ((b[0] & 1) === 0) return fail(FR.SM_PASID_ENTRY_NOT_PRESENT, dirFpd);
    const fpd = dirFpd || (b[0] & 2) !== 0;
    const pgtt = (b[0] >> 6) & 7;
    const aw = (b[0] >> 2) & 7;
    const sre = (b[4] & 1) !== 0;
    const flpm = (b[4] >> 2) & 3;
    const wpe = (b[4] & 0x10) !== 0;
    const nxe = (b[4] & 0x20) !== 0;
    // Reserved: SLEE (5; ECAP.ERS clear), SLADE (9; ECAP.SLADS clear), 11:10, qword 1 bits 22:16,
    // SRE (ECAP.SRS clear), ERE, EAFE, 11:8 of qword 2, pointers beyond HAW, qwords 3-7.
    let reserved =
      (b[0] & 0xe20) !== 0 ||
      (b[2] & 0x7f0000) !== 0 ||
      sre ||
      (b[4] & 0xf82) !== 0 ||
      (b[1] & this.hiAddrReserved) !== 0 ||
      (b[5] & this.hiAddrReserved) !== 0;
    for (let i = 6; i < 16; i++) if (b[i] !== 0) reserved = true;
    if (reserved) return fail(FR.SM_PASID_ENTRY_RESERVED, fpd);
    // Invalid programming (VT-d 9.6): unsupported PGTT, AW or FLPM.
    let ssLevels = 0;
    let fsLevels = 0;
    if (pgtt === PGTT.SECOND_STAGE) {
      ssLevels = levelsForAw(this.config, aw);
      if (ssLevels === 0) return fail(FR.SM_PASID_ENTRY_INVALID, fpd);
    } else if (pgtt === PGTT.FIRST_STAGE) {
      if (!this.config.firstStage) return fail(FR.SM_PASID_ENTRY_INVALID, fpd);
      if (flpm === 0) fsLevels = 4;
      else if (flpm === 1 && this.config.awBits === 57) fsLevels = 5;
      else return fail(FR.SM_PASID_ENTRY_INVALID, fpd);
    } else if (pgtt === PGTT.PASS_THROUGH) {
      if (!this.config.passThrough) return fail(FR.SM_PASID_ENTRY_INVALID, fpd);
    } else if (pgtt === PGTT.NESTED && this.config.nested) {
      // Nested: both stages must be valid (VT-d 9.6).
      ssLevels = levelsForAw(this.config, aw);
      if (flpm === 0) fsLevels = 4;
      else if (flpm === 1 && this.config.awBits === 57) fsLevels = 5;
      if (ssLevels === 0 || fsLevels === 0) return fail(FR.SM_PASID_ENTRY_INVALID, fpd);
    } else {
      // Nested without ECAP.NEST, and reserved encodings.
      return fail(FR.SM_PASID_ENTRY_INVALID, fpd);
    }
    return {
      ok: true,
      entry: {
        fpd,
        pgtt,
        domainId: b[2] & 0xffff,
        slptptr: this.pointer(b[0], b[1]),
        ssLevels,
        flptptr: this.pointer(b[4], b[5]),
        fsLevels,
        supervisorEnable: sre,
        writeProtect: wpe,
        noExecute: nxe,
      },
    };
  }

  /** Largest guest-physical address + 1 the unit can name (2^min(HAW, 52)). */
  get addressLimit(): number {
    return this.limit;
  }
}
