/**
 * The IOMMU-independent half of a virtual IOMMU (after the Xen vIOMMU design: a generic
 * framework with one backend per IOMMU architecture; here the backends are the three models,
 * see model.ts).
 *
 * A `ViommuInstance` is one guest's view of one physical IOMMU. It owns:
 *  - the endpoint table, the only one in the tree: guest-visible IDs (vSID for SMMUv3, source-id
 *    for VT-d, endpoint ID for virtio-iommu) -> physical IDs, what each endpoint is (emulated or
 *    assigned), its DMA address space and the model's state for it (`states`);
 *  - hot-plug and unplug (`plug`, `unplug`): ID checks, physical ownership across guests, the
 *    model's `plugEndpoint` / `unplugEndpoint`, the epoch models compare;
 *  - the host-owned stage 2 (IPA -> host PA), when the host constrains this guest's DMA;
 *  - the link to the physical IOMMU backend: guest stage-1 invalidations are forwarded to it
 *    (rewritten from guest IDs to physical IDs and the host VMID) and counted;
 *  - fault delivery: faults the guest must not see (host stage-2 faults) and ownership
 *    violations go to the host; the architected guest report stays in the model, which also
 *    tells the instance (`guestFault`) so listeners hear every model's faults the same way.
 *
 * A model asks `endpoint(vId)` (or reads `states`) before it touches any per-endpoint state: an
 * ID the guest does not own is refused, and the model reports the refusal its own way (SMMUv3:
 * C_BAD_STREAMID, virtio-iommu: S_NOENT) and, for commands, through `violation`.
 */
import type { DmaFault } from "../engine/access.ts";
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { HostStage2 } from "./host-stage2.ts";
import type { PluggedState, ViommuModel } from "./model.ts";

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

export type RegistryResult<T> =
  | { ok: true; value: T }
  /** `cause`: what the model threw when it refused the plug (hosts rethrow it). */
  | { ok: false; error: string; cause?: unknown };

/** The IDs of one physical IOMMU and the guest that owns each (shared by its instances). */
export interface PhysicalIdLedger {
  readonly physicalId: string;
  /** Width of physical and guest-visible IDs on this IOMMU. */
  readonly idBits: number;
  /** pId -> guest that owns it. */
  readonly owners: Map<number, string>;
}

/** What a host asks for when it plugs an endpoint. */
export interface PlugRequest<O> {
  /** The ID the guest will use (vSID, source-id / BDF, endpoint ID). */
  readonly vId: number;
  /** The ID on the physical IOMMU (default `vId`: an emulated device's ID is the host's choice). */
  readonly pId?: number;
  /** Default "emulated". */
  readonly kind?: EndpointKind;
  /** For logs and fault listeners (default: the model's name and the ID in hex). */
  readonly name?: string;
  /** The model's plug options (e.g. the host IOMMU of an assigned device). */
  readonly options?: O;
}

export interface ViommuStats {
  readonly guestId: string;
  readonly physicalIommu: string;
  readonly hostVmid: number;
  readonly endpoints: number;
  readonly plugs: number;
  readonly unplugs: number;
  readonly forwardedInvalidations: Readonly<Record<ForwardedInvalidation["scope"], number>>;
  readonly violations: number;
  readonly hostFaults: number;
  readonly guestFaults: number;
}

interface TableEntry<S> {
  readonly endpoint: Endpoint;
  /** Null until a model is bound (an instance can hold IDs before its device exists). */
  plugged: PluggedState<S> | null;
}

/**
 * One guest's vIOMMU on one physical IOMMU. `S` is the bound model's per-endpoint state and `O`
 * its plug options (model.ts); an instance with no model yet records endpoints only, and
 * `bindModel` then builds their state.
 */
export class ViommuInstance<S = undefined, O = undefined> {
  readonly guestId: string;
  readonly backend: PhysicalIommuBackend;
  /** The VMID this guest has on the physical IOMMU (iommufd: one per vIOMMU). */
  readonly hostVmid: number;
  readonly hostStage2: HostStage2 | null;
  private readonly ledger: PhysicalIdLedger;
  private model: ViommuModel<S, O> | null = null;
  private readonly byVid = new Map<number, TableEntry<S>>();
  private readonly stateByVid = new Map<number, S>();
  private readonly listeners: FaultListener[] = [];
  private readonly forwarded: Record<ForwardedInvalidation["scope"], number> = {
    all: 0,
    asid: 0,
    va: 0,
    vaa: 0,
    config: 0,
    context: 0,
  };
  private plugs = 0;
  private unplugs = 0;
  private violations = 0;
  private hostFaults = 0;
  private guestFaults = 0;
  /** Bumped whenever the endpoint table changes: models drop per-endpoint fast paths. */
  epoch = 0;

  /** `ledger`: the physical IOMMU's ID owners, shared with the other guests' instances on it. */
  constructor(
    guestId: string,
    backend: PhysicalIommuBackend,
    hostVmid: number,
    hostStage2: HostStage2 | null,
    ledger?: PhysicalIdLedger,
  ) {
    this.guestId = guestId;
    this.backend = backend;
    this.hostVmid = hostVmid;
    this.hostStage2 = hostStage2;
    this.ledger = ledger ?? { physicalId: backend.id, idBits: 32, owners: new Map() };
  }

  /** The physical IOMMU this instance is on. */
  get physicalId(): string {
    return this.ledger.physicalId;
  }

  /**
   * Makes `model` this instance's backend (once). Endpoints recorded before get their state now;
   * a model that refuses one of them (it throws) is not bound, and what it built for the others
   * is unplugged again.
   */
  bindModel(model: ViommuModel<S, O>): void {
    if (this.model !== null) {
      throw new Error(`vIOMMU of ${this.guestId} on ${this.physicalId} already has a model`);
    }
    const built: [TableEntry<S>, PluggedState<S>][] = [];
    try {
      for (const entry of this.byVid.values()) {
        built.push([entry, model.plugEndpoint(entry.endpoint, undefined)]);
      }
    } catch (e) {
      // Undo what the model built for the others before refusing the binding.
      for (const [entry, plugged] of built) model.unplugEndpoint(entry.endpoint, plugged.state);
      throw e;
    }
    this.model = model;
    for (const [entry, plugged] of built) {
      entry.plugged = plugged;
      this.stateByVid.set(entry.endpoint.vId, plugged.state);
    }
    this.epoch++;
  }

  /** The endpoint the guest knows as `vId`, or undefined when the guest does not own it. */
  endpoint(vId: number): Endpoint | undefined {
    return this.byVid.get(vId)?.endpoint;
  }

  endpoints(): Endpoint[] {
    const out: Endpoint[] = [];
    for (const e of this.byVid.values()) out.push(e.endpoint);
    return out;
  }

  /** The model's state per guest-visible ID (the model's only view of its endpoints). */
  get states(): ReadonlyMap<number, S> {
    return this.stateByVid;
  }

  /** The DMA address space of endpoint `vId`, once a model is bound. */
  space(vId: number): DmaAddressSpace | undefined {
    return this.byVid.get(vId)?.plugged?.space;
  }

  /**
   * Hot-plug (and platform setup): gives the guest endpoint `vId` -> `pId`. Refused when an ID
   * is out of the physical IOMMU's range, `pId` belongs to a guest, `vId` is in use, or the
   * model cannot serve the endpoint; nothing changes then.
   */
  plug(request: PlugRequest<O>): RegistryResult<Endpoint> {
    const { vId } = request;
    const pId = request.pId ?? vId;
    const { idBits, owners, physicalId } = this.ledger;
    const limit = 2 ** idBits;
    if (
      !Number.isInteger(vId) ||
      !Number.isInteger(pId) ||
      vId < 0 ||
      pId < 0 ||
      pId >= limit ||
      vId >= limit
    ) {
      return { ok: false, error: `ID out of range (vId ${vId}, pId ${pId}, ${idBits} bits)` };
    }
    const owner = owners.get(pId);
    if (owner !== undefined) return { ok: false, error: `pId ${pId} on ${physicalId} is owned by ${owner}` };
    if (this.byVid.has(vId)) return { ok: false, error: `vId ${vId} already used by ${this.guestId}` };
    const name = request.name ?? `${this.model?.modelName ?? physicalId} endpoint 0x${vId.toString(16)}`;
    const endpoint: Endpoint = { vId, pId, kind: request.kind ?? "emulated", name };
    let plugged: PluggedState<S> | null = null;
    if (this.model !== null) {
      try {
        plugged = this.model.plugEndpoint(endpoint, request.options);
      } catch (e) {
        return { ok: false, error: e instanceof Error ? e.message : String(e), cause: e };
      }
      this.stateByVid.set(vId, plugged.state);
    }
    owners.set(pId, this.guestId);
    this.byVid.set(vId, { endpoint, plugged });
    this.plugs++;
    this.epoch++;
    return { ok: true, value: endpoint };
  }

  /** `plug` for host setup code, where a refusal is a configuration error: throws it. */
  plugOrThrow(request: PlugRequest<O>): DmaAddressSpace {
    const r = this.plug(request);
    if (!r.ok) throw r.cause ?? new Error(r.error);
    const space = this.space(request.vId);
    if (space === undefined) {
      this.unplug(request.vId);
      throw new Error(`vIOMMU of ${this.guestId} on ${this.physicalId} has no model to translate for it`);
    }
    return space;
  }

  /**
   * Hot-unplug: the model drops its state (and empties the endpoint's host IOMMU), the guest
   * loses the ID and the physical ID is free again. False when the guest has no such endpoint.
   */
  unplug(vId: number): boolean {
    const entry = this.byVid.get(vId);
    if (entry === undefined) return false;
    try {
      if (this.model !== null && entry.plugged !== null)
        this.model.unplugEndpoint(entry.endpoint, entry.plugged.state);
    } finally {
      this.byVid.delete(vId);
      this.stateByVid.delete(vId);
      this.ledger.owners.delete(entry.endpoint.pId);
      this.unplugs++;
      this.epoch++;
    }
    return true;
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

  /** `guestFault` by guest-visible ID (for models that keep IDs, not endpoints, in hand). */
  guestFaultOf(vId: number, fault: DmaFault): void {
    const e = this.byVid.get(vId);
    if (e !== undefined) this.guestFault(e.endpoint, fault);
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
      plugs: this.plugs,
      unplugs: this.unplugs,
      forwardedInvalidations: { ...this.forwarded },
      violations: this.violations,
      hostFaults: this.hostFaults,
      guestFaults: this.guestFaults,
    };
  }
}
