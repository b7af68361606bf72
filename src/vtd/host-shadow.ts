/**
 * Caching-mode shadowing for an endpoint backed by a host IOMMU (an assigned device).
 *
 * With CAP.CM set the guest invalidates after every change, not-present to present included
 * (VT-d 6.1). Each invalidation that covers this endpoint's translations replays the covered
 * range of the guest tables onto the host: leaves that appeared are mapped, leaves that went
 * away or changed are unmapped. The shadow (what the host holds, leaf by leaf) suppresses a
 * second map of an unchanged leaf and any unmap of something never mapped, so the host sees
 * exactly the differences. Domain and global invalidations resynchronise the whole space.
 */
import { permsName } from "../engine/access.ts";
import type { HostIommu } from "../engine/host-iommu.ts";
import { IntervalMap } from "../engine/interval-map.ts";
import type { Tracer } from "../engine/trace.ts";

interface ShadowLeaf {
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly perms: number;
}

/**
 * Enumerates the guest's current leaves overlapping [start, last] (whole leaves, in order).
 * Returns false when it stopped early (an enumeration budget ran out).
 */
export type LeafSource = (
  start: number,
  last: number,
  leaf: (iova: number, gpa: number, sizeBytes: number, perms: number) => void,
) => boolean;

export interface HostShadowStats {
  readonly sourceId: number;
  readonly entries: number;
  readonly hostMaps: number;
  readonly hostUnmaps: number;
  readonly duplicateMapsSuppressed: number;
  readonly strayUnmapsSuppressed: number;
  readonly hostErrors: number;
  readonly lastHostError: string;
  /** Syncs cut short: the guest tables enumerate too much, or the host is full. */
  readonly truncatedSyncs: number;
}

export class HostShadow {
  readonly sourceId: number;
  private readonly host: HostIommu;
  private readonly tracer: Tracer;
  private readonly shadow = new IntervalMap<ShadowLeaf>();
  hostMaps = 0;
  hostUnmaps = 0;
  duplicateMapsSuppressed = 0;
  strayUnmapsSuppressed = 0;
  hostErrors = 0;
  lastHostError = "";
  truncatedSyncs = 0;

  constructor(sourceId: number, host: HostIommu, tracer: Tracer) {
    this.sourceId = sourceId;
    this.host = host;
    this.tracer = tracer;
  }

  private unmapEntry(start: number, leaf: ShadowLeaf): void {
    this.shadow.remove(start);
    const r = this.host.unmap(start, leaf.sizeBytes);
    this.hostUnmaps++;
    if (!r.ok) this.noteError(`unmap 0x${start.toString(16)}: ${r.errno} ${r.message}`);
    if (this.tracer.on("unmap")) {
      this.tracer.emit("unmap", "vtd", "host-unmap", {
        sid: this.sourceId,
        iova: start,
        size: leaf.sizeBytes,
      });
    }
  }

  private noteError(message: string): void {
    this.hostErrors++;
    this.lastHostError = message;
    if (this.tracer.on("fault"))
      this.tracer.emit("fault", "vtd", "host-error", { sid: this.sourceId, message });
  }

  /** Makes the host match the guest's leaves over [start, last]. */
  sync(start: number, last: number, source: LeafSource): void {
    const leaves: number[] = [];
    const complete = source(start, last, (iova, gpa, sizeBytes, perms) => {
      leaves.push(iova, gpa, sizeBytes, perms);
    });
    if (!complete) this.noteTruncated("guest tables exceed the enumeration budget");
    const wanted = new Map<number, number>(); // iova -> index in leaves
    for (let k = 0; k < leaves.length; k += 4) wanted.set(leaves[k], k);
    let lo = start;
    let hi = last;
    if (leaves.length > 0) {
      lo = Math.min(lo, leaves[0]);
      hi = Math.max(hi, leaves[leaves.length - 4] + leaves[leaves.length - 2] - 1);
    }
    const existing = this.shadow.overlapping(lo, hi);
    const kept = new Set<number>();
    for (const e of existing) {
      const k = wanted.get(e.start);
      if (
        k !== undefined &&
        leaves[k + 1] === e.value.gpa &&
        leaves[k + 2] === e.value.sizeBytes &&
        leaves[k + 3] === e.value.perms
      ) {
        kept.add(e.start);
        this.duplicateMapsSuppressed++;
        continue;
      }
      this.unmapEntry(e.start, e.value);
    }
    if (existing.length === 0 && leaves.length === 0) this.strayUnmapsSuppressed++;
    for (let k = 0; k < leaves.length; k += 4) {
      const iova = leaves[k];
      if (kept.has(iova)) continue;
      const gpa = leaves[k + 1];
      const sizeBytes = leaves[k + 2];
      const perms = leaves[k + 3];
      for (const e of this.shadow.overlapping(iova, iova + sizeBytes - 1)) this.unmapEntry(e.start, e.value);
      const r = this.host.map(iova, gpa, sizeBytes, perms);
      this.hostMaps++;
      if (!r.ok) {
        this.noteError(
          `map 0x${iova.toString(16)} -> 0x${gpa.toString(16)} ${permsName(perms)}: ${r.errno} ${r.message}`,
        );
        continue;
      }
      this.shadow.insert(iova, iova + sizeBytes - 1, { gpa, sizeBytes, perms });
      if (this.tracer.on("map")) {
        this.tracer.emit("map", "vtd", "host-map", {
          sid: this.sourceId,
          iova,
          gpa,
          size: sizeBytes,
          perms: permsName(perms),
        });
      }
    }
  }

  private noteTruncated(why: string): void {
    this.truncatedSyncs++;
    if (this.tracer.on("fault"))
      this.tracer.emit("fault", "vtd", "host-sync-truncated", { sid: this.sourceId, why });
  }

  /** Unmaps everything (translation disabled for the endpoint, or the unit reset). */
  clear(): void {
    for (const e of [...this.shadow.entries()]) this.unmapEntry(e.start, e.value);
  }

  get entries(): number {
    return this.shadow.size;
  }

  stats(): HostShadowStats {
    return {
      sourceId: this.sourceId,
      entries: this.shadow.size,
      hostMaps: this.hostMaps,
      hostUnmaps: this.hostUnmaps,
      duplicateMapsSuppressed: this.duplicateMapsSuppressed,
      strayUnmapsSuppressed: this.strayUnmapsSuppressed,
      hostErrors: this.hostErrors,
      lastHostError: this.lastHostError,
      truncatedSyncs: this.truncatedSyncs,
    };
  }
}
