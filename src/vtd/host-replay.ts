/**
 * Caching-mode replay: what an assigned endpoint's guest tables map right now, handed to its
 * `HostNotifier` (the engine's host-propagation contract), and when (VT-d 6.1: with CAP.CM the guest invalidates after every change).
 *
 * Leaves come from the endpoint's current target: guest RAM identity while translation is off
 * or for pass-through, the second- or first-stage tables otherwise (nothing for nested entries:
 * such a device gets no host mappings and faults on the host, it never escapes). The interrupt
 * window is never mapped on either side.
 *
 * Cost is bounded against hostile tables: each enumeration has the walkers' budgets, and while
 * the invalidation queue runs full resyncs are coalesced until the next wait descriptor (or the
 * end of the walk), with at most REPLAY_BATCH_BUDGET units of work per walk (entries read + 16
 * per leaf); past that, resyncs stay pending until the next walk and are counted as deferred.
 */
import { MAX_ADDRESS, PERM_RW } from "../engine/access.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { HostNotifier, HostLeafSource as LeafSource } from "../engine/host-notifier.ts";
import type { Tracer } from "../engine/trace.ts";
import type { FirstStageWalker } from "./first-stage.ts";
import { INTERRUPT_WINDOW_BASE, INTERRUPT_WINDOW_LAST } from "./interrupt-remap.ts";
import type { SecondStageWalker } from "./second-stage.ts";
import { TARGET, type Target } from "./target.ts";
import { VTD_TRACE } from "./trace-points.ts";

/** Replay work one queue walk may do (replaying 65536 leaves costs about 2^20). */
export const REPLAY_BATCH_BUDGET = 1 << 23;

export interface ReplayEndpoint {
  readonly sourceId: number;
  readonly host: HostNotifier | null;
  /** A full resync was requested and has not run yet. */
  resyncPending: boolean;
}

export interface ReplayContext {
  translationEnabled(): boolean;
  /** The endpoint's target for requests without PASID, or null when its lookup faults. */
  targetOf(sourceId: number): Target | null;
}

type Leaf = (iova: number, gpa: number, sizeBytes: number, perms: number) => void;

function overlapsWindow(address: number, sizeBytes: number): boolean {
  return address <= INTERRUPT_WINDOW_LAST && address + sizeBytes > INTERRUPT_WINDOW_BASE;
}

export class HostReplay {
  private readonly memory: GuestMemory;
  private readonly secondStage: SecondStageWalker;
  private readonly firstStage: FirstStageWalker;
  private readonly context: ReplayContext;
  private readonly tracer: Tracer;
  private deferring = false;
  private batchWork = 0;
  /** Resyncs left pending because a queue walk ran out of replay budget. */
  deferred = 0;

  constructor(
    memory: GuestMemory,
    secondStage: SecondStageWalker,
    firstStage: FirstStageWalker,
    context: ReplayContext,
    tracer: Tracer,
  ) {
    this.memory = memory;
    this.secondStage = secondStage;
    this.firstStage = firstStage;
    this.context = context;
    this.tracer = tracer;
  }

  private work(): number {
    const ss = this.secondStage.enumeration;
    const fs = this.firstStage.enumeration;
    return ss.reads + fs.reads + 16 * (ss.leaves + fs.leaves);
  }

  /** The guest's current leaves for `ep` (see the module comment). */
  leafSource(ep: ReplayEndpoint): LeafSource {
    const ramLeaves: LeafSource = (start, last, leaf) => {
      for (const r of this.memory.regions) {
        const rLast = r.gpa + r.sizeBytes - 1;
        if (r.gpa > last || rLast < start || overlapsWindow(r.gpa, r.sizeBytes)) continue;
        leaf(r.gpa, r.gpa, r.sizeBytes, PERM_RW);
      }
      return true;
    };
    const nothing: LeafSource = () => true;
    if (!this.context.translationEnabled()) return ramLeaves;
    const t = this.context.targetOf(ep.sourceId);
    if (t === null || t.kind === TARGET.NESTED) return nothing;
    if (t.kind === TARGET.IDENTITY) return ramLeaves;
    const outsideWindow =
      (leaf: Leaf): Leaf =>
      (iova, gpa, sizeBytes, perms) => {
        if (!overlapsWindow(gpa, sizeBytes) && !overlapsWindow(iova, sizeBytes))
          leaf(iova, gpa, sizeBytes, perms);
      };
    if (t.kind === TARGET.SECOND_STAGE) {
      const ss = this.secondStage;
      return (start, last, leaf) => {
        ss.forEachLeaf(t.root, t.levels, start, Math.min(last, t.inputLimit - 1), outsideWindow(leaf));
        return !ss.enumeration.truncated;
      };
    }
    const fs = this.firstStage;
    const req = { ...t.fsRequest, updateAccessed: false };
    return (start, last, leaf) => {
      fs.forEachLeaf(t.root, t.levels, start, Math.min(last, t.inputLimit - 1), req, outsideWindow(leaf));
      return !fs.enumeration.truncated;
    };
  }

  /** A full resync of `ep`: now, or coalesced until the next wait / end of the queue walk. */
  resync(ep: ReplayEndpoint): void {
    if (ep.host === null) return;
    if (this.deferring) {
      ep.resyncPending = true;
      return;
    }
    this.run(ep);
  }

  private run(ep: ReplayEndpoint): void {
    if (ep.host === null) return;
    ep.resyncPending = false;
    const before = this.work();
    ep.host.replay(this.leafSource(ep), 0, MAX_ADDRESS);
    this.batchWork += this.work() - before;
  }

  /** Replays [start, last] of `ep` now (a pending full resync covers it instead). */
  syncRange(ep: ReplayEndpoint, start: number, last: number): void {
    if (ep.host === null || ep.resyncPending) return;
    const before = this.work();
    ep.host.replay(this.leafSource(ep), start, last);
    this.batchWork += this.work() - before;
  }

  /** Runs the pending full resyncs the budget still allows. */
  flush(endpoints: Iterable<ReplayEndpoint>): void {
    for (const ep of endpoints) {
      if (!ep.resyncPending) continue;
      if (this.batchWork > REPLAY_BATCH_BUDGET) {
        this.deferred++;
        VTD_TRACE.hostResyncDeferred(this.tracer, ep.sourceId);
        continue;
      }
      this.run(ep);
    }
  }

  beginBatch(endpoints: Iterable<ReplayEndpoint>): void {
    this.deferring = true;
    this.batchWork = 0;
    this.flush(endpoints);
  }

  endBatch(endpoints: Iterable<ReplayEndpoint>): void {
    this.flush(endpoints);
    this.deferring = false;
  }
}
