/**
 * Interrupt remapping (VT-d 5.1): MSI writes (and IOAPIC messages) in remappable format carry
 * a handle into the interrupt remapping table (IRTA_REG: base, size 2^(S+1), EIME); the IRTE
 * found there supplies vector, destination, modes, and a source-id check. Compatibility-format
 * messages pass through unchanged unless x2APIC mode (EIME) or GSTS.CFIS blocks them.
 *
 * Decoded IRTEs are kept in the interrupt entry cache until an IEC invalidation (or SIRTP)
 * drops them. Faults (0x20-0x26) go to the fault log with the handle in bits 63:48 of the
 * fault information, as VT-d 7.1.3 lays out for interrupt requests.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import type { MsiMessage } from "../platform/interrupts.ts";
import { FR } from "./fault-reasons.ts";
import { VTD_TRACE } from "./trace-points.ts";

/** A remapped interrupt: what the IRTE says, and the message that delivers it. */
export interface RemappedInterrupt {
  readonly vector: number;
  /** 8-bit xAPIC id (EIME clear) or 32-bit x2APIC id (EIME set). */
  readonly destination: number;
  readonly destinationLogical: boolean;
  readonly redirectionHint: boolean;
  readonly levelTriggered: boolean;
  readonly deliveryMode: number;
  /**
   * The compatibility-format message for the local APICs; x2APIC destinations above 255 put
   * bits 31:8 of the id in address bits 63:40 (the extended-destination layout KVM accepts).
   */
  readonly message: MsiMessage;
}

export type RemapResult =
  | {
      readonly ok: true;
      readonly remapped: boolean;
      readonly interrupt: RemappedInterrupt | null;
      readonly message: MsiMessage;
    }
  | { readonly ok: false; readonly reason: number; readonly detail: string };

export type IrteFaultSink = (
  sourceId: number,
  reason: number,
  handle: number,
  qualified: boolean,
  fpd: boolean,
) => void;

interface CachedIrte {
  readonly lo: number;
  readonly hi: number;
  readonly lo2: number;
  readonly hi2: number;
  /** The decoded answer, kept with the entry so a cache hit allocates nothing. */
  result: RemapResult | null;
}

/** The interrupt address window 0xFEEx_xxxx (VT-d 3.14, 5.1). */
export const INTERRUPT_WINDOW_BASE = 0xfee00000;
export const INTERRUPT_WINDOW_LAST = 0xfeefffff;

/**
 * True when source ids `a` and `b` match, ignoring the function-number bits a 2-bit qualifier
 * names: 0 none, 1 bit 2, 2 bits 2:1, 3 bits 2:0 (context-cache FM, VT-d 6.5.1.1; IRTE SQ, 9.10).
 */
export function sourceIdsMatch(a: number, b: number, qualifier: number): boolean {
  const ignore = qualifier === 0 ? 0 : qualifier === 1 ? 0b100 : qualifier === 2 ? 0b110 : 0b111;
  return ((a ^ b) & ~ignore & 0xffff) === 0;
}

/** The address of an MSI in the interrupt window (bits 31:20 = 0xFEE). */
export function isInterruptAddress(address: number): boolean {
  return address >= INTERRUPT_WINDOW_BASE && address <= INTERRUPT_WINDOW_LAST;
}

export class InterruptRemapper {
  private readonly memory: GuestMemory;
  private readonly tracer: Tracer;
  private readonly fault: IrteFaultSink;
  private readonly eimSupported: boolean;
  /** Latched by SIRTP. */
  tableGpa = 0;
  tableEntries = 2;
  extendedMode = false;
  private readonly cache = new Map<number, CachedIrte>();
  remapped = 0;
  passedCompatibility = 0;
  faults = 0;
  cacheHits = 0;
  cacheMisses = 0;
  /**
   * Called after SIRTP or an IEC invalidation: interrupt routes the host computed from IRTEs (KVM
   * routes of assigned devices) must be recomputed, as QEMU's kvm_update_msi_routes_all.
   */
  onEntriesChanged: (() => void) | undefined;

  constructor(memory: GuestMemory, eimSupported: boolean, fault: IrteFaultSink, tracer: Tracer) {
    this.memory = memory;
    this.eimSupported = eimSupported;
    this.fault = fault;
    this.tracer = tracer;
  }

  /** SIRTP: latch IRTA (VT-d 11.4.20) and empty the entry cache (as CAP.ESIRTPS units do). */
  setTable(irtaLo: number, irtaHi: number): void {
    this.tableGpa = irtaHi * 0x1_0000_0000 + ((irtaLo & 0xfffff000) >>> 0);
    this.tableEntries = 2 ** ((irtaLo & 0xf) + 1);
    this.extendedMode = this.eimSupported && (irtaLo & 0x800) !== 0;
    this.cache.clear();
    this.onEntriesChanged?.();
  }

  /** IEC invalidation (VT-d 6.5.2.7): everything, or 2^indexMask entries from `index`. */
  invalidate(global: boolean, index: number, indexMask: number): void {
    if (global) {
      this.cache.clear();
    } else {
      const count = 2 ** indexMask;
      const first = index - (index % count);
      if (count > this.cache.size) {
        for (const k of [...this.cache.keys()]) if (k >= first && k < first + count) this.cache.delete(k);
      } else {
        for (let i = first; i < first + count; i++) this.cache.delete(i);
      }
    }
    this.onEntriesChanged?.();
  }

  get cachedEntries(): number {
    return this.cache.size;
  }

  private fail(sourceId: number, reason: number, handle: number, detail: string, fpd = false): RemapResult {
    this.faults++;
    this.fault(sourceId, reason, handle, true, fpd);
    VTD_TRACE.irFault(this.tracer, sourceId, reason, handle, detail);
    return { ok: false, reason, detail };
  }

  /**
   * Remaps one interrupt request. `enabled` is GSTS.IRES, `compatAllowed` GSTS.CFIS.
   * `msiAddress` is the 64-bit address (below 2^53), `msiData` the 32-bit data.
   */
  remap(
    sourceId: number,
    msiAddress: number,
    msiData: number,
    enabled: boolean,
    compatAllowed: boolean,
  ): RemapResult {
    const message = { address: msiAddress, data: msiData };
    if (!enabled) return { ok: true, remapped: false, interrupt: null, message };
    const addrLo = msiAddress % 0x1_0000_0000;
    if ((addrLo & 0x10) === 0) {
      // Compatibility format (VT-d 5.1.2.1): blocked in x2APIC mode or unless CFI is enabled.
      if (this.extendedMode || !compatAllowed) {
        return this.fail(sourceId, FR.IR_COMPAT_BLOCKED, 0, "compatibility-format interrupt blocked");
      }
      this.passedCompatibility++;
      return { ok: true, remapped: false, interrupt: null, message };
    }
    // Remappable format (VT-d 5.1.2.2): handle[14:0] in 19:5, handle[15] in bit 2, SHV bit 3.
    let handle = ((addrLo >>> 5) & 0x7fff) | (((addrLo >>> 2) & 1) << 15);
    if (addrLo & 0x8) {
      if (msiData >>> 16 !== 0) {
        return this.fail(sourceId, FR.IR_REQUEST_RESERVED, handle, "data bits 31:16 set with SHV");
      }
      handle = (handle + (msiData & 0xffff)) >>> 0;
    }
    if (handle >= this.tableEntries) {
      return this.fail(
        sourceId,
        FR.IR_INDEX_OVER_LIMIT,
        handle,
        `handle ${handle} >= ${this.tableEntries} entries`,
      );
    }
    let e = this.cache.get(handle);
    if (e !== undefined) this.cacheHits++;
    else {
      this.cacheMisses++;
      e = this.readEntry(handle);
      if (e === undefined) return this.fail(sourceId, FR.IR_TABLE_ACCESS, handle, "IRTE not in RAM");
    }
    const fpd = (e.lo & 2) !== 0;
    if ((e.lo & 1) === 0) return this.fail(sourceId, FR.IR_NOT_PRESENT, handle, "IRTE not present", fpd);
    // Reserved (VT-d 9.10): 14:12, 31:24, posted mode (IM, no CAP.PI), xAPIC 39:32 and 63:48,
    // SVT 11, high 63:20.
    const svt = (e.lo2 >>> 18) & 3;
    if (
      (e.lo & 0xff00f000) !== 0 ||
      (!this.extendedMode && (e.hi & 0xffff00ff) !== 0) ||
      (e.lo2 & 0xfff00000) !== 0 ||
      e.hi2 !== 0 ||
      svt === 3
    ) {
      return this.fail(sourceId, FR.IR_ENTRY_RESERVED, handle, "IRTE reserved bits set");
    }
    const mismatch = svt === 0 ? null : sourceIdMismatch(sourceId, e.lo2, svt);
    if (mismatch !== null) return this.fail(sourceId, FR.IR_SOURCE_ID, handle, mismatch, fpd);
    this.remapped++;
    if (e.result !== null) {
      VTD_TRACE.irRemapCached(this.tracer, sourceId, handle, true);
      return e.result;
    }
    const out = this.decode(e);
    VTD_TRACE.irRemap(this.tracer, sourceId, handle, out.vector, out.destination);
    const result: RemapResult = { ok: true, remapped: true, interrupt: out, message: out.message };
    e.result = result;
    return result;
  }

  /** IRTE `handle` read from guest memory (cached if present); undefined when it is not in RAM. */
  private readEntry(handle: number): CachedIrte | undefined {
    const gpa = this.tableGpa + handle * 16;
    if (!this.memory.isRam(gpa, 16)) return undefined;
    const m = this.memory;
    const e: CachedIrte = {
      lo: m.readU32(gpa),
      hi: m.readU32(gpa + 4),
      lo2: m.readU32(gpa + 8),
      hi2: m.readU32(gpa + 12),
      result: null,
    };
    // Only present entries are cached (VT-d 6.2.5: not-present entries are never cached here).
    if (e.lo & 1) this.cache.set(handle, e);
    return e;
  }

  /** The interrupt a present, valid IRTE describes (VT-d 9.10), as the MSI the CPU receives. */
  private decode(e: CachedIrte): RemappedInterrupt {
    const vector = (e.lo >>> 16) & 0xff;
    const destination = this.extendedMode ? e.hi >>> 0 : (e.hi >>> 8) & 0xff;
    const destinationLogical = (e.lo & 4) !== 0;
    const redirectionHint = (e.lo & 8) !== 0;
    const levelTriggered = (e.lo & 0x10) !== 0;
    const deliveryMode = (e.lo >>> 5) & 7;
    const lo32 =
      0xfee00000 + (destination & 0xff) * 0x1000 + (redirectionHint ? 8 : 0) + (destinationLogical ? 4 : 0);
    const extended = Math.floor(destination / 256);
    // Address bits 63:40 carry destination bits 31:8 (below 2^53 only up to 2^21 ids).
    const address = extended === 0 ? lo32 : extended < 0x2000 ? extended * 2 ** 40 + lo32 : lo32;
    const data =
      vector | (deliveryMode << 8) | (levelTriggered ? 1 << 15 : 0) | (levelTriggered ? 1 << 14 : 0);
    return {
      vector,
      destination,
      destinationLogical,
      redirectionHint,
      levelTriggered,
      deliveryMode,
      message: { address, data },
    };
  }
}

/**
 * The interrupt request an I/O APIC sends for a redirection-table entry in remappable format
 * (VT-d 5.1.5.1: format bit 48 set, Interrupt_Index[14:0] in 63:49 and [15] in bit 11), to be
 * passed to `remap` with the I/O APIC's source id. Null for compatibility-format entries (their
 * message is built by the I/O APIC as usual and still goes through `remap`).
 */
export function ioapicRemappableRequest(rteLo: number, rteHi: number): MsiMessage | null {
  if ((rteHi & 0x10000) === 0) return null;
  const handle = ((rteHi >>> 17) & 0x7fff) | (((rteLo >>> 11) & 1) << 15);
  const address = 0xfee00000 + (handle & 0x7fff) * 32 + 0x10 + ((handle >>> 15) & 1) * 4;
  // SHV is clear: the data carries the vector only for the EOI path, not the handle.
  return { address, data: rteLo & 0xff };
}

/**
 * Why requester `sourceId` may not use an IRTE whose SID/SQ word is `lo2` and whose SVT is `svt`
 * (VT-d 9.10), or null when it may.
 */
function sourceIdMismatch(sourceId: number, lo2: number, svt: number): string | null {
  const sid = lo2 & 0xffff;
  const sq = (lo2 >>> 16) & 3;
  if (svt === 1) {
    // Compare the requester id with SID, ignoring bits per SQ (VT-d 9.10).
    if (!sourceIdsMatch(sourceId, sid, sq))
      return `source 0x${sourceId.toString(16)} is not 0x${sid.toString(16)}`;
  } else if (svt === 2) {
    const bus = sourceId >>> 8;
    if (bus < sid >>> 8 || bus > (sid & 0xff)) return `bus ${bus} outside ${sid >>> 8}-${sid & 0xff}`;
  }
  return null;
}
