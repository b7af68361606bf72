/**
 * Host propagation for one assigned endpoint: keeps its host IOMMU (e.g. a VFIO type1
 * container) mapping exactly what the endpoint may reach through this virtio-iommu.
 *
 * The view is one of: nothing (blocked), identity over guest RAM (bypass mode), or the mappings
 * of the endpoint's domain. One MAP is one host entry, so large pages cost one entry. Mappings
 * without READ or WRITE allow no access and are not given to the host.
 */
import { PERM_RW } from "../engine/access.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { HostErrno, HostIommu, HostResult } from "../engine/host-iommu.ts";
import { type Domain, type Mapping, mappingSizeBytes } from "./domains.ts";

export interface HostFailure {
  /** The host's errno, or "exception" when the host threw instead of answering. */
  readonly errno: HostErrno | "exception";
  readonly message: string;
}

/** Calls the host, turning a thrown error into a refusal so no request is left half done. */
function callHost(call: () => HostResult): HostResult | HostFailure {
  try {
    return call();
  } catch (e) {
    return { errno: "exception", message: String(e) };
  }
}

function refused(r: HostResult | HostFailure): HostFailure | null {
  if ("ok" in r) return r.ok ? null : { errno: r.errno, message: r.message };
  return r;
}

export type HostView = "none" | "identity" | Domain;

export class HostMirror {
  readonly host: HostIommu;
  private readonly memory: GuestMemory;
  /** What the host currently maps. */
  private current: HostView = "none";
  maps = 0;
  unmaps = 0;
  refusals = 0;
  /** Unmaps the host refused while tearing a view down (the host and the model disagree). */
  teardownErrors = 0;

  /** Called when the host refuses an unmap: the endpoint may keep reaching what it should not. */
  private readonly onIsolationLost: () => void;

  constructor(host: HostIommu, memory: GuestMemory, onIsolationLost: () => void = () => {}) {
    this.host = host;
    this.memory = memory;
    this.onIsolationLost = onIsolationLost;
  }

  get view(): HostView {
    return this.current;
  }

  /** True when the host mirrors `domain`, so its mapping changes must be propagated. */
  mirrors(domain: Domain): boolean {
    return this.current === domain;
  }

  /** Switches the host to `view`. On failure the host maps nothing and the failure is returned. */
  apply(view: HostView): HostFailure | null {
    if (view === this.current) return null;
    this.teardown();
    if (view === "none") return null;
    const failure = view === "identity" ? this.mapIdentity() : this.mapDomain(view);
    if (failure === null) this.current = view;
    return failure;
  }

  /** Propagates a new mapping of the mirrored domain. */
  map(m: Mapping): HostFailure | null {
    if ((m.perms & PERM_RW) === 0) return null;
    const host = this.host;
    const failure = refused(
      callHost(() => host.map(m.iovaStart, m.gpaStart, mappingSizeBytes(m), m.perms & PERM_RW)),
    );
    if (failure !== null) {
      this.refusals++;
      return failure;
    }
    this.maps++;
    return null;
  }

  /** Propagates the removal of a mapping of the mirrored domain. */
  unmap(m: Mapping): void {
    if ((m.perms & PERM_RW) === 0) return;
    this.hostUnmap(m.iovaStart, mappingSizeBytes(m));
  }

  private hostUnmap(iova: number, sizeBytes: number): void {
    const host = this.host;
    if (refused(callHost(() => host.unmap(iova, sizeBytes))) === null) {
      this.unmaps++;
      return;
    }
    this.teardownErrors++;
    this.onIsolationLost();
  }

  private teardown(): void {
    const view = this.current;
    this.current = "none";
    if (view === "identity") {
      for (const r of this.memory.regions) this.hostUnmap(r.gpa, r.sizeBytes);
    } else if (view !== "none") {
      for (const e of view.mappings.entries()) this.unmap(e.value);
    }
  }

  private mapIdentity(): HostFailure | null {
    const regions = this.memory.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      const host = this.host;
      const failure = refused(callHost(() => host.map(r.gpa, r.gpa, r.sizeBytes, PERM_RW)));
      if (failure !== null) {
        this.refusals++;
        for (let j = 0; j < i; j++) this.hostUnmap(regions[j].gpa, regions[j].sizeBytes);
        return failure;
      }
      this.maps++;
    }
    return null;
  }

  private mapDomain(domain: Domain): HostFailure | null {
    const done: Mapping[] = [];
    for (const e of domain.mappings.entries()) {
      const failure = this.map(e.value);
      if (failure !== null) {
        for (const m of done) this.unmap(m);
        return failure;
      }
      done.push(e.value);
    }
    return null;
  }
}
