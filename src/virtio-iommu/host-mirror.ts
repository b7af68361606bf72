/**
 * What the host IOMMU of one assigned endpoint must map, in virtio-iommu terms, handed to the
 * engine's `HostNotifier` (the one host-propagation contract).
 *
 * The view is one of: nothing (blocked), identity over guest RAM (bypass mode), or the mappings
 * of the endpoint's domain. Switching views is a replay of the new view's leaves; one MAP is one
 * host entry, so large pages cost one entry. Mappings without READ or WRITE allow no access and
 * are not given to the host.
 */
import { MAX_ADDRESS, PERM_RW } from "../engine/access.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { HostLeafSource, HostNotifier, HostRefusal } from "../engine/host-notifier.ts";
import { type Domain, type Mapping, mappingSizeBytes } from "./domains.ts";

export type HostFailure = HostRefusal;

export type HostView = "none" | "identity" | Domain;

const NOTHING: HostLeafSource = () => true;

export class HostMirror {
  readonly notifier: HostNotifier;
  private readonly memory: GuestMemory;
  /** What the host currently maps. */
  private current: HostView = "none";

  constructor(notifier: HostNotifier, memory: GuestMemory) {
    this.notifier = notifier;
    this.memory = memory;
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
    this.current = "none";
    const failure = this.notifier.replay(this.leavesOf(view), 0, MAX_ADDRESS);
    if (failure === null) {
      this.current = view;
      return null;
    }
    this.notifier.clear();
    return failure;
  }

  /** Propagates a new mapping of the mirrored domain. */
  map(m: Mapping): HostFailure | null {
    return this.notifier.map(m.iovaStart, m.gpaStart, mappingSizeBytes(m), m.perms);
  }

  /** Propagates the removal of a mapping of the mirrored domain. */
  unmap(m: Mapping): void {
    // A refusal is counted and reported through the notifier's onIsolationLost.
    this.notifier.unmap(m.iovaStart, mappingSizeBytes(m));
  }

  private leavesOf(view: HostView): HostLeafSource {
    if (view === "none") return NOTHING;
    if (view === "identity") {
      const regions = this.memory.regions;
      return (_start, _last, leaf) => {
        for (const r of regions) leaf(r.gpa, r.gpa, r.sizeBytes, PERM_RW);
        return true;
      };
    }
    return (_start, _last, leaf) => {
      for (const e of view.mappings.entries())
        leaf(e.value.iovaStart, e.value.gpaStart, mappingSizeBytes(e.value), e.value.perms);
      return true;
    };
  }
}
