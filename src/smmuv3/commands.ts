/**
 * The command queue (SMMUv3 4.1-4.7, 7.1): opcodes and field extraction, and `CommandQueue`,
 * the consumer that reads commands at CMDQ_CONS and executes them, one small handler per legal
 * opcode behind a table (an opcode without a handler is CERROR_ILL). A command is 16 bytes (two
 * little-endian dwords), read as four 32-bit words w0..w3.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import type { Endpoint, ViommuInstance } from "../framework/viommu.ts";
import type { ConfigLookup } from "./config-lookup.ts";
import { decodeQueueBase, ptrIncrement, ptrIndex, ptrMask, queueEmpty } from "./queue.ts";
import type { SmmuRegisters } from "./registers.ts";
import { CERROR_ABT, CERROR_ILL, CR0_CMDQEN, GERROR_CMDQ_ERR, REG, type SmmuFeatures } from "./regs.ts";
import { isStage2OnlyTag, type SmmuTlb, stage1Tag, stage2Tag, tagVmid } from "./tlb.ts";
import { SMMU_TRACE } from "./trace-points.ts";

export const CMD_BYTES = 16;

export const OP = {
  PREFETCH_CONFIG: 0x01,
  PREFETCH_ADDR: 0x02,
  CFGI_STE: 0x03,
  /** CFGI_STE_RANGE; CFGI_ALL is this opcode with Range = 31. */
  CFGI_STE_RANGE: 0x04,
  CFGI_CD: 0x05,
  CFGI_CD_ALL: 0x06,
  TLBI_NH_ALL: 0x10,
  TLBI_NH_ASID: 0x11,
  TLBI_NH_VA: 0x12,
  TLBI_NH_VAA: 0x13,
  TLBI_EL3_ALL: 0x18,
  TLBI_EL3_VA: 0x1a,
  TLBI_EL2_ALL: 0x20,
  TLBI_EL2_ASID: 0x21,
  TLBI_EL2_VA: 0x22,
  TLBI_EL2_VAA: 0x23,
  TLBI_S12_VMALL: 0x28,
  TLBI_S2_IPA: 0x2a,
  TLBI_NSNH_ALL: 0x30,
  ATC_INV: 0x40,
  PRI_RESP: 0x41,
  RESUME: 0x44,
  STALL_TERM: 0x45,
  CMD_SYNC: 0x46,
} as const;

const OP_NAMES: string[] = Array.from({ length: 256 }, (_, op) => `OP_0x${op.toString(16)}`);
for (const [name, code] of Object.entries(OP)) OP_NAMES[code] = name;

export function opName(op: number): string {
  return OP_NAMES[op & 0xff];
}

/** CMD_SYNC.CS (4.7.3): completion signal. */
export const CS_NONE = 0;
export const CS_IRQ = 1;
export const CS_SEV = 2;

/** Field accessors over the four words of a command. */
export const cmdOpcode = (w0: number): number => w0 & 0xff;
/** SSec (bit 10): a Secure-stream command; ILLEGAL on the Non-secure queue. */
export const cmdSsec = (w0: number): boolean => ((w0 >>> 10) & 1) === 1;
export const cmdSsv = (w0: number): boolean => ((w0 >>> 11) & 1) === 1;
export const cmdSsid = (w0: number): number => w0 >>> 12;
/** TLBI range: NUM 16:12, SCALE 24:20. */
export const cmdNum = (w0: number): number => (w0 >>> 12) & 0x1f;
export const cmdScale = (w0: number): number => (w0 >>> 20) & 0x1f;
/** CMD_SYNC: CS 13:12, MSIData in w1. */
export const cmdSyncCs = (w0: number): number => (w0 >>> 12) & 3;
/** CFGI / PREFETCH StreamID: w1. TLBI: VMID w1 15:0, ASID w1 31:16. */
export const cmdVmid = (w1: number): number => w1 & 0xffff;
export const cmdAsid = (w1: number): number => w1 >>> 16;
/** dword1: Leaf bit 0, Range 4:0 (CFGI_STE_RANGE), TTL 9:8, TG 11:10. */
export const cmdLeaf = (w2: number): boolean => (w2 & 1) === 1;
export const cmdRange = (w2: number): number => w2 & 0x1f;
export const cmdTtl = (w2: number): number => (w2 >>> 8) & 3;
export const cmdTg = (w2: number): number => (w2 >>> 10) & 3;

/** TLBI range granule from TG (1: 4K, 2: 16K, 3: 64K), as log2 bytes; 0 for a non-range TLBI. */
export function rangeGranuleShift(tg: number): number {
  return tg === 1 ? 12 : tg === 2 ? 14 : tg === 3 ? 16 : 0;
}

// -------------------------------------------------------------------------------------------------
// The command queue's consumer (SMMUv3 4, 7.1)

/** What executing commands acts on: the SMMU's caches, its interrupts and its stream ownership. */
export interface CommandTarget {
  readonly features: SmmuFeatures;
  readonly memory: GuestMemory;
  readonly regs: SmmuRegisters;
  readonly tlb: SmmuTlb;
  readonly viommu: ViommuInstance;
  readonly config: ConfigLookup;
  readonly tracer: Tracer;
  /** CMDQ_CONS.ERR = code and GERROR.CMDQ_ERR (7.1). */
  commandError(code: number): void;
  /** A configuration cache entry or the SMMU's own state changed: bump the epochs. */
  configChanged(): void;
  /** The endpoint the guest owns as `sid`, or undefined after refusing the command. */
  ownedOrRefused(sid: number, action: string): Endpoint | undefined;
  /** CMD_SYNC with CS = SIG_IRQ: MSI write of `data` to MSIAddress (w2, w3), and the wired IRQ. */
  syncInterrupt(addrLo: number, addrHi: number, data: number): void;
}

const TWO48 = 2 ** 48;
const CR0_INDEX = REG.CR0 >> 2;
const GERROR_INDEX = REG.GERROR >> 2;
const GERRORN_INDEX = REG.GERRORN >> 2;
const CONS_INDEX = REG.CMDQ_CONS >> 2;
const PROD_INDEX = REG.CMDQ_PROD >> 2;
/** CMDQ_CONS: the pointer (19:0) and ERR (30:24). */
const CONS_PTR = 0xfffff;

export class CommandQueue {
  /** Active queue geometry, latched when CMDQEN is set. */
  private baseGpa = 0;
  private log2size = 0;
  private readonly t: CommandTarget;
  /** Commands consumed, by opcode. */
  private readonly counts = new Float64Array(256);
  errors = 0;
  syncs = 0;

  constructor(target: CommandTarget) {
    this.t = target;
  }

  /** CR0.CMDQEN 0 -> 1: latch CMDQ_BASE and bring PROD/CONS into the queue's pointer width. */
  enable(): void {
    const r = this.t.regs;
    const g = decodeQueueBase(
      r.get32(REG.CMDQ_BASE),
      r.getHi(REG.CMDQ_BASE),
      this.t.features.cmdqLog2Max,
      CMD_BYTES,
    );
    this.baseGpa = g.baseGpa;
    this.log2size = g.log2size;
    const mask = ptrMask(this.log2size);
    r.values[PROD_INDEX] &= mask;
    r.values[CONS_INDEX] = (r.values[CONS_INDEX] & ~CONS_PTR) | (r.values[CONS_INDEX] & mask);
  }

  /** True when commands are waiting and the queue can make progress (CMDQEN, no CMDQ_ERR, 7.1). */
  get pending(): boolean {
    const v = this.t.regs.values;
    return (
      (v[CR0_INDEX] & CR0_CMDQEN) !== 0 &&
      ((v[GERROR_INDEX] ^ v[GERRORN_INDEX]) & GERROR_CMDQ_ERR) === 0 &&
      !queueEmpty(v[PROD_INDEX], v[CONS_INDEX] & CONS_PTR, this.log2size)
    );
  }

  /** Consumes up to `budget` commands; returns how many were consumed. */
  process(budget: number): number {
    const m = this.t.memory;
    const v = this.t.regs.values;
    let done = 0;
    while (this.pending && done < budget) {
      const cons = v[CONS_INDEX] & CONS_PTR;
      const gpa = this.baseGpa + ptrIndex(cons, this.log2size) * CMD_BYTES;
      // A command is 16 bytes inside one region; an unreadable one is CERROR_ABT (7.1).
      if (!m.isRam(gpa, CMD_BYTES) || !m.read64(gpa)) {
        this.fail(CERROR_ABT);
        break;
      }
      const w0 = m.lo;
      const w1 = m.hi;
      if (!m.read64(gpa + 8)) {
        this.fail(CERROR_ABT);
        break;
      }
      if (!this.execute(w0, w1, m.lo, m.hi)) {
        this.fail(CERROR_ILL);
        break;
      }
      v[CONS_INDEX] = (v[CONS_INDEX] & ~CONS_PTR) | ptrIncrement(cons, this.log2size);
      done++;
    }
    return done;
  }

  private fail(code: number): void {
    this.errors++;
    const v = this.t.regs.values;
    v[CONS_INDEX] = ((v[CONS_INDEX] & CONS_PTR) | (code << 24)) >>> 0;
    SMMU_TRACE.cmdq_error(this.t.tracer, code, v[CONS_INDEX] & CONS_PTR);
    this.t.commandError(code);
  }

  /** Commands consumed so far, by name. */
  byName(): Record<string, number> {
    const out: Record<string, number> = {};
    for (let op = 0; op < 256; op++) if (this.counts[op] > 0) out[opName(op)] = this.counts[op];
    return out;
  }

  /**
   * Executes one command; false means CERROR_ILL (4.1.3). TLBI_EL3_* need a Secure queue,
   * TLBI_EL2_* need Hyp, ATC_INV needs ATS, PRI_RESP needs PRI, RESUME/STALL_TERM need stalls:
   * IDR0 advertises none of these, so each is ILLEGAL, as is any opcode without a handler.
   */
  private execute(w0: number, w1: number, w2: number, w3: number): boolean {
    const op = cmdOpcode(w0);
    const handler = this.handlers[op];
    if (handler === null || !handler(op, w0, w1, w2, w3)) return false;
    this.counts[op]++;
    return true;
  }

  /** One handler per legal opcode (null: ILLEGAL); false when the command's fields make it ILLEGAL. */
  private readonly handlers = handlerTable({
    [OP.PREFETCH_CONFIG]: (_op, w0) => this.prefetch(w0),
    [OP.PREFETCH_ADDR]: (_op, w0) => this.prefetch(w0),
    [OP.CFGI_STE]: (_op, w0, w1) => this.cfgiSte(w0, w1),
    [OP.CFGI_STE_RANGE]: (_op, w0, w1, w2) => this.cfgiSteRange(w0, w1, w2),
    [OP.CFGI_CD]: (op, w0, w1) => this.cfgiCd(op, w0, w1),
    [OP.CFGI_CD_ALL]: (op, w0, w1) => this.cfgiCd(op, w0, w1),
    [OP.TLBI_NH_ALL]: (_op, _w0, w1) => this.tlbiNhAll(w1),
    [OP.TLBI_NH_ASID]: (_op, _w0, w1) => this.tlbiNhAsid(w1),
    [OP.TLBI_NH_VA]: (op, w0, w1, w2, w3) => this.tlbiNhVa(op, w0, w1, w2, w3),
    [OP.TLBI_NH_VAA]: (op, w0, w1, w2, w3) => this.tlbiNhVa(op, w0, w1, w2, w3),
    [OP.TLBI_S12_VMALL]: (_op, _w0, w1) => this.tlbiS12Vmall(w1),
    [OP.TLBI_S2_IPA]: (_op, w0, w1, w2, w3) => this.tlbiS2Ipa(w0, w1, w2, w3),
    [OP.TLBI_NSNH_ALL]: () => this.tlbiNsnhAll(),
    [OP.CMD_SYNC]: (_op, w0, w1, w2, w3) => this.sync(w0, w1, w2, w3),
  });

  /** Prefetches are hints, performed as no-ops (4.2); SSec=1 is ILLEGAL on the Non-secure queue (4.1.6). */
  private prefetch(w0: number): boolean {
    return !cmdSsec(w0);
  }

  private cfgiSte(w0: number, w1: number): boolean {
    if (cmdSsec(w0)) return false;
    const sid = w1 >>> 0;
    const ep = this.t.ownedOrRefused(sid, "CFGI_STE");
    if (ep === undefined) return true;
    this.invalidateStream(sid);
    if (ep.kind === "assigned") this.t.viommu.forward({ scope: "config", pId: ep.pId });
    return true;
  }

  private cfgiSteRange(w0: number, w1: number, w2: number): boolean {
    if (cmdSsec(w0)) return false;
    const t = this.t;
    const range = cmdRange(w2);
    if (range === 31) {
      // CFGI_ALL.
      t.config.invalidateAll();
      t.configChanged();
      for (const ep of t.viommu.endpoints()) {
        if (ep.kind === "assigned") t.viommu.forward({ scope: "config", pId: ep.pId });
      }
      return true;
    }
    const span = 2 ** (range + 1);
    const first = (w1 >>> 0) - ((w1 >>> 0) % span);
    // Walk the owned endpoints, never the (guest-sized) range.
    for (const ep of t.viommu.endpoints()) {
      if (ep.vId >= first && ep.vId < first + span) {
        this.invalidateStream(ep.vId);
        if (ep.kind === "assigned") t.viommu.forward({ scope: "config", pId: ep.pId });
      }
    }
    t.configChanged();
    return true;
  }

  private invalidateStream(sid: number): void {
    this.t.config.invalidateStream(sid);
    this.t.configChanged();
    SMMU_TRACE.cfgi_ste(this.t.tracer, sid);
  }

  private cfgiCd(op: number, w0: number, w1: number): boolean {
    if (cmdSsec(w0)) return false;
    const t = this.t;
    const ssid = cmdSsid(w0);
    // An out-of-range SubstreamID has no effect (4.1.7, CONSTRAINED UNPREDICTABLE choice).
    if (op === OP.CFGI_CD && ssid >= 2 ** t.features.ssidBits) return true;
    const sid = w1 >>> 0;
    const ep = t.ownedOrRefused(sid, opName(op));
    if (ep === undefined) return true;
    t.config.invalidateContexts(sid, op === OP.CFGI_CD_ALL ? -1 : ssid);
    t.configChanged();
    if (ep.kind === "assigned") {
      t.viommu.forward({ scope: "context", pId: ep.pId, ssid: op === OP.CFGI_CD ? ssid : -1 });
    }
    return true;
  }

  private tlbiNhAll(w1: number): boolean {
    const vmid = this.vmidOf(w1);
    this.t.tlb.invalidateMatching((tag) => !isStage2OnlyTag(tag) && tagVmid(tag) === vmid);
    this.t.viommu.forward({ scope: "all" });
    SMMU_TRACE.tlbi_nh_all(this.t.tracer, vmid);
    return true;
  }

  private tlbiNhAsid(w1: number): boolean {
    const vmid = this.vmidOf(w1);
    const asid = this.asidOf(w1);
    this.t.tlb.invalidateTag(stage1Tag(vmid, asid, false));
    this.t.tlb.invalidateTag(stage1Tag(vmid, asid, true));
    this.t.viommu.forward({ scope: "asid", asid });
    SMMU_TRACE.tlbi_nh_asid(this.t.tracer, vmid, asid);
    return true;
  }

  private tlbiNhVa(op: number, w0: number, w1: number, w2: number, w3: number): boolean {
    if (!rangeFieldsLegal(w0, w2)) return false;
    const tlb = this.t.tlb;
    // Address bits 63:12; VA[55] (word 3 bit 23) selects the TTB1 half, the key is VA[47:0].
    const upper = ((w3 >>> 23) & 1) === 1;
    const key = (w3 & 0xffff) * 2 ** 32 + ((w2 & 0xfffff000) >>> 0);
    const sizeBytes = rangeBytes(w0, cmdTg(w2));
    const vmid = this.vmidOf(w1);
    if (op === OP.TLBI_NH_VA) {
      const asid = this.asidOf(w1);
      const tag = stage1Tag(vmid, asid, upper);
      tlb.invalidateRange(tag, key, sizeBytes);
      // 4.4.2.4: global entries of the VMID are invalidated whatever ASID cached them.
      tlb.invalidateGlobalRange(vmid, upper, tag, key, sizeBytes);
      this.t.viommu.forward({ scope: "va", asid, iova: key, sizeBytes, leaf: cmdLeaf(w2) });
    } else {
      // All ASIDs of the VMID: invalidate the range in every address space (over-broad is
      // permitted; under-invalidation never is).
      tlb.invalidateRange(null, key, sizeBytes);
      this.t.viommu.forward({ scope: "vaa", iova: key, sizeBytes, leaf: cmdLeaf(w2) });
    }
    (op === OP.TLBI_NH_VA ? SMMU_TRACE.tlbi_nh_va : SMMU_TRACE.tlbi_nh_vaa)(
      this.t.tracer,
      vmid,
      key,
      sizeBytes,
    );
    return true;
  }

  private tlbiS12Vmall(w1: number): boolean {
    const vmid = this.vmidOf(w1);
    this.t.tlb.invalidateMatching((tag) => tagVmid(tag) === vmid);
    SMMU_TRACE.tlbi_s12_vmall(this.t.tracer, vmid);
    return true;
  }

  private tlbiS2Ipa(w0: number, w1: number, w2: number, w3: number): boolean {
    if (!rangeFieldsLegal(w0, w2)) return false;
    const vmid = this.vmidOf(w1);
    const ipa = (w3 & 0xfffff) * 2 ** 32 + ((w2 & 0xfffff000) >>> 0);
    const sizeBytes = rangeBytes(w0, cmdTg(w2));
    this.t.tlb.invalidateRange(stage2Tag(vmid), ipa, sizeBytes);
    // Combined stage-1+2 entries of this VMID cannot be found by IPA: drop them all.
    this.t.tlb.invalidateMatching((tag) => !isStage2OnlyTag(tag) && tagVmid(tag) === vmid);
    SMMU_TRACE.tlbi_s2_ipa(this.t.tracer, vmid, ipa, sizeBytes);
    return true;
  }

  private tlbiNsnhAll(): boolean {
    this.t.tlb.invalidateAll();
    this.t.viommu.forward({ scope: "all" });
    SMMU_TRACE.tlbi_nsnh_all(this.t.tracer);
    return true;
  }

  private sync(w0: number, w1: number, w2: number, w3: number): boolean {
    const cs = cmdSyncCs(w0);
    if (cs === 3) return false; // CS 0b11 is reserved (4.7.3)
    this.syncs++;
    // Every earlier command has completed: the model executes them in order, synchronously.
    if (cs === CS_IRQ) {
      // MSIAddress[55:2]: the zero check covers the whole field (4.7.3).
      this.t.syncInterrupt(w2, w3 & 0xffffff, w1);
    } else if (cs === CS_SEV) {
      SMMU_TRACE.sync_sev(this.t.tracer);
    }
    return true;
  }

  private vmidOf(w1: number): number {
    return cmdVmid(w1) & (this.t.features.vmid16 ? 0xffff : 0xff);
  }

  private asidOf(w1: number): number {
    return cmdAsid(w1) & (this.t.features.asid16 ? 0xffff : 0xff);
  }
}

type CommandHandler = (op: number, w0: number, w1: number, w2: number, w3: number) => boolean;

/** The handlers by opcode as a dense 256-entry array (null for opcodes without one). */
function handlerTable(byOpcode: Record<number, CommandHandler>): (CommandHandler | null)[] {
  const table: (CommandHandler | null)[] = new Array(256).fill(null);
  for (const [op, handler] of Object.entries(byOpcode)) table[Number(op)] = handler;
  return table;
}

/**
 * 4.4.1.1: with TG != 0, NUM == 0 && SCALE == 0 && TTL == 0 is Reserved, and TTL == 0b01 with a
 * 16 KiB TG is Reserved without SMMU_IDR5.DS; both raise CERROR_ILL.
 */
function rangeFieldsLegal(w0: number, w2: number): boolean {
  const tg = cmdTg(w2);
  if (tg === 0) return true;
  const ttl = cmdTtl(w2);
  if (cmdNum(w0) === 0 && cmdScale(w0) === 0 && ttl === 0) return false;
  return !(tg === 2 && ttl === 1);
}

/** Bytes covered by a TLBI: a range (RIL, 4.4.1.1) or 0 for "the leaf at Address". */
function rangeBytes(w0: number, tg: number): number {
  const g = rangeGranuleShift(tg);
  if (g === 0) return 0;
  return Math.min((cmdNum(w0) + 1) * 2 ** cmdScale(w0) * 2 ** g, TWO48);
}
