/**
 * The registry of physical IOMMUs and of the vIOMMU instances guests get on them.
 *
 * Rules (from the Xen vIOMMU design review and Linux iommufd): one vIOMMU per physical IOMMU per
 * guest (StreamIDs overlap across physical IOMMUs, so each instance keeps its own vSID -> pSID
 * table); a physical ID belongs to at most one guest; each instance gets its own host VMID on
 * its physical IOMMU.
 */
import type { HostStage2 } from "./host-stage2.ts";
import { type Endpoint, type EndpointKind, type PhysicalIommuBackend, ViommuInstance } from "./viommu.ts";

export interface PhysicalIommu {
  readonly id: string;
  readonly backend: PhysicalIommuBackend;
  /** Width of physical IDs on this IOMMU (SMMU_IDR1.SIDSIZE of the real SMMU). */
  readonly idBits: number;
  /** Number of VMIDs the physical IOMMU offers (2^16 with VMID16). */
  readonly vmidCount: number;
}

export type RegistryResult<T> = { ok: true; value: T } | { ok: false; error: string };

interface PhysicalState {
  readonly iommu: PhysicalIommu;
  /** pId -> guest that owns it. */
  readonly owners: Map<number, string>;
  /** guestId -> its instance on this IOMMU. */
  readonly instances: Map<string, ViommuInstance>;
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
    this.physical.set(iommu.id, { iommu, owners: new Map(), instances: new Map(), usedVmids: new Set([0]) });
    return { ok: true, value: iommu };
  }

  /** Creates guest `guestId`'s vIOMMU on `physicalId`; a second one for the same pair is refused. */
  createViommu(
    guestId: string,
    physicalId: string,
    hostStage2: HostStage2 | null,
  ): RegistryResult<ViommuInstance> {
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
    const inst = new ViommuInstance(guestId, p.iommu.backend, vmid, hostStage2);
    p.instances.set(guestId, inst);
    return { ok: true, value: inst };
  }

  /** Gives the guest of `inst` the endpoint vId -> pId on `physicalId`. */
  assign(
    physicalId: string,
    inst: ViommuInstance,
    vId: number,
    pId: number,
    kind: EndpointKind,
    name: string,
  ): RegistryResult<Endpoint> {
    const p = this.physical.get(physicalId);
    if (p === undefined || p.instances.get(inst.guestId) !== inst) {
      return { ok: false, error: `vIOMMU of ${inst.guestId} is not on ${physicalId}` };
    }
    const limit = 2 ** p.iommu.idBits;
    if (
      !Number.isInteger(vId) ||
      !Number.isInteger(pId) ||
      vId < 0 ||
      pId < 0 ||
      pId >= limit ||
      vId >= limit
    ) {
      return { ok: false, error: `ID out of range (vId ${vId}, pId ${pId}, ${p.iommu.idBits} bits)` };
    }
    const owner = p.owners.get(pId);
    if (owner !== undefined) return { ok: false, error: `pId ${pId} on ${physicalId} is owned by ${owner}` };
    if (inst.endpoint(vId) !== undefined)
      return { ok: false, error: `vId ${vId} already used by ${inst.guestId}` };
    const e: Endpoint = { vId, pId, kind, name };
    p.owners.set(pId, inst.guestId);
    inst.addEndpoint(e);
    return { ok: true, value: e };
  }

  /** Takes an endpoint away from its guest (hot-unplug). */
  release(physicalId: string, inst: ViommuInstance, vId: number): boolean {
    const p = this.physical.get(physicalId);
    if (p === undefined) return false;
    const e = inst.removeEndpoint(vId);
    if (e === undefined) return false;
    p.owners.delete(e.pId);
    return true;
  }

  /** Destroys a guest's vIOMMU on `physicalId`, freeing its IDs and VMID. */
  destroyViommu(physicalId: string, inst: ViommuInstance): boolean {
    const p = this.physical.get(physicalId);
    if (p === undefined || p.instances.get(inst.guestId) !== inst) return false;
    for (const e of inst.endpoints()) {
      inst.removeEndpoint(e.vId);
      p.owners.delete(e.pId);
    }
    p.usedVmids.delete(inst.hostVmid);
    p.instances.delete(inst.guestId);
    return true;
  }

  instances(physicalId: string): ViommuInstance[] {
    return [...(this.physical.get(physicalId)?.instances.values() ?? [])];
  }

  physicalIommus(): PhysicalIommu[] {
    return [...this.physical.values()].map((p) => p.iommu);
  }
}
