/**
 * How a VT-d unit is built and what it reports: options, endpoint options, the ATS completion,
 * the per-endpoint state the unit keeps, and `stats()`.
 */
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { HostIommu } from "../engine/host-iommu.ts";
import type { HostNotifier, HostNotifierStats } from "../engine/host-notifier.ts";
import type { IotlbStats } from "../engine/iotlb.ts";
import type { Tracer } from "../engine/trace.ts";
import type { ViommuInstance } from "../framework/viommu.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import type { VtdConfig } from "./config.ts";
import type { FaultStats } from "./faults.ts";
import type { QueueStats } from "./invalidation-queue.ts";

/** An ATS-capable endpoint's device-TLB: told about every device-TLB invalidation aimed at it. */
export interface DeviceTlb {
  /** `pasid` is -1 for the request-without-PASID TLB; `allPasids` for a global PASID-based one. */
  invalidate(iova: number, sizeBytes: number, pasid: number, allPasids: boolean): void;
}

export interface EndpointOptions {
  /** The host IOMMU protecting an assigned device; needs caching-mode=on. */
  readonly host?: HostIommu;
  /** The endpoint's device-TLB (ATS); needs device-iotlb=on. */
  readonly ats?: DeviceTlb;
}

export interface VtdOptions {
  /** A configuration or a `key=value,...` string in QEMU's intel-iommu syntax. */
  readonly config?: VtdConfig | string;
  /** Receives the fault event and invalidation completion event messages. */
  readonly interrupts?: InterruptSink;
  /** Requester id the unit's own event messages carry (the unit is not a PCI function). */
  readonly unitSourceId?: number;
  readonly tracer?: Tracer;
  readonly iotlbCapacity?: number;
  /** Bound of the context/PASID (target) cache; reaching it drops the caches (default 65536). */
  readonly targetCacheCapacity?: number;
  /**
   * After a second-stage walk ending in a 4 KiB leaf, cache up to this many following entries of
   * the same leaf table that translate (default IOTLB_PREFETCH_PAGES; 0: none). Linux maps each
   * scatter-gather list at consecutive IOVAs, so the device's next pages are usually there.
   */
  readonly iotlbPrefetchPages?: number;
  /**
   * The guest's vIOMMU in the framework's registry that this unit backs (its endpoint table).
   * Default: a registry of its own with one emulated physical IOMMU ("vt-d", 16-bit source ids).
   */
  readonly viommu?: ViommuInstance<EndpointState, EndpointOptions>;
}

/**
 * Default neighbour prefetch (VtdOptions.iotlbPrefetchPages): 31 entries, so one walk covers up
 * to 128 KiB of a contiguous mapping. VT-d 6.2.2 lets hardware cache any present translation;
 * prefetched entries obey every invalidation like walked ones. Only second-stage leaves are
 * prefetched: first-stage walks set Accessed bits, which must not appear on pages never used.
 */
export const IOTLB_PREFETCH_PAGES = 31;

/** Answer to an ATS translation request (PCIe ATS 2.2 completion, VT-d 4.2.3). */
export type AtsCompletion =
  | {
      readonly status: "success";
      readonly iovaBase: number;
      readonly gpaBase: number;
      readonly sizeBytes: number;
      /** PERM_READ / PERM_WRITE the endpoint may cache; 0 means not present. */
      readonly perms: number;
    }
  | { readonly status: "unsupported-request" | "completer-abort"; readonly reason: number };

export interface EndpointState {
  readonly sourceId: number;
  readonly dma: DmaAddressSpace;
  /** The host IOMMU of an assigned endpoint, kept in step by caching-mode replay. */
  readonly host: HostNotifier | null;
  readonly deviceTlb: DeviceTlb | null;
  deviceTlbInvalidations: number;
  /** A full host resync was requested and not yet run (coalesced, or over the batch budget). */
  resyncPending: boolean;
}

export interface VtdStats {
  readonly translations: number;
  readonly iotlbHits: number;
  readonly iotlbMisses: number;
  readonly iotlb: IotlbStats;
  readonly contextCache: {
    entries: number;
    hits: number;
    misses: number;
    invalidations: number;
    overflows: number;
  };
  readonly interruptEntryCache: { entries: number; hits: number; misses: number };
  readonly tableEntryReads: number;
  readonly dmaFaults: number;
  readonly faults: FaultStats;
  readonly queue: QueueStats;
  readonly registerInvalidations: number;
  readonly interruptsRemapped: number;
  readonly interruptFaults: number;
  readonly atsRequests: number;
  readonly deviceTlbInvalidations: number;
  readonly hosts: readonly VtdHostStats[];
  readonly hostResyncsDeferred: number;
}

/** One assigned endpoint's host propagation. */
export interface VtdHostStats extends HostNotifierStats {
  readonly sourceId: number;
}
