/**
 * Fast little-endian reads and writes of translation-structure entries in guest RAM for the
 * table walkers: the RAM regions with one DataView each and a last-hit region, so an entry read
 * is a generation check, a bounds check and a DataView load. The table is rebuilt when the
 * memory's `generation` says its regions changed.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";

export class GuestRam {
  private readonly memory: GuestMemory;
  /** `memory.generation` when the region table was taken; a change rebuilds it. */
  private generation = -1;
  private starts = new Float64Array(0);
  private ends = new Float64Array(0);
  private views: DataView[] = [];
  private last = 0;
  /** Low and high dwords of the last `read64`. */
  lo = 0;
  hi = 0;

  constructor(memory: GuestMemory) {
    this.memory = memory;
    this.snapshot();
  }

  /** Takes the region table of the current generation. */
  private snapshot(): void {
    const regions = this.memory.regions;
    this.generation = this.memory.generation;
    this.starts = new Float64Array(regions.length);
    this.ends = new Float64Array(regions.length);
    this.views = regions.map((r, i) => {
      this.starts[i] = r.gpa;
      this.ends[i] = r.gpa + r.sizeBytes;
      return new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
    });
    this.last = 0;
  }

  /** Index of the region holding [gpa, gpa + sizeBytes), or -1. */
  private region(gpa: number, sizeBytes: number): number {
    if (this.memory.generation !== this.generation) this.snapshot();
    const i = this.last;
    if (gpa >= this.starts[i] && gpa + sizeBytes <= this.ends[i]) return i;
    for (let k = 0; k < this.starts.length; k++) {
      if (gpa >= this.starts[k] && gpa + sizeBytes <= this.ends[k]) {
        this.last = k;
        return k;
      }
    }
    return -1;
  }

  /** Reads the 8-byte entry at `gpa` into `lo`/`hi`; false when it is not RAM. */
  read64(gpa: number): boolean {
    const i = this.region(gpa, 8);
    if (i < 0) return false;
    const view = this.views[i];
    const off = gpa - this.starts[i];
    this.lo = view.getUint32(off, true);
    this.hi = view.getUint32(off + 4, true);
    return true;
  }

  /** Writes the low dword of the entry at `gpa` (A/D updates); false when it is not RAM. */
  write32(gpa: number, value: number): boolean {
    const i = this.region(gpa, 4);
    if (i < 0) return false;
    this.views[i].setUint32(gpa - this.starts[i], value >>> 0, true);
    return true;
  }
}
