/**
 * Faults of the SMMUv3 and the event records that report them (SMMUv3 7.3).
 *
 * `Transaction` holds the facts of the transaction being translated that a fault record needs
 * (StreamID, SubstreamID, input address, access kind, the stream's attributes and merge policy).
 * It is passed down the translation explicitly, as QEMU passes `SMMUEventInfo`, and reused for
 * every transaction (no allocation per DMA). `FaultReporter` turns a fault into the engine's
 * `DmaFault`, and, when the architecture records it, into an event record in the event queue,
 * with the event-queue interrupt or EVENTQ_ABT the push calls for.
 */
import { ACCESS_WRITE, type Access, type DmaFault, type DmaFaultReason, dmaFault } from "../engine/access.ts";
import type { Tracer } from "../engine/trace.ts";
import type { ViommuInstance } from "../framework/viommu.ts";
import type { EventQueue } from "./event-queue.ts";
import { CLASS_TT, EVT, EventRecord, eventName } from "./events.ts";
import type { StageParams } from "./pagetable.ts";
import { eventTracePoint } from "./trace-points.ts";

const TWO48 = 2 ** 48;

/** One transaction's context, filled as translation learns it. */
export class Transaction {
  /** StreamID (0 when the caller's was not one). */
  sid = 0;
  /** SubstreamID, or -1 for a transaction without one. */
  ssid = -1;
  /** The input address as the engine knows it (the low 48 bits on the 64-bit path). */
  iova = 0;
  /** The full 64-bit input address, when the caller gave one (`inputKnown`). */
  input = 0n;
  inputKnown = false;
  /** Input bits 63:48, and bits 47:0 (the IOTLB key), set by `setInput`. */
  top16 = 0;
  key = 0;
  write = false;
  /** STE.PRIVCFG / INSTCFG as applied to this stream (PnU, InD). */
  privileged = false;
  instruction = false;
  /** STE.MEV: events of this stream may merge (7.3.1). */
  mergeEvents = false;
  /** Nested streams: the stage 2 that stage-1 table and CD addresses go through, and its VMID. */
  nestedS2: StageParams | null = null;
  nestedVmid = 0;

  /** Starts a transaction; attributes stay clear until the STE is known. */
  begin(sid: number, ssid: number, write: boolean): void {
    this.sid = sid;
    this.ssid = ssid;
    this.write = write;
    this.privileged = false;
    this.instruction = false;
    this.mergeEvents = false;
  }

  /**
   * Splits the input (`iova`, or `input` when `inputKnown`) into its top 16 bits and the 48-bit
   * key; false for an input that is no address (F_UUT), with `iova` (and `input`) then clamped.
   */
  setInput(iova: number): boolean {
    if (this.inputKnown) {
      const va = this.input;
      if (va < 0n || va >= 1n << 64n) {
        this.iova = 0;
        this.input = BigInt.asUintN(64, va);
        return false;
      }
      this.top16 = Number(va >> 48n);
      this.key = Number(va & 0xffff_ffff_ffffn);
      this.iova = this.key;
      return true;
    }
    if (!Number.isSafeInteger(iova) || iova < 0) {
      this.iova = 0;
      return false;
    }
    this.top16 = Math.floor(iova / TWO48);
    this.key = iova % TWO48;
    this.iova = iova;
    return true;
  }

  get access(): Access {
    return this.write ? ACCESS_WRITE : 1;
  }
}

/** What the event queue's owner decides: whether it may be written, and what a write raises. */
export interface EventQueueOwner {
  /** CR0.EVENTQEN and no EVENTQ_ABT pending. */
  eventQueueWritable(): boolean;
  /** The queue memory could not be written: GERROR.EVENTQ_ABT. */
  eventQueueAborted(): void;
  /** A record became visible (or overflow was signalled): the event-queue interrupt, if enabled. */
  eventQueueInterrupt(): void;
  /** CR2.RECINVSID: C_BAD_STREAMID is recorded (7.3.3). */
  recordsInvalidStreamIds(): boolean;
}

/** DmaFault.reason of each event type; anything not listed is a table problem. */
const REASON_BY_EVENT: Readonly<Record<number, DmaFaultReason>> = {
  [EVT.F_TRANSLATION]: "unmapped",
  [EVT.F_ACCESS]: "unmapped",
  [EVT.F_PERMISSION]: "permission",
  [EVT.F_ADDR_SIZE]: "address-range",
  [EVT.F_UUT]: "address-range",
  [EVT.C_BAD_STREAMID]: "blocked",
  [EVT.F_STREAM_DISABLED]: "blocked",
};

export function faultReason(event: number): DmaFaultReason {
  return REASON_BY_EVENT[event] ?? "bad-table";
}

/** 7.3.1: events that can arise before an STE is found may always merge; others per STE.MEV. */
const ALWAYS_MERGEABLE = new Set<number>([EVT.F_UUT, EVT.C_BAD_STREAMID, EVT.F_STE_FETCH, EVT.C_BAD_STE]);

export class FaultReporter {
  private readonly viommu: ViommuInstance;
  private readonly eventq: EventQueue;
  private readonly owner: EventQueueOwner;
  private readonly tracer: Tracer;
  private readonly record = new EventRecord();
  /** Recorded events by type name. */
  readonly counts: Record<string, number> = {};
  /** Faults the architecture does not record (STE/CD Record bits clear, RECINVSID clear). */
  unrecorded = 0;

  constructor(viommu: ViommuInstance, eventq: EventQueue, owner: EventQueueOwner, tracer: Tracer) {
    this.viommu = viommu;
    this.eventq = eventq;
    this.owner = owner;
    this.tracer = tracer;
  }

  /** A configuration fault (C_BAD_*, F_STREAM_DISABLED, F_UUT): no stage, no address beyond InputAddr. */
  config(tx: Transaction, type: number): DmaFault {
    // C_BAD_STREAMID is recorded only when CR2.RECINVSID == 1 (7.3.3).
    const record = type !== EVT.C_BAD_STREAMID || this.owner.recordsInvalidStreamIds();
    return this.fault(tx, type, record, false, 0);
  }

  /** A stage-1 (or stage-1-bypass) fault on the input address, CLASS `cls`. */
  stage1(tx: Transaction, type: number, record: boolean, cls: number): DmaFault {
    return this.fault(tx, type, record, false, cls);
  }

  /** A stage-2 fault at `ipa` (recorded in the IPA field), for an access of class `cls`. */
  stage2(tx: Transaction, type: number, record: boolean, cls: number, ipa: number): DmaFault {
    const e = this.prepare(tx, type, true, cls);
    e.ipa = ipa;
    e.addrKind = "ipa";
    return this.finish(tx, type, record);
  }

  /** An abort fetching a structure or descriptor at physical `fetchAddr` (always recorded). */
  fetch(tx: Transaction, type: number, s2: boolean, cls: number, fetchAddr: number): DmaFault {
    const e = this.prepare(tx, type, s2, cls);
    e.fetchAddr = fetchAddr;
    e.addrKind = "fetch";
    return this.finish(tx, type, true);
  }

  /** Records C_BAD_STREAMID for a command naming a stream the guest does not own (RECINVSID). */
  badStreamCommand(sid: number): void {
    if (this.owner.recordsInvalidStreamIds()) this.push(this.record.reset(EVT.C_BAD_STREAMID, sid), false);
  }

  private fault(tx: Transaction, type: number, record: boolean, s2: boolean, cls: number): DmaFault {
    this.prepare(tx, type, s2, cls);
    return this.finish(tx, type, record);
  }

  /** Fills the scratch record from the transaction (7.3: the common fields of fault records). */
  private prepare(tx: Transaction, type: number, s2: boolean, cls: number): EventRecord {
    const e = this.record.reset(type, tx.sid);
    // C_BAD_SUBSTREAMID always carries the SubstreamID and has no SSV bit (7.3.9).
    e.ssv = tx.ssid >= 0 && type !== EVT.C_BAD_SUBSTREAMID;
    e.substreamId = Math.max(tx.ssid, 0);
    e.rnw = !tx.write;
    e.pnu = tx.privileged;
    e.ind = tx.instruction && !tx.write;
    e.s2 = s2;
    e.cls = cls;
    // TTRnW (bit 44): the stage-1 walk access that took a stage-2 Permission fault was a read.
    e.ttRead = type === EVT.F_PERMISSION && s2 && cls === CLASS_TT;
    e.inputAddr = tx.inputKnown ? tx.input : BigInt(tx.iova);
    return e;
  }

  private finish(tx: Transaction, type: number, record: boolean): DmaFault {
    const reason = faultReason(type);
    if (!record) {
      this.unrecorded++;
      return dmaFault(reason, tx.sid, tx.iova, tx.access, type, `${eventName(type)} (not recorded)`);
    }
    this.push(this.record, tx.mergeEvents);
    const f = dmaFault(reason, tx.sid, tx.iova, tx.access, type, eventName(type));
    const ep = this.viommu.endpoint(tx.sid);
    if (ep !== undefined) this.viommu.guestFault(ep, f);
    return f;
  }

  /** Writes a record to the event queue; raises the interrupt or EVENTQ_ABT it calls for. */
  private push(e: EventRecord, streamMerges: boolean): void {
    const name = eventName(e.type);
    this.counts[name] = (this.counts[name] ?? 0) + 1;
    const mergeable = ALWAYS_MERGEABLE.has(e.type) || streamMerges;
    const { result, overflowSignalled } = this.eventq.push(e, this.owner.eventQueueWritable(), mergeable);
    eventTracePoint(name)?.(this.tracer, e.streamId, e.ssv ? e.substreamId : -1, result);
    if (result === "abort") this.owner.eventQueueAborted();
    if (result === "written" || overflowSignalled) this.owner.eventQueueInterrupt();
  }
}
