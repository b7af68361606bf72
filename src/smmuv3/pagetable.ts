/**
 * VMSAv8-64 translation table walks for SMMUv3 stage 1 and stage 2 (SMMUv3 3.4, Arm ARM D8):
 * 4 KiB, 16 KiB and 64 KiB granules, block and page descriptors, hierarchical stage-1
 * permissions (APTable, UXNTable, PXNTable), access flag, address-size checks.
 *
 * The walker is allocation-free: it fills a caller-owned `WalkResult`. Descriptor fetches go
 * through a `DescriptorFetcher`, so a nested stage-1 walk can send every table address through
 * stage 2 first.
 */
import { EVT } from "./events.ts";

/** Permission bits of a leaf, for every privilege and access kind. */
export const P_UR = 1;
export const P_UW = 2;
export const P_PR = 4;
export const P_PW = 8;
export const P_UX = 16;
export const P_PX = 32;
export const P_ALL = 63;

/** Granule size as log2 bytes, from a CD TG0 / STE S2TG encoding (0: 4K, 1: 64K, 2: 16K). */
export function granuleFromTg0(tg: number): number {
  return tg === 0 ? 12 : tg === 1 ? 16 : tg === 2 ? 14 : 0;
}

/** CD TG1 encoding (1: 16K, 2: 4K, 3: 64K). */
export function granuleFromTg1(tg: number): number {
  return tg === 1 ? 14 : tg === 2 ? 12 : tg === 3 ? 16 : 0;
}

/** Parameters of one translation stage, decoded from a CD (stage 1) or an STE (stage 2). */
export interface StageParams {
  readonly stage: 1 | 2;
  /** log2 of the granule: 12, 14 or 16. */
  readonly granuleShift: number;
  /** Input address size in bits (64 - TxSZ). */
  readonly inputBits: number;
  /** Level of the first lookup (0..3). */
  readonly startLevel: number;
  /** Base of the first table (TTBx / S2TTB), aligned to its size. */
  readonly tableBase: number;
  /** Output address size in bits (IPS / S2PS capped at OAS). */
  readonly outputBits: number;
  /** Access flag faults disabled (CD.AFFD / STE.S2AFFD). */
  readonly affd: boolean;
  /** Stage 1 only: write implies execute-never (CD.WXN). */
  readonly wxn: boolean;
}

/** Number of lookup levels for a stage-1 walk: ceil((inputBits - g) / (g - 3)). */
export function stage1StartLevel(granuleShift: number, inputBits: number): number {
  const stride = granuleShift - 3;
  return 4 - Math.ceil((inputBits - granuleShift) / stride);
}

/**
 * Start level of a stage-2 walk from S2SL0 (Arm ARM D8.2.2, VTCR_EL2.SL0): 4K: 0->2, 1->1, 2->0;
 * 16K and 64K: 0->3, 1->2, 2->1 (3 only for 16K: level 0). Returns -1 for a reserved encoding.
 */
export function stage2StartLevel(granuleShift: number, sl0: number): number {
  if (granuleShift === 12) return sl0 <= 2 ? 2 - sl0 : -1;
  if (granuleShift === 14) return 3 - sl0;
  return sl0 <= 2 ? 3 - sl0 : -1;
}

/**
 * Whether a stage-2 start level is consistent with the input size: the first level resolves at
 * least 1 bit and at most (g - 3) + 4 bits (up to 16 concatenated tables, Arm ARM D8.2.6).
 */
export function stage2LevelConsistent(granuleShift: number, inputBits: number, startLevel: number): boolean {
  const stride = granuleShift - 3;
  const bitsAtStart = inputBits - (granuleShift + (3 - startLevel) * stride);
  return bitsAtStart >= 1 && bitsAtStart <= stride + 4;
}

/** Whether a block descriptor is permitted at `level` for the granule (48-bit OA, no LPA2). */
function blockAllowed(granuleShift: number, level: number): boolean {
  if (granuleShift === 12) return level === 1 || level === 2;
  return level === 2;
}

/**
 * Reads one 8-byte descriptor at a table address of the stage being walked. Returns true and
 * sets `lo`/`hi` in the result on success; on failure it has already filled the fault fields.
 */
export interface DescriptorFetcher {
  fetch(tableAddr: number, r: WalkResult): boolean;
}

export class WalkResult {
  // Descriptor words of the last fetch.
  lo = 0;
  hi = 0;
  /** Event type of the fault, or 0 on success. */
  fault = 0;
  /** Whether the fault belongs to stage 2 (event S2 bit). */
  faultS2 = false;
  /** Stage-2 fault: what the stage-2 access was for (CLASS_CD / CLASS_TT / CLASS_IN). */
  faultClass = 0;
  /** Stage-2 fault: the IPA being translated. */
  faultIpa = 0;
  /** F_WALK_EABT / fetch faults: the address whose fetch failed. */
  fetchAddr = 0;
  faultLevel = 0;
  // Leaf:
  /** Input address of the start of the leaf block. */
  inputBase = 0;
  /** Output address of the start of the leaf block. */
  outputBase = 0;
  blockBytes = 0;
  /** P_* bits. */
  perms = 0;
  /** Stage 1: the leaf's nG bit (a global entry matches every ASID). */
  nonGlobal = true;

  clearFault(): void {
    this.fault = 0;
    this.faultS2 = false;
    this.faultClass = 0;
    this.faultIpa = 0;
    this.fetchAddr = 0;
    this.faultLevel = 0;
  }

  setFault(type: number, level: number): false {
    this.fault = type;
    this.faultLevel = level;
    return false;
  }
}

/** Bits [47:shift] of a descriptor's address field (bits 51:48 checked separately). */
function descAddress(lo: number, hi: number, shift: number): number {
  const full = (hi & 0xffff) * 2 ** 32 + (lo >>> 0);
  return full - (full % 2 ** shift);
}

/**
 * Walks `p` for `input` (an address inside [0, 2^inputBits)). On success fills the leaf fields
 * of `r` and returns true; otherwise fills the fault fields and returns false.
 */
export function walk(p: StageParams, input: number, fetcher: DescriptorFetcher, r: WalkResult): boolean {
  const g = p.granuleShift;
  const stride = g - 3;
  let level = p.startLevel;
  let table = p.tableBase;
  // Hierarchical attributes accumulated from table descriptors (stage 1 only).
  let noUnpriv = false;
  let noWrite = false;
  let uxnTable = false;
  let pxnTable = false;
  const outLimit = 2 ** p.outputBits;
  for (;;) {
    const shift = g + (3 - level) * stride;
    const bits = level === p.startLevel ? p.inputBits - shift : stride;
    const index = Math.floor(input / 2 ** shift) % 2 ** bits;
    // A table address beyond the output size is an Address Size fault at this level.
    if (table >= outLimit) return r.setFault(EVT.F_ADDR_SIZE, level);
    if (!fetcher.fetch(table + index * 8, r)) {
      r.faultLevel = level;
      return false;
    }
    const lo = r.lo;
    const hi = r.hi;
    if ((lo & 1) === 0) return r.setFault(EVT.F_TRANSLATION, level);
    const isTable = (lo & 2) !== 0 && level < 3;
    if (isTable) {
      // OA bits 51:48 beyond a 48-bit output: Address Size fault.
      if ((hi & 0xf0000) !== 0) return r.setFault(EVT.F_ADDR_SIZE, level);
      if (p.stage === 1) {
        pxnTable ||= (hi & (1 << 27)) !== 0;
        uxnTable ||= (hi & (1 << 28)) !== 0;
        noUnpriv ||= (hi & (1 << 29)) !== 0;
        noWrite ||= (hi & (1 << 30)) !== 0;
      }
      table = descAddress(lo, hi, g);
      level++;
      continue;
    }
    // Level 3 with bit 1 clear is reserved: Translation fault (Arm ARM D8.3.1).
    if (level === 3 && (lo & 2) === 0) return r.setFault(EVT.F_TRANSLATION, level);
    if (level < 3 && !blockAllowed(g, level)) return r.setFault(EVT.F_TRANSLATION, level);
    const out = descAddress(lo, hi, shift);
    if ((hi & 0xf0000) !== 0 || out >= outLimit) return r.setFault(EVT.F_ADDR_SIZE, level);
    const af = (lo & (1 << 10)) !== 0;
    if (!af && !p.affd) return r.setFault(EVT.F_ACCESS, level);
    const size = 2 ** shift;
    r.inputBase = input - (input % size);
    r.outputBase = out;
    r.blockBytes = size;
    r.faultLevel = level;
    r.nonGlobal = (lo & (1 << 11)) !== 0;
    r.perms =
      p.stage === 1 ? stage1Perms(lo, hi, noUnpriv, noWrite, uxnTable, pxnTable, p.wxn) : stage2Perms(lo, hi);
    return true;
  }
}

/** Stage-1 leaf permissions from AP[2:1], UXN, PXN and the table limits (Arm ARM D8.4). */
function stage1Perms(
  lo: number,
  hi: number,
  noUnpriv: boolean,
  noWrite: boolean,
  uxnTable: boolean,
  pxnTable: boolean,
  wxn: boolean,
): number {
  const ap = (lo >>> 6) & 3; // AP[2:1]: bit 1 read-only, bit 0 EL0 access
  const readOnly = (ap & 2) !== 0 || noWrite;
  const el0 = (ap & 1) !== 0 && !noUnpriv;
  let perms = P_PR;
  if (!readOnly) perms |= P_PW;
  if (el0) {
    perms |= P_UR;
    if (!readOnly) perms |= P_UW;
  }
  const uxn = (hi & (1 << 22)) !== 0 || uxnTable;
  // Memory writable at EL0 is never executable at EL1 (Arm ARM D8.4.1.2); WXN: writable is XN.
  const pxn = (hi & (1 << 21)) !== 0 || pxnTable || ((ap & 1) !== 0 && (ap & 2) === 0);
  if (!uxn && !(wxn && (perms & P_UW) !== 0)) perms |= P_UX;
  if (!pxn && !(wxn && (perms & P_PW) !== 0)) perms |= P_PX;
  return perms;
}

/** Stage-2 leaf permissions from S2AP (bit 6 read, bit 7 write) and XN[1] (bit 54). */
function stage2Perms(lo: number, hi: number): number {
  let perms = 0;
  if ((lo & (1 << 6)) !== 0) perms |= P_UR | P_PR;
  if ((lo & (1 << 7)) !== 0) perms |= P_UW | P_PW;
  if ((hi & (1 << 22)) === 0) perms |= P_UX | P_PX;
  return perms;
}

/** Whether `perms` (P_* bits) allow a read or a write for a privileged/instruction access. */
export function permits(perms: number, write: boolean, privileged: boolean, instruction: boolean): boolean {
  if (write) return (perms & (privileged ? P_PW : P_UW)) !== 0;
  if (instruction) return (perms & (privileged ? P_PX : P_UX)) !== 0;
  return (perms & (privileged ? P_PR : P_UR)) !== 0;
}
