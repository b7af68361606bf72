/**
 * The DMA regions one vfio-user client registered (vfio-user.rst "VFIO_USER_DMA_MAP" /
 * "VFIO_USER_DMA_UNMAP"): a map over one of its live regions fails with EEXIST, an unmap must
 * match one of its earlier maps exactly, and a disconnect releases them all. Kept in an interval
 * map, so map and unmap cost O(log n). On disconnect the regions are released in slices of at
 * most RELEASE_SLICE_MS from the event loop, so a client with 65,535 regions never stalls the
 * others; its message-backed regions leave guest memory at once (they are its alone), shared ones
 * when their last reference goes.
 */
import { IntervalMap } from "../engine/interval-map.ts";
import { closeFd, ERRNO } from "./libc.ts";
import type { Backing, DmaTransport } from "./region-backing.ts";
import type { SharedRegions } from "./shared-regions.ts";

export interface DmaMapRequest {
  readonly iova: number;
  readonly sizeBytes: number;
  readonly fileOffset: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** -1 when the client sent no descriptor. */
  readonly fd: number;
}

export type MapResult = { ok: true } | { ok: false; errno: number; why: string };

/** Longest stretch of disconnect cleanup done in one event-loop turn. */
export const RELEASE_SLICE_MS = 2;

interface ClientRegion {
  readonly sizeBytes: number;
  /** Null for a descriptor-less region of a client without a DMA transport (not RAM). */
  readonly backing: Backing | null;
}

export class ClientDmaTable {
  private readonly memory: SharedRegions;
  private readonly maxRegions: number;
  private readonly regions = new IntervalMap<ClientRegion>();
  private readonly transport: DmaTransport | null;
  closed = false;
  private pendingRelease: ClientRegion[] = [];
  private releasedUpTo = 0;
  /** Longest release slice so far (milliseconds). */
  longestSliceMs = 0;

  /** `transport`: how this client's descriptor-less regions are reached (null: never RAM). */
  constructor(memory: SharedRegions, maxRegions: number, transport: DmaTransport | null) {
    this.memory = memory;
    this.maxRegions = maxRegions;
    this.transport = transport;
  }

  get count(): number {
    return this.regions.size;
  }

  /** True when one of this client's regions overlaps [gpa, gpa + sizeBytes). */
  overlaps(gpa: number, sizeBytes: number): boolean {
    return this.regions.overlaps(gpa, gpa + sizeBytes - 1);
  }

  /** VFIO_USER_DMA_MAP. Consumes `req.fd` in every case. */
  map(req: DmaMapRequest): MapResult {
    const fail = (errno: number, why: string): MapResult => {
      if (req.fd >= 0) closeFd(req.fd);
      return { ok: false, errno, why };
    };
    if (this.closed) return fail(ERRNO.EINVAL, "client table closed");
    if (req.sizeBytes <= 0 || req.iova < 0 || req.iova + req.sizeBytes > Number.MAX_SAFE_INTEGER) {
      return fail(ERRNO.EINVAL, "address or size out of range");
    }
    if (!req.readable && !req.writable) return fail(ERRNO.EINVAL, "region neither readable nor writable");
    if (req.fd >= 0 && (req.fileOffset < 0 || req.fileOffset + req.sizeBytes > Number.MAX_SAFE_INTEGER)) {
      return fail(ERRNO.EINVAL, "file offset out of range");
    }
    const last = req.iova + req.sizeBytes - 1;
    if (this.regions.overlaps(req.iova, last)) {
      const r = this.regions.overlapping(req.iova, last)[0];
      return fail(ERRNO.EEXIST, `overlaps this client's region at 0x${r.start.toString(16)}`);
    }
    if (this.regions.size >= this.maxRegions) return fail(ERRNO.ENOSPC, "max_dma_maps reached");
    if (req.fd < 0) {
      let backing: Backing | null = null;
      if (this.transport === null) this.memory.noteFdless(1);
      else backing = this.memory.acquireMessageBacked(this, req, this.transport);
      this.regions.insert(req.iova, last, { sizeBytes: req.sizeBytes, backing });
      return { ok: true };
    }
    const r = this.memory.acquire(this, req);
    if (!r.ok) return r;
    this.regions.insert(req.iova, last, { sizeBytes: req.sizeBytes, backing: r.backing });
    return { ok: true };
  }

  /** VFIO_USER_DMA_UNMAP: address and size must match a previous map exactly. */
  unmap(iova: number, sizeBytes: number): MapResult {
    const r = this.regions.valueAt(iova);
    const e = r === undefined ? undefined : this.regions.find(iova);
    if (r === undefined || e === undefined || e.start !== iova || r.sizeBytes !== sizeBytes) {
      return { ok: false, errno: ERRNO.ENOENT, why: "no region with that address and size" };
    }
    this.regions.remove(iova);
    this.drop(r);
    return { ok: true };
  }

  private drop(r: ClientRegion): void {
    if (r.backing !== null) this.memory.release(r.backing);
    else this.memory.noteFdless(-1);
  }

  /** Unmap-all: every region is released (O(n) in total). */
  clear(): void {
    for (const r of this.regions.takeAllValues()) this.drop(r);
  }

  /** Client disconnect: every region is released, from the event loop in bounded slices. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.memory.tableClosed(this);
    this.pendingRelease = this.regions.takeAllValues();
    this.releasedUpTo = 0;
    this.releaseSlice();
  }

  private releaseSlice(): void {
    const start = performance.now();
    const list = this.pendingRelease;
    let i = this.releasedUpTo;
    while (i < list.length) {
      this.drop(list[i++]);
      if ((i & 255) === 0 && performance.now() - start >= RELEASE_SLICE_MS) break;
    }
    this.releasedUpTo = i;
    this.longestSliceMs = Math.max(this.longestSliceMs, performance.now() - start);
    if (i < list.length) setImmediate(() => this.releaseSlice());
    else this.pendingRelease = [];
  }
}
