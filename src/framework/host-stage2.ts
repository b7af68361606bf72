/**
 * The host-owned stage 2: guest IPA -> host PA, propagated through the engine's one
 * host-propagation contract (`HostNotifier`) to a host IOMMU backend (the `VfioType1Container`
 * model, or real VFIO).
 *
 * In the Xen and iommufd designs the guest owns stage 1 and the host owns stage 2. The notifier's
 * shadow of what the host maps lets every vIOMMU model (a) translate an IPA through it on a miss,
 * whatever the backend, (b) learn when the host unmaps something (the notifier's `epoch` changes
 * and its unmap listeners run), and (c) count what happened. The guest never sees this stage:
 * its faults go to the host, not to the guest's event queue.
 */
import { type Access, type DmaFault, dmaFault, PERM_RW } from "../engine/access.ts";
import type { HostIommu, HostResult } from "../engine/host-iommu.ts";
import { HostNotifier, type HostUnmapListener } from "../engine/host-notifier.ts";
import type { Translation } from "../engine/translation.ts";

export interface HostStage2Stats {
  readonly lookups: number;
  readonly faults: number;
  readonly maps: number;
  readonly unmaps: number;
  readonly epoch: number;
}

export class HostStage2 implements HostIommu {
  readonly notifier: HostNotifier;
  private lookups = 0;
  private faults = 0;

  constructor(backend: HostIommu | HostNotifier) {
    this.notifier = backend instanceof HostNotifier ? backend : new HostNotifier(backend);
  }

  /** Bumped on every unmap: translations derived from this stage may be stale. */
  get epoch(): number {
    return this.notifier.epoch;
  }

  /** The host VMM maps guest memory into the stage (HostIommu contract, for the host's own use). */
  map(ipa: number, pa: number, sizeBytes: number, perms: number): HostResult {
    const refusal = this.notifier.map(ipa, pa, sizeBytes, perms);
    if (refusal === null) return { ok: true, bytes: sizeBytes };
    return {
      ok: false,
      errno: refusal.errno === "exception" ? "EINVAL" : refusal.errno,
      message: refusal.message,
    };
  }

  unmap(ipa: number, sizeBytes: number): HostResult {
    const before = this.notifier.stats().mappedBytes;
    const refusal = this.notifier.unmap(ipa, sizeBytes);
    if (refusal === null) return { ok: true, bytes: before - this.notifier.stats().mappedBytes };
    return {
      ok: false,
      errno: refusal.errno === "exception" ? "EINVAL" : refusal.errno,
      message: refusal.message,
    };
  }

  /** Runs `listener` after every unmap; returns a function that removes it. */
  onUnmap(listener: HostUnmapListener): () => void {
    return this.notifier.onUnmap(listener);
  }

  /**
   * Translates the host entry containing `ipa` for `access` into `out` (iovaBase/gpaBase are the
   * IPA and host PA of the entry). Returns a fault for an unmapped IPA or a forbidden access.
   */
  translate(endpointId: number, ipa: number, access: Access, out: Translation): DmaFault | null {
    this.lookups++;
    const e = this.notifier.lookup(ipa);
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
    const n = this.notifier;
    return { lookups: this.lookups, faults: this.faults, maps: n.maps, unmaps: n.unmaps, epoch: n.epoch };
  }
}
