/**
 * Endpoints: the DMA masters the platform declares behind this virtio-iommu (PCI BDFs on x86).
 * Each has its DMA address space, its reserved regions, at most one domain, and optionally a host
 * IOMMU (an assigned device) whose mappings mirror what the endpoint may reach. The table of
 * endpoints is the generic vIOMMU layer's (`ViommuInstance.states`); this is the model's state
 * for one of them.
 */
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { HostIommu } from "../engine/host-iommu.ts";
import type { Domain } from "./domains.ts";
import type { HostMirror } from "./host-mirror.ts";
import type { ReservedRegion } from "./reserved-regions.ts";

/** What a host gives when it plugs an endpoint (`ViommuInstance.plug` options). */
export interface VirtioIommuEndpointOptions {
  /** The host IOMMU of an assigned device; it is kept mirroring what the endpoint may reach. */
  host?: HostIommu;
  /** RESV_MEM regions of this endpoint only, on top of the device-wide ones. */
  reservedRegions?: readonly ReservedRegion[];
}

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
