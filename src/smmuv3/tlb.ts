/**
 * The SMMU's TLB over the engine `Iotlb`: tag layout, insertion of architectural leaves, and the
 * invalidation scopes of the TLBI commands (SMMUv3 4.4).
 *
 * Tags: VMID << 16 | ASID for stage-1 (and nested, combined) entries keyed by VA[47:0], bit 32
 * for the TTB1 half, bit 33 for stage-2-only entries keyed by IPA. The `Iotlb` stores 4K, 2M and
 * 1G pages; a leaf of another size (16K/64K pages, 32M/512M blocks, or a stage-1 block cut by a
 * smaller stage 2) is cached as smaller pieces and remembered here, so a TLBI that names any
 * address of the leaf drops every piece. Invalidation may be broader than required (4.4 permits
 * over-invalidation) but never narrower.
 */
import { Iotlb, type IotlbStats } from "../engine/iotlb.ts";
import type { Translation } from "../engine/translation.ts";

export const TAG_UPPER = 2 ** 32;
export const TAG_S2_ONLY = 2 ** 33;

export function stage1Tag(vmid: number, asid: number, upper: boolean): number {
  return vmid * 65536 + asid + (upper ? TAG_UPPER : 0);
}

export function stage2Tag(vmid: number): number {
  return TAG_S2_ONLY + vmid * 65536;
}

export function tagVmid(tag: number): number {
  return Math.floor(tag / 65536) % 65536;
}

export function isStage2OnlyTag(tag: number): boolean {
  return tag >= TAG_S2_ONLY;
}

/** IOTLB page sizes, largest first. */
const PIECE_SHIFTS = [30, 21, 12] as const;
/** Most remembered split leaves; beyond it the whole TLB is flushed rather than forget one. */
const SPLIT_LEAF_LIMIT = 1 << 16;

export interface SmmuTlbStats extends IotlbStats {
  readonly splitLeaves: number;
  readonly liveTags: number;
  readonly globalTags: number;
}

export class SmmuTlb {
  readonly iotlb: Iotlb;
  /** Bumped by every invalidation request, even one that finds nothing to drop. */
  private requests = 0;
  /** Tags that may have entries (a superset): invalidations of other tags skip the scan. */
  private readonly liveTags = new Set<number>();
  /** Tags holding entries from global (nG = 0) stage-1 leaves. */
  private readonly globalTags = new Set<number>();
  /** tag -> (leaf base -> leaf bytes) for leaves cached as smaller pieces. */
  private readonly splitLeaves = new Map<number, Map<number, number>>();
  private readonly splitLeafSizes = new Set<number>();
  private splitLeafCount = 0;

  constructor(capacity: number) {
    this.iotlb = new Iotlb(capacity);
  }

  /** Changes whenever a translation handed out from this TLB may be stale. */
  get epoch(): number {
    return this.iotlb.epoch + this.requests;
  }

  lookup(tag: number, key: number, out: Translation): boolean {
    return this.iotlb.lookup(tag, key, out);
  }

  /**
   * Caches the part of [inputBase, inputBase + bytes) -> outputBase that contains `key`, as the
   * largest IOTLB page that fits; `leafBase`/`leafBytes` are the architectural leaf it belongs to.
   */
  insert(
    tag: number,
    key: number,
    inputBase: number,
    outputBase: number,
    bytes: number,
    perms: number,
    leafBase: number,
    leafBytes: number,
  ): void {
    this.liveTags.add(tag);
    for (const shift of PIECE_SHIFTS) {
      const size = 2 ** shift;
      if (bytes < size) continue;
      const pieceIn = key - (key % size);
      const pieceOut = outputBase + (pieceIn - inputBase);
      if (pieceOut % size !== 0 || pieceIn < inputBase || pieceIn + size > inputBase + bytes) continue;
      if (size < leafBytes) this.rememberLeaf(tag, leafBase, leafBytes);
      this.iotlb.insert(tag, pieceIn, pieceOut, shift, perms);
      return;
    }
  }

  private rememberLeaf(tag: number, leafBase: number, leafBytes: number): void {
    let leaves = this.splitLeaves.get(tag);
    if (leaves?.has(leafBase)) return;
    if (this.splitLeafCount >= SPLIT_LEAF_LIMIT) {
      this.invalidateAll();
      this.liveTags.add(tag);
      leaves = undefined;
    }
    if (leaves === undefined) {
      leaves = new Map();
      this.splitLeaves.set(tag, leaves);
    }
    leaves.set(leafBase, leafBytes);
    this.splitLeafSizes.add(leafBytes);
    this.splitLeafCount++;
  }

  /**
   * Forgets tags with nothing cached once the tag sets outgrow the IOTLB. They only narrow
   * invalidation scans, and a guest cycling ASIDs or VMIDs would otherwise grow them (and the
   * cost of every TLBI that walks them) without bound. Called between translations, never in
   * one: a tag marked global for a leaf not yet inserted must not be forgotten.
   */
  pruneTags(): void {
    const bound = 2 * this.iotlb.capacity;
    if (this.liveTags.size <= bound && this.globalTags.size <= bound) return;
    for (const t of this.liveTags) if (this.iotlb.entriesOf(t) === 0) this.forgetTag(t);
    for (const t of this.globalTags) if (this.iotlb.entriesOf(t) === 0) this.globalTags.delete(t);
  }

  /** Records that `tag` holds entries from a global leaf. */
  markGlobal(tag: number): void {
    this.globalTags.add(tag);
  }

  invalidateAll(): void {
    this.requests++;
    this.iotlb.invalidateAll();
    this.liveTags.clear();
    this.globalTags.clear();
    this.splitLeaves.clear();
    this.splitLeafSizes.clear();
    this.splitLeafCount = 0;
  }

  /** Drops every entry of `tag`. */
  invalidateTag(tag: number): void {
    this.requests++;
    if (!this.liveTags.has(tag)) return;
    this.iotlb.invalidateSpace(tag);
    this.forgetTag(tag);
  }

  /** Drops every entry whose tag matches. */
  invalidateMatching(match: (tag: number) => boolean): void {
    this.requests++;
    let any = false;
    for (const t of this.liveTags) {
      if (match(t)) {
        any = true;
        this.forgetTag(t);
      }
    }
    if (any) this.iotlb.invalidateTags(match);
  }

  private forgetTag(tag: number): void {
    this.liveTags.delete(tag);
    this.globalTags.delete(tag);
    const leaves = this.splitLeaves.get(tag);
    if (leaves === undefined) return;
    this.splitLeafCount -= leaves.size;
    this.splitLeaves.delete(tag);
  }

  /**
   * Drops [key, key + sizeBytes) of `tag` (null: every tag). sizeBytes 0 means "the leaf that
   * contains key", whatever its size.
   */
  invalidateRange(tag: number | null, key: number, sizeBytes: number): void {
    this.requests++;
    if (tag !== null && !this.liveTags.has(tag)) return;
    this.iotlb.invalidateRange(tag, key - (key % 4096), Math.max(sizeBytes, 4096));
    if (this.splitLeafCount === 0) return;
    const last = key + Math.max(sizeBytes, 1) - 1;
    if (tag !== null) {
      const leaves = this.splitLeaves.get(tag);
      if (leaves !== undefined) this.dropLeaves(tag, leaves, key, last, sizeBytes === 0);
    } else {
      for (const [t, leaves] of this.splitLeaves) this.dropLeaves(t, leaves, key, last, sizeBytes === 0);
    }
  }

  /**
   * TLBI_NH_VA reaches global entries of the VMID whatever ASID they were cached under (4.4.2.4):
   * drops [key, +sizeBytes) from every global-holding stage-1 tag of `vmid` in the same half.
   */
  invalidateGlobalRange(
    vmid: number,
    upper: boolean,
    exceptTag: number,
    key: number,
    sizeBytes: number,
  ): void {
    for (const g of this.globalTags) {
      if (g === exceptTag || isStage2OnlyTag(g) || tagVmid(g) !== vmid || g >= TAG_UPPER !== upper) continue;
      this.invalidateRange(g, key, sizeBytes);
    }
  }

  private dropLeaves(
    tag: number,
    leaves: Map<number, number>,
    first: number,
    last: number,
    single: boolean,
  ): void {
    if (single) {
      // One address: only the leaf of each tracked size that contains it can match.
      for (const size of this.splitLeafSizes) {
        const base = first - (first % size);
        if (leaves.get(base) === size) this.dropLeaf(tag, leaves, base, size);
      }
      return;
    }
    for (const [base, bytes] of leaves) {
      if (base <= last && base + bytes - 1 >= first) this.dropLeaf(tag, leaves, base, bytes);
    }
  }

  private dropLeaf(tag: number, leaves: Map<number, number>, base: number, bytes: number): void {
    this.iotlb.invalidateRange(tag, base, bytes);
    leaves.delete(base);
    this.splitLeafCount--;
  }

  stats(): SmmuTlbStats {
    return {
      ...this.iotlb.stats(),
      splitLeaves: this.splitLeafCount,
      liveTags: this.liveTags.size,
      globalTags: this.globalTags.size,
    };
  }
}
