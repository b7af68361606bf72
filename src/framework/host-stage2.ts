/**
 * The host-owned stage 2: guest IPA -> host PA, under the engine `HostIommu` contract.
 *
 * In the Xen and iommufd designs the guest owns stage 1 and the host owns stage 2. Here the host
 * stage 2 is a `HostIommu` table with lookups (the engine `VfioType1Container` is one), wrapped
 * so that every vIOMMU model can (a) translate an IPA through it on a miss, (b) learn when the
 * host unmaps something (its `epoch` changes and listeners run), and (c) count what happened.
 * The guest never sees this stage: its faults go to the host, not to the guest's event queue.
 */
import { type Access, type DmaFault, dmaFault, PERM_RW } from "../engine/access.ts";
import type { HostDmaEntry, HostIommu, HostResult } from "../engine/host-iommu.ts";
import type { Translation } from "../engine/translation.ts";

/** A host IOMMU table that can also be looked up (VfioType1Container satisfies this). */
export interface HostStage2Table extends HostIommu {
  lookup(ipa: number): HostDmaEntry | undefined;
}

export interface HostStage2Stats {
  readonly lookups: number;
  readonly faults: number;
  readonly maps: number;
  readonly unmaps: number;
  readonly epoch: number;
}

export type HostStage2Listener = (ipa: number, sizeBytes: number) => void;

export class HostStage2 implements HostIommu {
  readonly table: HostStage2Table;
  /** Bumped on every unmap: translations derived from this stage may be stale. */
  epoch = 0;
  private readonly listeners: HostStage2Listener[] = [];
  private lookups = 0;
  private faults = 0;
  private maps = 0;
  private unmaps = 0;

  constructor(table: HostStage2Table) {
    this.table = table;
  }

  map(ipa: number, pa: number, sizeBytes: number, perms: number): HostResult {
    const r = this.table.map(ipa, pa, sizeBytes, perms);
    if (r.ok) this.maps++;
    return r;
  }

  unmap(ipa: number, sizeBytes: number): HostResult {
    const r = this.table.unmap(ipa, sizeBytes);
    if (r.ok) {
      this.unmaps++;
      this.epoch++;
      for (const l of this.listeners) l(ipa, sizeBytes);
    }
    return r;
  }

  /** Runs `listener` after every successful unmap; returns a function that removes it. */
  onUnmap(listener: HostStage2Listener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /**
   * Translates the host entry containing `ipa` for `access` into `out` (iovaBase/gpaBase are the
   * IPA and host PA of the entry). Returns a fault for an unmapped IPA or a forbidden access.
   */
  translate(endpointId: number, ipa: number, access: Access, out: Translation): DmaFault | null {
    this.lookups++;
    const e = this.table.lookup(ipa);
    if (e === undefined) {
      this.faults++;
      return dmaFault("unmapped", endpointId, ipa, access, 0, "host stage 2: IPA not mapped");
    }
    if ((e.perms & access) === 0) {
      this.faults++;
      return dmaFault("permission", endpointId, ipa, access, 0, "host stage 2: access not permitted");
    }
    out.set(e.iova, e.gpa, e.sizeBytes, e.perms & PERM_RW);
    return null;
  }

  stats(): HostStage2Stats {
    return {
      lookups: this.lookups,
      faults: this.faults,
      maps: this.maps,
      unmaps: this.unmaps,
      epoch: this.epoch,
    };
  }
}
