/**
 * Endpoints: the DMA masters the platform declares behind this virtio-iommu (PCI BDFs on x86).
 * Each has its DMA address space, its reserved regions, at most one domain, and optionally a host
 * IOMMU (an assigned device) whose mappings mirror what the endpoint may reach.
 */
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { Domain } from "./domains.ts";
import type { HostMirror } from "./host-mirror.ts";
import type { ReservedRegion } from "./reserved-regions.ts";

export class Endpoint {
  readonly id: number;
  readonly space: DmaAddressSpace;
  /** RESV_MEM regions reported by PROBE and refused by MAP (device-wide ones included). */
  readonly reservedRegions: readonly ReservedRegion[];
  /** The host IOMMU mirror of an assigned device, or null for an emulated one. */
  readonly hostMirror: HostMirror | null;
  domain: Domain | null = null;
  /** Fault records of this endpoint waiting in the event queue. */
  pendingEvents = 0;
  faults = 0;
  eventsDropped = 0;
  eventTokens = 0;
  eventTokensAtMs = 0;

  constructor(
    id: number,
    space: DmaAddressSpace,
    reservedRegions: readonly ReservedRegion[],
    hostMirror: HostMirror | null,
  ) {
    this.id = id;
    this.space = space;
    this.reservedRegions = reservedRegions;
    this.hostMirror = hostMirror;
  }
}
