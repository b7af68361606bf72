/**
 * Queued invalidation (VT-d 6.5.2, 11.4.9): a ring of 128-bit (or, with IQA.DW, 256-bit)
 * descriptors in guest memory between IQH (hardware) and IQT (software). Each descriptor is
 * decoded, its reserved fields checked, and handed to an `InvalidationTarget`.
 *
 * An invalid descriptor (unknown type, reserved field set, type invalid for the current
 * translation-table mode, fetch error) sets FSTS.IQE, records why in IQERCD.IQEI and stops
 * the queue with IQH at that descriptor; software clearing IQE resumes from IQH (6.5.2.10).
 * A tail beyond the queue or misaligned for 256-bit descriptors is reported the same way.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import { MAMV, MHMV } from "./config.ts";
import { ECTL, FSTS, REG, type RegisterFile } from "./registers.ts";
import { VTD_TRACE } from "./trace-points.ts";

/** Descriptor types (VT-d 6.5.2). */
export const DESC = {
  CONTEXT_CACHE: 1,
  IOTLB: 2,
  DEVICE_TLB: 3,
  IEC: 4,
  WAIT: 5,
  PASID_IOTLB: 6,
  PASID_CACHE: 7,
  PASID_DEVICE_TLB: 8,
} as const;

/** IQERCD.IQEI: why the queue stopped. */
export const IQEI = {
  NONE: 0,
  TAIL_BEYOND_QUEUE: 1,
  FETCH_ERROR: 2,
  INVALID_TYPE: 3,
  RESERVED_FIELD: 4,
  TAIL_MISALIGNED: 6,
  INVALID_FOR_TTM: 7,
} as const;

/** Invalidation granularities shared by CCMD / IOTLB registers and descriptors. */
export const GRAN = { GLOBAL: 1, DOMAIN: 2, PAGE_OR_DEVICE: 3 } as const;

export interface InvalidationTarget {
  invalidateContextCache(granularity: number, domainId: number, sourceId: number, functionMask: number): void;
  /** Second-stage IOTLB (type 2): granularity GLOBAL, DOMAIN or page-selective. */
  invalidateIotlb(granularity: number, domainId: number, iova: number, addressMask: number): void;
  /** PASID-based IOTLB (type 6): all of a PASID, or a page range within it. */
  invalidatePasidIotlb(
    pageSelective: boolean,
    domainId: number,
    pasid: number,
    iova: number,
    addressMask: number,
  ): void;
  /** PASID cache (type 7): 0 domain, 1 PASID-selective, 3 global. */
  invalidatePasidCache(granularity: number, domainId: number, pasid: number): void;
  /** Device-TLB (types 3 and 8): pasid -1 for the request-without-PASID TLB; allPasids for G. */
  invalidateDeviceTlb(
    sourceId: number,
    pasid: number,
    allPasids: boolean,
    iova: number,
    sizeBytes: number,
  ): void;
  /** Interrupt entry cache (type 4). */
  invalidateInterruptEntryCache(global: boolean, index: number, indexMask: number): void;
}

export interface QueueEnvironment {
  readonly scalableModeSupported: boolean;
  readonly deviceTlbSupported: boolean;
  readonly interruptRemappingSupported: boolean;
  /** True while the root table in use is in scalable mode (RTADDR.TTM = 01). */
  scalableModeActive(): boolean;
  /** Sends the invalidation completion event message. */
  sendCompletionEvent(address: number, data: number): void;
  /** Sets an FSTS error status (IQE) through the fault log, raising the fault event. */
  setFaultStatus(bit: number): void;
  /** Around one walk of the queue: work the target defers until a wait or the end of it. */
  beginBatch(): void;
  endBatch(): void;
  /** Before an invalidation wait completes: everything submitted before it must be done. */
  beforeWaitCompletion(): void;
}

/** Size of the range a device-TLB invalidation names (PCIe ATS 2.3: S bit and low address bits). */
export function deviceTlbRange(
  addrLo: number,
  addrHi: number,
  sizeBit: boolean,
): { iova: number; sizeBytes: number } {
  const address = addrHi * 0x1_0000_0000 + ((addrLo & 0xfffff000) >>> 0);
  if (!sizeBit) return { iova: address, sizeBytes: 4096 };
  // With S set, the lowest clear address bit at or above 12 gives the size: 2^(bit + 1).
  let bit = 12;
  let page = address / 4096;
  while (bit < 63 && page % 2 === 1) {
    page = Math.floor(page / 2);
    bit++;
  }
  const sizeBytes = 2 ** (bit + 1);
  return { iova: Math.floor(address / sizeBytes) * sizeBytes, sizeBytes };
}

export interface QueueStats {
  readonly descriptors: number;
  readonly byType: Readonly<Record<string, number>>;
  readonly errors: number;
  readonly waitStatusWrites: number;
  readonly completionEvents: number;
}

const TYPE_NAMES = [
  "",
  "context-cache",
  "iotlb",
  "device-tlb",
  "iec",
  "wait",
  "pasid-iotlb",
  "pasid-cache",
  "pasid-device-tlb",
];

export class InvalidationQueue {
  private readonly regs: RegisterFile;
  private readonly memory: GuestMemory;
  private readonly target: InvalidationTarget;
  private readonly env: QueueEnvironment;
  private readonly tracer: Tracer;
  private readonly d = new Uint32Array(8);
  descriptors = 0;
  errors = 0;
  waitStatusWrites = 0;
  completionEvents = 0;
  private readonly byType = new Float64Array(9);

  constructor(
    regs: RegisterFile,
    memory: GuestMemory,
    target: InvalidationTarget,
    env: QueueEnvironment,
    tracer: Tracer,
  ) {
    this.regs = regs;
    this.memory = memory;
    this.target = target;
    this.env = env;
    this.tracer = tracer;
  }

  private wide(): boolean {
    return this.env.scalableModeSupported && (this.regs.get32(REG.IQA) & 0x800) !== 0;
  }

  private stop(iqei: number): void {
    this.errors++;
    const r = this.regs;
    r.set32(REG.IQERCD, (r.get32(REG.IQERCD) & ~0xf) | iqei);
    VTD_TRACE.iqError(this.tracer, iqei, r.get32(REG.IQH));
    this.env.setFaultStatus(FSTS.IQE);
  }

  private running = false;
  private rerun = false;

  /**
   * Runs descriptors from IQH up to IQT (after an IQT write, QIE enable, or IQE clear). A call
   * made while descriptors run (an event handler moving the tail) is folded into the running one.
   */
  process(): void {
    if (this.running) {
      this.rerun = true;
      return;
    }
    this.running = true;
    this.env.beginBatch();
    try {
      do {
        this.rerun = false;
        this.drain();
      } while (this.rerun);
    } finally {
      this.env.endBatch();
      this.running = false;
    }
  }

  private drain(): void {
    const r = this.regs;
    if ((r.get32(REG.FSTS) & FSTS.IQE) !== 0) return;
    const wide = this.wide();
    const descBytes = wide ? 32 : 16;
    const qs = r.get32(REG.IQA) & 7;
    const entries = (wide ? 128 : 256) * 2 ** qs;
    const base = r.getHi(REG.IQA) * 0x1_0000_0000 + ((r.get32(REG.IQA) & 0xfffff000) >>> 0);
    const tailOffset = r.get32(REG.IQT) & 0x7fff0;
    if (wide && (tailOffset & 0x10) !== 0) {
      this.stop(IQEI.TAIL_MISALIGNED);
      return;
    }
    const tail = tailOffset / descBytes;
    if (tail >= entries) {
      this.stop(IQEI.TAIL_BEYOND_QUEUE);
      return;
    }
    let head = (r.get32(REG.IQH) & 0x7fff0) / descBytes;
    if (head >= entries) head = 0;
    for (let n = 0; head !== tail && n < entries; n++) {
      const gpa = base + head * descBytes;
      if (!this.fetch(gpa, descBytes)) {
        this.stop(IQEI.FETCH_ERROR);
        return;
      }
      if (wide && (this.d[4] | this.d[5] | this.d[6] | this.d[7]) !== 0) {
        this.stop(IQEI.RESERVED_FIELD);
        return;
      }
      const iqei = this.execute();
      if (iqei !== IQEI.NONE) {
        this.stop(iqei);
        return;
      }
      head = (head + 1) % entries;
      r.set32(REG.IQH, head * descBytes);
      r.setHi(REG.IQH, 0);
    }
  }

  /** Decodes and runs the descriptor in `d`; returns IQEI.NONE or the error. */
  /** Reads the descriptor at `gpa` into `d` (qword by qword); false when it is not all RAM. */
  private fetch(gpa: number, descBytes: number): boolean {
    const m = this.memory;
    if (!m.isRam(gpa, descBytes)) return false;
    for (let i = 0; i < descBytes / 4; i += 2) {
      if (!m.read64(gpa + 4 * i)) return false;
      this.d[i] = m.lo;
      this.d[i + 1] = m.hi;
    }
    return true;
  }

  // A little over 80 lines: one case per descriptor type (VT-d 6.5.2), each its reserved-field
  // checks and one call; the switch reads best whole, side by side with the spec's table.
  // biome-ignore lint/complexity/noExcessiveLinesPerFunction: one dispatch switch, see above
  private execute(): number {
    const d = this.d;
    const lo0 = d[0];
    const hi0 = d[1];
    const lo1 = d[2];
    const hi1 = d[3];
    const type = (lo0 & 0xf) | (((lo0 >>> 9) & 7) << 4);
    const t = this.target;
    const env = this.env;
    if (type >= 1 && type <= 8) this.byType[type]++;
    this.descriptors++;
    if (VTD_TRACE.descriptor.enabled(this.tracer)) {
      VTD_TRACE.descriptor(
        this.tracer,
        TYPE_NAMES[type] ?? `0x${type.toString(16)}`,
        `0x${hi0.toString(16)}${lo0.toString(16).padStart(8, "0")}`,
        `0x${hi1.toString(16)}${lo1.toString(16).padStart(8, "0")}`,
      );
    }
    switch (type) {
      case DESC.CONTEXT_CACHE: {
        if ((lo0 & 0xf1c0) !== 0 || (hi0 & 0xfffc0000) !== 0 || lo1 !== 0 || hi1 !== 0) {
          return IQEI.RESERVED_FIELD;
        }
        const g = (lo0 >>> 4) & 3;
        if (g === 0) return IQEI.RESERVED_FIELD;
        t.invalidateContextCache(g, lo0 >>> 16, hi0 & 0xffff, (hi0 >>> 16) & 3);
        return IQEI.NONE;
      }
      case DESC.IOTLB: {
        if ((lo0 & 0xf100) !== 0 || hi0 !== 0 || (lo1 & 0xf80) !== 0) return IQEI.RESERVED_FIELD;
        const g = (lo0 >>> 4) & 3;
        const am = lo1 & 0x3f;
        if (g === 0 || (g === GRAN.PAGE_OR_DEVICE && am > MAMV)) return IQEI.RESERVED_FIELD;
        t.invalidateIotlb(g, lo0 >>> 16, hi1 * 0x1_0000_0000 + ((lo1 & 0xfffff000) >>> 0), am);
        return IQEI.NONE;
      }
      case DESC.DEVICE_TLB: {
        if (!env.deviceTlbSupported) return IQEI.INVALID_TYPE;
        if ((lo0 & 0xffe001f0) !== 0 || (hi0 & 0xf0000) !== 0 || (lo1 & 0xffe) !== 0) {
          return IQEI.RESERVED_FIELD;
        }
        const r = deviceTlbRange(lo1, hi1, (lo1 & 1) !== 0);
        t.invalidateDeviceTlb(hi0 & 0xffff, -1, false, r.iova, r.sizeBytes);
        return IQEI.NONE;
      }
      case DESC.IEC: {
        if (!env.interruptRemappingSupported) return IQEI.INVALID_TYPE;
        if ((lo0 & 0x7fff1e0) !== 0 || (hi0 & 0xffff0000) !== 0 || lo1 !== 0 || hi1 !== 0) {
          return IQEI.RESERVED_FIELD;
        }
        const im = (lo0 >>> 27) & 0x1f;
        const global = (lo0 & 0x10) === 0;
        if (!global && im > MHMV) return IQEI.RESERVED_FIELD;
        t.invalidateInterruptEntryCache(global, hi0 & 0xffff, im);
        return IQEI.NONE;
      }
      case DESC.WAIT:
        return this.wait(lo0, hi0, lo1, hi1);
      case DESC.PASID_IOTLB: {
        if (!env.scalableModeSupported) return IQEI.INVALID_TYPE;
        if (!env.scalableModeActive()) return IQEI.INVALID_FOR_TTM;
        if ((lo0 & 0xf1c0) !== 0 || (hi0 & 0xfff00000) !== 0 || (lo1 & 0xf80) !== 0) {
          return IQEI.RESERVED_FIELD;
        }
        const g = (lo0 >>> 4) & 3;
        const am = lo1 & 0x3f;
        if (g < 2 || (g === 3 && am > MAMV)) return IQEI.RESERVED_FIELD;
        t.invalidatePasidIotlb(
          g === 3,
          lo0 >>> 16,
          hi0 & 0xfffff,
          hi1 * 0x1_0000_0000 + ((lo1 & 0xfffff000) >>> 0),
          am,
        );
        return IQEI.NONE;
      }
      case DESC.PASID_CACHE: {
        if (!env.scalableModeSupported) return IQEI.INVALID_TYPE;
        if (!env.scalableModeActive()) return IQEI.INVALID_FOR_TTM;
        if ((lo0 & 0xf1c0) !== 0 || (hi0 & 0xfff00000) !== 0 || lo1 !== 0 || hi1 !== 0) {
          return IQEI.RESERVED_FIELD;
        }
        const g = (lo0 >>> 4) & 3;
        if (g === 2) return IQEI.RESERVED_FIELD;
        t.invalidatePasidCache(g, lo0 >>> 16, hi0 & 0xfffff);
        return IQEI.NONE;
      }
      case DESC.PASID_DEVICE_TLB: {
        if (!env.scalableModeSupported || !env.deviceTlbSupported) return IQEI.INVALID_TYPE;
        if (!env.scalableModeActive()) return IQEI.INVALID_FOR_TTM;
        if ((lo1 & 0x7fe) !== 0) return IQEI.RESERVED_FIELD;
        const r = deviceTlbRange(lo1, hi1, (lo1 & 0x800) !== 0);
        t.invalidateDeviceTlb((lo0 >>> 16) & 0xffff, hi0 & 0xfffff, (lo1 & 1) !== 0, r.iova, r.sizeBytes);
        return IQEI.NONE;
      }
      default:
        return IQEI.INVALID_TYPE;
    }
  }

  /** Invalidation wait (VT-d 6.5.2.8): status write and/or completion interrupt. */
  private wait(lo0: number, hi0: number, lo1: number, hi1: number): number {
    // Reserved: PD (7; ECAP.PDS clear), bit 8, 31:12; status address bits 1:0.
    if ((lo0 & 0xfffff180) !== 0 || (lo1 & 3) !== 0) return IQEI.RESERVED_FIELD;
    this.env.beforeWaitCompletion();
    const r = this.regs;
    if (lo0 & 0x20) {
      const statusGpa = hi1 * 0x1_0000_0000 + ((lo1 & 0xfffffffc) >>> 0);
      // A status write to something that is not RAM goes nowhere (the bus drops it).
      if (this.memory.tryWriteU32(statusGpa, hi0)) this.waitStatusWrites++;
    }
    if (lo0 & 0x10) {
      const ics = r.get32(REG.ICS);
      r.set32(REG.ICS, ics | 1);
      if ((ics & 1) === 0) {
        const iectl = r.get32(REG.IECTL);
        if (iectl & ECTL.IM) r.set32(REG.IECTL, iectl | ECTL.IP);
        else this.sendCompletion();
      }
    }
    return IQEI.NONE;
  }

  private sendCompletion(): void {
    const r = this.regs;
    r.set32(REG.IECTL, r.get32(REG.IECTL) & ~ECTL.IP);
    this.completionEvents++;
    this.env.sendCompletionEvent(
      r.get32(REG.IEUADDR) * 0x1_0000_0000 + r.get32(REG.IEADDR),
      r.get32(REG.IEDATA),
    );
  }

  /** After a guest write to IECTL: unmasking with a pending completion event sends it. */
  onIectlWrite(): void {
    const iectl = this.regs.get32(REG.IECTL);
    if ((iectl & ECTL.IM) === 0 && (iectl & ECTL.IP) !== 0) this.sendCompletion();
  }

  /** After a guest write to ICS: clearing IWC clears a pending completion event. */
  onIcsWrite(): void {
    if ((this.regs.get32(REG.ICS) & 1) === 0) {
      this.regs.set32(REG.IECTL, this.regs.get32(REG.IECTL) & ~ECTL.IP);
    }
  }

  stats(): QueueStats {
    const byType: Record<string, number> = {};
    for (let i = 1; i <= 8; i++) if (this.byType[i] > 0) byType[TYPE_NAMES[i]] = this.byType[i];
    return {
      descriptors: this.descriptors,
      byType,
      errors: this.errors,
      waitStatusWrites: this.waitStatusWrites,
      completionEvents: this.completionEvents,
    };
  }
}
