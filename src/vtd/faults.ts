/**
 * Primary fault logging and the fault event interrupt (VT-d 7.2, 7.3, 11.4.7-11.4.12, 11.4.14).
 *
 * Faults are written into the fault recording registers (FRCD) in circular order. A record
 * whose F bit is still set is never overwritten: the fault is dropped and FSTS.PFO is set, and
 * while PFO is set no new fault is recorded. FSTS.PPF is the OR of all F bits; FSTS.FRI names
 * the record written when PPF went from clear to set, where software starts servicing.
 *
 * An interrupt condition is a status field of FSTS (PFO, PPF, IQE, ICE, ITE) becoming set while
 * none was set before. It sets FECTL.IP; unless FECTL.IM masks it, the message built from
 * FEDATA / FEADDR / FEUADDR is sent and IP clears. Unmasking with IP set sends it then; software
 * clearing every status field clears IP.
 */
import { ACCESS_WRITE, type Access, type DmaFault, dmaFault } from "../engine/access.ts";
import type { Tracer } from "../engine/trace.ts";
import { FRCD_COUNT } from "./config.ts";
import { engineReason, FR, faultReasonName } from "./fault-reasons.ts";
import { ECTL, FSTS, REG, type RegisterFile } from "./registers.ts";
import { decodeEndpointKey } from "./target.ts";
import { VTD_TRACE } from "./trace-points.ts";

/** How the address in a record was presented (FRCD.AT). */
export const ADDRESS_TYPE = { UNTRANSLATED: 0, TRANSLATION_REQUEST: 1, TRANSLATED: 2 } as const;

export interface FaultInfo {
  readonly sourceId: number;
  readonly reason: number;
  /** Faulting page address (bits 63:12 recorded), or for interrupt faults the index << 48. */
  readonly address: bigint;
  readonly write: boolean;
  /** PASID of a request-with-PASID, else -1. */
  readonly pasid: number;
  readonly privileged: boolean;
  readonly addressType: number;
}

/** Sends an MSI built from an event register triple (address may exceed 2^32). */
export type EventMessageSink = (address: number, data: number) => void;

const STATUS_FIELDS = FSTS.PFO | FSTS.PPF | FSTS.IQE | FSTS.ICE | FSTS.ITE;

export interface FaultStats {
  readonly recorded: number;
  readonly suppressedByFpd: number;
  readonly droppedOverflow: number;
  readonly eventsSent: number;
  readonly byReason: Readonly<Record<string, number>>;
}

export class FaultLog {
  private readonly regs: RegisterFile;
  private readonly send: EventMessageSink;
  private readonly tracer: Tracer;
  private nextIndex = 0;
  recorded = 0;
  suppressedByFpd = 0;
  droppedOverflow = 0;
  eventsSent = 0;
  private readonly byReason = new Map<number, number>();

  constructor(regs: RegisterFile, send: EventMessageSink, tracer: Tracer) {
    this.regs = regs;
    this.send = send;
    this.tracer = tracer;
  }

  /** Faulting DMA requests (recorded or not), translation requests included. */
  dmaFaults = 0;
  /** Hears each DMA fault the guest is told about (not the FPD-suppressed ones), by source id. */
  onGuestDmaFault: ((sourceId: number, fault: DmaFault) => void) | undefined = undefined;

  /**
   * The fault of a DMA or translation request from endpoint key `key` (source id, PASID,
   * privilege): recorded, or noted as suppressed when an FPD bit on the path disabled recording
   * (VT-d 7.1.2), and returned in engine terms.
   */
  dmaFault(
    key: number,
    iova: number,
    access: Access,
    reason: number,
    fpd: boolean,
    addressType: number,
  ): DmaFault {
    this.dmaFaults++;
    const { sourceId, pasid, privileged } = decodeEndpointKey(key);
    const page =
      Number.isSafeInteger(iova) && iova >= 0
        ? BigInt(iova)
        : Number.isFinite(iova) && iova > 0
          ? BigInt(Math.floor(iova))
          : 0n;
    const info: FaultInfo = {
      sourceId,
      reason,
      address: page & 0xffff_ffff_ffff_ffffn,
      write: access === ACCESS_WRITE,
      pasid,
      privileged,
      addressType,
    };
    const f = dmaFault(engineReason(reason), key, iova, access, reason, faultReasonName(reason));
    if (fpd) this.noteSuppressed(info);
    else {
      this.record(info);
      this.onGuestDmaFault?.(sourceId, f);
    }
    return f;
  }

  /**
   * An interrupt-remapping fault for IRTE `handle` (the index is recorded in address bits
   * 63:48); FPD suppresses only the not-present and source-id faults (VT-d 9.10).
   */
  recordInterrupt(sourceId: number, reason: number, handle: number, fpd: boolean): void {
    const info: FaultInfo = {
      sourceId,
      reason,
      address: BigInt(handle & 0xffff) << 48n,
      write: true,
      pasid: -1,
      privileged: false,
      addressType: 0,
    };
    if (fpd && (reason === FR.IR_NOT_PRESENT || reason === FR.IR_SOURCE_ID)) this.noteSuppressed(info);
    else this.record(info);
  }

  private count(reason: number): void {
    this.byReason.set(reason, (this.byReason.get(reason) ?? 0) + 1);
  }

  /** A fault whose recording a context, PASID or IRTE FPD bit disabled (VT-d 7.1.2). */
  noteSuppressed(info: FaultInfo): void {
    this.suppressedByFpd++;
    this.count(info.reason);
    if (VTD_TRACE.faultSuppressed.enabled(this.tracer)) {
      VTD_TRACE.faultSuppressed(this.tracer, info.sourceId, faultReasonName(info.reason));
    }
  }

  /** Records a primary fault. Returns false when it was dropped by overflow. */
  record(info: FaultInfo): boolean {
    this.count(info.reason);
    const regs = this.regs;
    const fsts = regs.get32(REG.FSTS);
    if (VTD_TRACE.fault.enabled(this.tracer)) {
      const address = `0x${info.address.toString(16)}`;
      VTD_TRACE.fault(
        this.tracer,
        info.sourceId,
        faultReasonName(info.reason),
        address,
        info.write,
        info.pasid,
      );
    }
    if (fsts & FSTS.PFO) {
      this.droppedOverflow++;
      return false;
    }
    const index = this.nextIndex;
    const base = REG.FRCD + 16 * index;
    if (regs.get32(base + 12) & 0x80000000) {
      // VT-d 7.3.1: the next record still holds an unserviced fault: overflow.
      this.droppedOverflow++;
      this.setStatus(FSTS.PFO);
      return false;
    }
    const addr = info.address & 0xffff_ffff_ffff_f000n;
    regs.set32(base, Number(addr & 0xffffffffn));
    regs.set32(base + 4, Number(addr >> 32n));
    const pp = info.pasid >= 0;
    regs.set32(
      base + 8,
      (info.sourceId & 0xffff) | (info.privileged && pp ? 1 << 29 : 0) | (pp ? 2 ** 31 : 0),
    );
    regs.set32(
      base + 12,
      (info.reason & 0xff) |
        ((pp ? info.pasid & 0xfffff : 0) << 8) |
        ((info.addressType & 3) << 28) |
        (info.write ? 0 : 1 << 30) |
        (2 ** 31),
    );
    this.nextIndex = (index + 1) % FRCD_COUNT;
    this.recorded++;
    if ((fsts & FSTS.PPF) === 0) {
      // FRI points at the first pending record.
      regs.set32(REG.FSTS, ((regs.get32(REG.FSTS) & ~0xff00) | (index << 8)) >>> 0);
    }
    this.setStatus(FSTS.PPF);
    return true;
  }

  /** Sets an FSTS status field (PPF, PFO, IQE, ICE, ITE) and raises the event when it is a new condition. */
  setStatus(bit: number): void {
    const regs = this.regs;
    const fsts = regs.get32(REG.FSTS);
    regs.set32(REG.FSTS, fsts | bit);
    if ((fsts & STATUS_FIELDS) !== 0 || (fsts & bit) !== 0) return;
    const fectl = regs.get32(REG.FECTL);
    if (fectl & ECTL.IM) {
      regs.set32(REG.FECTL, fectl | ECTL.IP);
      return;
    }
    this.deliver();
  }

  private deliver(): void {
    const regs = this.regs;
    regs.set32(REG.FECTL, regs.get32(REG.FECTL) & ~ECTL.IP);
    this.eventsSent++;
    const address = regs.get32(REG.FEUADDR) * 0x1_0000_0000 + regs.get32(REG.FEADDR);
    this.send(address, regs.get32(REG.FEDATA));
  }

  /** Recomputes PPF from the F bits; clears IP once software serviced every status field. */
  refresh(): void {
    const regs = this.regs;
    let ppf = false;
    for (let i = 0; i < FRCD_COUNT; i++) {
      if (regs.get32(REG.FRCD + 16 * i + 12) & 0x80000000) ppf = true;
    }
    let fsts = regs.get32(REG.FSTS);
    fsts = ppf ? fsts | FSTS.PPF : fsts & ~FSTS.PPF;
    regs.set32(REG.FSTS, fsts);
    if ((fsts & STATUS_FIELDS) === 0) regs.set32(REG.FECTL, regs.get32(REG.FECTL) & ~ECTL.IP);
  }

  /** After a guest write to FECTL: unmasking with an event pending sends it. */
  onFectlWrite(): void {
    const fectl = this.regs.get32(REG.FECTL);
    if ((fectl & ECTL.IM) === 0 && (fectl & ECTL.IP) !== 0) this.deliver();
  }

  reset(): void {
    this.nextIndex = 0;
  }

  stats(): FaultStats {
    const byReason: Record<string, number> = {};
    for (const [k, v] of this.byReason) byReason[faultReasonName(k)] = v;
    return {
      recorded: this.recorded,
      suppressedByFpd: this.suppressedByFpd,
      droppedOverflow: this.droppedOverflow,
      eventsSent: this.eventsSent,
      byReason,
    };
  }
}
