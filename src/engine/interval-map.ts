/**
 * An ordered map of non-overlapping closed intervals [start, last] to values.
 *
 * Used for the mappings of a virtio-iommu domain and the DMA entries of the host VFIO model.
 * Stored as sorted chunks of bounded size, so insertion and removal cost O(sqrt n)-ish moves
 * instead of O(n), and lookups are two binary searches. Intervals are never merged or split
 * here: callers decide those semantics.
 */

const CHUNK_MAX = 64;

interface Chunk<T> {
  starts: number[];
  lasts: number[];
  values: T[];
}

export interface IntervalEntry<T> {
  readonly start: number;
  readonly last: number;
  readonly value: T;
}

export class IntervalMap<T> {
  private chunks: Chunk<T>[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  clear(): void {
    this.chunks = [];
    this.count = 0;
  }

  /** Index of the last chunk whose first start is <= addr, or -1. */
  private chunkFor(addr: number): number {
    const chunks = this.chunks;
    let lo = 0;
    let hi = chunks.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (chunks[mid].starts[0] <= addr) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  /** Index within `starts` of the last start <= addr, or -1. */
  private static floorIndex(starts: number[], addr: number): number {
    let lo = 0;
    let hi = starts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= addr) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  /** The interval containing `addr`, or undefined. */
  find(addr: number): IntervalEntry<T> | undefined {
    const c = this.chunkFor(addr);
    if (c < 0) return undefined;
    const chunk = this.chunks[c];
    const i = IntervalMap.floorIndex(chunk.starts, addr);
    if (i < 0 || chunk.lasts[i] < addr) return undefined;
    return { start: chunk.starts[i], last: chunk.lasts[i], value: chunk.values[i] };
  }

  /** The value of the interval containing `addr` (no allocation), or undefined. */
  valueAt(addr: number): T | undefined {
    const c = this.chunkFor(addr);
    if (c < 0) return undefined;
    const chunk = this.chunks[c];
    const i = IntervalMap.floorIndex(chunk.starts, addr);
    if (i < 0 || chunk.lasts[i] < addr) return undefined;
    return chunk.values[i];
  }

  /** Every interval overlapping [start, last], in address order. */
  overlapping(start: number, last: number): IntervalEntry<T>[] {
    const out: IntervalEntry<T>[] = [];
    let c = this.chunkFor(start);
    let i: number;
    if (c < 0) {
      c = 0;
      i = 0;
    } else {
      i = IntervalMap.floorIndex(this.chunks[c].starts, start);
      if (i < 0) i = 0;
    }
    for (; c < this.chunks.length; c++, i = 0) {
      const chunk = this.chunks[c];
      for (; i < chunk.starts.length; i++) {
        if (chunk.starts[i] > last) return out;
        if (chunk.lasts[i] >= start)
          out.push({ start: chunk.starts[i], last: chunk.lasts[i], value: chunk.values[i] });
      }
    }
    return out;
  }

  /** True when some interval contains `addr` (no allocation). */
  private contains(addr: number): boolean {
    const c = this.chunkFor(addr);
    if (c < 0) return false;
    const chunk = this.chunks[c];
    const i = IntervalMap.floorIndex(chunk.starts, addr);
    return i >= 0 && chunk.lasts[i] >= addr;
  }

  /** True when any interval overlaps [start, last]. */
  overlaps(start: number, last: number): boolean {
    if (this.contains(start)) return true;
    // Otherwise an overlap must start inside (start, last]: the last interval starting <= last.
    const c = this.chunkFor(last);
    if (c < 0) return false;
    const chunk = this.chunks[c];
    const i = IntervalMap.floorIndex(chunk.starts, last);
    return i >= 0 && chunk.lasts[i] >= start;
  }

  /** Inserts [start, last]; the caller guarantees it overlaps nothing (checked: throws if it does). */
  insert(start: number, last: number, value: T): void {
    if (last < start) throw new RangeError("interval last < start");
    if (this.overlaps(start, last)) throw new RangeError("interval overlaps an existing one");
    this.count++;
    if (this.chunks.length === 0) {
      this.chunks.push({ starts: [start], lasts: [last], values: [value] });
      return;
    }
    let c = this.chunkFor(start);
    if (c < 0) c = 0;
    const chunk = this.chunks[c];
    const i = IntervalMap.floorIndex(chunk.starts, start) + 1;
    chunk.starts.splice(i, 0, start);
    chunk.lasts.splice(i, 0, last);
    chunk.values.splice(i, 0, value);
    if (chunk.starts.length > CHUNK_MAX * 2) {
      const half = chunk.starts.length >> 1;
      this.chunks.splice(c + 1, 0, {
        starts: chunk.starts.splice(half),
        lasts: chunk.lasts.splice(half),
        values: chunk.values.splice(half),
      });
    }
  }

  /** Removes the interval that starts exactly at `start`; returns it, or undefined. */
  remove(start: number): IntervalEntry<T> | undefined {
    const c = this.chunkFor(start);
    if (c < 0) return undefined;
    const chunk = this.chunks[c];
    const i = IntervalMap.floorIndex(chunk.starts, start);
    if (i < 0 || chunk.starts[i] !== start) return undefined;
    const entry = { start, last: chunk.lasts[i], value: chunk.values[i] };
    chunk.starts.splice(i, 1);
    chunk.lasts.splice(i, 1);
    chunk.values.splice(i, 1);
    if (chunk.starts.length === 0) this.chunks.splice(c, 1);
    this.count--;
    return entry;
  }

  /** Every value in address order, and the map emptied: O(n), one array, no entry objects. */
  takeAllValues(): T[] {
    const out: T[] = [];
    for (const chunk of this.chunks) for (const v of chunk.values) out.push(v);
    this.clear();
    return out;
  }

  *entries(): IterableIterator<IntervalEntry<T>> {
    for (const chunk of this.chunks) {
      for (let i = 0; i < chunk.starts.length; i++) {
        yield { start: chunk.starts[i], last: chunk.lasts[i], value: chunk.values[i] };
      }
    }
  }
}
