/**
 * The VT-d register commands (VT-d 11.4): what a guest write to GCMD (enables and one-shot
 * commands), CCMD and IOTLB (register-based invalidation), FSTS, FECTL, IQT, ICS, IECTL, PMEN
 * and the fault recording registers sets off. Masks and storage are the register table's
 * (registers.ts); this module is the side effects.
 */
import type { Iotlb } from "../engine/iotlb.ts";
import type { Tracer } from "../engine/trace.ts";
import { MAMV, type VtdConfig } from "./config.ts";
import type { FaultLog } from "./faults.ts";
import type { InterruptRemapper } from "./interrupt-remap.ts";
import { GRAN, type InvalidationQueue } from "./invalidation-queue.ts";
import type { CacheInvalidation } from "./invalidations.ts";
import { FSTS, GCMD, REG, type RegisterDef, type RegisterFile } from "./registers.ts";
import type { TargetCache } from "./target.ts";
import { VTD_TRACE } from "./trace-points.ts";

/** What the commands act on. */
export interface RegisterCommandScope {
  readonly regs: RegisterFile;
  readonly config: VtdConfig;
  readonly tracer: Tracer;
  readonly faults: FaultLog;
  readonly queue: InvalidationQueue;
  readonly interruptRemapper: InterruptRemapper;
  readonly targets: TargetCache;
  readonly iotlb: Iotlb;
  readonly invalidation: CacheInvalidation;
  bumpEpoch(): void;
  /** SRTP latched a root table address and translation table mode (RTADDR_REG.TTM). */
  setRootTable(rootTable: number, translationTableMode: number): void;
  /** Resynchronise every assigned endpoint's host mappings (TE or the root table changed). */
  resyncHosts(): void;
}

export class RegisterCommands {
  /** CCMD and IOTLB register invalidations performed. */
  registerInvalidations = 0;
  private readonly s: RegisterCommandScope;

  constructor(scope: RegisterCommandScope) {
    this.s = scope;
  }

  /** A guest write landed in dword `index` of `reg` (the register file's write hook). */
  onWrite(reg: RegisterDef, index: number, written: number): void {
    const offset = index * 4;
    switch (reg.name) {
      case "GCMD":
        this.globalCommand(written);
        return;
      case "CCMD":
        if (offset === REG.CCMD + 4) this.contextCommand();
        return;
      case "IOTLB":
        if (offset === REG.IOTLB + 4) this.iotlbCommand();
        return;
      case "FSTS":
        this.s.faults.refresh();
        // Clearing IQE resumes fetching at IQH (VT-d 6.5.2.10), if the queue is enabled.
        if (written & FSTS.IQE && (this.s.regs.get32(REG.GSTS) & GCMD.QIE) !== 0) this.s.queue.process();
        return;
      case "FECTL":
        this.s.faults.onFectlWrite();
        return;
      case "IQT":
        if (offset === REG.IQT && (this.s.regs.get32(REG.GSTS) & GCMD.QIE) !== 0) this.s.queue.process();
        return;
      case "ICS":
        this.s.queue.onIcsWrite();
        return;
      case "IECTL":
        this.s.queue.onIectlWrite();
        return;
      case "PMEN": {
        // No protected regions are reported (CAP.PLMR = PHMR = 0): PRS follows EPM, nothing else.
        const pmen = this.s.regs.get32(REG.PMEN);
        this.s.regs.set32(REG.PMEN, (pmen & 0x80000000) !== 0 ? pmen | 1 : pmen & ~1);
        return;
      }
      default:
        if (reg.name.startsWith("FRCD")) this.s.faults.refresh();
    }
  }

  /** GCMD_REG write (VT-d 11.4.4): persistent enables and one-shot commands. */
  private globalCommand(value: number): void {
    const r = this.s.regs;
    let gsts = r.get32(REG.GSTS);
    const before = gsts;
    const c = this.s.config;
    if (value & GCMD.SRTP && c.dmaTranslation) {
      const lo = r.get32(REG.RTADDR);
      const root = r.getHi(REG.RTADDR) * 0x1_0000_0000 + ((lo & 0xfffff000) >>> 0);
      const ttm = (lo >>> 10) & 3;
      this.s.setRootTable(root, ttm);
      // Setting the root table pointer empties every translation cache (as CAP.ESRTPS units do;
      // software's own global invalidations then find nothing stale).
      this.s.targets.clear();
      this.s.iotlb.invalidateAll();
      this.s.bumpEpoch();
      gsts |= GCMD.SRTP;
      VTD_TRACE.srtp(this.s.tracer, root, ttm);
    }
    const te = (value & GCMD.TE) !== 0 && c.dmaTranslation;
    if (te !== ((gsts & GCMD.TE) !== 0)) {
      gsts = te ? gsts | GCMD.TE : gsts & ~GCMD.TE;
      this.s.bumpEpoch();
    }
    const qie = (value & GCMD.QIE) !== 0;
    const qiWasOn = (gsts & GCMD.QIE) !== 0;
    if (qie && !qiWasOn) {
      gsts |= GCMD.QIE;
    } else if (!qie && qiWasOn) {
      // VT-d 11.4.9.1: IQH resets to 0 whenever queued invalidation is disabled.
      r.set32(REG.IQH, 0);
      r.setHi(REG.IQH, 0);
      gsts &= ~GCMD.QIE;
    }
    if (c.intremap) {
      if (value & GCMD.SIRTP) {
        this.s.interruptRemapper.setTable(r.get32(REG.IRTA), r.getHi(REG.IRTA));
        gsts |= GCMD.SIRTP;
      }
      gsts = value & GCMD.IRE ? gsts | GCMD.IRE : gsts & ~GCMD.IRE;
      gsts = value & GCMD.CFI ? gsts | GCMD.CFI : gsts & ~GCMD.CFI;
    }
    r.set32(REG.GSTS, gsts >>> 0);
    if (gsts !== before) VTD_TRACE.gsts(this.s.tracer, before >>> 0, gsts >>> 0, value >>> 0);
    if ((gsts & GCMD.QIE) !== 0 && !qiWasOn) this.s.queue.process();
    if ((before ^ gsts) & GCMD.TE || value & GCMD.SRTP) {
      this.s.resyncHosts();
    }
  }

  /** CCMD_REG with ICC set (VT-d 6.5.1.1, 11.4.6.1). */
  private contextCommand(): void {
    const r = this.s.regs;
    let hi = r.getHi(REG.CCMD);
    if ((hi & 0x80000000) === 0) return;
    const lo = r.get32(REG.CCMD);
    const cirg = (hi >>> 29) & 3;
    let caig = 0;
    // Register-based invalidation is not used while queued invalidation is enabled (6.5.2).
    if ((r.get32(REG.GSTS) & GCMD.QIE) === 0 && cirg !== 0) {
      this.registerInvalidations++;
      this.s.invalidation.invalidateContextCache(cirg, lo & 0xffff, lo >>> 16, hi & 3);
      caig = cirg;
    }
    hi = (hi & ~0x98000000) | (caig << 27);
    r.setHi(REG.CCMD, hi >>> 0);
  }

  /** IOTLB_REG with IVT set (VT-d 6.5.1.2, 11.4.8.1); IVA_REG gives the page range. */
  private iotlbCommand(): void {
    const r = this.s.regs;
    let hi = r.getHi(REG.IOTLB);
    if ((hi & 0x80000000) === 0) return;
    let iirg = (hi >>> 28) & 3;
    let iaig = 0;
    if ((r.get32(REG.GSTS) & GCMD.QIE) === 0 && iirg !== 0) {
      this.registerInvalidations++;
      const ivaLo = r.get32(REG.IVA);
      const am = ivaLo & 0x3f;
      // An address mask beyond CAP.MAMV is performed (and reported) as domain-selective.
      if (iirg === GRAN.PAGE_OR_DEVICE && am > MAMV) iirg = GRAN.DOMAIN;
      this.s.invalidation.invalidateIotlb(
        iirg,
        hi & 0xffff,
        r.getHi(REG.IVA) * 0x1_0000_0000 + ((ivaLo & 0xfffff000) >>> 0),
        am,
      );
      iaig = iirg;
    }
    hi = (hi & ~(0x80000000 | (3 << 25))) | (iaig << 25);
    r.setHi(REG.IOTLB, hi >>> 0);
  }
}
