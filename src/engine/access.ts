/**
 * Access kinds, permissions and the IOMMU-neutral DMA fault.
 *
 * Addresses in the engine are plain numbers: guest-physical addresses (`gpa`), I/O virtual
 * addresses (`iova`) and sizes (`sizeBytes`) must be safe integers (below 2^53). Values a guest
 * hands over as 64-bit fields are range-checked by the model that decodes them before they reach
 * the engine; a value that does not fit is an address fault, never a silent truncation.
 */

/** The direction of one DMA access, as the device issues it. */
export type Access = 1 | 2;
export const ACCESS_READ: Access = 1;
export const ACCESS_WRITE: Access = 2;

/** Permission bits of a mapping; an access is allowed when `perms & access` is non-zero. */
export const PERM_NONE = 0;
export const PERM_READ = 1;
export const PERM_WRITE = 2;
export const PERM_RW = 3;

/** Largest address the engine represents exactly. */
export const MAX_ADDRESS = Number.MAX_SAFE_INTEGER;

/**
 * Why a DMA access failed, independent of any IOMMU architecture. Each model turns these into
 * its own architected report (a virtio-iommu fault event, a VT-d fault record, an SMMUv3 event).
 */
export type DmaFaultReason =
  /** The endpoint may not reach memory at all (unattached without bypass, aborting stream). */
  | "blocked"
  /** No translation for the address (no mapping, or a non-present table entry). */
  | "unmapped"
  /** A translation exists but forbids this access kind. */
  | "permission"
  /** The address is beyond the input range or address width the IOMMU translates. */
  | "address-range"
  /** A translation structure is malformed (reserved bits, bad pointer, invalid entry). */
  | "bad-table"
  /** The translated guest-physical range is not backed by RAM. */
  | "not-ram";

/** A failed DMA access. `code` carries the owning model's architected reason, when it has one. */
export interface DmaFault {
  readonly reason: DmaFaultReason;
  readonly endpointId: number;
  readonly iova: number;
  readonly access: Access;
  /** Model-specific code (VT-d fault reason, SMMUv3 event type, virtio-iommu fault reason). */
  readonly code: number;
  /** Short human-readable explanation, for logs and traces. */
  readonly detail: string;
}

export function dmaFault(
  reason: DmaFaultReason,
  endpointId: number,
  iova: number,
  access: Access,
  code = 0,
  detail = "",
): DmaFault {
  return { reason, endpointId, iova, access, code, detail };
}

export function accessName(access: Access): "read" | "write" {
  return access === ACCESS_WRITE ? "write" : "read";
}

export function permsName(perms: number): string {
  return `${perms & PERM_READ ? "r" : "-"}${perms & PERM_WRITE ? "w" : "-"}`;
}

/** True when [start, start + sizeBytes) is a non-empty range of representable addresses. */
export function isValidRange(start: number, sizeBytes: number): boolean {
  return (
    Number.isSafeInteger(start) &&
    Number.isSafeInteger(sizeBytes) &&
    start >= 0 &&
    sizeBytes > 0 &&
    sizeBytes - 1 <= MAX_ADDRESS - start // no rounding: both sides are exact
  );
}

/** Reads a little-endian 64-bit field (defined in little-endian.ts). */
export { readU64Safe } from "./little-endian.ts";
