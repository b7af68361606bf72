/**
 * The walk and output steps of an SMMUv3 translation (SMMUv3 3.4): the stage-1 walk (through
 * stage 2 for nested streams), the stage-2 walk of a transaction's IPA, and the output step that
 * applies the host's stage 2 (when the host constrains this guest), fills the IOTLB and hands the
 * engine a `Translation`. Configuration lookup is `config-lookup.ts`; the orchestration, fast path
 * and input checks are `smmu.ts`.
 *
 * Between the walk and the output the result is an `OutputBlock`: the input range the walk
 * resolved, where it maps, with which permissions, and how to cache it.
 */
import { type Access, type DmaFault, dmaFault, PERM_READ, PERM_WRITE } from "../engine/access.ts";
import { Translation } from "../engine/translation.ts";
import type { ViommuInstance } from "../framework/viommu.ts";
import type { StreamConfig } from "./config.ts";
import type { ConfigLookup } from "./config-lookup.ts";
import { CLASS_IN, CLASS_TT, EVT } from "./events.ts";
import type { FaultReporter, Transaction } from "./faults.ts";
import {
  P_PR,
  P_PW,
  P_PX,
  P_UR,
  P_UW,
  P_UX,
  permits,
  type StageParams,
  WalkResult,
  walk,
} from "./pagetable.ts";
import { type SmmuTlb, stage2Tag } from "./tlb.ts";

/** What a transaction may do while SMMUEN == 0 and GBPA lets it through. */
export const P_READ_WRITE = P_UR | P_UW | P_PR | P_PW;
/** Everything a bypassing stream may do. */
export const P_BYPASS = P_UR | P_UW | P_PR | P_PW | P_UX | P_PX;

/** Converts P_* leaf permissions to engine permissions for a stream's access attributes. */
export function enginePerms(perms: number, privileged: boolean, instruction: boolean): number {
  let p = 0;
  if (permits(perms, false, privileged, instruction)) p |= PERM_READ;
  if (permits(perms, true, privileged, instruction)) p |= PERM_WRITE;
  return p;
}

/** What the walk resolved, in the 48-bit input key space. */
export class OutputBlock {
  /** Input range [inBase, inBase + inBytes) and the output address of inBase. */
  inBase = 0;
  inBytes = 0;
  outBase = 0;
  /** P_* permissions. */
  perms = 0;
  /** IOTLB tag to cache the result under, or -1 not to cache it. */
  tag = -1;
  /** The architectural leaf the block belongs to (a TLBI naming any of it drops every piece). */
  leafBase = 0;
  leafBytes = 0;

  /** A block that is not cached (bypass, stage 2 only). */
  uncached(inBase: number, inBytes: number, outBase: number, perms: number): this {
    this.inBase = inBase;
    this.inBytes = inBytes;
    this.outBase = outBase;
    this.perms = perms;
    this.tag = -1;
    this.leafBase = 0;
    this.leafBytes = 0;
    return this;
  }
}

export class Stages {
  /** Host stage-2 faults (the host, not the guest, refused the output address). */
  hostStage2Faults = 0;
  readonly block = new OutputBlock();
  private readonly tlb: SmmuTlb;
  private readonly viommu: ViommuInstance;
  private readonly faults: FaultReporter;
  private readonly config: ConfigLookup;
  private readonly r1 = new WalkResult();
  private readonly r2 = new WalkResult();
  private readonly hit = new Translation();
  private readonly hostOut = new Translation();

  constructor(tlb: SmmuTlb, viommu: ViommuInstance, faults: FaultReporter, config: ConfigLookup) {
    this.tlb = tlb;
    this.viommu = viommu;
    this.faults = faults;
    this.config = config;
  }

  /**
   * Stage-1 walk of `key` in `region` (based at `regionBase` in the key space), then stage 2 for
   * nested streams; fills `block` (cached under `tag`) or returns the fault.
   */
  stage1(
    tx: Transaction,
    ste: StreamConfig,
    cdRecord: boolean,
    region: StageParams,
    regionBase: number,
    key: number,
    tag: number,
  ): DmaFault | null {
    const r = this.r1;
    r.clearFault();
    const fetcher = ste.stage2 ? this.config.nestedFetcher : this.config.physFetcher;
    if (!walk(region, key - regionBase, fetcher, r)) return this.walkFault(tx, r, cdRecord, ste.s2Record);
    if (!permits(r.perms, tx.write, ste.privileged, ste.instruction)) {
      return this.faults.stage1(tx, EVT.F_PERMISSION, cdRecord, CLASS_IN);
    }
    if (!r.nonGlobal) this.tlb.markGlobal(tag);
    const b = this.block;
    const s1In = r.inputBase + regionBase;
    b.inBase = s1In;
    b.inBytes = r.blockBytes;
    b.outBase = r.outputBase;
    b.perms = r.perms;
    b.tag = tag;
    b.leafBase = s1In;
    b.leafBytes = r.blockBytes;
    if (ste.stage2 && ste.s2 !== null) {
      const f = this.stage2(tx, ste, r.outputBase + (key - s1In));
      if (f !== null) return f;
      // Intersect the stage-1 block with the stage-2 block around the IPA.
      const r2 = this.r2;
      const ipaLo = Math.max(r.outputBase, r2.inputBase);
      const ipaHi = Math.min(r.outputBase + r.blockBytes, r2.inputBase + r2.blockBytes);
      b.inBase = s1In + (ipaLo - r.outputBase);
      b.inBytes = ipaHi - ipaLo;
      b.outBase = r2.outputBase + (ipaLo - r2.inputBase);
      b.perms &= r2.perms;
    }
    return null;
  }

  /** A stage-1 or stage-2 fault of a stage-1 walk (`r`). */
  private walkFault(tx: Transaction, r: WalkResult, s1Record: boolean, s2Record: boolean): DmaFault {
    if (r.fault === EVT.F_WALK_EABT) {
      // 7.3.12: an abort on a stage-1 descriptor access is S2 == 0, CLASS == TT.
      const cls = r.faultS2 ? r.faultClass : CLASS_TT;
      return this.faults.fetch(tx, EVT.F_WALK_EABT, r.faultS2, cls, r.fetchAddr);
    }
    if (r.faultS2) return this.faults.stage2(tx, r.fault, s2Record, r.faultClass, r.faultIpa);
    return this.faults.stage1(tx, r.fault, s1Record, CLASS_IN);
  }

  /** A stream with stage 1 bypassed and stage 2 on: fills `block` or returns the fault. */
  stage2Only(tx: Transaction, ste: StreamConfig, top16: number, key: number): DmaFault | null {
    // Stage 1 bypassed: an input beyond the implemented address size is a stage-1 F_ADDR_SIZE
    // (7.3.14, CLASS IN, S2 == 0); beyond S2T0SZ it is a stage-2 F_TRANSLATION.
    if (top16 !== 0) return this.faults.stage1(tx, EVT.F_ADDR_SIZE, true, CLASS_IN);
    if (key >= 2 ** (ste.s2 as StageParams).inputBits) {
      return this.faults.stage2(tx, EVT.F_TRANSLATION, ste.s2Record, CLASS_IN, key);
    }
    const f = this.stage2(tx, ste, key);
    if (f !== null) return f;
    const r2 = this.r2;
    this.block.uncached(r2.inputBase, r2.blockBytes, r2.outputBase, r2.perms);
    return null;
  }

  /** Stage-2 translation of a transaction's IPA into r2; a fault (CLASS IN) or null. */
  private stage2(tx: Transaction, ste: StreamConfig, ipa: number): DmaFault | null {
    const s2 = ste.s2 as StageParams;
    const r2 = this.r2;
    r2.clearFault();
    if (ipa >= 2 ** s2.inputBits)
      return this.faults.stage2(tx, EVT.F_TRANSLATION, ste.s2Record, CLASS_IN, ipa);
    const tag = stage2Tag(ste.vmid);
    const h = this.hit;
    if (this.tlb.lookup(tag, ipa, h) && permits(h.perms, tx.write, ste.privileged, ste.instruction)) {
      r2.inputBase = h.iovaBase;
      r2.outputBase = h.gpaBase;
      r2.blockBytes = h.sizeBytes;
      r2.perms = h.perms;
      return null;
    }
    if (!walk(s2, ipa, this.config.physFetcher, r2)) {
      if (r2.fault === EVT.F_WALK_EABT)
        return this.faults.fetch(tx, EVT.F_WALK_EABT, true, CLASS_IN, r2.fetchAddr);
      return this.faults.stage2(tx, r2.fault, ste.s2Record, CLASS_IN, ipa);
    }
    if (!permits(r2.perms, tx.write, ste.privileged, ste.instruction)) {
      return this.faults.stage2(tx, EVT.F_PERMISSION, ste.s2Record, CLASS_IN, ipa);
    }
    const b = r2.blockBytes;
    this.tlb.insert(tag, ipa, r2.inputBase, r2.outputBase, b, r2.perms, r2.inputBase, b);
    return null;
  }

  /**
   * The output step: applies the host stage 2 (when the host constrains this guest) to `block`,
   * caches the result under its tag and fills `out` in engine terms.
   */
  output(tx: Transaction, key: number, access: Access, out: Translation): DmaFault | null {
    const b = this.block;
    let base = b.inBase;
    let bytes = b.inBytes;
    let pa = b.outBase;
    let p = b.perms;
    const host = this.viommu.hostStage2;
    if (host !== null) {
      const ho = this.hostOut;
      const hf = host.translate(tx.sid, b.outBase + (key - b.inBase), access, ho);
      if (hf !== null) {
        this.hostStage2Faults++;
        const ep = this.viommu.endpoint(tx.sid);
        const f = dmaFault(hf.reason, tx.sid, tx.iova, access, 0, hf.detail);
        if (ep !== undefined) this.viommu.hostFault(ep, f);
        return f;
      }
      const lo = Math.max(b.outBase, ho.iovaBase);
      const hi = Math.min(b.outBase + b.inBytes, ho.iovaBase + ho.sizeBytes);
      base = b.inBase + (lo - b.outBase);
      bytes = hi - lo;
      pa = ho.gpaBase + (lo - ho.iovaBase);
      if ((ho.perms & PERM_READ) === 0) p &= ~(P_UR | P_PR | P_UX | P_PX);
      if ((ho.perms & PERM_WRITE) === 0) p &= ~(P_UW | P_PW);
    }
    if (b.tag >= 0) this.tlb.insert(b.tag, key, base, pa, bytes, p, b.leafBase, b.leafBytes);
    out.set(base, pa, bytes, enginePerms(p, tx.privileged, tx.instruction));
    return null;
  }
}
