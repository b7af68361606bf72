/**
 * Reserved IOVA regions of an endpoint (RESV_MEM probe properties, 5.13.6.8.1): ranges the
 * driver must not map, MSI doorbells among them. The device reports them with PROBE and refuses
 * MAP requests that overlap them (5.13.6.8.1.2).
 */
import { MAX_ADDRESS } from "../engine/access.ts";

export type ReservedRegionSubtype = "reserved" | "msi";

export interface ReservedRegion {
  /** First reserved IOVA. */
  readonly iovaStart: number;
  /** Last reserved IOVA (inclusive, as RESV_MEM `end`). */
  readonly iovaLast: number;
  readonly subtype: ReservedRegionSubtype;
}

/**
 * Checks a list of regions for one endpoint and returns it sorted by address. Throws (platform
 * configuration error) on a malformed region, on overlapping regions, or on more than one MSI
 * region: 5.13.6.8.1.2 says the device SHOULD NOT present either.
 */
export function validateReservedRegions(regions: readonly ReservedRegion[]): readonly ReservedRegion[] {
  const sorted = [...regions].sort((a, b) => a.iovaStart - b.iovaStart);
  let msi = 0;
  for (let i = 0; i < sorted.length; i++) {
    const r = sorted[i];
    if (
      !Number.isSafeInteger(r.iovaStart) ||
      !Number.isSafeInteger(r.iovaLast) ||
      r.iovaStart < 0 ||
      r.iovaLast < r.iovaStart ||
      r.iovaLast > MAX_ADDRESS
    ) {
      throw new RangeError(`virtio-iommu: reserved region [${r.iovaStart}, ${r.iovaLast}] is malformed`);
    }
    if (r.subtype !== "reserved" && r.subtype !== "msi") {
      throw new RangeError(`virtio-iommu: reserved region subtype ${String(r.subtype)} is unknown`);
    }
    if (r.subtype === "msi") msi++;
    if (i > 0 && sorted[i - 1].iovaLast >= r.iovaStart) {
      throw new RangeError(
        `virtio-iommu: reserved regions at 0x${sorted[i - 1].iovaStart.toString(16)} and 0x${r.iovaStart.toString(16)} overlap`,
      );
    }
  }
  if (msi > 1) throw new RangeError("virtio-iommu: more than one MSI reserved region for an endpoint");
  return sorted;
}

/** The first region overlapping [iovaStart, iovaLast], or undefined. */
export function findOverlappingRegion(
  regions: readonly ReservedRegion[],
  iovaStart: number,
  iovaLast: number,
): ReservedRegion | undefined {
  for (const r of regions) {
    if (r.iovaStart <= iovaLast && iovaStart <= r.iovaLast) return r;
  }
  return undefined;
}
