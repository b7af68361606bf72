/**
 * The IOMMU-independent half of a virtual IOMMU (after the Xen vIOMMU design: a generic
 * framework with one backend per IOMMU architecture).
 *
 * A `ViommuInstance` is one guest's view of one physical IOMMU. It owns:
 *  - the endpoint table: guest-visible IDs (vSID for SMMUv3, source-id for VT-d, endpoint ID for
 *    virtio-iommu) -> physical IDs, with what each endpoint is (emulated or assigned);
 *  - the host-owned stage 2 (IPA -> host PA), when the host constrains this guest's DMA;
 *  - the link to the physical IOMMU backend: guest stage-1 invalidations are forwarded to it
 *    (rewritten from guest IDs to physical IDs and the host VMID) and counted;
 *  - fault delivery: faults the guest must not see (host stage-2 faults) and ownership
 *    violations go to the host; the architected guest report stays in the model.
 *
 * A model (SMMUv3 today; VT-d and virtio-iommu can adopt it) asks `endpoint(vId)` before it
 * touches any per-stream state: an ID the guest does not own is refused, and the model reports
 * the refusal its own way (SMMUv3: C_BAD_STREAMID) and through `reportViolation`.
 */
import type { DmaFault } from "../engine/access.ts";
import type { HostStage2 } from "./host-stage2.ts";

export type EndpointKind = "emulated" | "assigned";

export interface Endpoint {
  /** The ID the guest uses (vSID / source-id / endpoint ID). */
  readonly vId: number;
  /** The ID on the physical IOMMU (pSID); for emulated devices, a host-chosen unique ID. */
  readonly pId: number;
  readonly kind: EndpointKind;
  readonly name: string;
}

/** What a forwarded guest invalidation covers, with guest IDs already rewritten to physical. */
export type ForwardedInvalidation =
  | { readonly scope: "all" }
  | { readonly scope: "asid"; readonly asid: number }
  | {
      readonly scope: "va";
      readonly asid: number;
      readonly iova: number;
      readonly sizeBytes: number;
      readonly leaf: boolean;
    }
  | { readonly scope: "vaa"; readonly iova: number; readonly sizeBytes: number; readonly leaf: boolean }
  | { readonly scope: "config"; readonly pId: number }
  | { readonly scope: "context"; readonly pId: number; readonly ssid: number };

export interface OwnershipViolation {
  readonly guestId: string;
  readonly physicalIommu: string;
  /** The guest-visible ID the guest tried to use. */
  readonly vId: number;
  /** What it tried to do, e.g. "CFGI_STE". */
  readonly action: string;
}

/** The physical IOMMU side: where forwarded invalidations and host-visible reports go. */
export interface PhysicalIommuBackend {
  readonly id: string;
  /** A guest stage-1 (or context) invalidation, rewritten for the physical IOMMU. */
  forwardInvalidation(hostVmid: number, inv: ForwardedInvalidation): void;
  /** A guest touched an ID it does not own. */
  reportViolation(v: OwnershipViolation): void;
  /** A DMA fault the guest must not see (host stage 2), with the endpoint it came from. */
  reportHostFault(endpoint: Endpoint, fault: DmaFault): void;
}

/**
 * A backend for a physical IOMMU that has nothing to program (all endpoints emulated, or a test):
 * it records what would have been sent, bounded, and counts everything.
 */
export class RecordingBackend implements PhysicalIommuBackend {
  readonly id: string;
  /** Entries kept per log; older ones are dropped (counts stay exact). */
  readonly keep: number;
  private readonly invLog: BoundedLog<{ hostVmid: number; inv: ForwardedInvalidation }>;
  private readonly violationLog: BoundedLog<OwnershipViolation>;
  private readonly faultLog: BoundedLog<{ endpoint: Endpoint; fault: DmaFault }>;
  invalidationCount = 0;
  violationCount = 0;
  hostFaultCount = 0;

  constructor(id: string, keep = 1024) {
    this.id = id;
    this.keep = keep;
    this.invLog = new BoundedLog(keep);
    this.violationLog = new BoundedLog(keep);
    this.faultLog = new BoundedLog(keep);
  }

  /** The most recent forwarded invalidations, oldest first. */
  get invalidations(): { hostVmid: number; inv: ForwardedInvalidation }[] {
    return this.invLog.items();
  }

  get violations(): OwnershipViolation[] {
    return this.violationLog.items();
  }

  get hostFaults(): { endpoint: Endpoint; fault: DmaFault }[] {
    return this.faultLog.items();
  }

  forwardInvalidation(hostVmid: number, inv: ForwardedInvalidation): void {
    this.invalidationCount++;
    this.invLog.push({ hostVmid, inv });
  }

  reportViolation(v: OwnershipViolation): void {
    this.violationCount++;
    this.violationLog.push(v);
  }

  reportHostFault(endpoint: Endpoint, fault: DmaFault): void {
    this.hostFaultCount++;
    this.faultLog.push({ endpoint, fault });
  }
}

/** A ring of the last `capacity` items: O(1) push, no shifting. */
class BoundedLog<T> {
  private readonly ring: T[] = [];
  private next = 0;
  private readonly capacity: number;

  constructor(capacity: number) {
    this.capacity = Math.max(1, capacity);
  }

  push(item: T): void {
    if (this.ring.length < this.capacity) this.ring.push(item);
    else this.ring[this.next] = item;
    this.next = (this.next + 1) % this.capacity;
  }

  items(): T[] {
    if (this.ring.length < this.capacity) return [...this.ring];
    return [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }
}

export type FaultListener = (endpoint: Endpoint, fault: DmaFault) => void;

export interface ViommuStats {
  readonly guestId: string;
  readonly physicalIommu: string;
  readonly hostVmid: number;
  readonly endpoints: number;
  readonly forwardedInvalidations: Readonly<Record<ForwardedInvalidation["scope"], number>>;
  readonly violations: number;
  readonly hostFaults: number;
  readonly guestFaults: number;
}

export class ViommuInstance {
  readonly guestId: string;
  readonly backend: PhysicalIommuBackend;
  /** The VMID this guest has on the physical IOMMU (iommufd: one per vIOMMU). */
  readonly hostVmid: number;
  readonly hostStage2: HostStage2 | null;
  private readonly byVid = new Map<number, Endpoint>();
  private readonly listeners: FaultListener[] = [];
  private readonly forwarded: Record<ForwardedInvalidation["scope"], number> = {
    all: 0,
    asid: 0,
    va: 0,
    vaa: 0,
    config: 0,
    context: 0,
  };
  private violations = 0;
  private hostFaults = 0;
  private guestFaults = 0;
  /** Bumped whenever the endpoint table changes: models drop per-endpoint fast paths. */
  epoch = 0;

  constructor(
    guestId: string,
    backend: PhysicalIommuBackend,
    hostVmid: number,
    hostStage2: HostStage2 | null,
  ) {
    this.guestId = guestId;
    this.backend = backend;
    this.hostVmid = hostVmid;
    this.hostStage2 = hostStage2;
  }

  /** The endpoint the guest knows as `vId`, or undefined when the guest does not own it. */
  endpoint(vId: number): Endpoint | undefined {
    return this.byVid.get(vId);
  }

  endpoints(): Endpoint[] {
    return [...this.byVid.values()];
  }

  /** Used by the registry, which checks physical ownership across guests first. */
  addEndpoint(e: Endpoint): void {
    this.byVid.set(e.vId, e);
    this.epoch++;
  }

  removeEndpoint(vId: number): Endpoint | undefined {
    const e = this.byVid.get(vId);
    this.byVid.delete(vId);
    this.epoch++;
    return e;
  }

  forward(inv: ForwardedInvalidation): void {
    this.forwarded[inv.scope]++;
    this.backend.forwardInvalidation(this.hostVmid, inv);
  }

  /** Reports that the guest used an ID it does not own. */
  violation(vId: number, action: string): void {
    this.violations++;
    this.backend.reportViolation({ guestId: this.guestId, physicalIommu: this.backend.id, vId, action });
  }

  /** A fault of the host stage 2: to the host, never to the guest. */
  hostFault(endpoint: Endpoint, fault: DmaFault): void {
    this.hostFaults++;
    this.backend.reportHostFault(endpoint, fault);
    for (const l of this.listeners) l(endpoint, fault);
  }

  /** A fault the model reported to the guest; listeners (the VMM, logs) hear about it too. */
  guestFault(endpoint: Endpoint, fault: DmaFault): void {
    this.guestFaults++;
    for (const l of this.listeners) l(endpoint, fault);
  }

  onFault(listener: FaultListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  stats(): ViommuStats {
    return {
      guestId: this.guestId,
      physicalIommu: this.backend.id,
      hostVmid: this.hostVmid,
      endpoints: this.byVid.size,
      forwardedInvalidations: { ...this.forwarded },
      violations: this.violations,
      hostFaults: this.hostFaults,
      guestFaults: this.guestFaults,
    };
  }
}
