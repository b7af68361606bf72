/**
 * The registry of physical IOMMUs and of the vIOMMU instances guests get on them.
 *
 * Rules (from the Xen vIOMMU design review and Linux iommufd): one vIOMMU per physical IOMMU per
 * guest (StreamIDs overlap across physical IOMMUs, so each instance keeps its own vSID -> pSID
 * table); a physical ID belongs to at most one guest; each instance gets its own host VMID on
 * its physical IOMMU.
 */
import type { HostStage2 } from "./host-stage2.ts";
import {
  type Endpoint,
  type EndpointKind,
  type PhysicalIdLedger,
  type PhysicalIommuBackend,
  type PlugRequest,
  RecordingBackend,
  type RegistryResult,
  ViommuInstance,
} from "./viommu.ts";

export type { RegistryResult } from "./viommu.ts";

export interface PhysicalIommu {
  readonly id: string;
  readonly backend: PhysicalIommuBackend;
  /** Width of physical IDs on this IOMMU (SMMU_IDR1.SIDSIZE of the real SMMU, 16 for PCI BDFs). */
  readonly idBits: number;
  /** Number of VMIDs the physical IOMMU offers (2^16 with VMID16). */
  readonly vmidCount: number;
}

interface PhysicalState {
  readonly iommu: PhysicalIommu;
  readonly ledger: PhysicalIdLedger;
  /** guestId -> its instance on this IOMMU. */
  readonly instances: Map<string, ViommuInstance<unknown, unknown>>;
  readonly usedVmids: Set<number>;
}

export class ViommuRegistry {
  private readonly physical = new Map<string, PhysicalState>();

  registerPhysical(iommu: PhysicalIommu): RegistryResult<PhysicalIommu> {
    if (this.physical.has(iommu.id))
      return { ok: false, error: `physical IOMMU ${iommu.id} already registered` };
    if (!(iommu.idBits >= 1 && iommu.idBits <= 32) || !(iommu.vmidCount >= 2)) {
      return { ok: false, error: `physical IOMMU ${iommu.id}: bad idBits or vmidCount` };
    }
    const ledger: PhysicalIdLedger = { physicalId: iommu.id, idBits: iommu.idBits, owners: new Map() };
    this.physical.set(iommu.id, { iommu, ledger, instances: new Map(), usedVmids: new Set([0]) });
    return { ok: true, value: iommu };
  }

  /**
   * Creates guest `guestId`'s vIOMMU on `physicalId`; a second one for the same pair is refused.
   * `S` and `O` are the state and plug options of the model that will bind to it (model.ts).
   */
  createViommu<S = undefined, O = undefined>(
    guestId: string,
    physicalId: string,
    hostStage2: HostStage2 | null,
  ): RegistryResult<ViommuInstance<S, O>> {
    const p = this.physical.get(physicalId);
    if (p === undefined) return { ok: false, error: `no physical IOMMU ${physicalId}` };
    if (p.instances.has(guestId)) {
      return { ok: false, error: `guest ${guestId} already has a vIOMMU on ${physicalId}` };
    }
    // VMID 0 stays with the host; each vIOMMU gets the lowest free one.
    let vmid = 1;
    while (vmid < p.iommu.vmidCount && p.usedVmids.has(vmid)) vmid++;
    if (vmid >= p.iommu.vmidCount) return { ok: false, error: `${physicalId}: no free VMID` };
    p.usedVmids.add(vmid);
    const inst = new ViommuInstance<S, O>(guestId, p.iommu.backend, vmid, hostStage2, p.ledger);
    p.instances.set(guestId, inst);
    return { ok: true, value: inst };
  }

  /**
   * Hot-plug: gives the guest of `inst` an endpoint on `physicalId` (`ViommuInstance.plug`, the
   * one place endpoints are plugged, after checking the instance is that IOMMU's).
   */
  plug<S, O>(
    physicalId: string,
    inst: ViommuInstance<S, O>,
    request: PlugRequest<O>,
  ): RegistryResult<Endpoint> {
    if (!this.holds(physicalId, inst)) {
      return { ok: false, error: `vIOMMU of ${inst.guestId} is not on ${physicalId}` };
    }
    return inst.plug(request);
  }

  /** `plug` with positional IDs and no model options. */
  assign<S, O>(
    physicalId: string,
    inst: ViommuInstance<S, O>,
    vId: number,
    pId: number,
    kind: EndpointKind,
    name: string,
  ): RegistryResult<Endpoint> {
    return this.plug(physicalId, inst, { vId, pId, kind, name });
  }

  /** Takes an endpoint away from its guest (hot-unplug, `ViommuInstance.unplug`). */
  unplug<S, O>(physicalId: string, inst: ViommuInstance<S, O>, vId: number): boolean {
    return this.holds(physicalId, inst) && inst.unplug(vId);
  }

  /** The same as `unplug`. */
  release<S, O>(physicalId: string, inst: ViommuInstance<S, O>, vId: number): boolean {
    return this.unplug(physicalId, inst, vId);
  }

  /** Destroys a guest's vIOMMU on `physicalId`: every endpoint is unplugged, the VMID freed. */
  destroyViommu<S, O>(physicalId: string, inst: ViommuInstance<S, O>): boolean {
    const p = this.physical.get(physicalId);
    if (p === undefined || !this.holds(physicalId, inst)) return false;
    for (const e of inst.endpoints()) inst.unplug(e.vId);
    p.usedVmids.delete(inst.hostVmid);
    p.instances.delete(inst.guestId);
    return true;
  }

  private holds<S, O>(physicalId: string, inst: ViommuInstance<S, O>): boolean {
    return (this.physical.get(physicalId)?.instances.get(inst.guestId) as unknown) === inst;
  }

  instances(physicalId: string): ViommuInstance<unknown, unknown>[] {
    return [...(this.physical.get(physicalId)?.instances.values() ?? [])];
  }

  physicalIommus(): PhysicalIommu[] {
    return [...this.physical.values()].map((p) => p.iommu);
  }

  /**
   * A registry with one emulated physical IOMMU (its backend only records: nothing physical to
   * program) and guest `guestId`'s vIOMMU on it: what a model used on its own (tests, tools)
   * and a host with one vIOMMU build.
   */
  static single<S = undefined, O = undefined>(
    physicalId: string,
    idBits: number,
    guestId = "guest",
  ): { registry: ViommuRegistry; backend: RecordingBackend; instance: ViommuInstance<S, O> } {
    const registry = new ViommuRegistry();
    const backend = new RecordingBackend(physicalId);
    const registered = registry.registerPhysical({ id: physicalId, backend, idBits, vmidCount: 2 });
    if (!registered.ok) throw new Error(registered.error);
    const created = registry.createViommu<S, O>(guestId, physicalId, null);
    if (!created.ok) throw new Error(created.error);
    return { registry, backend, instance: created.value };
  }
}
