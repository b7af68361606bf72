/**
 * The IOTLB shared by the IOMMU models: a bounded cache of translated blocks.
 *
 * Entries are keyed by (tag, page) where the tag names an address space as the model defines it
 * (a virtio-iommu domain, a VT-d domain and PASID, an SMMUv3 VMID and ASID) and the page is
 * 4 KiB, 2 MiB or 1 GiB. Storage is an open-addressing hash table over typed arrays, so lookups
 * allocate nothing. Capacity is bounded; a full cache evicts with a clock hand.
 *
 * Where misses come from: every entry that leaves the cache leaves a "ghost" (its key, output
 * and why it left: invalidated or evicted) in a direct-mapped table of the same size. A later
 * fill of the same key is then counted as a refill after invalidation (with the same output:
 * the invalidation dropped a translation that had not changed) or after eviction; a fill with
 * no ghost is a cold fill. Ghost slots are overwritten on collision, so the split is a close
 * estimate, never more than the fills it divides.
 */
import type { Translation } from "./translation.ts";

export const PAGE_SHIFTS = [12, 21, 30] as const;
export type PageShift = (typeof PAGE_SHIFTS)[number];
const PAGE_SIZES = [0x1000, 0x20_0000, 0x4000_0000] as const;

export interface IotlbStats {
  readonly capacity: number;
  readonly entries: number;
  readonly hits: number;
  readonly misses: number;
  readonly inserts: number;
  readonly evictions: number;
  readonly invalidations: number;
  readonly invalidatedEntries: number;
  /** Fills of a page never cached before (or whose ghost was overwritten). */
  readonly coldFills: number;
  /** Fills of a page an invalidation had dropped, translating to the same output and permissions. */
  readonly refillsUnchanged: number;
  /** Fills of a page an invalidation had dropped, now translating differently. */
  readonly refillsChanged: number;
  /** Fills of a page the capacity limit had evicted. */
  readonly refillsAfterEviction: number;
  /** Entries a model cached ahead of use (`prefetch`), and how many of them a lookup then used. */
  readonly prefetches: number;
  readonly prefetchesUsed: number;
}

const GHOST_NONE = 0;
const GHOST_INVALIDATED = 1;
const GHOST_EVICTED = 2;

const EMPTY = 0;
const FULL = 1;
/** Above this many candidate pages a range invalidation scans the table instead of probing. */
const PROBE_LIMIT = 64;

function shiftIndex(shift: number): number {
  return shift === 12 ? 0 : shift === 21 ? 1 : shift === 30 ? 2 : -1;
}

/** Bytes in a page of `shift` (a table lookup: a variable-exponent `2 ** n` is slow in V8). */
function pageBytes(shift: number): number {
  return shift === 12 ? 0x1000 : shift === 21 ? 0x20_0000 : 0x4000_0000;
}

export class Iotlb {
  readonly capacity: number;
  private readonly mask: number;
  private readonly state: Uint8Array;
  private readonly tags: Float64Array;
  private readonly iovaBases: Float64Array;
  private readonly gpaBases: Float64Array;
  private readonly shifts: Uint8Array;
  private readonly permsArr: Uint8Array;
  /** Live entries per page size (index 0: 4 KiB, 1: 2 MiB, 2: 1 GiB); lookups skip empty sizes. */
  private readonly perSize = new Int32Array(3);
  private count = 0;
  private hand = 0;
  /** Live entries per tag, so invalidating an address space with nothing cached costs nothing. */
  private readonly tagCounts = new Map<number, number>();
  /** Incremented by every invalidation; address spaces compare it to drop their own caches. */
  epoch = 0;

  hits = 0;
  misses = 0;
  inserts = 0;
  evictions = 0;
  invalidations = 0;
  invalidatedEntries = 0;
  coldFills = 0;
  refillsUnchanged = 0;
  refillsChanged = 0;
  refillsAfterEviction = 0;
  prefetches = 0;
  prefetchesUsed = 0;
  /** 1 while a prefetched entry has not been looked up yet. */
  private readonly unusedPrefetch: Uint8Array;

  /** Ghosts of entries that left (see the file comment): direct-mapped by the entry's hash. */
  private readonly ghostWhy: Uint8Array;
  private readonly ghostTags: Float64Array;
  private readonly ghostIovaBases: Float64Array;
  private readonly ghostGpaBases: Float64Array;
  private readonly ghostShifts: Uint8Array;
  private readonly ghostPerms: Uint8Array;

  constructor(capacity = 4096) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 22) {
      throw new Error(`IOTLB capacity must be an integer in [1, 2^22], got ${capacity}`);
    }
    this.capacity = capacity;
    let slots = 2;
    while (slots < capacity * 2) slots *= 2;
    this.mask = slots - 1;
    this.state = new Uint8Array(slots);
    this.tags = new Float64Array(slots);
    this.iovaBases = new Float64Array(slots);
    this.gpaBases = new Float64Array(slots);
    this.shifts = new Uint8Array(slots);
    this.permsArr = new Uint8Array(slots);
    this.unusedPrefetch = new Uint8Array(slots);
    this.ghostWhy = new Uint8Array(slots);
    this.ghostTags = new Float64Array(slots);
    this.ghostIovaBases = new Float64Array(slots);
    this.ghostGpaBases = new Float64Array(slots);
    this.ghostShifts = new Uint8Array(slots);
    this.ghostPerms = new Uint8Array(slots);
  }

  /** Leaves the ghost of slot `i`, which is about to leave for reason `why`. */
  private bury(i: number, why: number): void {
    const g = this.home(this.tags[i], this.iovaBases[i], this.shifts[i]);
    this.ghostWhy[g] = why;
    this.ghostTags[g] = this.tags[i];
    this.ghostIovaBases[g] = this.iovaBases[i];
    this.ghostGpaBases[g] = this.gpaBases[i];
    this.ghostShifts[g] = this.shifts[i];
    this.ghostPerms[g] = this.permsArr[i];
  }

  /** Classifies a new fill against the ghost of its key, and clears that ghost. */
  private classifyFill(tag: number, iovaBase: number, gpaBase: number, shift: number, perms: number): void {
    const g = this.home(tag, iovaBase, shift);
    const why = this.ghostWhy[g];
    if (
      why === GHOST_NONE ||
      this.ghostTags[g] !== tag ||
      this.ghostIovaBases[g] !== iovaBase ||
      this.ghostShifts[g] !== shift
    ) {
      this.coldFills++;
      return;
    }
    this.ghostWhy[g] = GHOST_NONE;
    if (why === GHOST_EVICTED) this.refillsAfterEviction++;
    else if (this.ghostGpaBases[g] === gpaBase && this.ghostPerms[g] === perms) this.refillsUnchanged++;
    else this.refillsChanged++;
  }

  get entries(): number {
    return this.count;
  }

  /** Hash of (tag, page number, page shift) into a slot index. */
  private hash(tag: number, page: number, shift: number): number {
    let h = Math.imul((page >>> 0) ^ Math.imul((page / 0x1_0000_0000) | 0, 0x9e3779b1), 0x85ebca6b);
    h ^= Math.imul((tag >>> 0) ^ Math.imul((tag / 0x1_0000_0000) | 0, 0x27d4eb2d) ^ shift, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 12;
    return h & this.mask;
  }

  private home(tag: number, iovaBase: number, shift: number): number {
    return this.hash(tag, Math.floor(iovaBase / PAGE_SIZES[shiftIndex(shift)]), shift);
  }

  private find(tag: number, iovaBase: number, shift: number): number {
    return this.probe(this.home(tag, iovaBase, shift), tag, iovaBase, shift);
  }

  private probe(start: number, tag: number, iovaBase: number, shift: number): number {
    let i = start;
    const state = this.state;
    while (state[i] === FULL) {
      if (this.iovaBases[i] === iovaBase && this.tags[i] === tag && this.shifts[i] === shift) return i;
      i = (i + 1) & this.mask;
    }
    return -1;
  }

  /**
   * Looks up the block containing `iova` in address space `tag`; on a hit fills `out`.
   * Permissions are not checked here: the caller compares `out.perms` with its access.
   */
  lookup(tag: number, iova: number, out: Translation): boolean {
    const perSize = this.perSize;
    for (let s = 0; s < 3; s++) {
      if (perSize[s] === 0) continue;
      const shift = PAGE_SHIFTS[s];
      const size = PAGE_SIZES[s];
      const page = Math.floor(iova / size);
      const base = page * size;
      const i = this.probe(this.hash(tag, page, shift), tag, base, shift);
      if (i >= 0) {
        this.hits++;
        if (this.unusedPrefetch[i] !== 0) {
          this.unusedPrefetch[i] = 0;
          this.prefetchesUsed++;
        }
        out.iovaBase = base;
        out.gpaBase = this.gpaBases[i];
        out.sizeBytes = size;
        out.perms = this.permsArr[i];
        return true;
      }
    }
    this.misses++;
    return false;
  }

  /** Caches a translated page. `iovaBase` and `gpaBase` must be aligned to 2^shift. */
  insert(tag: number, iovaBase: number, gpaBase: number, shift: PageShift, perms: number): void {
    if (shiftIndex(shift) < 0) throw new Error(`IOTLB page shift ${shift} is not 12, 21 or 30`);
    const size = pageBytes(shift);
    if (iovaBase % size !== 0 || gpaBase % size !== 0) {
      throw new Error(`IOTLB insert of a misaligned ${size}-byte page at iova 0x${iovaBase.toString(16)}`);
    }
    const existing = this.find(tag, iovaBase, shift);
    if (existing >= 0) {
      this.gpaBases[existing] = gpaBase;
      this.permsArr[existing] = perms;
      this.inserts++;
      return;
    }
    if (this.count >= this.capacity) this.evictOne();
    this.classifyFill(tag, iovaBase, gpaBase, shift, perms);
    this.place(tag, iovaBase, gpaBase, shift, perms);
    this.inserts++;
  }

  /** True when the 4 KiB page at `iovaBase` of `tag` is cached (a prefetch skips those). */
  holdsPage(tag: number, iovaBase: number): boolean {
    return this.find(tag, iovaBase, 12) >= 0;
  }

  /**
   * Caches a 4 KiB translation ahead of use (a model reading the neighbours of a leaf it walked:
   * VT-d and SMMUv3 allow caching any valid entry). An entry already cached is left alone.
   * Counted as a prefetch, not a fill; `prefetchesUsed` counts those a lookup later hit.
   */
  prefetch(tag: number, iovaBase: number, gpaBase: number, perms: number): void {
    if (iovaBase % 0x1000 !== 0 || gpaBase % 0x1000 !== 0) return;
    if (this.find(tag, iovaBase, 12) >= 0) return;
    if (this.count >= this.capacity) this.evictOne();
    const i = this.place(tag, iovaBase, gpaBase, 12, perms);
    this.unusedPrefetch[i] = 1;
    this.prefetches++;
  }

  /** Stores a new entry in the first free slot of its probe sequence, counts it, returns the slot. */
  private place(tag: number, iovaBase: number, gpaBase: number, shift: number, perms: number): number {
    let i = this.home(tag, iovaBase, shift);
    while (this.state[i] === FULL) i = (i + 1) & this.mask;
    this.unusedPrefetch[i] = 0;
    this.state[i] = FULL;
    this.tags[i] = tag;
    this.iovaBases[i] = iovaBase;
    this.gpaBases[i] = gpaBase;
    this.shifts[i] = shift;
    this.permsArr[i] = perms;
    this.perSize[shiftIndex(shift)]++;
    this.count++;
    this.tagCounts.set(tag, (this.tagCounts.get(tag) ?? 0) + 1);
    return i;
  }

  /** Caches the page-sized block of `t` that contains `iova`, choosing the largest page that fits. */
  insertFrom(tag: number, iova: number, t: Translation): void {
    for (let s = 2; s >= 0; s--) {
      const shift = PAGE_SHIFTS[s];
      const size = pageBytes(shift);
      if (t.sizeBytes < size) continue;
      const iovaBase = iova - (iova % size);
      const gpaBase = t.gpaBase + (iovaBase - t.iovaBase);
      if (gpaBase % size !== 0 || iovaBase < t.iovaBase || iovaBase + size > t.iovaBase + t.sizeBytes)
        continue;
      this.insert(tag, iovaBase, gpaBase, shift, t.perms);
      return;
    }
  }

  private evictOne(): void {
    const state = this.state;
    for (;;) {
      const i = this.hand;
      this.hand = (this.hand + 1) & this.mask;
      if (state[i] === FULL) {
        this.bury(i, GHOST_EVICTED);
        this.removeAt(i);
        this.evictions++;
        return;
      }
    }
  }

  /** Removes slot `i` and re-homes the rest of its probe cluster (backward-shift deletion). */
  private removeAt(i: number): void {
    const mask = this.mask;
    const state = this.state;
    this.perSize[shiftIndex(this.shifts[i])]--;
    this.count--;
    const tagLeft = (this.tagCounts.get(this.tags[i]) ?? 1) - 1;
    if (tagLeft === 0) this.tagCounts.delete(this.tags[i]);
    else this.tagCounts.set(this.tags[i], tagLeft);
    state[i] = EMPTY;
    let hole = i;
    let j = (i + 1) & mask;
    while (state[j] === FULL) {
      const home = this.home(this.tags[j], this.iovaBases[j], this.shifts[j]);
      // The entry at j may move into the hole if its home is not cyclically within (hole, j].
      const dist = (j - home) & mask;
      const holeDist = (j - hole) & mask;
      if (dist >= holeDist) {
        state[hole] = FULL;
        this.tags[hole] = this.tags[j];
        this.iovaBases[hole] = this.iovaBases[j];
        this.gpaBases[hole] = this.gpaBases[j];
        this.shifts[hole] = this.shifts[j];
        this.permsArr[hole] = this.permsArr[j];
        this.unusedPrefetch[hole] = this.unusedPrefetch[j];
        state[j] = EMPTY;
        hole = j;
      }
      j = (j + 1) & mask;
    }
  }

  private noteInvalidation(removed: number): number {
    this.epoch++;
    this.invalidations++;
    this.invalidatedEntries += removed;
    return removed;
  }

  /** Drops every entry. Returns how many were removed. */
  invalidateAll(): number {
    const removed = this.count;
    for (let i = 0; i <= this.mask; i++) if (this.state[i] === FULL) this.bury(i, GHOST_INVALIDATED);
    this.state.fill(EMPTY);
    this.perSize.fill(0);
    this.tagCounts.clear();
    this.count = 0;
    return this.noteInvalidation(removed);
  }

  /** Drops every entry whose tag satisfies `match` (e.g. all PASIDs of one VT-d domain). */
  invalidateTags(match: (tag: number) => boolean): number {
    let any = false;
    for (const tag of this.tagCounts.keys()) {
      if (match(tag)) {
        any = true;
        break;
      }
    }
    return this.noteInvalidation(any ? this.removeWhere((i) => match(this.tags[i])) : 0);
  }

  /** Drops every entry of address space `tag`. */
  invalidateSpace(tag: number): number {
    if (!this.tagCounts.has(tag)) return this.noteInvalidation(0);
    return this.noteInvalidation(this.removeWhere((i) => this.tags[i] === tag));
  }

  /** Live entries cached for address space `tag`. */
  entriesOf(tag: number): number {
    return this.tagCounts.get(tag) ?? 0;
  }

  /**
   * Drops every entry of `tag` (or of every tag, when `tag` is null) that overlaps
   * [iova, iova + sizeBytes). A 2 MiB entry overlapping a 4 KiB invalidation is dropped whole.
   */
  invalidateRange(tag: number | null, iova: number, sizeBytes: number): number {
    if (sizeBytes <= 0) return this.noteInvalidation(0);
    const last = iova + sizeBytes - 1;
    let candidates = 0;
    for (let s = 0; s < 3; s++) {
      if (this.perSize[s] === 0) continue;
      const size = PAGE_SIZES[s];
      candidates += Math.floor(last / size) - Math.floor(iova / size) + 1;
    }
    if (tag === null || candidates > PROBE_LIMIT) {
      return this.noteInvalidation(
        this.removeWhere((i) => {
          if (tag !== null && this.tags[i] !== tag) return false;
          const base = this.iovaBases[i];
          return base <= last && base + pageBytes(this.shifts[i]) - 1 >= iova;
        }),
      );
    }
    let removed = 0;
    for (let s = 0; s < 3; s++) {
      if (this.perSize[s] === 0) continue;
      const shift = PAGE_SHIFTS[s];
      const size = pageBytes(shift);
      for (let page = Math.floor(iova / size); page <= Math.floor(last / size); page++) {
        const i = this.find(tag, page * size, shift);
        if (i >= 0) {
          this.bury(i, GHOST_INVALIDATED);
          this.removeAt(i);
          removed++;
        }
      }
    }
    return this.noteInvalidation(removed);
  }

  /** Drops the entry (of any page size) that contains `iova` in `tag`. */
  invalidatePage(tag: number, iova: number): number {
    return this.invalidateRange(tag, iova, 1);
  }

  /**
   * Removes every slot for which `drop` is true. A few victims are deleted in place (their keys
   * are collected first, since deletion moves entries); when most entries go, the table is
   * rebuilt from the survivors instead.
   */
  private removeWhere(drop: (slot: number) => boolean): number {
    const victims: number[] = [];
    for (let i = 0; i <= this.mask; i++) {
      if (this.state[i] === FULL && drop(i)) victims.push(this.tags[i], this.iovaBases[i], this.shifts[i]);
    }
    const removed = victims.length / 3;
    if (removed === 0) return 0;
    if (removed * 2 > this.count) return this.rebuildWithout(drop);
    for (let k = 0; k < victims.length; k += 3) {
      const i = this.find(victims[k], victims[k + 1], victims[k + 2]);
      if (i < 0) continue;
      this.bury(i, GHOST_INVALIDATED);
      this.removeAt(i);
    }
    return removed;
  }

  /** Removes every slot for which `drop` is true and re-inserts the survivors. */
  private rebuildWithout(drop: (slot: number) => boolean): number {
    const keep: number[] = [];
    let removed = 0;
    for (let i = 0; i <= this.mask; i++) {
      if (this.state[i] !== FULL) continue;
      if (drop(i)) {
        this.bury(i, GHOST_INVALIDATED);
        removed++;
      } else {
        keep.push(this.tags[i], this.iovaBases[i], this.gpaBases[i], this.shifts[i], this.permsArr[i]);
        keep.push(this.unusedPrefetch[i]);
      }
    }
    if (removed === 0) return 0;
    this.state.fill(EMPTY);
    this.perSize.fill(0);
    this.tagCounts.clear();
    this.count = 0;
    for (let k = 0; k < keep.length; k += 6) {
      const i = this.place(keep[k], keep[k + 1], keep[k + 2], keep[k + 3], keep[k + 4]);
      this.unusedPrefetch[i] = keep[k + 5];
    }
    return removed;
  }

  stats(): IotlbStats {
    return {
      capacity: this.capacity,
      entries: this.count,
      hits: this.hits,
      misses: this.misses,
      inserts: this.inserts,
      evictions: this.evictions,
      invalidations: this.invalidations,
      invalidatedEntries: this.invalidatedEntries,
      coldFills: this.coldFills,
      refillsUnchanged: this.refillsUnchanged,
      refillsChanged: this.refillsChanged,
      refillsAfterEviction: this.refillsAfterEviction,
      prefetches: this.prefetches,
      prefetchesUsed: this.prefetchesUsed,
    };
  }

  /** Hit rate in [0, 1] over all lookups so far (0 when there were none). */
  get hitRate(): number {
    const total = this.hits + this.misses;
    return total === 0 ? 0 : this.hits / total;
  }
}
