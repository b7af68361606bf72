/**
 * Host propagation: how guest mapping changes reach the host IOMMU that protects an assigned
 * device.
 *
 * Every IOMMU model calls a `HostIommu` on each mapping change that affects an endpoint backed by
 * a host device (map iova to gpa; unmap a range). `VfioType1Container` is an in-memory host
 * IOMMU with the contract of Linux's VFIO type1 (v2) driver, the part that cannot exist here for
 * real: the same alignment rules, the same refusal of an unmap that would split an entry, the
 * same per-container entry limit (module parameter dma_entry_limit, U16_MAX by default).
 */
import { isValidRange, PERM_READ, PERM_WRITE, permsName } from "./access.ts";
import { IntervalMap } from "./interval-map.ts";

/** Errno names VFIO returns for DMA map/unmap, with Linux's numbers. */
export const HOST_ERRNO = { EPERM: 1, ENOENT: 2, ENOMEM: 12, EEXIST: 17, EINVAL: 22, ENOSPC: 28 } as const;
export type HostErrno = keyof typeof HOST_ERRNO;

export type HostResult = { ok: true; bytes: number } | { ok: false; errno: HostErrno; message: string };

export interface HostIommu {
  /** Maps [iova, iova + sizeBytes) to [gpa, gpa + sizeBytes) with `perms` (PERM_READ | PERM_WRITE). */
  map(iova: number, gpa: number, sizeBytes: number, perms: number): HostResult;
  /** Unmaps every entry inside [iova, iova + sizeBytes); `bytes` is how much was unmapped. */
  unmap(iova: number, sizeBytes: number): HostResult;
}

export interface HostDmaEntry {
  readonly iova: number;
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly perms: number;
}

export interface VfioType1Options {
  /** Maximum DMA entries (VFIO_IOMMU_MAP_DMA calls alive) per container; Linux default U16_MAX. */
  dmaEntryLimit?: number;
  /** Smallest host IOMMU page; map and unmap arguments must be aligned to it. */
  pageSizeBytes?: number;
  /** Largest IOVA the host IOMMU translates, plus one (the host's address width). */
  iovaLimit?: number;
}

export interface VfioType1Stats {
  readonly entries: number;
  readonly mappedBytes: number;
  readonly dmaEntryLimit: number;
  readonly maps: number;
  readonly unmaps: number;
  readonly refused: Readonly<Record<HostErrno, number>>;
}

export const VFIO_DEFAULT_DMA_ENTRY_LIMIT = 65535;

function fail(errno: HostErrno, message: string): HostResult {
  return { ok: false, errno, message };
}

export class VfioType1Container implements HostIommu {
  readonly dmaEntryLimit: number;
  readonly pageSizeBytes: number;
  readonly iovaLimit: number;
  private readonly entries = new IntervalMap<HostDmaEntry>();
  private mappedBytesTotal = 0;
  maps = 0;
  unmaps = 0;
  private readonly refusedCounts: Record<HostErrno, number> = {
    EPERM: 0,
    ENOENT: 0,
    ENOMEM: 0,
    EEXIST: 0,
    EINVAL: 0,
    ENOSPC: 0,
  };

  constructor(options: VfioType1Options = {}) {
    this.dmaEntryLimit = options.dmaEntryLimit ?? VFIO_DEFAULT_DMA_ENTRY_LIMIT;
    this.pageSizeBytes = options.pageSizeBytes ?? 4096;
    this.iovaLimit = options.iovaLimit ?? 2 ** 48;
  }

  private refuse(errno: HostErrno, message: string): HostResult {
    this.refusedCounts[errno]++;
    return fail(errno, message);
  }

  private aligned(x: number): boolean {
    return x % this.pageSizeBytes === 0;
  }

  map(iova: number, gpa: number, sizeBytes: number, perms: number): HostResult {
    // vfio_dma_do_map: no permission, zero size or misalignment to the IOMMU page is EINVAL.
    if ((perms & (PERM_READ | PERM_WRITE)) === 0 || (perms & ~(PERM_READ | PERM_WRITE)) !== 0) {
      return this.refuse("EINVAL", `map: bad permissions ${perms}`);
    }
    if (sizeBytes === 0 || !this.aligned(iova) || !this.aligned(gpa) || !this.aligned(sizeBytes)) {
      return this.refuse("EINVAL", `map: iova/vaddr/size not aligned to ${this.pageSizeBytes} or size 0`);
    }
    if (!isValidRange(iova, sizeBytes) || !isValidRange(gpa, sizeBytes)) {
      return this.refuse("EINVAL", "map: range overflows");
    }
    if (iova + sizeBytes > this.iovaLimit) {
      return this.refuse(
        "EINVAL",
        `map: iova range beyond the host IOMMU aperture 0x${this.iovaLimit.toString(16)}`,
      );
    }
    const last = iova + sizeBytes - 1;
    if (this.entries.overlaps(iova, last)) {
      return this.refuse("EEXIST", `map: [0x${iova.toString(16)}, 0x${last.toString(16)}] overlaps an entry`);
    }
    if (this.entries.size >= this.dmaEntryLimit) {
      return this.refuse("ENOSPC", `map: container holds ${this.entries.size} entries (dma_entry_limit)`);
    }
    this.entries.insert(iova, last, { iova, gpa, sizeBytes, perms });
    this.mappedBytesTotal += sizeBytes;
    this.maps++;
    return { ok: true, bytes: sizeBytes };
  }

  unmap(iova: number, sizeBytes: number): HostResult {
    if (
      sizeBytes === 0 ||
      !this.aligned(iova) ||
      !this.aligned(sizeBytes) ||
      !isValidRange(iova, sizeBytes)
    ) {
      return this.refuse("EINVAL", "unmap: iova/size not aligned, zero or overflowing");
    }
    const last = iova + sizeBytes - 1;
    // Type1 v2: an unmap may not bisect an entry, at either end.
    const head = this.entries.find(iova);
    if (head !== undefined && head.start !== iova) {
      return this.refuse(
        "EINVAL",
        `unmap: 0x${iova.toString(16)} is inside the entry at 0x${head.start.toString(16)}`,
      );
    }
    const tail = this.entries.find(last);
    if (tail !== undefined && tail.last !== last) {
      return this.refuse(
        "EINVAL",
        `unmap: 0x${last.toString(16)} is inside the entry at 0x${tail.start.toString(16)}`,
      );
    }
    let bytes = 0;
    for (const e of this.entries.overlapping(iova, last)) {
      this.entries.remove(e.start);
      bytes += e.value.sizeBytes;
    }
    this.mappedBytesTotal -= bytes;
    this.unmaps++;
    return { ok: true, bytes };
  }

  /** VFIO_DMA_UNMAP_FLAG_ALL. */
  unmapAll(): HostResult {
    const bytes = this.mappedBytesTotal;
    this.entries.clear();
    this.mappedBytesTotal = 0;
    this.unmaps++;
    return { ok: true, bytes };
  }

  /** The entry containing `iova`, as a host IOMMU walk would find it. */
  lookup(iova: number): HostDmaEntry | undefined {
    return this.entries.valueAt(iova);
  }

  /** All entries in IOVA order. */
  list(): HostDmaEntry[] {
    return [...this.entries.entries()].map((e) => e.value);
  }

  get entryCount(): number {
    return this.entries.size;
  }

  get mappedBytes(): number {
    return this.mappedBytesTotal;
  }

  stats(): VfioType1Stats {
    return {
      entries: this.entries.size,
      mappedBytes: this.mappedBytesTotal,
      dmaEntryLimit: this.dmaEntryLimit,
      maps: this.maps,
      unmaps: this.unmaps,
      refused: { ...this.refusedCounts },
    };
  }

  describe(): string {
    const s = this.stats();
    return `vfio-type1: ${s.entries}/${s.dmaEntryLimit} entries, ${s.mappedBytes} bytes mapped`;
  }
}

export function describeEntry(e: HostDmaEntry): string {
  return `iova 0x${e.iova.toString(16)} -> gpa 0x${e.gpa.toString(16)} (+0x${e.sizeBytes.toString(16)}) ${permsName(e.perms)}`;
}
