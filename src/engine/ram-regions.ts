/**
 * The byte-backed `MemoryBacking`: RAM regions, each a byte array at a guest-physical address
 * (an ArrayBuffer in tests, memory mapped from KVM or from a memfd). Regions can be added and
 * removed; each change bumps `generation`. Lookups try the last region hit first.
 */
import { GuestMemoryError, type MemoryBacking, type RamRegion } from "./memory-backing.ts";

interface RegionSlot {
  readonly region: RamRegion;
  /** The region's first address (kept here: the lookup reads no other object). */
  readonly gpa: number;
  readonly end: number; // exclusive
  readonly view: DataView;
}

function slotOf(region: RamRegion): RegionSlot {
  if (region.bytes.length !== region.sizeBytes) {
    throw new Error(`RAM region at 0x${region.gpa.toString(16)}: bytes.length != sizeBytes`);
  }
  if (!Number.isSafeInteger(region.gpa) || region.gpa < 0 || region.sizeBytes <= 0) {
    throw new Error(`RAM region at 0x${region.gpa.toString(16)} has an invalid address or size`);
  }
  return {
    region,
    gpa: region.gpa,
    end: region.gpa + region.sizeBytes,
    view: new DataView(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength),
  };
}

export class RamRegions implements MemoryBacking {
  generation = 0;
  offset = 0;
  private slots: RegionSlot[];
  private last: RegionSlot;

  constructor(regions: readonly RamRegion[]) {
    if (regions.length === 0) throw new Error("guest memory needs at least one RAM region");
    this.slots = [...regions].sort((a, b) => a.gpa - b.gpa).map(slotOf);
    for (let i = 1; i < this.slots.length; i++) {
      if (this.slots[i].region.gpa < this.slots[i - 1].end) throw new Error("RAM regions overlap");
    }
    this.last = this.slots[0];
  }

  /** Adds a region (memory hot-add, a newly shared range); one overlapping another is refused. */
  add(region: RamRegion): void {
    const slot = slotOf(region);
    for (const s of this.slots) {
      if (slot.gpa < s.end && s.gpa < slot.end) throw new Error("RAM regions overlap");
    }
    this.slots = [...this.slots, slot].sort((a, b) => a.region.gpa - b.region.gpa);
    this.generation++;
  }

  /** Removes the region starting at `gpa`; false when there is none (the last one stays). */
  remove(gpa: number): boolean {
    const i = this.slots.findIndex((s) => s.region.gpa === gpa);
    if (i < 0 || this.slots.length === 1) return false;
    this.slots = this.slots.filter((_, k) => k !== i);
    this.last = this.slots[0];
    this.generation++;
    return true;
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
    if (gpa >= last.gpa && gpa + sizeBytes <= last.end) return last;
    for (const s of this.slots) {
      if (gpa >= s.gpa && gpa + sizeBytes <= s.end) {
        this.last = s;
        return s;
      }
    }
    return undefined;
  }

  locate(gpa: number, sizeBytes: number): DataView | null {
    const s = this.slotFor(gpa, sizeBytes);
    if (s === undefined) return null;
    this.offset = gpa - s.gpa;
    return s.view;
  }

  isRam(gpa: number, sizeBytes: number): boolean {
    return sizeBytes >= 0 && this.slotFor(gpa, sizeBytes) !== undefined;
  }

  contiguousBytesAt(gpa: number): number {
    const s = this.slotFor(gpa, 1);
    return s === undefined ? 0 : s.end - gpa;
  }

  view(gpa: number, sizeBytes: number): Uint8Array | GuestMemoryError {
    const s = this.slotFor(gpa, sizeBytes);
    if (s === undefined || !(sizeBytes >= 0)) return new GuestMemoryError(gpa, sizeBytes);
    const off = gpa - s.gpa;
    return s.region.bytes.subarray(off, off + sizeBytes);
  }

  read(gpa: number, dest: Uint8Array): GuestMemoryError | null {
    const n = dest.length;
    const s = this.slotFor(gpa, n);
    if (s === undefined) return new GuestMemoryError(gpa, n);
    const off = gpa - s.gpa;
    dest.set(s.region.bytes.subarray(off, off + n));
    return null;
  }

  write(gpa: number, src: Uint8Array): GuestMemoryError | null {
    const s = this.slotFor(gpa, src.length);
    if (s === undefined) return new GuestMemoryError(gpa, src.length);
    s.region.bytes.set(src, gpa - s.gpa);
    return null;
  }

  fill(gpa: number, sizeBytes: number, value: number): GuestMemoryError | null {
    const s = this.slotFor(gpa, sizeBytes);
    if (s === undefined || !(sizeBytes >= 0)) return new GuestMemoryError(gpa, sizeBytes);
    const off = gpa - s.gpa;
    s.region.bytes.fill(value, off, off + sizeBytes);
    return null;
  }

  describe(): string {
    return this.slots
      .map((s) => `${s.region.name ?? "ram"} [0x${s.region.gpa.toString(16)}, 0x${s.end.toString(16)})`)
      .join(", ");
  }
}
