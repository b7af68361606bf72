/**
 * What backs guest memory: the contract between `GuestMemory` (the one interface every model,
 * device and host reads guest memory through) and the stores behind it: byte arrays
 * (`RamRegions`: anonymous memory, KVM's mappings), a file mapping, or a message transport (the
 * vfio-user server's `SharedRegions`). A backing answers where an access lands; `GuestMemory`
 * builds every accessor, throwing or not, on top of that once.
 */

export interface RamRegion {
  readonly gpa: number;
  readonly sizeBytes: number;
  /** The region's bytes; `bytes.length === sizeBytes`. */
  readonly bytes: Uint8Array;
  /** Optional name, shown in errors and in `describe()`. */
  readonly name?: string;
}

export class GuestMemoryError extends Error {
  readonly gpa: number;
  readonly sizeBytes: number;
  constructor(gpa: number, sizeBytes: number, why = "not inside guest RAM") {
    super(`guest memory access [0x${gpa.toString(16)}, +0x${sizeBytes.toString(16)}) ${why}`);
    this.name = "GuestMemoryError";
    this.gpa = gpa;
    this.sizeBytes = sizeBytes;
  }
}

export interface MemoryBacking {
  /** Changes whenever the set of regions changes (caches of region views compare it). */
  readonly generation: number;
  /** The regions with bytes to address (an identity map for a host IOMMU, caches of views). */
  readonly regions: readonly RamRegion[];
  readonly totalBytes: number;
  /**
   * The DataView holding all of [gpa, gpa + sizeBytes), with the access's offset in it left in
   * `offset`; null when the range is not RAM or not addressable as one view (then `read` /
   * `write` decide). The hot path of every scalar access: no allocation.
   */
  locate(gpa: number, sizeBytes: number): DataView | null;
  /** Offset into the DataView the last `locate` returned. */
  readonly offset: number;
  /** True when [gpa, gpa + sizeBytes) lies inside one region. */
  isRam(gpa: number, sizeBytes: number): boolean;
  /** Bytes from `gpa` that one view covers (0 when `gpa` is not RAM). */
  contiguousBytesAt(gpa: number): number;
  /** A view aliasing [gpa, gpa + sizeBytes), or why there is none. */
  view(gpa: number, sizeBytes: number): Uint8Array | GuestMemoryError;
  /** Copies out of / into guest memory; null, or why the access failed (nothing is thrown). */
  read(gpa: number, dest: Uint8Array): GuestMemoryError | null;
  write(gpa: number, src: Uint8Array): GuestMemoryError | null;
  fill(gpa: number, sizeBytes: number, value: number): GuestMemoryError | null;
  describe(): string;
}
