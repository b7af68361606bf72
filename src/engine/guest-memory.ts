/**
 * Guest physical memory: a set of RAM regions, each a byte array at a guest-physical address.
 *
 * The backing store is any Uint8Array: an ArrayBuffer in tests, memory mapped from KVM, or a
 * region a vfio-user client shares by file descriptor. Every access is bounds-checked; an access
 * that is not entirely inside one RAM region throws `GuestMemoryError` (callers on guest-driven
 * paths check with `isRam` first or catch it at the device boundary).
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

interface RegionSlot {
  readonly region: RamRegion;
  readonly end: number; // exclusive
  readonly view: DataView;
}

export class GuestMemory {
  /**
   * Changes whenever the set of regions changes, so a user that caches views of the regions
   * (a virtqueue's ring window, the VT-d walkers' region table) knows to rebuild them. Fixed RAM
   * never changes it; memory whose regions come and go (vfio-user clients' DMA regions) bumps it.
   */
  generation = 0;
  private readonly slots: RegionSlot[];
  private last: RegionSlot;

  constructor(regions: readonly RamRegion[]) {
    if (regions.length === 0) throw new Error("guest memory needs at least one RAM region");
    const sorted = [...regions].sort((a, b) => a.gpa - b.gpa);
    this.slots = sorted.map((region) => {
      if (region.bytes.length !== region.sizeBytes) {
        throw new Error(`RAM region at 0x${region.gpa.toString(16)}: bytes.length != sizeBytes`);
      }
      if (!Number.isSafeInteger(region.gpa) || region.gpa < 0 || region.sizeBytes <= 0) {
        throw new Error(`RAM region at 0x${region.gpa.toString(16)} has an invalid address or size`);
      }
      return {
        region,
        end: region.gpa + region.sizeBytes,
        view: new DataView(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength),
      };
    });
    for (let i = 1; i < this.slots.length; i++) {
      if (this.slots[i].region.gpa < this.slots[i - 1].end) throw new Error("RAM regions overlap");
    }
    this.last = this.slots[0];
  }

  /** Anonymous RAM over fresh ArrayBuffers, one region per entry. */
  static anonymous(layout: readonly { gpa: number; sizeBytes: number; name?: string }[]): GuestMemory {
    return new GuestMemory(
      layout.map(({ gpa, sizeBytes, name }) => ({ gpa, sizeBytes, bytes: new Uint8Array(sizeBytes), name })),
    );
  }

  get regions(): readonly RamRegion[] {
    return this.slots.map((s) => s.region);
  }

  get totalBytes(): number {
    let total = 0;
    for (const s of this.slots) total += s.region.sizeBytes;
    return total;
  }

  /** The slot holding all of [gpa, gpa + sizeBytes), or undefined. */
  private slotFor(gpa: number, sizeBytes: number): RegionSlot | undefined {
    const last = this.last;
    if (gpa >= last.region.gpa && gpa + sizeBytes <= last.end) return last;
    for (const s of this.slots) {
      if (gpa >= s.region.gpa && gpa + sizeBytes <= s.end) {
        this.last = s;
        return s;
      }
    }
    return undefined;
  }

  private slotOrThrow(gpa: number, sizeBytes: number): RegionSlot {
    const s = this.slotFor(gpa, sizeBytes);
    if (s === undefined || !(sizeBytes >= 0)) throw new GuestMemoryError(gpa, sizeBytes);
    return s;
  }

  /** True when [gpa, gpa + sizeBytes) lies inside one RAM region. */
  isRam(gpa: number, sizeBytes: number): boolean {
    return sizeBytes >= 0 && this.slotFor(gpa, sizeBytes) !== undefined;
  }

  /**
   * How many bytes from `gpa` are contiguous RAM inside one region (0 when `gpa` is not RAM).
   * Used by scatter/gather to split a range at region boundaries.
   */
  contiguousBytesAt(gpa: number): number {
    const s = this.slotFor(gpa, 1);
    return s === undefined ? 0 : s.end - gpa;
  }

  /** A zero-copy view of [gpa, gpa + sizeBytes); it aliases guest RAM. */
  view(gpa: number, sizeBytes: number): Uint8Array {
    const s = this.slotOrThrow(gpa, sizeBytes);
    const off = gpa - s.region.gpa;
    return s.region.bytes.subarray(off, off + sizeBytes);
  }

  read(gpa: number, dest: Uint8Array): void {
    dest.set(this.view(gpa, dest.length));
  }

  write(gpa: number, src: Uint8Array): void {
    this.view(gpa, src.length).set(src);
  }

  fill(gpa: number, sizeBytes: number, value: number): void {
    this.view(gpa, sizeBytes).fill(value);
  }

  readU8(gpa: number): number {
    const s = this.slotOrThrow(gpa, 1);
    return s.view.getUint8(gpa - s.region.gpa);
  }
  readU16(gpa: number): number {
    const s = this.slotOrThrow(gpa, 2);
    return s.view.getUint16(gpa - s.region.gpa, true);
  }
  readU32(gpa: number): number {
    const s = this.slotOrThrow(gpa, 4);
    return s.view.getUint32(gpa - s.region.gpa, true);
  }
  readU64(gpa: number): bigint {
    const s = this.slotOrThrow(gpa, 8);
    return s.view.getBigUint64(gpa - s.region.gpa, true);
  }
  writeU8(gpa: number, value: number): void {
    const s = this.slotOrThrow(gpa, 1);
    s.view.setUint8(gpa - s.region.gpa, value);
  }
  writeU16(gpa: number, value: number): void {
    const s = this.slotOrThrow(gpa, 2);
    s.view.setUint16(gpa - s.region.gpa, value, true);
  }
  writeU32(gpa: number, value: number): void {
    const s = this.slotOrThrow(gpa, 4);
    s.view.setUint32(gpa - s.region.gpa, value, true);
  }
  writeU64(gpa: number, value: bigint): void {
    const s = this.slotOrThrow(gpa, 8);
    s.view.setBigUint64(gpa - s.region.gpa, value, true);
  }

  describe(): string {
    return this.slots
      .map((s) => `${s.region.name ?? "ram"} [0x${s.region.gpa.toString(16)}, 0x${s.end.toString(16)})`)
      .join(", ");
  }
}
