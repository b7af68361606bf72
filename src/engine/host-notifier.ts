/**
 * The one host-propagation contract: how an IOMMU model keeps the host IOMMU of an assigned
 * endpoint mapping exactly what that endpoint may reach (QEMU's IOMMU notifier, MAP and UNMAP
 * events, plus replay).
 *
 * Every model (virtio-iommu, VT-d in caching mode, the SMMUv3 framework's host stage 2) holds one
 * `HostNotifier` per assigned endpoint and calls three things on it:
 * - `map`: one new leaf (iova -> gpa, size, permissions);
 * - `unmap`: every leaf inside a range, never a piece of one (VFIO type1 v2 refuses to bisect);
 * - `replay`: "the endpoint now maps exactly these leaves over [start, last]": the notifier diffs
 *   them against what the host holds and sends only the differences (unmaps first, then maps).
 *
 * Behind it sits a backend with the `HostIommu` contract: the in-memory `VfioType1Container`, or
 * real VFIO (`src/vfio`). The notifier keeps a shadow of what the host holds, so it can answer
 * lookups for any backend, suppress duplicate maps and stray unmaps, and count: live entries, the
 * peak, and refusals by errno. A backend that throws is a refusal ("exception"), never an
 * exception escaping into a device model.
 *
 * A refused map leaves nothing on the host and is returned to the model, which turns it into its
 * architected answer (virtio-iommu: a status; VT-d: a fault record). A refused unmap means the
 * device may still reach memory it should not: the entry is forgotten, counted, and
 * `onIsolationLost` tells the model, which then asks for a reset.
 */
import { isValidRange, MAX_ADDRESS, PERM_RW, permsName } from "./access.ts";
import type { HostDmaEntry, HostErrno, HostIommu, HostResult } from "./host-iommu.ts";
import { IntervalMap } from "./interval-map.ts";
import { Tracer } from "./trace.ts";

export type HostRefusalErrno = HostErrno | "exception";

export interface HostRefusal {
  /** The host's errno, or "exception" when the backend threw instead of answering. */
  readonly errno: HostRefusalErrno;
  readonly message: string;
}

/** Receives one leaf: [iova, iova + sizeBytes) -> gpa with `perms` (PERM_READ | PERM_WRITE). */
export type HostLeaf = (iova: number, gpa: number, sizeBytes: number, perms: number) => void;

/**
 * Enumerates what the endpoint may reach over [start, last] (whole leaves, in IOVA order).
 * Returns false when it stopped early (an enumeration budget ran out).
 */
export type HostLeafSource = (start: number, last: number, leaf: HostLeaf) => boolean;

export interface HostNotifierOptions {
  readonly tracer?: Tracer;
  /** The emitting component in trace events ("virtio-iommu", "vtd", "smmuv3"). */
  readonly traceSource?: string;
  /** The endpoint (BDF, stream or endpoint ID) in trace events. */
  readonly endpointId?: number;
  /** Called when the host refused an unmap: the device may keep reaching what it should not. */
  readonly onIsolationLost?: (why: string) => void;
}

export interface HostNotifierStats {
  /** Entries the host holds now, and the most it ever held at once. */
  readonly entries: number;
  readonly peakEntries: number;
  readonly mappedBytes: number;
  /** Backend calls that succeeded. */
  readonly maps: number;
  readonly unmaps: number;
  /** Backend refusals (map and unmap) by errno. */
  readonly refusals: Readonly<Record<HostRefusalErrno, number>>;
  readonly lastRefusal: string;
  /** Unmaps the host refused: isolation may be lost until a reset. */
  readonly unmapsRefused: number;
  /** Replay leaves the host already held, identically: no backend call. */
  readonly duplicateMapsSuppressed: number;
  /** Unmaps and replays over ranges where the host held nothing and nothing is wanted. */
  readonly strayUnmapsSuppressed: number;
  /** Replays cut short: the source stopped early (budget), so the host may lack leaves. */
  readonly truncatedSyncs: number;
  readonly epoch: number;
}

export type HostUnmapListener = (iova: number, sizeBytes: number) => void;

const NO_TRACER = new Tracer();

function hex(x: number): string {
  return `0x${x.toString(16)}`;
}

export class HostNotifier {
  readonly backend: HostIommu;
  /** Bumped whenever the host stops mapping something: translations derived from it are stale. */
  epoch = 0;
  private readonly shadow = new IntervalMap<HostDmaEntry>();
  private readonly tracer: Tracer;
  private readonly traceSource: string;
  private readonly endpointId: number;
  private readonly onIsolationLost: (why: string) => void;
  private readonly unmapListeners: HostUnmapListener[] = [];
  private mappedBytesTotal = 0;
  private peak = 0;
  maps = 0;
  unmaps = 0;
  unmapsRefused = 0;
  duplicateMapsSuppressed = 0;
  strayUnmapsSuppressed = 0;
  truncatedSyncs = 0;
  private lastRefusal = "";
  private readonly refusalCounts: Record<HostRefusalErrno, number> = {
    EPERM: 0,
    ENOENT: 0,
    ENOMEM: 0,
    EEXIST: 0,
    EINVAL: 0,
    ENOSPC: 0,
    exception: 0,
  };

  constructor(backend: HostIommu, options: HostNotifierOptions = {}) {
    this.backend = backend;
    this.tracer = options.tracer ?? NO_TRACER;
    this.traceSource = options.traceSource ?? "host";
    this.endpointId = options.endpointId ?? -1;
    this.onIsolationLost = options.onIsolationLost ?? (() => {});
  }

  // ---- the contract ---------------------------------------------------------------------------

  /**
   * Gives the host one leaf. A leaf without READ or WRITE allows no access and is not given to
   * the host (success). Returns the host's refusal, or null.
   */
  map(iova: number, gpa: number, sizeBytes: number, perms: number): HostRefusal | null {
    const p = perms & PERM_RW;
    if (p === 0) return null;
    const r = this.call(true, iova, gpa, sizeBytes, p);
    if (!r.ok)
      return this.refused(r.errno, `map ${hex(iova)} -> ${hex(gpa)} +${hex(sizeBytes)}: ${r.message}`);
    this.shadow.insert(iova, iova + sizeBytes - 1, { iova, gpa, sizeBytes, perms: p });
    this.mappedBytesTotal += sizeBytes;
    if (this.shadow.size > this.peak) this.peak = this.shadow.size;
    this.maps++;
    if (this.tracer.on("map")) {
      this.tracer.emit("map", this.traceSource, "host-map", {
        endpoint: this.endpointId,
        iova,
        gpa,
        size: sizeBytes,
        perms: permsName(p),
      });
    }
    return null;
  }

  /**
   * Takes every leaf inside [iova, iova + sizeBytes) away from the host. A range that would cut a
   * leaf is refused (EINVAL, nothing changes), as VFIO type1 v2 does; a range holding nothing
   * costs no backend call.
   */
  unmap(iova: number, sizeBytes: number): HostRefusal | null {
    if (sizeBytes <= 0 || !isValidRange(iova, sizeBytes)) {
      return this.refused("EINVAL", `unmap ${hex(iova)} +${sizeBytes}: empty or overflowing range`);
    }
    const last = iova + sizeBytes - 1;
    const head = this.shadow.find(iova);
    const tail = this.shadow.find(last);
    if ((head !== undefined && head.start !== iova) || (tail !== undefined && tail.last !== last)) {
      return this.refused("EINVAL", `unmap ${hex(iova)} +${hex(sizeBytes)} would split a host entry`);
    }
    if (!this.shadow.overlaps(iova, last)) {
      this.strayUnmapsSuppressed++;
      return null;
    }
    return this.unmapRange(iova, last);
  }

  /**
   * Makes the host hold exactly the leaves `source` enumerates over [start, last]: leaves that
   * went away or changed are unmapped (first), new ones mapped. Leaves of the source that reach
   * outside [start, last] widen the range to them. Returns the first refusal (the other leaves
   * are still applied, except after ENOSPC: the host is full and the replay stops), or null.
   */
  replay(source: HostLeafSource, start = 0, last = MAX_ADDRESS): HostRefusal | null {
    const leaves: number[] = [];
    const complete = source(start, last, (iova, gpa, sizeBytes, perms) => {
      if ((perms & PERM_RW) !== 0 && sizeBytes > 0) leaves.push(iova, gpa, sizeBytes, perms & PERM_RW);
    });
    if (!complete) this.noteTruncated();
    let lo = start;
    let hi = last;
    if (leaves.length > 0) {
      lo = Math.min(lo, leaves[0]);
      hi = Math.max(hi, leaves[leaves.length - 4] + leaves[leaves.length - 2] - 1);
    }
    const wanted = new Map<number, number>(); // iova -> index in leaves
    for (let k = 0; k < leaves.length; k += 4) wanted.set(leaves[k], k);
    const existing = this.shadow.overlapping(lo, hi);
    if (existing.length === 0 && leaves.length === 0) this.strayUnmapsSuppressed++;
    const kept = new Set<number>();
    let failure: HostRefusal | null = null;
    for (const e of existing) {
      const k = wanted.get(e.start);
      const v = e.value;
      if (
        k !== undefined &&
        leaves[k + 1] === v.gpa &&
        leaves[k + 2] === v.sizeBytes &&
        leaves[k + 3] === v.perms
      ) {
        kept.add(e.start);
        this.duplicateMapsSuppressed++;
        continue;
      }
      failure ??= this.unmapRange(e.start, e.last);
    }
    for (let k = 0; k < leaves.length; k += 4) {
      const iova = leaves[k];
      if (kept.has(iova)) continue;
      const sizeBytes = leaves[k + 2];
      // A source whose leaves overlap each other (hostile tables): the later one replaces.
      for (const e of this.shadow.overlapping(iova, iova + sizeBytes - 1)) {
        failure ??= this.unmapRange(e.start, e.last);
      }
      const refusal = this.map(iova, leaves[k + 1], sizeBytes, leaves[k + 3]);
      failure ??= refusal;
      if (refusal?.errno === "ENOSPC") {
        // The host is full (dma_entry_limit): the remaining maps would all be refused.
        this.noteTruncated();
        break;
      }
    }
    return failure;
  }

  /** Takes everything away from the host (translation off, endpoint removed, device reset). */
  clear(): void {
    for (const e of [...this.shadow.entries()]) this.unmapRange(e.start, e.last);
  }

  // ---- queries ------------------------------------------------------------------------------

  /** The host entry containing `iova`, as the host IOMMU would find it. */
  lookup(iova: number): HostDmaEntry | undefined {
    return this.shadow.valueAt(iova);
  }

  /** Every host entry in IOVA order. */
  list(): HostDmaEntry[] {
    return [...this.shadow.entries()].map((e) => e.value);
  }

  get entries(): number {
    return this.shadow.size;
  }

  /** Runs `listener` after every unmap the host carried out; returns a function that removes it. */
  onUnmap(listener: HostUnmapListener): () => void {
    this.unmapListeners.push(listener);
    return () => {
      const i = this.unmapListeners.indexOf(listener);
      if (i >= 0) this.unmapListeners.splice(i, 1);
    };
  }

  stats(): HostNotifierStats {
    return {
      entries: this.shadow.size,
      peakEntries: this.peak,
      mappedBytes: this.mappedBytesTotal,
      maps: this.maps,
      unmaps: this.unmaps,
      refusals: { ...this.refusalCounts },
      lastRefusal: this.lastRefusal,
      unmapsRefused: this.unmapsRefused,
      duplicateMapsSuppressed: this.duplicateMapsSuppressed,
      strayUnmapsSuppressed: this.strayUnmapsSuppressed,
      truncatedSyncs: this.truncatedSyncs,
      epoch: this.epoch,
    };
  }

  /** All refusals, map and unmap. */
  get refusalsTotal(): number {
    let n = 0;
    for (const k in this.refusalCounts) n += this.refusalCounts[k as HostRefusalErrno];
    return n;
  }

  // ---- internals ----------------------------------------------------------------------------

  /** Unmaps [iova, last], which holds whole shadow entries only, in one backend call. */
  private unmapRange(iova: number, last: number): HostRefusal | null {
    const sizeBytes = last - iova + 1;
    const r = this.call(false, iova, 0, sizeBytes, 0);
    // Whatever the answer, the shadow forgets the range: after a refusal the host's state is
    // unknown, and the model is told so (it asks for a reset), rather than retrying forever.
    for (const e of this.shadow.overlapping(iova, last)) {
      this.shadow.remove(e.start);
      this.mappedBytesTotal -= e.value.sizeBytes;
    }
    this.epoch++;
    for (const l of this.unmapListeners) l(iova, sizeBytes);
    if (!r.ok) {
      this.unmapsRefused++;
      const failure = this.refused(r.errno, `unmap ${hex(iova)} +${hex(sizeBytes)}: ${r.message}`);
      this.onIsolationLost(failure.message);
      return failure;
    }
    this.unmaps++;
    if (this.tracer.on("unmap")) {
      this.tracer.emit("unmap", this.traceSource, "host-unmap", {
        endpoint: this.endpointId,
        iova,
        size: sizeBytes,
      });
    }
    return null;
  }

  /** One backend call; a backend that throws is a refusal ("exception"). */
  private call(
    isMap: boolean,
    iova: number,
    gpa: number,
    sizeBytes: number,
    perms: number,
  ): HostResult | ExceptionResult {
    try {
      return isMap ? this.backend.map(iova, gpa, sizeBytes, perms) : this.backend.unmap(iova, sizeBytes);
    } catch (e) {
      return { ok: false, errno: "exception", message: String(e) };
    }
  }

  private refused(errno: HostRefusalErrno, message: string): HostRefusal {
    this.refusalCounts[errno]++;
    this.lastRefusal = `${errno}: ${message}`;
    if (this.tracer.on("fault")) {
      this.tracer.emit("fault", this.traceSource, "host-refused", {
        endpoint: this.endpointId,
        errno,
        message,
      });
    }
    return { errno, message };
  }

  private noteTruncated(): void {
    this.truncatedSyncs++;
    if (this.tracer.on("fault")) {
      this.tracer.emit("fault", this.traceSource, "host-replay-truncated", { endpoint: this.endpointId });
    }
  }
}

type ExceptionResult = { ok: false; errno: "exception"; message: string };
