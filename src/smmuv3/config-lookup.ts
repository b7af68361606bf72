/**
 * Configuration lookup (SMMUv3 3.3): a StreamID to its STE through the linear or 2-level stream
 * table, and a SubstreamID to its CD through the linear or 2-level CD table, with the decoded
 * entries cached until the CFGI_* commands (or a stream table base change) that cover them.
 * Faulting lookups are never cached. This is the SMMUv3 counterpart of `vtd/target.ts`.
 *
 * On a nested stream, CD table addresses are IPAs: each fetch goes through the stream's stage 2
 * first (3.4.3), as do stage-1 table fetches (`nestedFetcher`).
 */
import type { DmaFault } from "../engine/access.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import { Translation } from "../engine/translation.ts";
import {
  CD_BYTES,
  type ContextConfig,
  decodeCd,
  decodeSte,
  S1FMT_2LVL_4K,
  S1FMT_2LVL_64K,
  STE_BYTES,
  type StreamConfig,
} from "./config.ts";
import { CLASS_CD, CLASS_TT, EVT } from "./events.ts";
import type { FaultReporter, Transaction } from "./faults.ts";
import { type DescriptorFetcher, P_PR, WalkResult, walk } from "./pagetable.ts";
import type { SmmuRegisters } from "./registers.ts";
import { OAS_BITS, REG, type SmmuFeatures, STRTAB_FMT_2LVL, STRTAB_FMT_LINEAR } from "./regs.ts";
import { type SmmuTlb, stage2Tag } from "./tlb.ts";
import { SMMU_TRACE } from "./trace-points.ts";

export interface ConfigCacheStats {
  readonly entries: number;
  readonly hits: number;
  readonly misses: number;
}

export class ConfigLookup {
  /** Descriptor fetches from physical addresses (stage 2, and stage 1 of non-nested streams). */
  readonly physFetcher: DescriptorFetcher;
  /** Stage-1 descriptor fetches of the current nested transaction: IPA through its stage 2. */
  readonly nestedFetcher: DescriptorFetcher;
  private readonly memory: GuestMemory;
  private readonly features: SmmuFeatures;
  private readonly regs: SmmuRegisters;
  private readonly tlb: SmmuTlb;
  private readonly faults: FaultReporter;
  private readonly tracer: Tracer;
  private readonly cdCacheLimit: number;
  private readonly steCache = new Map<number, StreamConfig>();
  private readonly cdCache = new Map<number, Map<number, ContextConfig>>();
  private cdCacheEntries = 0;
  private steHits = 0;
  private steMisses = 0;
  private cdHits = 0;
  private cdMisses = 0;
  // Scratch, reused on every miss.
  private readonly words = new Uint32Array(16);
  private readonly hit = new Translation();
  private readonly rFetch = new WalkResult();
  private readonly rCd = new WalkResult();

  constructor(
    memory: GuestMemory,
    features: SmmuFeatures,
    regs: SmmuRegisters,
    tlb: SmmuTlb,
    faults: FaultReporter,
    tracer: Tracer,
    cdCacheLimit: number,
    tx: Transaction,
  ) {
    this.memory = memory;
    this.features = features;
    this.regs = regs;
    this.tlb = tlb;
    this.faults = faults;
    this.tracer = tracer;
    this.cdCacheLimit = cdCacheLimit;
    this.physFetcher = {
      fetch: (addr: number, r: WalkResult): boolean => {
        if (!memory.read64(addr)) {
          r.fault = EVT.F_WALK_EABT;
          r.fetchAddr = addr;
          return false;
        }
        r.lo = memory.lo;
        r.hi = memory.hi;
        return true;
      },
    };
    // Stage-1 table fetches of a nested stream: the table address is an IPA (SMMUv3 3.4.3).
    this.nestedFetcher = {
      fetch: (ipa: number, r: WalkResult): boolean => {
        const pa = this.stage2ForFetch(tx, ipa, CLASS_TT, r);
        if (pa < 0) return false;
        return this.physFetcher.fetch(pa, r);
      },
    };
  }

  /** The STE of `sid`, from the cache or the stream table; a fault when it cannot be used. */
  stream(tx: Transaction, sid: number): StreamConfig | DmaFault {
    const cached = this.steCache.get(sid);
    if (cached !== undefined) {
      this.steHits++;
      return cached;
    }
    this.steMisses++;
    const steGpa = this.steAddress(tx, sid);
    if (typeof steGpa !== "number") return steGpa;
    if (!this.readWords(steGpa, STE_BYTES)) return this.faults.fetch(tx, EVT.F_STE_FETCH, false, 0, steGpa);
    const d = decodeSte(this.words, this.features);
    if (!d.ok) {
      SMMU_TRACE.bad_ste(this.tracer, sid, d.why);
      return this.faults.config(tx, d.event);
    }
    this.steCache.set(sid, d.value);
    return d.value;
  }

  /** Where the STE of `sid` is (5.1, 6.3.24), or the fault that stops the lookup. */
  private steAddress(tx: Transaction, sid: number): number | DmaFault {
    const r = this.regs;
    const cfg = r.get32(REG.STRTAB_BASE_CFG);
    const log2size = Math.min(cfg & 0x3f, this.features.sidBits);
    const fmt = (cfg >>> 16) & 3;
    const base = (r.getHi(REG.STRTAB_BASE) & 0xfffff) * 2 ** 32 + r.get32(REG.STRTAB_BASE);
    if (sid >= 2 ** log2size) return this.faults.config(tx, EVT.C_BAD_STREAMID);
    if (fmt === STRTAB_FMT_LINEAR) return base + sid * STE_BYTES;
    // FMT 0b1x is reserved: no stream is reachable (CONSTRAINED UNPREDICTABLE choice).
    if (fmt !== STRTAB_FMT_2LVL) return this.faults.config(tx, EVT.C_BAD_STREAMID);
    const split = (cfg >>> 6) & 0x1f;
    // SPLIT other than 6, 8 or 10 is reserved; it behaves as 6 here (CONSTRAINED UNPREDICTABLE).
    const s = split === 8 || split === 10 ? split : 6;
    const l1Gpa = base + Math.floor(sid / 2 ** s) * 8;
    if (!this.readWords(l1Gpa, 8)) return this.faults.fetch(tx, EVT.F_STE_FETCH, false, 0, l1Gpa);
    const span = this.words[0] & 0x1f;
    // Span 0 marks an invalid L1 descriptor; Span > SPLIT+1 is reserved (5.1.2).
    if (span === 0 || span > s + 1) return this.faults.config(tx, EVT.C_BAD_STREAMID);
    const low = sid % 2 ** s;
    if (low >= 2 ** (span - 1)) return this.faults.config(tx, EVT.C_BAD_STREAMID);
    const l2 = (this.words[1] & 0xfffff) * 2 ** 32 + ((this.words[0] & 0xffffffc0) >>> 0);
    return l2 + low * STE_BYTES;
  }

  /** The CD at `index` of the stream's CD table (5.4, 3.3.2). */
  context(tx: Transaction, ste: StreamConfig, index: number): ContextConfig | DmaFault {
    const sid = tx.sid;
    const cached = this.cdCache.get(sid)?.get(index);
    if (cached !== undefined) {
      this.cdHits++;
      return cached;
    }
    this.cdMisses++;
    const cdIpa = this.cdAddress(tx, ste, index);
    if (typeof cdIpa !== "number") return cdIpa;
    const cdPa = this.stage2ForFetch(tx, cdIpa, CLASS_CD, this.rCd);
    if (cdPa < 0) return this.stage2FetchFault(tx, ste);
    if (!this.readWords(cdPa, CD_BYTES)) return this.faults.fetch(tx, EVT.F_CD_FETCH, false, 0, cdPa);
    const d = decodeCd(this.words, this.features);
    if (!d.ok) {
      SMMU_TRACE.bad_cd(this.tracer, sid, index, d.why);
      return this.faults.config(tx, d.event);
    }
    this.cacheContext(sid, index, d.value);
    return d.value;
  }

  /** The IPA of CD `index` (linear, or through the L1 CD table), or the fault. */
  private cdAddress(tx: Transaction, ste: StreamConfig, index: number): number | DmaFault {
    if (ste.s1CdMax === 0 || ste.s1Fmt === 0) return ste.cdTableBase + index * CD_BYTES;
    const leafBits = ste.s1Fmt === S1FMT_2LVL_4K ? 6 : ste.s1Fmt === S1FMT_2LVL_64K ? 10 : 0;
    const l1Ipa = ste.cdTableBase + Math.floor(index / 2 ** leafBits) * 8;
    const l1Pa = this.stage2ForFetch(tx, l1Ipa, CLASS_CD, this.rCd);
    if (l1Pa < 0) return this.stage2FetchFault(tx, ste);
    if (!this.readWords(l1Pa, 8)) return this.faults.fetch(tx, EVT.F_CD_FETCH, false, 0, l1Pa);
    // L1CD.V == 0: the SubstreamID has no CD table (C_BAD_SUBSTREAMID, 5.3).
    if ((this.words[0] & 1) === 0) return this.faults.config(tx, EVT.C_BAD_SUBSTREAMID);
    const l2 = (this.words[1] & 0xfffff) * 2 ** 32 + ((this.words[0] & 0xfffff000) >>> 0);
    // An L1CD.L2Ptr beyond the address size is C_BAD_SUBSTREAMID too (7.3.9).
    if (l2 >= 2 ** OAS_BITS) return this.faults.config(tx, EVT.C_BAD_SUBSTREAMID);
    return l2 + (index % 2 ** leafBits) * CD_BYTES;
  }

  private cacheContext(sid: number, index: number, cd: ContextConfig): void {
    // The CD cache is bounded: beyond the limit it is emptied (it is only a cache).
    if (this.cdCacheEntries >= this.cdCacheLimit) {
      this.cdCache.clear();
      this.cdCacheEntries = 0;
    }
    let cds = this.cdCache.get(sid);
    if (cds === undefined) {
      cds = new Map();
      this.cdCache.set(sid, cds);
    }
    cds.set(index, cd);
    this.cdCacheEntries++;
  }

  /**
   * Translates a configuration-structure IPA through the transaction's stage 2 (nested streams
   * only; otherwise the address is already physical). Returns the PA, or -1 with the stage-2
   * fault described in `r`.
   */
  stage2ForFetch(tx: Transaction, ipa: number, cls: number, r: WalkResult): number {
    const s2 = tx.nestedS2;
    if (s2 === null) return ipa;
    const tag = stage2Tag(tx.nestedVmid);
    const h = this.hit;
    if (ipa < 2 ** s2.inputBits && this.tlb.lookup(tag, ipa, h) && (h.perms & P_PR) !== 0) {
      return h.gpaBase + (ipa - h.iovaBase);
    }
    const f = this.rFetch;
    f.clearFault();
    if (ipa >= 2 ** s2.inputBits) return fetchFault(r, EVT.F_TRANSLATION, cls, ipa, 0);
    if (!walk(s2, ipa, this.physFetcher, f)) return fetchFault(r, f.fault, cls, ipa, f.fetchAddr);
    if ((f.perms & P_PR) === 0) return fetchFault(r, EVT.F_PERMISSION, cls, ipa, 0);
    this.tlb.insert(tag, ipa, f.inputBase, f.outputBase, f.blockBytes, f.perms, f.inputBase, f.blockBytes);
    return f.outputBase + (ipa - f.inputBase);
  }

  /** The fault of a CD-table fetch that stage 2 refused (`rCd`). */
  private stage2FetchFault(tx: Transaction, ste: StreamConfig): DmaFault {
    const r = this.rCd;
    if (r.fault === EVT.F_WALK_EABT)
      return this.faults.fetch(tx, EVT.F_WALK_EABT, true, r.faultClass, r.fetchAddr);
    return this.faults.stage2(tx, r.fault, ste.s2Record, r.faultClass, r.faultIpa);
  }

  /** Reads a structure of `bytes` (a multiple of 8) into `words`; false when it is not all RAM. */
  private readWords(gpa: number, bytes: number): boolean {
    const m = this.memory;
    if (!m.isRam(gpa, bytes)) return false;
    for (let i = 0; i < bytes / 8; i++) {
      if (!m.read64(gpa + i * 8)) return false;
      this.words[i * 2] = m.lo;
      this.words[i * 2 + 1] = m.hi;
    }
    return true;
  }

  // ---- Invalidation (CFGI_*, 4.3) ----

  /** CFGI_STE: the STE of `sid` and every CD cached under it. */
  invalidateStream(sid: number): void {
    this.steCache.delete(sid);
    this.invalidateContexts(sid, -1);
  }

  /** CFGI_CD (one SubstreamID) or CFGI_CD_ALL (`ssid` -1) of stream `sid`. */
  invalidateContexts(sid: number, ssid: number): void {
    const cds = this.cdCache.get(sid);
    if (cds === undefined) return;
    if (ssid < 0) {
      this.cdCacheEntries -= cds.size;
      this.cdCache.delete(sid);
    } else if (cds.delete(ssid)) this.cdCacheEntries--;
  }

  /** CFGI_ALL, and any change of the stream table base. */
  invalidateAll(): void {
    this.steCache.clear();
    this.cdCache.clear();
    this.cdCacheEntries = 0;
  }

  steStats(): ConfigCacheStats {
    return { entries: this.steCache.size, hits: this.steHits, misses: this.steMisses };
  }

  cdStats(): ConfigCacheStats {
    return { entries: this.cdCacheEntries, hits: this.cdHits, misses: this.cdMisses };
  }
}

/** Records a stage-2 fault of a structure fetch in `r`; returns -1. */
function fetchFault(r: WalkResult, type: number, cls: number, ipa: number, fetchAddr: number): number {
  r.fault = type;
  r.faultS2 = true;
  r.faultClass = cls;
  r.faultIpa = ipa;
  r.fetchAddr = fetchAddr;
  return -1;
}
