/**
 * Fast little-endian reads and writes of translation-structure entries in guest RAM for the
 * table walkers: the RAM regions (fixed for a `GuestMemory`'s lifetime) with one DataView each
 * and a last-hit region, so an entry read is a bounds check and a DataView load.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";

export class GuestRam {
  private readonly starts: Float64Array;
  private readonly ends: Float64Array;
  private readonly views: DataView[];
  private last = 0;
  /** Low and high dwords of the last `read64`. */
  lo = 0;
  hi = 0;

  constructor(memory: GuestMemory) {
    const regions = memory.regions;
    this.starts = new Float64Array(regions.length);
    this.ends = new Float64Array(regions.length);
    this.views = regions.map((r, i) => {
      this.starts[i] = r.gpa;
      this.ends[i] = r.gpa + r.sizeBytes;
      return new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
    });
  }

  /** Index of the region holding [gpa, gpa + sizeBytes), or -1. */
  private region(gpa: number, sizeBytes: number): number {
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
