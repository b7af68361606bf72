/**
 * DMA translation through a VT-d unit's tables (VT-d 3.x): the target of a request (context and
 * PASID caches, target.ts), the IOTLB, the second- or first-stage walk on a miss, the interrupt
 * window (3.14), the architected reason of each stop, translated requests (4.2.4) and ATS
 * translation requests (4.2.3). Faults are recorded through the fault log (faults.ts).
 */
import {
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  MAX_ADDRESS,
  PERM_RW,
  PERM_WRITE,
  permsName,
} from "../engine/access.ts";
import type { Iotlb } from "../engine/iotlb.ts";
import type { Tracer } from "../engine/trace.ts";
import { Translation } from "../engine/translation.ts";
import { FR, WALK_REASONS, walkStopReason } from "./fault-reasons.ts";
import { ADDRESS_TYPE, type FaultLog } from "./faults.ts";
import type { FirstStageWalker } from "./first-stage.ts";
import { INTERRUPT_WINDOW_BASE, INTERRUPT_WINDOW_LAST } from "./interrupt-remap.ts";
import type { NestedSecondStage } from "./nested-stage.ts";
import type { AtsCompletion } from "./options.ts";
import { type SecondStageWalker, WALK, WalkOut } from "./second-stage.ts";
import { TARGET, type Target, type TargetCache } from "./target.ts";
import { VTD_TRACE } from "./trace-points.ts";

// Imported bindings are read through accessors under tsx: the translation path uses copies.
const RW: number = PERM_RW;
const K_IDENTITY: number = TARGET.IDENTITY;
const K_SECOND_STAGE: number = TARGET.SECOND_STAGE;
const K_NESTED: number = TARGET.NESTED;
const WALK_OK: number = WALK.OK;

/** The interrupt window: DMA whose output lands here faults (VT-d 3.14). */
const INTERRUPT_BASE: number = INTERRUPT_WINDOW_BASE;
const INTERRUPT_LAST: number = INTERRUPT_WINDOW_LAST;

/** Narrows a block that spans the input interrupt window to the 4 KiB page holding `iova`. */
function clipToInputWindow(out: Translation, iova: number): void {
  if (out.iovaBase <= INTERRUPT_LAST && out.iovaBase + out.sizeBytes > INTERRUPT_BASE) {
    const offset = iova - (iova % 4096) - out.iovaBase;
    out.set(out.iovaBase + offset, out.gpaBase + offset, 4096, out.perms);
  }
}

export class TargetTranslator {
  /** Latched by SRTP (register-commands.ts). */
  rootTable = 0;
  translationTableMode = 0;
  private readonly targets: TargetCache;
  private readonly iotlb: Iotlb;
  private readonly secondStage: SecondStageWalker;
  private readonly firstStage: FirstStageWalker;
  private readonly nestedStage: NestedSecondStage;
  private readonly faults: FaultLog;
  private readonly tracer: Tracer;
  private readonly walkOut = new WalkOut();
  private readonly neighbourOut = new WalkOut();
  private readonly atsScratch = new Translation();
  /** Following 4 KiB leaves cached after a second-stage walk (VtdOptions.iotlbPrefetchPages). */
  prefetchPages = 0;

  constructor(
    targets: TargetCache,
    iotlb: Iotlb,
    walkers: { secondStage: SecondStageWalker; firstStage: FirstStageWalker; nestedStage: NestedSecondStage },
    faults: FaultLog,
    tracer: Tracer,
  ) {
    this.targets = targets;
    this.iotlb = iotlb;
    this.secondStage = walkers.secondStage;
    this.firstStage = walkers.firstStage;
    this.nestedStage = walkers.nestedStage;
    this.faults = faults;
    this.tracer = tracer;
  }

  /** Why the last `lookupTarget` returned null, and whether an FPD bit on the path was set. */
  lookupReason = 0;
  lookupFpd = false;

  /** The cached or freshly resolved target of `key`; null with lookupReason/lookupFpd on a fault. */
  lookupTarget(key: number): Target | null {
    const cached = this.targets.get(key);
    if (cached !== undefined) return cached;
    if (this.translationTableMode > 1) {
      this.lookupReason = FR.SM_RTADDR_INVALID;
      this.lookupFpd = false;
      return null;
    }
    const r = this.targets.resolve(key, this.rootTable, this.translationTableMode === 1);
    if (r.ok) return r.target;
    this.lookupReason = r.reason;
    this.lookupFpd = r.fpd;
    return null;
  }

  /** Maps a walk stop to the architected reason for the mode (VT-d 7.1.3; table in fault-reasons.ts). */
  private walkReason(t: Target, code: number, access: number): number {
    if (code === WALK.NESTED) return this.nestedStage.reason;
    const row =
      t.kind === TARGET.FIRST_STAGE || t.kind === TARGET.NESTED
        ? WALK_REASONS.firstStage
        : t.scalable
          ? WALK_REASONS.scalableSecondStage
          : WALK_REASONS.legacySecondStage;
    return walkStopReason(row, code, (access & PERM_WRITE) !== 0);
  }

  /**
   * Caches the entries after the 4 KiB leaf just walked (`w`) in the same last-level table, up to
   * `prefetchPages` of them (skipping, without a read, those already cached), stopping at the
   * first that does not translate, leaves the input range, or maps into the interrupt window
   * (those take the full walk and its fault).
   */
  private prefetchAfter(t: Target, w: WalkOut): void {
    const n = this.neighbourOut;
    const first = ((w.iovaBase / 4096) & 511) + 1;
    const last = Math.min(511, first + this.prefetchPages - 1);
    let iova = w.iovaBase + 4096;
    for (let index = first; index <= last; index++, iova += 4096) {
      if (!(iova < t.inputLimit) || (iova >= INTERRUPT_BASE && iova <= INTERRUPT_LAST)) return;
      if (this.iotlb.holdsPage(t.iotlbTag, iova)) continue;
      if (!this.secondStage.readNeighbour(w.leafTableGpa, index, w.tablePerms, n)) return;
      if (n.gpaBase >= INTERRUPT_BASE && n.gpaBase <= INTERRUPT_LAST) return;
      this.iotlb.prefetch(t.iotlbTag, iova, n.gpaBase, n.perms);
    }
  }

  /**
   * Translates for target `t` into `out`; 0 on success, else the fault reason. `access` 0
   * demands no permission (ATS: the completion reports what the page allows).
   */
  translateTarget(t: Target, iova: number, access: number, out: Translation): number {
    if (!(iova < t.inputLimit)) {
      if (t.kind === TARGET.FIRST_STAGE || t.kind === TARGET.NESTED) return FR.SM_NON_CANONICAL;
      return t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW;
    }
    const intrReason = t.scalable ? FR.SM_INTERRUPT_ADDRESS : FR.INTERRUPT_ADDRESS;
    // VT-d 3.14: requests without PASID to 0xFEEx_xxxx are interrupt requests, never DMA; a
    // memory access that reaches the DMA path there is blocked whatever the tables say.
    const inputWindow = !t.requestHasPasid;
    if (inputWindow && iova >= INTERRUPT_BASE && iova <= INTERRUPT_LAST) return intrReason;
    if (t.kind === K_IDENTITY) {
      // Pass-through: the output is the input, so the output window check applies to it too.
      if (iova >= INTERRUPT_BASE && iova <= INTERRUPT_LAST) return intrReason;
      if (iova < INTERRUPT_BASE) out.set(0, 0, INTERRUPT_BASE, RW);
      else out.set(INTERRUPT_LAST + 1, INTERRUPT_LAST + 1, t.inputLimit - INTERRUPT_LAST - 1, RW);
      return 0;
    }
    const iotlb = this.iotlb;
    if (iotlb.lookup(t.iotlbTag, iova, out) && (out.perms & access) === access) {
      if (inputWindow) clipToInputWindow(out, iova);
      return 0;
    }
    const w = this.walkOut;
    const code =
      t.kind === K_SECOND_STAGE
        ? this.secondStage.walk(t.root, t.levels, iova, access, w)
        : this.firstStage.walk(
            t.root,
            t.levels,
            iova,
            access,
            t.fsRequest,
            w,
            t.kind === K_NESTED ? this.nestedStage.bind(t.ssRoot, t.ssLevels, t.ssLimit) : null,
          );
    if (code !== WALK_OK) return this.walkReason(t, code, access);
    const gpa = w.gpaBase + (iova - w.iovaBase);
    if (w.gpaBase <= INTERRUPT_LAST && w.gpaBase + w.sizeBytes > INTERRUPT_BASE) {
      // The leaf's output overlaps the interrupt window: only its 4 KiB pages outside it translate.
      if (gpa >= INTERRUPT_BASE && gpa <= INTERRUPT_LAST) return intrReason;
      const page = iova - (iova % 4096);
      out.set(page, gpa - (gpa % 4096), 4096, w.perms);
    } else {
      out.set(w.iovaBase, w.gpaBase, w.sizeBytes, w.perms);
    }
    iotlb.insertFrom(t.iotlbTag, iova, out);
    if (t.kind === K_SECOND_STAGE && w.leafLevel === 1 && this.prefetchPages > 0) this.prefetchAfter(t, w);
    if (VTD_TRACE.iotlbFill.enabled(this.tracer)) {
      const { iovaBase, gpaBase, sizeBytes, perms } = out;
      VTD_TRACE.iotlbFill(
        this.tracer,
        t.sourceId,
        t.domainId,
        t.pasid,
        iovaBase,
        gpaBase,
        sizeBytes,
        permsName(perms),
      );
    }
    if (inputWindow) clipToInputWindow(out, iova);
    return 0;
  }

  /** An untranslated request (VT-d 3.x) from endpoint key `key` while translation is enabled. */
  translateUntranslated(key: number, iova: number, access: Access, out: Translation): DmaFault | null {
    const t = this.lookupTarget(key);
    if (t === null)
      return this.faults.dmaFault(
        key,
        iova,
        access,
        this.lookupReason,
        this.lookupFpd,
        ADDRESS_TYPE.UNTRANSLATED,
      );
    if (!(Number.isSafeInteger(iova) && iova >= 0)) {
      // Addresses at or above 2^53 cannot be represented: an address-width fault (documented).
      return this.faults.dmaFault(
        key,
        iova,
        access,
        t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW,
        t.fpd,
        0,
      );
    }
    const reason = this.translateTarget(t, iova, access, out);
    if (reason !== 0)
      return this.faults.dmaFault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.UNTRANSLATED);
    return null;
  }

  /** A translated request: allowed through unchanged only where device-TLBs are enabled. */
  translateTranslated(sourceId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    const t = this.lookupTarget(sourceId);
    if (t === null) {
      return this.faults.dmaFault(
        sourceId,
        iova,
        access,
        this.lookupReason,
        this.lookupFpd,
        ADDRESS_TYPE.TRANSLATED,
      );
    }
    if (!t.atsAllowed) {
      const reason = t.scalable ? FR.SM_CONTEXT_DTE_CLEAR : FR.TRANSLATION_BLOCKED;
      return this.faults.dmaFault(sourceId, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (!(Number.isSafeInteger(iova) && iova >= 0)) {
      const reason = t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW;
      return this.faults.dmaFault(sourceId, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (iova >= INTERRUPT_BASE && iova <= INTERRUPT_LAST) {
      const reason = t.scalable ? FR.SM_INTERRUPT_ADDRESS : FR.INTERRUPT_ADDRESS;
      return this.faults.dmaFault(sourceId, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (iova < INTERRUPT_BASE) out.set(0, 0, INTERRUPT_BASE, RW);
    else out.set(INTERRUPT_LAST + 1, INTERRUPT_LAST + 1, MAX_ADDRESS - INTERRUPT_LAST, RW);
    return null;
  }

  /**
   * The completion of an ATS translation request for endpoint key `key` from an endpoint with a
   * device-TLB while translation is enabled (VT-d 4.2.3): context-level errors and blocked
   * translation types are recorded and answered Unsupported Request; malformed paging entries
   * are recorded and answered Completer Abort; a not-present or permission-limited page is a
   * successful completion with the permissions the tables give (0 when none), not a fault.
   */
  translationRequest(key: number, iova: number, write: boolean): AtsCompletion {
    const access: Access = write ? ACCESS_WRITE : 1;
    const t = this.lookupTarget(key);
    if (t === null) {
      const reason = this.lookupReason;
      this.faults.dmaFault(key, iova, access, reason, this.lookupFpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
      return { status: "unsupported-request", reason };
    }
    if (!t.atsAllowed) {
      const reason = t.scalable ? FR.SM_CONTEXT_DTE_CLEAR : FR.TRANSLATION_BLOCKED;
      this.faults.dmaFault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
      return { status: "unsupported-request", reason };
    }
    if (!(Number.isSafeInteger(iova) && iova >= 0)) {
      const reason = t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW;
      this.faults.dmaFault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
      return { status: "unsupported-request", reason };
    }
    const scratch = this.atsScratch;
    // Walk without demanding a permission: the completion reports what the page allows. A write
    // request walks for write first, so the first stage sets Dirty where it may.
    let reason = this.translateTarget(t, iova, write ? ACCESS_WRITE : 0, scratch);
    if (write && (reason === FR.WRITE_DENIED || reason === FR.SM_WRITE_DENIED)) {
      reason = this.translateTarget(t, iova, 0, scratch);
    }
    if (reason === 0) {
      return {
        status: "success",
        iovaBase: scratch.iovaBase,
        gpaBase: scratch.gpaBase,
        sizeBytes: scratch.sizeBytes,
        perms: scratch.perms,
      };
    }
    const notPresent =
      reason === FR.READ_DENIED ||
      reason === FR.WRITE_DENIED ||
      reason === FR.SM_SS_NOT_PRESENT ||
      reason === FR.SM_FS_NOT_PRESENT ||
      reason === FR.SM_READ_DENIED ||
      reason === FR.SM_USER_TO_SUPERVISOR ||
      reason === FR.INTERRUPT_ADDRESS ||
      reason === FR.SM_INTERRUPT_ADDRESS;
    if (notPresent) {
      const page = iova - (iova % 4096);
      return { status: "success", iovaBase: page, gpaBase: 0, sizeBytes: 4096, perms: 0 };
    }
    this.faults.dmaFault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
    const usr =
      reason === FR.ADDRESS_BEYOND_MGAW ||
      reason === FR.SM_ADDRESS_BEYOND_AW ||
      reason === FR.SM_NON_CANONICAL;
    return { status: usr ? "unsupported-request" : "completer-abort", reason };
  }
}
