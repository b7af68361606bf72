/**
 * Guest physical memory: the one interface every model, device and host reads and writes guest
 * memory through, over a pluggable backing (memory-backing.ts): byte-backed RAM regions
 * (`RamRegions`, the default: anonymous memory, KVM's mappings, a memfd), or a store whose
 * regions come and go (the vfio-user server's file-mapped and message-backed regions).
 *
 * Every access is bounds-checked and lies inside one region. Two families of accessors:
 *  - throwing: `view`, `read`, `write`, `fill`, `readU8`..`writeU64` throw `GuestMemoryError`
 *    when the access is not RAM (callers on guest-driven paths check `isRam` first or catch it
 *    at the device boundary);
 *  - returning the fault: `tryRead`, `tryWrite` return the `GuestMemoryError` (or null), and
 *    `read64` / `tryWriteU32` return false, for table walkers and queues that turn a bad
 *    guest address into their architecture's fault. `read64` leaves the entry in `lo` / `hi`
 *    (two dwords: no bigint, no allocation).
 * `generation` changes whenever the regions do (`addRegion`, `removeRegion`, or the backing's
 * own changes), so caches of region views know to rebuild.
 */
import { GuestMemoryError, type MemoryBacking, type RamRegion } from "./memory-backing.ts";
import { RamRegions } from "./ram-regions.ts";

export { GuestMemoryError, type MemoryBacking, type RamRegion } from "./memory-backing.ts";

export class GuestMemory {
  readonly backing: MemoryBacking;
  /** Low and high dwords of the last successful `read64`. */
  lo = 0;
  hi = 0;
  private readonly table: RamRegions | null;
  // Staging for scalar accesses a backing cannot locate as one view (message- or file-backed).
  private readonly scratch = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private readonly scratchBySize: Uint8Array[] = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((n) =>
    this.scratch.subarray(0, n),
  );

  /** RAM regions (they must not overlap), or any other backing. */
  constructor(regions: readonly RamRegion[] | MemoryBacking) {
    if (Array.isArray(regions)) {
      this.table = new RamRegions(regions as readonly RamRegion[]);
      this.backing = this.table;
    } else {
      this.table = null;
      this.backing = regions as MemoryBacking;
    }
  }

  /** Anonymous RAM over fresh ArrayBuffers, one region per entry. */
  static anonymous(layout: readonly { gpa: number; sizeBytes: number; name?: string }[]): GuestMemory {
    return new GuestMemory(
      layout.map(({ gpa, sizeBytes, name }) => ({ gpa, sizeBytes, bytes: new Uint8Array(sizeBytes), name })),
    );
  }

  /**
   * Changes whenever the set of regions changes, so a user that caches views of the regions
   * (a virtqueue's ring window) knows to rebuild them. Fixed RAM never changes it.
   */
  get generation(): number {
    return this.backing.generation;
  }

  get regions(): readonly RamRegion[] {
    return this.backing.regions;
  }

  get totalBytes(): number {
    return this.backing.totalBytes;
  }

  /** Adds a RAM region (byte-backed memory only); bumps `generation`. */
  addRegion(region: RamRegion): void {
    this.ownTable().add(region);
  }

  /** Removes the RAM region starting at `gpa` (byte-backed memory only); bumps `generation`. */
  removeRegion(gpa: number): boolean {
    return this.ownTable().remove(gpa);
  }

  private ownTable(): RamRegions {
    if (this.table === null) throw new Error("this guest memory's regions are managed by its backing");
    return this.table;
  }

  /** True when [gpa, gpa + sizeBytes) lies inside one RAM region. */
  isRam(gpa: number, sizeBytes: number): boolean {
    return this.backing.isRam(gpa, sizeBytes);
  }

  /**
   * How many bytes from `gpa` are contiguous RAM inside one view (0 when `gpa` is not RAM).
   * Used by scatter/gather to split a range at region boundaries.
   */
  contiguousBytesAt(gpa: number): number {
    return this.backing.contiguousBytesAt(gpa);
  }

  /** A zero-copy view of [gpa, gpa + sizeBytes); it aliases guest RAM. */
  view(gpa: number, sizeBytes: number): Uint8Array {
    const v = this.backing.view(gpa, sizeBytes);
    if (v instanceof GuestMemoryError) throw v;
    return v;
  }

  read(gpa: number, dest: Uint8Array): void {
    const e = this.backing.read(gpa, dest);
    if (e !== null) throw e;
  }

  write(gpa: number, src: Uint8Array): void {
    const e = this.backing.write(gpa, src);
    if (e !== null) throw e;
  }

  fill(gpa: number, sizeBytes: number, value: number): void {
    const e = this.backing.fill(gpa, sizeBytes, value);
    if (e !== null) throw e;
  }

  /** `read` that returns why it failed instead of throwing. */
  tryRead(gpa: number, dest: Uint8Array): GuestMemoryError | null {
    return this.backing.read(gpa, dest);
  }

  /** `write` that returns why it failed instead of throwing. */
  tryWrite(gpa: number, src: Uint8Array): GuestMemoryError | null {
    return this.backing.write(gpa, src);
  }

  /** Reads the little-endian 8 bytes at `gpa` into `lo` / `hi`; false (nothing read) when not RAM. */
  read64(gpa: number): boolean {
    const b = this.backing;
    const v = b.locate(gpa, 8);
    if (v !== null) {
      const off = b.offset;
      this.lo = v.getUint32(off, true);
      this.hi = v.getUint32(off + 4, true);
      return true;
    }
    if (b.read(gpa, this.scratch) !== null) return false;
    this.lo = this.scratchView.getUint32(0, true);
    this.hi = this.scratchView.getUint32(4, true);
    return true;
  }

  /** Writes a little-endian dword at `gpa`; false (nothing written) when not RAM. */
  tryWriteU32(gpa: number, value: number): boolean {
    const b = this.backing;
    const v = b.locate(gpa, 4);
    if (v !== null) {
      v.setUint32(b.offset, value >>> 0, true);
      return true;
    }
    this.scratchView.setUint32(0, value >>> 0, true);
    return b.write(gpa, this.scratchBySize[4]) === null;
  }

  /** The scratch holding `sizeBytes` read at `gpa` (a backing without a view for it); throws. */
  private staged(gpa: number, sizeBytes: number): DataView {
    const e = this.backing.read(gpa, this.scratchBySize[sizeBytes]);
    if (e !== null) throw e;
    return this.scratchView;
  }

  /** Writes the scratch's first `sizeBytes` at `gpa`; throws. */
  private flush(gpa: number, sizeBytes: number): void {
    const e = this.backing.write(gpa, this.scratchBySize[sizeBytes]);
    if (e !== null) throw e;
  }

  readU8(gpa: number): number {
    const b = this.backing;
    const v = b.locate(gpa, 1);
    return v !== null ? v.getUint8(b.offset) : this.staged(gpa, 1).getUint8(0);
  }
  readU16(gpa: number): number {
    const b = this.backing;
    const v = b.locate(gpa, 2);
    return v !== null ? v.getUint16(b.offset, true) : this.staged(gpa, 2).getUint16(0, true);
  }
  readU32(gpa: number): number {
    const b = this.backing;
    const v = b.locate(gpa, 4);
    return v !== null ? v.getUint32(b.offset, true) : this.staged(gpa, 4).getUint32(0, true);
  }
  readU64(gpa: number): bigint {
    const b = this.backing;
    const v = b.locate(gpa, 8);
    return v !== null ? v.getBigUint64(b.offset, true) : this.staged(gpa, 8).getBigUint64(0, true);
  }
  writeU8(gpa: number, value: number): void {
    const b = this.backing;
    const v = b.locate(gpa, 1);
    if (v !== null) {
      v.setUint8(b.offset, value);
      return;
    }
    this.scratchView.setUint8(0, value);
    this.flush(gpa, 1);
  }
  writeU16(gpa: number, value: number): void {
    const b = this.backing;
    const v = b.locate(gpa, 2);
    if (v !== null) {
      v.setUint16(b.offset, value, true);
      return;
    }
    this.scratchView.setUint16(0, value, true);
    this.flush(gpa, 2);
  }
  writeU32(gpa: number, value: number): void {
    const b = this.backing;
    const v = b.locate(gpa, 4);
    if (v !== null) {
      v.setUint32(b.offset, value, true);
      return;
    }
    this.scratchView.setUint32(0, value, true);
    this.flush(gpa, 4);
  }
  writeU64(gpa: number, value: bigint): void {
    const b = this.backing;
    const v = b.locate(gpa, 8);
    if (v !== null) {
      v.setBigUint64(b.offset, value, true);
      return;
    }
    this.scratchView.setBigUint64(0, value, true);
    this.flush(gpa, 8);
  }

  describe(): string {
    return this.backing.describe();
  }
}
