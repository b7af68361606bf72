/**
 * VT-d fault reason codes (VT-d 7.1.3, 7.2.3: non-recoverable fault conditions), by name.
 * Legacy-mode reasons are 0x1-0xE, interrupt remapping 0x20-0x26, scalable mode 0x30 and up.
 * Also the tables that map a reason to the engine's fault kind and a walk stop to its reason.
 */
import type { DmaFaultReason } from "../engine/access.ts";
import { WALK } from "./second-stage.ts";
export const FR = {
  // Legacy mode (LRT, LCT, LSL, LGN).
  ROOT_NOT_PRESENT: 0x1,
  CONTEXT_NOT_PRESENT: 0x2,
  CONTEXT_INVALID: 0x3,
  ADDRESS_BEYOND_MGAW: 0x4,
  WRITE_DENIED: 0x5,
  READ_DENIED: 0x6,
  PAGING_ENTRY_ACCESS: 0x7,
  ROOT_TABLE_ACCESS: 0x8,
  CONTEXT_TABLE_ACCESS: 0x9,
  ROOT_RESERVED: 0xa,
  CONTEXT_RESERVED: 0xb,
  PAGING_ENTRY_RESERVED: 0xc,
  TRANSLATION_BLOCKED: 0xd,
  INTERRUPT_ADDRESS: 0xe,
  // Interrupt remapping.
  IR_REQUEST_RESERVED: 0x20,
  IR_INDEX_OVER_LIMIT: 0x21,
  IR_NOT_PRESENT: 0x22,
  IR_TABLE_ACCESS: 0x23,
  IR_ENTRY_RESERVED: 0x24,
  IR_COMPAT_BLOCKED: 0x25,
  IR_SOURCE_ID: 0x26,
  // Scalable mode: root table address (RTA).
  SM_RTADDR_INVALID: 0x30,
  SM_TTM0_WITH_PASID: 0x31,
  // Scalable-mode root table (SRT).
  SM_ROOT_ACCESS: 0x38,
  SM_ROOT_NOT_PRESENT: 0x39,
  SM_ROOT_RESERVED: 0x3a,
  // Scalable-mode context table (SCT).
  SM_CONTEXT_ACCESS: 0x40,
  SM_CONTEXT_NOT_PRESENT: 0x41,
  SM_CONTEXT_RESERVED: 0x42,
  SM_CONTEXT_INVALID: 0x43,
  SM_CONTEXT_DTE_CLEAR: 0x44,
  SM_CONTEXT_PASIDE_CLEAR: 0x45,
  SM_PASID_OVER_PDTS: 0x46,
  // Scalable-mode PASID directory (SPD) and PASID table (SPT).
  SM_PASID_DIR_ACCESS: 0x50,
  SM_PASID_DIR_NOT_PRESENT: 0x51,
  SM_PASID_DIR_RESERVED: 0x52,
  SM_PASID_ENTRY_ACCESS: 0x58,
  SM_PASID_ENTRY_NOT_PRESENT: 0x59,
  SM_PASID_ENTRY_RESERVED: 0x5a,
  SM_PASID_ENTRY_INVALID: 0x5b,
  SM_PASID_SRE_CLEAR: 0x5d,
  // Scalable-mode first-stage tables (SFL).
  SM_FS_ACCESS: 0x70,
  SM_FS_NOT_PRESENT: 0x71,
  SM_FS_RESERVED: 0x72,
  SM_FS_ROOT_ACCESS: 0x73,
  // Nested translation: second-stage checks on first-stage structures (SFL.5-8).
  SM_NESTED_ADDRESS_BEYOND_AW: 0x74,
  SM_NESTED_FS_ROOT_READ_DENIED: 0x75,
  SM_NESTED_FS_READ_DENIED: 0x76,
  SM_NESTED_FS_WRITE_DENIED: 0x77,
  // Scalable-mode second-stage tables (SSL).
  SM_SS_ACCESS: 0x78,
  SM_SS_NOT_PRESENT: 0x79,
  SM_SS_RESERVED: 0x7a,
  SM_SS_ROOT_INVALID: 0x7b,
  // Scalable-mode general (SGN).
  SM_NON_CANONICAL: 0x80,
  SM_USER_TO_SUPERVISOR: 0x81,
  SM_ADDRESS_BEYOND_AW: 0x83,
  SM_OUTPUT_BEYOND_HAW: 0x84,
  SM_WRITE_DENIED: 0x85,
  SM_READ_DENIED: 0x86,
  SM_INTERRUPT_ADDRESS: 0x87,
} as const;

export type FaultReasonCode = (typeof FR)[keyof typeof FR];

const NAMES = new Map<number, string>(Object.entries(FR).map(([k, v]) => [v, k]));

/** Name of a fault reason code, for traces and messages. */
export function faultReasonName(code: number): string {
  return NAMES.get(code) ?? `0x${code.toString(16)}`;
}

/**
 * Which of the engine's fault kinds each reason is (`DmaFault.reason`); reasons not listed are
 * malformed or unreadable tables ("bad-table").
 */
const ENGINE_REASONS: ReadonlyMap<number, DmaFaultReason> = new Map<number, DmaFaultReason>([
  ...[
    FR.ROOT_NOT_PRESENT,
    FR.CONTEXT_NOT_PRESENT,
    FR.SM_ROOT_NOT_PRESENT,
    FR.SM_CONTEXT_NOT_PRESENT,
    FR.SM_PASID_DIR_NOT_PRESENT,
    FR.SM_PASID_ENTRY_NOT_PRESENT,
    FR.SM_SS_NOT_PRESENT,
    FR.SM_FS_NOT_PRESENT,
  ].map((code): [number, DmaFaultReason] => [code, "unmapped"]),
  ...[
    FR.WRITE_DENIED,
    FR.READ_DENIED,
    FR.SM_WRITE_DENIED,
    FR.SM_READ_DENIED,
    FR.SM_USER_TO_SUPERVISOR,
    FR.SM_PASID_SRE_CLEAR,
  ].map((code): [number, DmaFaultReason] => [code, "permission"]),
  ...[
    FR.ADDRESS_BEYOND_MGAW,
    FR.SM_ADDRESS_BEYOND_AW,
    FR.SM_NON_CANONICAL,
    FR.INTERRUPT_ADDRESS,
    FR.SM_INTERRUPT_ADDRESS,
  ].map((code): [number, DmaFaultReason] => [code, "address-range"]),
  ...[FR.TRANSLATION_BLOCKED, FR.SM_TTM0_WITH_PASID, FR.SM_CONTEXT_PASIDE_CLEAR, FR.SM_CONTEXT_DTE_CLEAR].map(
    (code): [number, DmaFaultReason] => [code, "blocked"],
  ),
]);

export function engineReason(code: number): DmaFaultReason {
  return ENGINE_REASONS.get(code) ?? "bad-table";
}

/**
 * The architected reason for a page walk that stopped (a `WALK` code), per kind of table
 * (VT-d 7.1.3), as QEMU's `vtd_qualified_faults[]`: one row per table kind, indexed by the walk
 * code. A code without an entry (a permission stop) is the mode's read- or write-denied reason.
 */
interface WalkReasonRow {
  readonly byCode: readonly number[];
  readonly readDenied: number;
  readonly writeDenied: number;
}

function walkRow(
  entries: readonly [number, number][],
  readDenied: number,
  writeDenied: number,
): WalkReasonRow {
  const byCode: number[] = new Array(WALK.NESTED + 1).fill(0);
  for (const [code, reason] of entries) byCode[code] = reason;
  return { byCode, readDenied, writeDenied };
}

export const WALK_REASONS = {
  /** Scalable-mode first stage, and the first stage of nested translation (SFL). */
  firstStage: walkRow(
    [
      [WALK.ACCESS, FR.SM_FS_ACCESS],
      [WALK.NOT_PRESENT, FR.SM_FS_NOT_PRESENT],
      [WALK.RESERVED, FR.SM_FS_RESERVED],
      [WALK.ROOT_INVALID, FR.SM_FS_ROOT_ACCESS],
      [WALK.NON_CANONICAL, FR.SM_NON_CANONICAL],
      [WALK.USER_SUPERVISOR, FR.SM_USER_TO_SUPERVISOR],
    ],
    FR.SM_READ_DENIED,
    FR.SM_WRITE_DENIED,
  ),
  /** Scalable-mode second stage (SSL). */
  scalableSecondStage: walkRow(
    [
      [WALK.ACCESS, FR.SM_SS_ACCESS],
      [WALK.NOT_PRESENT, FR.SM_SS_NOT_PRESENT],
      [WALK.RESERVED, FR.SM_SS_RESERVED],
      [WALK.ROOT_INVALID, FR.SM_SS_ROOT_INVALID],
    ],
    FR.SM_READ_DENIED,
    FR.SM_WRITE_DENIED,
  ),
  /**
   * Legacy-mode second stage (LSL, LGN). It has no "not present": R=W=0 denies the access
   * (VT-d 3.7.1), so NOT_PRESENT falls to read/write denied.
   */
  legacySecondStage: walkRow(
    [
      [WALK.ACCESS, FR.PAGING_ENTRY_ACCESS],
      [WALK.RESERVED, FR.PAGING_ENTRY_RESERVED],
      [WALK.ROOT_INVALID, FR.CONTEXT_INVALID],
    ],
    FR.READ_DENIED,
    FR.WRITE_DENIED,
  ),
} as const;

/** The reason of walk stop `code` in table kind `row`, for a read or a write. */
export function walkStopReason(row: WalkReasonRow, code: number, write: boolean): number {
  const reason = row.byCode[code] ?? 0;
  if (reason !== 0) return reason;
  return write ? row.writeDenied : row.readDenied;
}
