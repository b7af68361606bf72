/**
 * The VT-d caches' invalidation (VT-d 6.5): what each context-cache, IOTLB, PASID-cache,
 * PASID-based IOTLB, device-TLB and interrupt-entry-cache invalidation drops, and which
 * assigned endpoints' host mappings it resynchronises (caching mode). Register-based and queued
 * invalidation (registers.ts commands, invalidation-queue.ts) both end here.
 */
import type { Iotlb } from "../engine/iotlb.ts";
import type { Tracer } from "../engine/trace.ts";
import type { HostReplay } from "./host-replay.ts";
import { type InterruptRemapper, sourceIdsMatch } from "./interrupt-remap.ts";
import { GRAN, type InvalidationTarget } from "./invalidation-queue.ts";
import type { EndpointState } from "./options.ts";
import { TAG_CLASS, TARGET, type TargetCache, tagClass, tagDomain, tagPasid } from "./target.ts";
import { VTD_TRACE } from "./trace-points.ts";

/** What invalidation acts on: the unit's caches, endpoints and host replay. */
export interface InvalidationScope {
  readonly tracer: Tracer;
  readonly targets: TargetCache;
  readonly iotlb: Iotlb;
  readonly interruptRemapper: InterruptRemapper;
  readonly endpoints: ReadonlyMap<number, EndpointState>;
  readonly replay: HostReplay;
  /** A translation handed out may be stale: bump the unit's epoch. */
  bumpEpoch(): void;
  /** The kind of an assigned endpoint's current target when it is in `domainId`, else -1. */
  hostTargetKind(ep: EndpointState, domainId: number): number;
}

/** Bytes a page-selective invalidation with address mask AM covers: 2^(12 + AM) (AM < 64). */
const ADDRESS_MASK_BYTES: readonly number[] = Array.from({ length: 64 }, (_, am) => 2 ** (12 + am));

/** IOTLB descriptors (type 2) cover second-stage and nested entries, not first-stage ones. */
function coveredByIotlbDescriptor(tag: number): boolean {
  return tagClass(tag) !== TAG_CLASS.FIRST_STAGE;
}

export class CacheInvalidation implements InvalidationTarget {
  deviceTlbInvalidations = 0;
  private readonly s: InvalidationScope;

  constructor(scope: InvalidationScope) {
    this.s = scope;
  }

  invalidateContextCache(
    granularity: number,
    domainId: number,
    sourceId: number,
    functionMask: number,
  ): void {
    VTD_TRACE.contextCache(this.s.tracer, granularity, domainId, sourceId, functionMask);
    let affected: (sid: number) => boolean;
    if (granularity === GRAN.GLOBAL) {
      this.s.targets.clear();
      affected = () => true;
    } else if (granularity === GRAN.DOMAIN) {
      // Scalable-mode context entries carry no domain id: drop every scalable target.
      this.s.targets.dropWhere((t) => t.scalable || t.domainId === domainId);
      affected = () => true;
    } else {
      const match = (sid: number) => sourceIdsMatch(sid, sourceId, functionMask);
      this.s.targets.dropWhere((t) => match(t.sourceId));
      affected = match;
    }
    this.s.bumpEpoch();
    for (const ep of this.s.endpoints.values())
      if (ep.host !== null && affected(ep.sourceId)) this.s.replay.resync(ep);
  }

  /**
   * IOTLB invalidation (register or descriptor type 2, VT-d 6.5.2.4): global drops everything;
   * domain- and page-selective drop the domain's second-stage and nested entries (in scalable
   * mode first-stage entries are left to PASID-based invalidation).
   */
  invalidateIotlb(granularity: number, domainId: number, iova: number, addressMask: number): void {
    VTD_TRACE.iotlb(this.s.tracer, granularity, domainId, iova, addressMask);
    if (granularity === GRAN.GLOBAL) {
      this.s.iotlb.invalidateAll();
      for (const ep of this.s.endpoints.values()) if (ep.host !== null) this.s.replay.resync(ep);
      return;
    }
    if (granularity === GRAN.DOMAIN) {
      this.s.iotlb.invalidateTags((tag) => tagDomain(tag) === domainId && coveredByIotlbDescriptor(tag));
      for (const ep of this.s.endpoints.values()) {
        if (this.s.hostTargetKind(ep, domainId) === TARGET.SECOND_STAGE) this.s.replay.resync(ep);
      }
      return;
    }
    const sizeBytes = ADDRESS_MASK_BYTES[addressMask];
    const base = iova - (iova % sizeBytes);
    const tags = this.s.targets.domainTags.get(domainId);
    if (tags !== undefined) {
      for (const tag of tags)
        if (coveredByIotlbDescriptor(tag)) this.s.iotlb.invalidateRange(tag, base, sizeBytes);
    }
    this.s.bumpEpoch();
    for (const ep of this.s.endpoints.values()) {
      if (this.s.hostTargetKind(ep, domainId) === TARGET.SECOND_STAGE)
        this.s.replay.syncRange(ep, base, base + sizeBytes - 1);
    }
  }

  /**
   * PASID-based IOTLB invalidation (descriptor type 6, VT-d 6.5.2.6): the first-stage and
   * nested entries of one domain and PASID, all of them or a page range.
   */
  invalidatePasidIotlb(
    pageSelective: boolean,
    domainId: number,
    pasid: number,
    iova: number,
    addressMask: number,
  ): void {
    VTD_TRACE.pasidIotlb(this.s.tracer, pageSelective, domainId, pasid, iova, addressMask);
    const tags = this.s.targets.domainTags.get(domainId);
    const sizeBytes = ADDRESS_MASK_BYTES[addressMask];
    const base = iova - (iova % sizeBytes);
    if (tags !== undefined) {
      for (const tag of tags) {
        if (tagPasid(tag) !== pasid || tagClass(tag) === TAG_CLASS.SECOND_STAGE) continue;
        if (pageSelective) this.s.iotlb.invalidateRange(tag, base, sizeBytes);
        else this.s.iotlb.invalidateSpace(tag);
      }
    }
    this.s.bumpEpoch();
    for (const ep of this.s.endpoints.values()) {
      if (this.s.hostTargetKind(ep, domainId) !== TARGET.FIRST_STAGE) continue;
      const t = this.s.targets.get(ep.sourceId);
      if (t !== undefined && t.pasid !== pasid) continue;
      if (pageSelective) this.s.replay.syncRange(ep, base, base + sizeBytes - 1);
      else this.s.replay.resync(ep);
    }
  }

  invalidatePasidCache(granularity: number, domainId: number, pasid: number): void {
    VTD_TRACE.pasidCache(this.s.tracer, granularity, domainId, pasid);
    if (granularity === 3) this.s.targets.dropWhere((t) => t.scalable);
    else if (granularity === 0) this.s.targets.dropWhere((t) => t.scalable && t.domainId === domainId);
    else this.s.targets.dropWhere((t) => t.scalable && t.domainId === domainId && t.pasid === pasid);
    this.s.bumpEpoch();
    for (const ep of this.s.endpoints.values()) if (ep.host !== null) this.s.replay.resync(ep);
  }

  invalidateDeviceTlb(
    sourceId: number,
    pasid: number,
    allPasids: boolean,
    iova: number,
    sizeBytes: number,
  ): void {
    VTD_TRACE.deviceTlb(this.s.tracer, sourceId, pasid, allPasids, iova, sizeBytes);
    this.deviceTlbInvalidations++;
    const ep = this.s.endpoints.get(sourceId);
    if (ep === undefined || ep.deviceTlb === null) return;
    ep.deviceTlbInvalidations++;
    ep.deviceTlb.invalidate(iova, sizeBytes, pasid, allPasids);
  }

  invalidateInterruptEntryCache(global: boolean, index: number, indexMask: number): void {
    VTD_TRACE.iec(this.s.tracer, global, index, indexMask);
    this.s.interruptRemapper.invalidate(global, index, indexMask);
  }
}
