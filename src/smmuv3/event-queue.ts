/**
 * The event queue as the SMMU produces into it (SMMUv3 7.2, 7.4, 6.3.27-6.3.29): records written
 * at PROD in guest memory; when a record is discarded because the queue is full, PROD.OVFLG
 * toggles if no overflow is already pending (OVFLG == CONS.OVACKFLG); EVENTQ_ABT when the queue
 * memory is not writable.
 *
 * Flood control, in two steps:
 *  1. Merging (7.3.1): a record identical to one of the same stream still unconsumed in the queue
 *     (InputAddr[11:0] ignored) is merged into it, when merging is allowed (STE.MEV == 1, or an
 *     event that can occur before the STE is known: F_UUT, C_BAD_STREAMID, F_STE_FETCH,
 *     C_BAD_STE).
 *  2. A per-stream budget (a model policy, beyond the architecture): one StreamID may hold at
 *     most `perStreamPending` unconsumed records, so a faulting device cannot fill the queue and
 *     starve every other stream. Records over budget are discarded and counted per stream. They
 *     do not toggle OVFLG: 7.4 allows the overflow condition only when the queue is full.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";
import { EVENT_RECORD_BYTES, type EventRecord } from "./events.ts";
import { ptrIncrement, ptrIndex, ptrMask, queueFull, queueUsed } from "./queue.ts";

export const OVFLG = 0x8000_0000;

export type PushResult = "written" | "merged" | "disabled" | "overflow" | "rate-limited" | "abort";

export interface EventQueueStats {
  readonly written: number;
  readonly merged: number;
  readonly lostDisabled: number;
  readonly lostOverflow: number;
  readonly lostRateLimited: number;
  readonly lostAbort: number;
  /** Streams that have had events dropped by the per-stream budget, with counts. */
  readonly rateLimitedByStream: Readonly<Record<number, number>>;
  /** Streams holding merge state: only those with records still unconsumed in the queue. */
  readonly streamsTracked: number;
}

export class EventQueue {
  /** Guest-visible registers (only the pointer bits and OVFLG / OVACKFLG are kept). */
  prod = 0;
  cons = 0;
  baseGpa = 0;
  log2size = 0;
  private readonly memory: GuestMemory;
  private readonly perStreamLimit: number;
  /** StreamID of the record in each slot (for the per-stream budget). */
  private slotSid = new Int32Array(1);
  private readonly pending = new Map<number, number>();
  private readonly scratch = new Uint8Array(EVENT_RECORD_BYTES);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private written = 0;
  private merged = 0;
  /** Per stream: signature and queue pointer of its last written record (for merging). */
  private readonly lastSig = new Map<number, string>();
  private readonly lastPtr = new Map<number, number>();
  private lostDisabled = 0;
  private lostOverflow = 0;
  private lostRateLimited = 0;
  private lostAbort = 0;
  private readonly limitedBySid = new Map<number, number>();

  constructor(memory: GuestMemory, perStreamLimit: number) {
    this.memory = memory;
    this.perStreamLimit = Math.max(1, perStreamLimit);
  }

  /** Called when the queue is (re)enabled: geometry from EVENTQ_BASE, budget state reset. */
  configure(baseGpa: number, log2size: number): void {
    this.baseGpa = baseGpa;
    this.log2size = log2size;
    const size = 1 << log2size;
    if (this.slotSid.length !== size) this.slotSid = new Int32Array(size);
    this.recountPending();
  }

  private budget(): number {
    return Math.min(this.perStreamLimit, Math.max(1, (1 << this.log2size) >>> 1));
  }

  /** Marks lost events: OVFLG toggles only when the previous overflow was acknowledged. */
  private markLost(): boolean {
    if ((this.prod & OVFLG) === (this.cons & OVFLG)) {
      this.prod = (this.prod ^ OVFLG) >>> 0;
      return true;
    }
    return false;
  }

  /**
   * Writes `rec` when the queue is enabled and has room. Returns what happened; `overflowSignalled`
   * tells the caller whether OVFLG changed (worth an interrupt).
   */
  push(
    rec: EventRecord,
    enabled: boolean,
    mergeable: boolean,
  ): { result: PushResult; overflowSignalled: boolean } {
    if (!enabled) {
      this.lostDisabled++;
      return { result: "disabled", overflowSignalled: false };
    }
    const log2 = this.log2size;
    const sid = rec.streamId | 0;
    const held = this.pending.get(sid) ?? 0;
    const sig = mergeable && held > 0 ? rec.signature() : "";
    if (sig !== "" && this.lastSig.get(sid) === sig && this.isPending(this.lastPtr.get(sid) ?? -1)) {
      this.merged++;
      return { result: "merged", overflowSignalled: false };
    }
    if (held >= this.budget()) {
      this.lostRateLimited++;
      this.limitedBySid.set(rec.streamId, (this.limitedBySid.get(rec.streamId) ?? 0) + 1);
      return { result: "rate-limited", overflowSignalled: false };
    }
    if (queueFull(this.prod, this.cons, log2)) {
      this.lostOverflow++;
      return { result: "overflow", overflowSignalled: this.markLost() };
    }
    const index = ptrIndex(this.prod, log2);
    const gpa = this.baseGpa + index * EVENT_RECORD_BYTES;
    rec.encode(this.scratchView, 0);
    if (this.memory.tryWrite(gpa, this.scratch) !== null) {
      this.lostAbort++;
      return { result: "abort", overflowSignalled: false };
    }
    this.slotSid[index] = sid;
    this.pending.set(sid, held + 1);
    if (mergeable) {
      this.lastSig.set(sid, sig !== "" ? sig : rec.signature());
      this.lastPtr.set(sid, this.prod & ptrMask(log2));
    } else if (this.lastSig.size > 0) {
      this.forgetMergeState(sid);
    }
    this.prod = ((this.prod & OVFLG) | ptrIncrement(this.prod, log2)) >>> 0;
    this.written++;
    return { result: "written", overflowSignalled: false };
  }

  /** Whether the record written at pointer `ptr` is still between CONS and PROD. */
  private isPending(ptr: number): boolean {
    if (ptr < 0) return false;
    const log2 = this.log2size;
    return queueUsed(ptr, this.cons, log2) < queueUsed(this.prod, this.cons, log2);
  }

  /** The guest wrote EVENTQ_CONS: release the budget of the records it consumed. */
  writeCons(value: number): void {
    const log2 = this.log2size;
    const m = ptrMask(log2);
    const next = ((value & OVFLG) | (value & m)) >>> 0;
    const before = queueUsed(this.prod, this.cons, log2);
    const after = queueUsed(this.prod, next, log2);
    const consumed = before - after;
    if (consumed >= 0 && queueUsed(next, this.cons, log2) === consumed) {
      let c = this.cons;
      for (let i = 0; i < consumed; i++) {
        const sid = this.slotSid[ptrIndex(c, log2)];
        const n = (this.pending.get(sid) ?? 1) - 1;
        if (n <= 0) {
          this.pending.delete(sid);
          this.forgetMergeState(sid);
        } else this.pending.set(sid, n);
        c = ptrIncrement(c, log2);
      }
      this.cons = next;
    } else {
      // CONS moved outside [CONS, PROD]: UNPREDICTABLE for the guest; keep the budget consistent.
      this.cons = next;
      this.recountPending();
    }
  }

  /** The guest wrote EVENTQ_PROD (only while the queue is disabled). */
  writeProd(value: number): void {
    this.prod = ((value & OVFLG) | (value & ptrMask(this.log2size))) >>> 0;
    this.recountPending();
  }

  private recountPending(): void {
    this.pending.clear();
    const log2 = this.log2size;
    const used = queueUsed(this.prod, this.cons, log2);
    let c = this.cons;
    for (let i = 0; i < used; i++) {
      const sid = this.slotSid[ptrIndex(c, log2)];
      this.pending.set(sid, (this.pending.get(sid) ?? 0) + 1);
      c = ptrIncrement(c, log2);
    }
    for (const sid of this.lastSig.keys()) if (!this.pending.has(sid)) this.forgetMergeState(sid);
  }

  /**
   * Merging needs a pending record of the stream, so a stream with none keeps no merge state:
   * the maps stay bounded by the queue size whatever StreamIDs the guest names.
   */
  private forgetMergeState(sid: number): void {
    this.lastSig.delete(sid);
    this.lastPtr.delete(sid);
  }

  /** Records held in the queue for `streamId` and not yet consumed. */
  pendingFor(streamId: number): number {
    return this.pending.get(streamId | 0) ?? 0;
  }

  stats(): EventQueueStats {
    const byStream: Record<number, number> = {};
    for (const [sid, n] of this.limitedBySid) byStream[sid] = n;
    return {
      written: this.written,
      merged: this.merged,
      lostDisabled: this.lostDisabled,
      lostOverflow: this.lostOverflow,
      lostRateLimited: this.lostRateLimited,
      lostAbort: this.lostAbort,
      rateLimitedByStream: byStream,
      streamsTracked: this.lastSig.size,
    };
  }
}
