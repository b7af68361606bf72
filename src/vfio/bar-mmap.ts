/**
 * BARs of an assigned device mapped straight into the guest: the parts of a VFIO region the
 * kernel lets us mmap (FLAG_MMAP, or the sparse-mmap capability's areas) become guest memory at
 * the BAR's address (a KVM memory slot), so the guest's accesses there no longer exit to the VMM.
 * What must stay trapped (the MSI-X table and PBA, emulated here; QEMU keeps them trapped too)
 * is cut out at page granularity and keeps going through the BAR's handler, as does any part the
 * kernel refuses to mmap. The slots follow the guest: mapped while Memory decode is on and the
 * BAR holds a valid address, moved when the guest moves the BAR, removed when it clears decode.
 */
import type { VfioPciDevice } from "./device.ts";

export const HOST_PAGE_BYTES = 4096;

/** How the VMM puts host memory into the guest's physical address space (KVM memory slots). */
export interface GuestMemoryMapper {
  /** Maps `sizeBytes` at `hostAddress` to guest `gpa`; a handle, or null when refused (overlap). */
  map(gpa: number, sizeBytes: number, hostAddress: bigint): number | null;
  unmap(handle: number): void;
}

export interface BarPiece {
  /** Offset in the BAR (page aligned). */
  readonly offset: number;
  readonly sizeBytes: number;
}

/**
 * The page-aligned parts of `areas` (offsets in a BAR of `barSizeBytes`) that do not touch any of
 * the `trapped` [start, end) ranges, whole pages only.
 */
export function mappablePieces(
  areas: readonly { readonly offset: number; readonly sizeBytes: number }[],
  barSizeBytes: number,
  trapped: readonly (readonly [number, number])[],
): BarPiece[] {
  const page = HOST_PAGE_BYTES;
  const holes = trapped
    .map(([s, e]) => [Math.floor(s / page) * page, Math.ceil(e / page) * page] as const)
    .sort((a, b) => a[0] - b[0]);
  const out: BarPiece[] = [];
  for (const area of areas) {
    let start = Math.ceil(Math.max(0, area.offset) / page) * page;
    const end = Math.floor(Math.min(barSizeBytes, area.offset + area.sizeBytes) / page) * page;
    for (const [hs, he] of holes) {
      if (he <= start || hs >= end) continue;
      if (hs > start) out.push({ offset: start, sizeBytes: hs - start });
      start = Math.max(start, he);
    }
    if (end > start) out.push({ offset: start, sizeBytes: end - start });
  }
  return out;
}

/** One BAR's mmapped pieces and where they are in the guest now. */
export class BarMmap {
  readonly barIndex: number;
  readonly pieces: readonly BarPiece[];
  private readonly device: VfioPciDevice;
  /** Host address of each piece (mmapped on first use; null: the kernel refused, stays trapped). */
  private hostAddresses: (bigint | null)[] | null = null;
  private handles: number[] = [];
  /** The guest address the pieces are mapped at now (-1: not mapped). */
  mappedAt = -1;
  mappedBytes = 0;
  /** Slots the VMM refused (the BAR overlaps RAM or another slot): those pieces stay trapped. */
  refusals = 0;
  moves = 0;

  constructor(device: VfioPciDevice, barIndex: number, pieces: readonly BarPiece[]) {
    this.device = device;
    this.barIndex = barIndex;
    this.pieces = pieces;
  }

  /** Maps the pieces at BAR address `base` (-1: unmaps them); nothing to do when already there. */
  moveTo(base: number, mapper: GuestMemoryMapper): void {
    if (base === this.mappedAt) return;
    for (const h of this.handles) mapper.unmap(h);
    this.handles = [];
    this.mappedBytes = 0;
    this.mappedAt = base;
    if (base < 0) return;
    this.moves++;
    if (this.hostAddresses === null) {
      this.hostAddresses = this.pieces.map((p) =>
        this.device.mmapRegion(this.barIndex, p.offset, p.sizeBytes),
      );
    }
    this.pieces.forEach((p, i) => {
      const host = this.hostAddresses?.[i] ?? null;
      if (host === null) return;
      const handle = mapper.map(base + p.offset, p.sizeBytes, host);
      if (handle === null) {
        this.refusals++;
        return;
      }
      this.handles.push(handle);
      this.mappedBytes += p.sizeBytes;
    });
  }
}
