/**
 * An observing wrapper around a host IOMMU (the engine's VfioType1Container for an assigned
 * device): what the guest's IOMMU mappings turn into on the host side. Counts map calls by size,
 * the peak number of live entries, and refusals by errno; forwards everything unchanged.
 */
import type { HostErrno, HostIommu, HostResult, VfioType1Container } from "../engine/host-iommu.ts";

export interface HostObserverStats {
  readonly mapCalls: number;
  readonly unmapCalls: number;
  /** Successful map calls by size in bytes. */
  readonly mapSizes: Readonly<Record<string, number>>;
  readonly peakEntries: number;
  readonly peakMappedBytes: number;
  readonly refusals: Readonly<Partial<Record<HostErrno, number>>>;
  readonly firstRefusal: string | null;
}

export class ObservedHostIommu implements HostIommu {
  readonly container: VfioType1Container;
  private readonly sizes = new Map<number, number>();
  private readonly refused: Partial<Record<HostErrno, number>> = {};
  mapCalls = 0;
  unmapCalls = 0;
  peakEntries = 0;
  peakMappedBytes = 0;
  firstRefusal: string | null = null;

  constructor(container: VfioType1Container) {
    this.container = container;
  }

  map(iova: number, gpa: number, sizeBytes: number, perms: number): HostResult {
    this.mapCalls++;
    const r = this.container.map(iova, gpa, sizeBytes, perms);
    if (r.ok) {
      this.sizes.set(sizeBytes, (this.sizes.get(sizeBytes) ?? 0) + 1);
      this.peakEntries = Math.max(this.peakEntries, this.container.entryCount);
      this.peakMappedBytes = Math.max(this.peakMappedBytes, this.container.mappedBytes);
    } else this.noteRefusal(r.errno, r.message);
    return r;
  }

  unmap(iova: number, sizeBytes: number): HostResult {
    this.unmapCalls++;
    const r = this.container.unmap(iova, sizeBytes);
    if (!r.ok) this.noteRefusal(r.errno, r.message);
    return r;
  }

  private noteRefusal(errno: HostErrno, message: string): void {
    this.refused[errno] = (this.refused[errno] ?? 0) + 1;
    if (this.firstRefusal === null) this.firstRefusal = `${errno}: ${message}`;
  }

  stats(): HostObserverStats {
    const mapSizes: Record<string, number> = {};
    for (const [size, n] of [...this.sizes].sort((a, b) => a[0] - b[0])) mapSizes[String(size)] = n;
    return {
      mapCalls: this.mapCalls,
      unmapCalls: this.unmapCalls,
      mapSizes,
      peakEntries: this.peakEntries,
      peakMappedBytes: this.peakMappedBytes,
      refusals: { ...this.refused },
      firstRefusal: this.firstRefusal,
    };
  }
}
