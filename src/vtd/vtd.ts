/**
 * An emulated Intel VT-d remapping unit (DMA remapping, interrupt remapping, queued
 * invalidation, device-TLBs, caching mode) over the engine.
 *
 * The unit is a `DmaTranslator` for the endpoints added to it (each gets a `DmaAddressSpace`)
 * and an `IoHandler` for its 4 KiB register page (placed by the host, 0xFED90000 on q35).
 * Translation: target cache (context + PASID caches) -> engine IOTLB (tag = domain, PASID,
 * privilege) -> table walk on a miss. Every fault is recorded through the fault log with its
 * architected reason, unless an FPD bit on the path disabled recording.
 */
import {
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  type DmaFaultReason,
  dmaFault,
  MAX_ADDRESS,
  PERM_RW,
  PERM_WRITE,
  permsName,
} from "../engine/access.ts";
import { DmaAddressSpace } from "../engine/dma-space.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { HostIommu } from "../engine/host-iommu.ts";
import { HostNotifier, type HostNotifierStats } from "../engine/host-notifier.ts";
import { Iotlb, type IotlbStats } from "../engine/iotlb.ts";
import { Tracer } from "../engine/trace.ts";
import { type DmaTranslator, Translation } from "../engine/translation.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import {
  capRegister,
  DEFAULT_VTD_CONFIG,
  ecapRegister,
  MAMV,
  parseVtdConfig,
  type VtdConfig,
  validateVtdConfig,
} from "./config.ts";
import { FR, faultReasonName } from "./fault-reasons.ts";
import { ADDRESS_TYPE, type FaultInfo, FaultLog, type FaultStats } from "./faults.ts";
import { FirstStageWalker } from "./first-stage.ts";
import { HostReplay } from "./host-replay.ts";
import {
  INTERRUPT_WINDOW_BASE,
  INTERRUPT_WINDOW_LAST,
  InterruptRemapper,
  isInterruptAddress,
  type RemapResult,
  sourceIdsMatch,
} from "./interrupt-remap.ts";
import { GRAN, InvalidationQueue, type InvalidationTarget, type QueueStats } from "./invalidation-queue.ts";
import { NestedSecondStage } from "./nested-stage.ts";
import {
  ECTL,
  FSTS,
  GCMD,
  REG,
  REGISTER_FILE_BYTES,
  type RegisterDef,
  RegisterFile,
  registerLayout,
} from "./registers.ts";
import { SecondStageWalker, WALK, WalkOut } from "./second-stage.ts";
import { TableReader } from "./tables.ts";
import {
  decodeEndpointKey,
  endpointKey,
  TAG_CLASS,
  TARGET,
  type Target,
  TargetCache,
  TRANSLATED_KEY,
  tagClass,
  tagDomain,
  tagPasid,
} from "./target.ts";

// Imported bindings are read through accessors under tsx: the translation path uses copies.
const RW: number = PERM_RW;
const K_IDENTITY: number = TARGET.IDENTITY;
const K_SECOND_STAGE: number = TARGET.SECOND_STAGE;
const K_NESTED: number = TARGET.NESTED;
const WALK_OK: number = WALK.OK;
const TRANSLATED: number = TRANSLATED_KEY;
const IDENTITY_BLOCK = MAX_ADDRESS + 1;

/** The interrupt window: DMA whose output lands here faults (VT-d 3.14). */
const INTERRUPT_BASE: number = INTERRUPT_WINDOW_BASE;
const INTERRUPT_LAST: number = INTERRUPT_WINDOW_LAST;

/** An ATS-capable endpoint's device-TLB: told about every device-TLB invalidation aimed at it. */
export interface DeviceTlb {
  /** `pasid` is -1 for the request-without-PASID TLB; `allPasids` for a global PASID-based one. */
  invalidate(iova: number, sizeBytes: number, pasid: number, allPasids: boolean): void;
}

export interface EndpointOptions {
  /** The host IOMMU protecting an assigned device; needs caching-mode=on. */
  readonly host?: HostIommu;
  /** The endpoint's device-TLB (ATS); needs device-iotlb=on. */
  readonly ats?: DeviceTlb;
}

export interface VtdOptions {
  /** A configuration or a `key=value,...` string in QEMU's intel-iommu syntax. */
  readonly config?: VtdConfig | string;
  /** Receives the fault event and invalidation completion event messages. */
  readonly interrupts?: InterruptSink;
  /** Requester id the unit's own event messages carry (the unit is not a PCI function). */
  readonly unitSourceId?: number;
  readonly tracer?: Tracer;
  readonly iotlbCapacity?: number;
  /** Bound of the context/PASID (target) cache; reaching it drops the caches (default 65536). */
  readonly targetCacheCapacity?: number;
}

/** Answer to an ATS translation request (PCIe ATS 2.2 completion, VT-d 4.2.3). */
export type AtsCompletion =
  | {
      readonly status: "success";
      readonly iovaBase: number;
      readonly gpaBase: number;
      readonly sizeBytes: number;
      /** PERM_READ / PERM_WRITE the endpoint may cache; 0 means not present. */
      readonly perms: number;
    }
  | { readonly status: "unsupported-request" | "completer-abort"; readonly reason: number };

interface EndpointState {
  readonly sourceId: number;
  readonly dma: DmaAddressSpace;
  /** The host IOMMU of an assigned endpoint, kept in step by caching-mode replay. */
  readonly host: HostNotifier | null;
  readonly deviceTlb: DeviceTlb | null;
  deviceTlbInvalidations: number;
  /** A full host resync was requested and not yet run (coalesced, or over the batch budget). */
  resyncPending: boolean;
}

export interface VtdStats {
  readonly translations: number;
  readonly iotlbHits: number;
  readonly iotlbMisses: number;
  readonly iotlb: IotlbStats;
  readonly contextCache: {
    entries: number;
    hits: number;
    misses: number;
    invalidations: number;
    overflows: number;
  };
  readonly interruptEntryCache: { entries: number; hits: number; misses: number };
  readonly tableEntryReads: number;
  readonly dmaFaults: number;
  readonly faults: FaultStats;
  readonly queue: QueueStats;
  readonly registerInvalidations: number;
  readonly interruptsRemapped: number;
  readonly interruptFaults: number;
  readonly atsRequests: number;
  readonly deviceTlbInvalidations: number;
  readonly hosts: readonly VtdHostStats[];
  readonly hostResyncsDeferred: number;
}

/** One assigned endpoint's host propagation. */
export interface VtdHostStats extends HostNotifierStats {
  readonly sourceId: number;
}

function bdf(sourceId: number): string {
  const bus = (sourceId >> 8).toString(16).padStart(2, "0");
  const dev = ((sourceId >> 3) & 0x1f).toString(16).padStart(2, "0");
  return `${bus}:${dev}.${sourceId & 7}`;
}

/** Bytes a page-selective invalidation with address mask AM covers: 2^(12 + AM) (AM < 64). */
const ADDRESS_MASK_BYTES: readonly number[] = Array.from({ length: 64 }, (_, am) => 2 ** (12 + am));

/** IOTLB descriptors (type 2) cover second-stage and nested entries, not first-stage ones. */
function coveredByIotlbDescriptor(tag: number): boolean {
  return tagClass(tag) !== TAG_CLASS.FIRST_STAGE;
}

/** Narrows a block that spans the input interrupt window to the 4 KiB page holding `iova`. */
function clipToInputWindow(out: Translation, iova: number): void {
  if (out.iovaBase <= INTERRUPT_LAST && out.iovaBase + out.sizeBytes > INTERRUPT_BASE) {
    const offset = iova - (iova % 4096) - out.iovaBase;
    out.set(out.iovaBase + offset, out.gpaBase + offset, 4096, out.perms);
  }
}

function engineReason(code: number): DmaFaultReason {
  switch (code) {
    case FR.ROOT_NOT_PRESENT:
    case FR.CONTEXT_NOT_PRESENT:
    case FR.SM_ROOT_NOT_PRESENT:
    case FR.SM_CONTEXT_NOT_PRESENT:
    case FR.SM_PASID_DIR_NOT_PRESENT:
    case FR.SM_PASID_ENTRY_NOT_PRESENT:
    case FR.SM_SS_NOT_PRESENT:
    case FR.SM_FS_NOT_PRESENT:
      return "unmapped";
    case FR.WRITE_DENIED:
    case FR.READ_DENIED:
    case FR.SM_WRITE_DENIED:
    case FR.SM_READ_DENIED:
    case FR.SM_USER_TO_SUPERVISOR:
    case FR.SM_PASID_SRE_CLEAR:
      return "permission";
    case FR.ADDRESS_BEYOND_MGAW:
    case FR.SM_ADDRESS_BEYOND_AW:
    case FR.SM_NON_CANONICAL:
    case FR.INTERRUPT_ADDRESS:
    case FR.SM_INTERRUPT_ADDRESS:
      return "address-range";
    case FR.TRANSLATION_BLOCKED:
    case FR.SM_TTM0_WITH_PASID:
    case FR.SM_CONTEXT_PASIDE_CLEAR:
    case FR.SM_CONTEXT_DTE_CLEAR:
      return "blocked";
    default:
      return "bad-table";
  }
}

export class VtdUnit implements DmaTranslator, IoHandler, InvalidationTarget {
  readonly config: VtdConfig;
  readonly memory: GuestMemory;
  readonly tracer: Tracer;
  readonly regs: RegisterFile;
  readonly faults: FaultLog;
  readonly queue: InvalidationQueue;
  readonly interruptRemapper: InterruptRemapper;
  readonly iotlb: Iotlb;
  private readonly tables: TableReader;
  private readonly targets: TargetCache;
  private readonly secondStage: SecondStageWalker;
  private readonly firstStage: FirstStageWalker;
  private readonly interrupts: InterruptSink | null;
  private readonly unitSourceId: number;
  private readonly endpoints = new Map<number, EndpointState>();
  private readonly walkOut = new WalkOut();
  private readonly nestedStage: NestedSecondStage;
  private readonly atsScratch = new Translation();
  private ownEpoch = 0;
  private readonly replay: HostReplay;
  /** Latched by SRTP. */
  private rootTable = 0;
  private translationTableMode = 0;

  translations = 0;
  dmaFaults = 0;
  registerInvalidations = 0;
  atsRequests = 0;
  deviceTlbInvalidations = 0;

  constructor(memory: GuestMemory, options: VtdOptions = {}) {
    const c = options.config;
    this.config =
      c === undefined ? DEFAULT_VTD_CONFIG : typeof c === "string" ? parseVtdConfig(c) : validateVtdConfig(c);
    this.memory = memory;
    this.tracer = options.tracer ?? new Tracer();
    this.interrupts = options.interrupts ?? null;
    this.unitSourceId = options.unitSourceId ?? 0;
    this.regs = new RegisterFile(registerLayout(this.config), REGISTER_FILE_BYTES);
    this.regs.onWrite = (reg, index, written) => this.onRegisterWrite(reg, index, written);
    this.iotlb = new Iotlb(options.iotlbCapacity ?? 4096);
    this.tables = new TableReader(memory, this.config);
    this.targets = new TargetCache(this.tables, this.config, options.targetCacheCapacity);
    this.targets.onOverflow = () => {
      this.iotlb.invalidateAll();
      this.bumpEpoch();
    };
    const haw = this.config.awBits;
    this.secondStage = new SecondStageWalker(memory, {
      hawBits: haw,
      superpage2M: true,
      superpage1G: true,
      snoopControl: this.config.snoopControl,
    });
    this.firstStage = new FirstStageWalker(memory, { hawBits: haw, superpage1G: true });
    this.nestedStage = new NestedSecondStage(this.secondStage);
    this.replay = new HostReplay(
      memory,
      this.secondStage,
      this.firstStage,
      {
        translationEnabled: () => this.translationEnabled,
        targetOf: (sourceId) => this.lookupTarget(sourceId),
      },
      this.tracer,
    );
    this.faults = new FaultLog(this.regs, (a, d) => this.sendEvent(a, d), this.tracer);
    this.queue = new InvalidationQueue(
      this.regs,
      memory,
      this,
      {
        scalableModeSupported: this.config.scalableMode,
        deviceTlbSupported: this.config.deviceIotlb,
        interruptRemappingSupported: this.config.intremap,
        scalableModeActive: () => this.translationTableMode === 1,
        sendCompletionEvent: (a, d) => this.sendEvent(a, d),
        setFaultStatus: (bit) => this.faults.setStatus(bit),
        beginBatch: () => this.replay.beginBatch(this.endpoints.values()),
        endBatch: () => this.replay.endBatch(this.endpoints.values()),
        beforeWaitCompletion: () => this.replay.flush(this.endpoints.values()),
      },
      this.tracer,
    );
    this.interruptRemapper = new InterruptRemapper(
      memory,
      this.config.eim,
      (sid, reason, handle, _qualified, fpd) => this.recordInterruptFault(sid, reason, handle, fpd),
      this.tracer,
    );
    this.resetRegisters();
  }

  /**
   * Platform reset: registers to their power-on values (translation, queued invalidation and
   * interrupt remapping off), every cache emptied. Endpoints stay attached; assigned ones are
   * resynchronised (identity over RAM, as DMA is untranslated again).
   */
  reset(): void {
    this.resetRegisters();
    this.rootTable = 0;
    this.translationTableMode = 0;
    this.targets.clear();
    this.iotlb.invalidateAll();
    this.interruptRemapper.setTable(0, 0);
    this.faults.reset();
    this.bumpEpoch();
    if (this.tracer.on("config")) this.tracer.emit("config", "vtd", "reset", {});
    for (const ep of this.endpoints.values()) if (ep.host !== null) this.replay.resync(ep);
  }

  private resetRegisters(): void {
    const r = this.regs;
    r.values.fill(0);
    r.set32(REG.VER, this.config.scalableMode ? 0x30 : 0x10);
    r.set64(REG.CAP, capRegister(this.config));
    r.set64(REG.ECAP, ecapRegister(this.config));
    // Fault and invalidation event interrupts come out of reset masked (VT-d 11.4.7.x: IM default 1).
    r.set32(REG.FECTL, ECTL.IM);
    r.set32(REG.IECTL, ECTL.IM);
  }

  /** Model epoch: changes whenever a translation handed out may have become stale. */
  get epoch(): number {
    return this.iotlb.epoch + this.ownEpoch;
  }

  private get translationEnabled(): boolean {
    return (this.regs.get32(REG.GSTS) & GCMD.TE) !== 0;
  }

  private sendEvent(address: number, data: number): void {
    if (this.tracer.on("irq")) this.tracer.emit("irq", "vtd", "event-msi", { address, data });
    this.interrupts?.signalMsi(this.unitSourceId, { address, data }, 0);
  }

  // ---------------------------------------------------------------- endpoints

  /**
   * Adds the endpoint `sourceId` (its PCI BDF) and returns its DMA address space. An endpoint
   * backed by a host IOMMU needs caching mode; one with a device-TLB needs device-iotlb.
   */
  addEndpoint(sourceId: number, options: EndpointOptions = {}): DmaAddressSpace {
    if (!Number.isInteger(sourceId) || sourceId < 0 || sourceId > 0xffff) {
      throw new Error(`VT-d: source id ${sourceId} is not a 16-bit BDF`);
    }
    if (this.endpoints.has(sourceId)) throw new Error(`VT-d: endpoint ${bdf(sourceId)} added twice`);
    if (options.host !== undefined && !this.config.cachingMode) {
      throw new Error(
        `VT-d: endpoint ${bdf(sourceId)} is an assigned device behind a host IOMMU; the guest's mappings can only be ` +
          "shadowed to the host with caching mode: add caching-mode=on to the intel-iommu options",
      );
    }
    if (options.ats !== undefined && !this.config.deviceIotlb) {
      throw new Error(
        `VT-d: endpoint ${bdf(sourceId)} has a device-TLB (ATS): add device-iotlb=on to the intel-iommu options`,
      );
    }
    const dma = new DmaAddressSpace(this.memory, this, sourceId);
    const host =
      options.host === undefined
        ? null
        : new HostNotifier(options.host, { tracer: this.tracer, traceSource: "vtd", endpointId: sourceId });
    const ep: EndpointState = {
      sourceId,
      dma,
      host,
      deviceTlb: options.ats ?? null,
      deviceTlbInvalidations: 0,
      resyncPending: false,
    };
    this.endpoints.set(sourceId, ep);
    if (host !== null) this.replay.resync(ep);
    if (this.tracer.on("attach")) {
      this.tracer.emit("attach", "vtd", "endpoint", {
        sid: sourceId,
        host: host !== null,
        ats: ep.deviceTlb !== null,
      });
    }
    return dma;
  }

  /**
   * Removes an endpoint (hot-unplug): its host mappings are unmapped and its cached contexts
   * dropped. Address spaces handed out for it keep translating through the unit's tables but
   * no longer reach a host IOMMU or a device-TLB.
   */
  removeEndpoint(sourceId: number): boolean {
    const ep = this.endpoints.get(sourceId);
    if (ep === undefined) return false;
    this.endpoints.delete(sourceId);
    ep.host?.clear();
    this.targets.dropWhere((t) => t.sourceId === sourceId);
    this.bumpEpoch();
    if (this.tracer.on("attach")) this.tracer.emit("attach", "vtd", "endpoint-removed", { sid: sourceId });
    return true;
  }

  /** A DMA address space for requests with PASID `pasid` from an added endpoint (scalable mode). */
  pasidAddressSpace(sourceId: number, pasid: number, privileged = false): DmaAddressSpace {
    if (!this.endpoints.has(sourceId)) throw new Error(`VT-d: endpoint ${bdf(sourceId)} was not added`);
    if (!this.config.pasid) throw new Error("VT-d: requests with PASID need pasid=on (and scalable-mode=on)");
    if (!Number.isInteger(pasid) || pasid < 0 || pasid >= 2 ** 20)
      throw new Error(`VT-d: PASID ${pasid} is not 20-bit`);
    return new DmaAddressSpace(this.memory, this, endpointKey(sourceId, pasid, privileged));
  }

  /**
   * The address space for translated requests (AT=10b) from an endpoint with a device-TLB:
   * addresses it translated through `translationRequest`. VT-d 4.2.4: they pass untranslated
   * when the context allows device-TLBs (legacy TT=01, scalable DTE=1) and fault otherwise.
   */
  translatedAddressSpace(sourceId: number): DmaAddressSpace {
    const ep = this.endpoints.get(sourceId);
    if (ep === undefined || ep.deviceTlb === null) {
      throw new Error(`VT-d: endpoint ${bdf(sourceId)} has no device-TLB (add it with { ats })`);
    }
    return new DmaAddressSpace(this.memory, this, TRANSLATED_KEY + sourceId);
  }

  // ---------------------------------------------------------------- translation

  /** Why the last `lookupTarget` returned null, and whether an FPD bit on the path was set. */
  private lookupReason = 0;
  private lookupFpd = false;

  /** The cached or freshly resolved target of `key`; null with lookupReason/lookupFpd on a fault. */
  private lookupTarget(key: number): Target | null {
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

  private fault(
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
    if (fpd) this.faults.noteSuppressed(info);
    else this.faults.record(info);
    return dmaFault(engineReason(reason), key, iova, access, reason, faultReasonName(reason));
  }

  /** Maps a walk stop to the architected reason for the mode (VT-d 7.1.3). */
  private walkReason(t: Target, code: number, access: number): number {
    const write = (access & PERM_WRITE) !== 0;
    if (code === WALK.NESTED) return this.nestedStage.reason;
    if (t.kind === TARGET.FIRST_STAGE || t.kind === TARGET.NESTED) {
      switch (code) {
        case WALK.ACCESS:
          return FR.SM_FS_ACCESS;
        case WALK.NOT_PRESENT:
          return FR.SM_FS_NOT_PRESENT;
        case WALK.RESERVED:
          return FR.SM_FS_RESERVED;
        case WALK.ROOT_INVALID:
          return FR.SM_FS_ROOT_ACCESS;
        case WALK.NON_CANONICAL:
          return FR.SM_NON_CANONICAL;
        case WALK.USER_SUPERVISOR:
          return FR.SM_USER_TO_SUPERVISOR;
        default:
          return write ? FR.SM_WRITE_DENIED : FR.SM_READ_DENIED;
      }
    }
    if (t.scalable) {
      switch (code) {
        case WALK.ACCESS:
          return FR.SM_SS_ACCESS;
        case WALK.NOT_PRESENT:
          return FR.SM_SS_NOT_PRESENT;
        case WALK.RESERVED:
          return FR.SM_SS_RESERVED;
        case WALK.ROOT_INVALID:
          return FR.SM_SS_ROOT_INVALID;
        default:
          return write ? FR.SM_WRITE_DENIED : FR.SM_READ_DENIED;
      }
    }
    switch (code) {
      case WALK.ACCESS:
        return FR.PAGING_ENTRY_ACCESS;
      case WALK.RESERVED:
        return FR.PAGING_ENTRY_RESERVED;
      case WALK.ROOT_INVALID:
        return FR.CONTEXT_INVALID;
      default:
        // Legacy second stage has no "not present": R=W=0 denies the access (VT-d 3.7.1).
        return write ? FR.WRITE_DENIED : FR.READ_DENIED;
    }
  }

  /**
   * Translates for target `t` into `out`; 0 on success, else the fault reason. `access` 0
   * demands no permission (ATS: the completion reports what the page allows).
   */
  private translateTarget(t: Target, iova: number, access: number, out: Translation): number {
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
    if (this.tracer.on("map")) {
      this.tracer.emit("map", "vtd", "iotlb-fill", {
        sid: t.sourceId,
        did: t.domainId,
        pasid: t.pasid,
        iova: out.iovaBase,
        gpa: out.gpaBase,
        size: out.sizeBytes,
        perms: permsName(out.perms),
      });
    }
    if (inputWindow) clipToInputWindow(out, iova);
    return 0;
  }

  /** DmaTranslator: translates an untranslated DMA request (VT-d 3.x), recording faults. */
  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.translations++;
    if (!this.translationEnabled) {
      out.set(0, 0, IDENTITY_BLOCK, RW);
      return null;
    }
    if (endpointId >= TRANSLATED) return this.translateTranslated(endpointId - TRANSLATED, iova, access, out);
    const key = endpointId;
    const t = this.lookupTarget(key);
    if (t === null)
      return this.fault(key, iova, access, this.lookupReason, this.lookupFpd, ADDRESS_TYPE.UNTRANSLATED);
    if (!(Number.isSafeInteger(iova) && iova >= 0)) {
      // Addresses at or above 2^53 cannot be represented: an address-width fault (documented).
      return this.fault(
        key,
        iova,
        access,
        t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW,
        t.fpd,
        0,
      );
    }
    const reason = this.translateTarget(t, iova, access, out);
    if (reason !== 0) return this.fault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.UNTRANSLATED);
    return null;
  }

  /** A translated request: allowed through unchanged only where device-TLBs are enabled. */
  private translateTranslated(
    sourceId: number,
    iova: number,
    access: Access,
    out: Translation,
  ): DmaFault | null {
    const t = this.lookupTarget(sourceId);
    if (t === null) {
      return this.fault(sourceId, iova, access, this.lookupReason, this.lookupFpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (!t.atsAllowed) {
      const reason = t.scalable ? FR.SM_CONTEXT_DTE_CLEAR : FR.TRANSLATION_BLOCKED;
      return this.fault(sourceId, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (!(Number.isSafeInteger(iova) && iova >= 0)) {
      const reason = t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW;
      return this.fault(sourceId, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (iova >= INTERRUPT_BASE && iova <= INTERRUPT_LAST) {
      const reason = t.scalable ? FR.SM_INTERRUPT_ADDRESS : FR.INTERRUPT_ADDRESS;
      return this.fault(sourceId, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATED);
    }
    if (iova < INTERRUPT_BASE) out.set(0, 0, INTERRUPT_BASE, RW);
    else out.set(INTERRUPT_LAST + 1, INTERRUPT_LAST + 1, MAX_ADDRESS - INTERRUPT_LAST, RW);
    return null;
  }

  // ---------------------------------------------------------------- ATS

  /**
   * An ATS translation request from `sourceId` (VT-d 4.2.3). Context-level errors and blocked
   * translation types are recorded and answered Unsupported Request; malformed paging entries
   * are recorded and answered Completer Abort; a not-present or permission-limited page is a
   * successful completion with the permissions the tables give (0 when none), not a fault.
   */
  translationRequest(
    sourceId: number,
    iova: number,
    write: boolean,
    pasid = -1,
    privileged = false,
  ): AtsCompletion {
    this.atsRequests++;
    const ep = this.endpoints.get(sourceId);
    const access: Access = write ? ACCESS_WRITE : 1;
    if (ep === undefined || ep.deviceTlb === null || !this.translationEnabled) {
      return { status: "unsupported-request", reason: FR.TRANSLATION_BLOCKED };
    }
    if (pasid !== -1 && !(Number.isInteger(pasid) && pasid >= 0 && pasid < 2 ** 20)) {
      return { status: "unsupported-request", reason: FR.SM_PASID_OVER_PDTS };
    }
    const key = endpointKey(sourceId, pasid, privileged);
    const t = this.lookupTarget(key);
    if (t === null) {
      const reason = this.lookupReason;
      this.fault(key, iova, access, reason, this.lookupFpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
      return { status: "unsupported-request", reason };
    }
    if (!t.atsAllowed) {
      const reason = t.scalable ? FR.SM_CONTEXT_DTE_CLEAR : FR.TRANSLATION_BLOCKED;
      this.fault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
      return { status: "unsupported-request", reason };
    }
    if (!(Number.isSafeInteger(iova) && iova >= 0)) {
      const reason = t.scalable ? FR.SM_ADDRESS_BEYOND_AW : FR.ADDRESS_BEYOND_MGAW;
      this.fault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
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
    this.fault(key, iova, access, reason, t.fpd, ADDRESS_TYPE.TRANSLATION_REQUEST);
    const usr =
      reason === FR.ADDRESS_BEYOND_MGAW ||
      reason === FR.SM_ADDRESS_BEYOND_AW ||
      reason === FR.SM_NON_CANONICAL;
    return { status: usr ? "unsupported-request" : "completer-abort", reason };
  }

  // ---------------------------------------------------------------- interrupt remapping

  /**
   * Remaps an interrupt request (an MSI write, or an IOAPIC message with the IOAPIC's source
   * id from the DMAR device scope). Returns the message to deliver, or the fault (recorded).
   */
  remap(sourceId: number, msiAddress: number, msiData: number): RemapResult {
    if (!this.config.intremap)
      return { ok: true, remapped: false, interrupt: null, message: { address: msiAddress, data: msiData } };
    if (!(Number.isSafeInteger(msiAddress) && msiAddress >= 0 && Number.isInteger(msiData))) {
      return {
        ok: false,
        reason: FR.IR_REQUEST_RESERVED,
        detail: "message address or data not representable",
      };
    }
    const gsts = this.regs.get32(REG.GSTS);
    if ((gsts & GCMD.IRE) !== 0 && !isInterruptAddress(msiAddress % 0x1_0000_0000)) {
      return { ok: false, reason: FR.IR_REQUEST_RESERVED, detail: "not an interrupt address" };
    }
    return this.interruptRemapper.remap(
      sourceId & 0xffff,
      msiAddress,
      msiData >>> 0,
      (gsts & GCMD.IRE) !== 0,
      (gsts & GCMD.CFI) !== 0,
    );
  }

  private recordInterruptFault(sourceId: number, reason: number, handle: number, fpd: boolean): void {
    const info: FaultInfo = {
      sourceId,
      reason,
      address: BigInt(handle & 0xffff) << 48n,
      write: true,
      pasid: -1,
      privileged: false,
      addressType: 0,
    };
    if (fpd && (reason === FR.IR_NOT_PRESENT || reason === FR.IR_SOURCE_ID)) this.faults.noteSuppressed(info);
    else this.faults.record(info);
  }

  // ---------------------------------------------------------------- invalidation (InvalidationTarget)

  private bumpEpoch(): void {
    this.ownEpoch++;
  }

  /** Callers check `tracer.on("invalidate")` first, so no event object is built when off. */
  private traceInvalidate(name: string, fields: Record<string, number | string | boolean>): void {
    this.tracer.emit("invalidate", "vtd", name, fields);
  }

  invalidateContextCache(
    granularity: number,
    domainId: number,
    sourceId: number,
    functionMask: number,
  ): void {
    if (this.tracer.on("invalidate"))
      this.traceInvalidate("context-cache", { granularity, did: domainId, sid: sourceId, fm: functionMask });
    let affected: (sid: number) => boolean;
    if (granularity === GRAN.GLOBAL) {
      this.targets.clear();
      affected = () => true;
    } else if (granularity === GRAN.DOMAIN) {
      // Scalable-mode context entries carry no domain id: drop every scalable target.
      this.targets.dropWhere((t) => t.scalable || t.domainId === domainId);
      affected = () => true;
    } else {
      const match = (sid: number) => sourceIdsMatch(sid, sourceId, functionMask);
      this.targets.dropWhere((t) => match(t.sourceId));
      affected = match;
    }
    this.bumpEpoch();
    for (const ep of this.endpoints.values())
      if (ep.host !== null && affected(ep.sourceId)) this.replay.resync(ep);
  }

  /**
   * IOTLB invalidation (register or descriptor type 2, VT-d 6.5.2.4): global drops everything;
   * domain- and page-selective drop the domain's second-stage and nested entries (in scalable
   * mode first-stage entries are left to PASID-based invalidation).
   */
  invalidateIotlb(granularity: number, domainId: number, iova: number, addressMask: number): void {
    if (this.tracer.on("invalidate"))
      this.traceInvalidate("iotlb", { granularity, did: domainId, iova, am: addressMask });
    if (granularity === GRAN.GLOBAL) {
      this.iotlb.invalidateAll();
      for (const ep of this.endpoints.values()) if (ep.host !== null) this.replay.resync(ep);
      return;
    }
    if (granularity === GRAN.DOMAIN) {
      this.iotlb.invalidateTags((tag) => tagDomain(tag) === domainId && coveredByIotlbDescriptor(tag));
      for (const ep of this.endpoints.values()) {
        if (this.hostTargetKind(ep, domainId) === TARGET.SECOND_STAGE) this.replay.resync(ep);
      }
      return;
    }
    const sizeBytes = ADDRESS_MASK_BYTES[addressMask];
    const base = iova - (iova % sizeBytes);
    const tags = this.targets.domainTags.get(domainId);
    if (tags !== undefined) {
      for (const tag of tags)
        if (coveredByIotlbDescriptor(tag)) this.iotlb.invalidateRange(tag, base, sizeBytes);
    }
    this.bumpEpoch();
    for (const ep of this.endpoints.values()) {
      if (this.hostTargetKind(ep, domainId) === TARGET.SECOND_STAGE)
        this.replay.syncRange(ep, base, base + sizeBytes - 1);
    }
  }

  /**
   * PASID-based IOTLB invalidation (descriptor type 6, VT-d 6.5.2.6): the first-stage and
   * nested entries of one domain and PASID, all of them or a page range.
   */
  invalidatePasidIotlb(
    pageSelective: boolean,
    domainId: number,
    pasid: number,
    iova: number,
    addressMask: number,
  ): void {
    if (this.tracer.on("invalidate"))
      this.traceInvalidate("pasid-iotlb", { pageSelective, did: domainId, pasid, iova, am: addressMask });
    const tags = this.targets.domainTags.get(domainId);
    const sizeBytes = ADDRESS_MASK_BYTES[addressMask];
    const base = iova - (iova % sizeBytes);
    if (tags !== undefined) {
      for (const tag of tags) {
        if (tagPasid(tag) !== pasid || tagClass(tag) === TAG_CLASS.SECOND_STAGE) continue;
        if (pageSelective) this.iotlb.invalidateRange(tag, base, sizeBytes);
        else this.iotlb.invalidateSpace(tag);
      }
    }
    this.bumpEpoch();
    for (const ep of this.endpoints.values()) {
      if (this.hostTargetKind(ep, domainId) !== TARGET.FIRST_STAGE) continue;
      const t = this.targets.get(ep.sourceId);
      if (t !== undefined && t.pasid !== pasid) continue;
      if (pageSelective) this.replay.syncRange(ep, base, base + sizeBytes - 1);
      else this.replay.resync(ep);
    }
  }

  invalidatePasidCache(granularity: number, domainId: number, pasid: number): void {
    if (this.tracer.on("invalidate"))
      this.traceInvalidate("pasid-cache", { granularity, did: domainId, pasid });
    if (granularity === 3) this.targets.dropWhere((t) => t.scalable);
    else if (granularity === 0) this.targets.dropWhere((t) => t.scalable && t.domainId === domainId);
    else this.targets.dropWhere((t) => t.scalable && t.domainId === domainId && t.pasid === pasid);
    this.bumpEpoch();
    for (const ep of this.endpoints.values()) if (ep.host !== null) this.replay.resync(ep);
  }

  invalidateDeviceTlb(
    sourceId: number,
    pasid: number,
    allPasids: boolean,
    iova: number,
    sizeBytes: number,
  ): void {
    if (this.tracer.on("invalidate"))
      this.traceInvalidate("device-tlb", { sid: sourceId, pasid, all: allPasids, iova, size: sizeBytes });
    this.deviceTlbInvalidations++;
    const ep = this.endpoints.get(sourceId);
    if (ep === undefined || ep.deviceTlb === null) return;
    ep.deviceTlbInvalidations++;
    ep.deviceTlb.invalidate(iova, sizeBytes, pasid, allPasids);
  }

  invalidateInterruptEntryCache(global: boolean, index: number, indexMask: number): void {
    if (this.tracer.on("invalidate")) this.traceInvalidate("iec", { global, index, im: indexMask });
    this.interruptRemapper.invalidate(global, index, indexMask);
  }

  // ---------------------------------------------------------------- caching mode (host shadow)

  /** The kind of an assigned endpoint's current target when it is in `domainId`, else -1. */
  private hostTargetKind(ep: EndpointState, domainId: number): number {
    if (ep.host === null || !this.translationEnabled) return -1;
    const t = this.lookupTarget(ep.sourceId);
    return t === null || t.domainId !== domainId ? -1 : t.kind;
  }

  // ---------------------------------------------------------------- registers

  private onRegisterWrite(reg: RegisterDef, index: number, written: number): void {
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
        this.faults.refresh();
        // Clearing IQE resumes fetching at IQH (VT-d 6.5.2.10), if the queue is enabled.
        if (written & FSTS.IQE && (this.regs.get32(REG.GSTS) & GCMD.QIE) !== 0) this.queue.process();
        return;
      case "FECTL":
        this.faults.onFectlWrite();
        return;
      case "IQT":
        if (offset === REG.IQT && (this.regs.get32(REG.GSTS) & GCMD.QIE) !== 0) this.queue.process();
        return;
      case "ICS":
        this.queue.onIcsWrite();
        return;
      case "IECTL":
        this.queue.onIectlWrite();
        return;
      case "PMEN": {
        // No protected regions are reported (CAP.PLMR = PHMR = 0): PRS follows EPM, nothing else.
        const pmen = this.regs.get32(REG.PMEN);
        this.regs.set32(REG.PMEN, (pmen & 0x80000000) !== 0 ? pmen | 1 : pmen & ~1);
        return;
      }
      default:
        if (reg.name.startsWith("FRCD")) this.faults.refresh();
    }
  }

  /** GCMD_REG write (VT-d 11.4.4): persistent enables and one-shot commands. */
  private globalCommand(value: number): void {
    const r = this.regs;
    let gsts = r.get32(REG.GSTS);
    const before = gsts;
    const c = this.config;
    if (value & GCMD.SRTP && c.dmaTranslation) {
      const lo = r.get32(REG.RTADDR);
      this.rootTable = r.getHi(REG.RTADDR) * 0x1_0000_0000 + ((lo & 0xfffff000) >>> 0);
      this.translationTableMode = (lo >>> 10) & 3;
      // Setting the root table pointer empties every translation cache (as CAP.ESRTPS units do;
      // software's own global invalidations then find nothing stale).
      this.targets.clear();
      this.iotlb.invalidateAll();
      this.bumpEpoch();
      gsts |= GCMD.SRTP;
      if (this.tracer.on("invalidate"))
        this.traceInvalidate("srtp", { root: this.rootTable, ttm: this.translationTableMode });
    }
    const te = (value & GCMD.TE) !== 0 && c.dmaTranslation;
    if (te !== ((gsts & GCMD.TE) !== 0)) {
      gsts = te ? gsts | GCMD.TE : gsts & ~GCMD.TE;
      this.bumpEpoch();
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
        this.interruptRemapper.setTable(r.get32(REG.IRTA), r.getHi(REG.IRTA));
        gsts |= GCMD.SIRTP;
      }
      gsts = value & GCMD.IRE ? gsts | GCMD.IRE : gsts & ~GCMD.IRE;
      gsts = value & GCMD.CFI ? gsts | GCMD.CFI : gsts & ~GCMD.CFI;
    }
    r.set32(REG.GSTS, gsts >>> 0);
    if (gsts !== before && this.tracer.on("config")) {
      this.tracer.emit("config", "vtd", "gsts", {
        before: before >>> 0,
        after: gsts >>> 0,
        command: value >>> 0,
      });
    }
    if ((gsts & GCMD.QIE) !== 0 && !qiWasOn) this.queue.process();
    if ((before ^ gsts) & GCMD.TE || value & GCMD.SRTP) {
      for (const ep of this.endpoints.values()) if (ep.host !== null) this.replay.resync(ep);
    }
  }

  /** CCMD_REG with ICC set (VT-d 6.5.1.1, 11.4.6.1). */
  private contextCommand(): void {
    const r = this.regs;
    let hi = r.getHi(REG.CCMD);
    if ((hi & 0x80000000) === 0) return;
    const lo = r.get32(REG.CCMD);
    const cirg = (hi >>> 29) & 3;
    let caig = 0;
    // Register-based invalidation is not used while queued invalidation is enabled (6.5.2).
    if ((r.get32(REG.GSTS) & GCMD.QIE) === 0 && cirg !== 0) {
      this.registerInvalidations++;
      this.invalidateContextCache(cirg, lo & 0xffff, lo >>> 16, hi & 3);
      caig = cirg;
    }
    hi = (hi & ~0x98000000) | (caig << 27);
    r.setHi(REG.CCMD, hi >>> 0);
  }

  /** IOTLB_REG with IVT set (VT-d 6.5.1.2, 11.4.8.1); IVA_REG gives the page range. */
  private iotlbCommand(): void {
    const r = this.regs;
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
      this.invalidateIotlb(
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

  // ---------------------------------------------------------------- IoHandler

  /**
   * Accesses must be naturally aligned, except that an 8-byte access at a 4-byte boundary covers
   * the two dwords there (older Linux reads GSTS at 0x1C with readq).
   */
  private static aligned(offset: number, sizeBytes: number): boolean {
    return (
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset + sizeBytes <= REGISTER_FILE_BYTES &&
      offset % (sizeBytes === 8 ? 4 : sizeBytes) === 0
    );
  }

  read(offset: number, sizeBytes: AccessSize): number {
    if (!VtdUnit.aligned(offset, sizeBytes)) return 0;
    const index = offset >> 2;
    if (sizeBytes === 8) return this.regs.readDword(index + 1) * 0x1_0000_0000 + this.regs.readDword(index);
    const dword = this.regs.readDword(index);
    if (sizeBytes === 4) return dword;
    const shift = (offset & 3) * 8;
    return sizeBytes === 2 ? (dword >>> shift) & 0xffff : (dword >>> shift) & 0xff;
  }

  /** Exact 64-bit read (CAP, ECAP and others carry bits above 2^53). */
  readWide(offset: number): bigint {
    if (!VtdUnit.aligned(offset, 8)) return 0n;
    const index = offset >> 2;
    return (BigInt(this.regs.readDword(index + 1)) << 32n) | BigInt(this.regs.readDword(index));
  }

  /**
   * 4- and 8-byte writes (the only sizes VT-d defines, 11.1); 1- and 2-byte writes are ignored.
   * An 8-byte `number` above 2^53 has lost its low bits: hosts use `writeWide` for those.
   */
  write(offset: number, sizeBytes: AccessSize, value: number): void {
    if (!VtdUnit.aligned(offset, sizeBytes) || !Number.isFinite(value)) return;
    const index = offset >> 2;
    if (sizeBytes === 4) this.regs.writeDword(index, value >>> 0);
    else if (sizeBytes === 8)
      this.regs.writeQword(index, (value % 0x1_0000_0000) >>> 0, Math.floor(value / 0x1_0000_0000) >>> 0);
  }

  /** Exact 64-bit write. */
  writeWide(offset: number, value: bigint): void {
    if (!VtdUnit.aligned(offset, 8)) return;
    const v = BigInt.asUintN(64, value);
    this.regs.writeQword(offset >> 2, Number(v & 0xffffffffn), Number(v >> 32n));
  }

  // ---------------------------------------------------------------- observability

  /** The unit's state in a few lines (GSTS, tables, queue, faults, caches), for logs. */
  describe(): string[] {
    const r = this.regs;
    const gsts = r.get32(REG.GSTS);
    const on = (bit: number, name: string) => (gsts & bit ? name : `-${name.toLowerCase()}`);
    const hex = (n: number) => `0x${n.toString(16)}`;
    const st = this.stats();
    const iqa = r.getSafe64(REG.IQA);
    const irta = r.getSafe64(REG.IRTA);
    const lines = [
      `vt-d ${this.config.scalableMode ? "scalable-capable" : "legacy"} aw=${this.config.awBits}: ` +
        [on(GCMD.TE, "TE"), on(GCMD.QIE, "QIE"), on(GCMD.IRE, "IRE"), on(GCMD.CFI, "CFI")].join(" "),
      `root table ${hex(this.rootTable)} (${["legacy", "scalable", "reserved TTM", "abort TTM"][this.translationTableMode]})`,
      `invalidation queue ${hex(iqa - (iqa % 4096))} head ${hex(r.get32(REG.IQH))} tail ${hex(r.get32(REG.IQT))}` +
        `${r.get32(REG.FSTS) & FSTS.IQE ? ` stopped (IQEI ${r.get32(REG.IQERCD) & 0xf})` : ""}`,
      `fault status ${hex(r.get32(REG.FSTS))}, ${st.faults.recorded} recorded, ${st.faults.suppressedByFpd} suppressed, ${st.faults.droppedOverflow} dropped`,
      `caches: ${st.contextCache.entries} contexts, ${st.iotlb.entries} IOTLB entries (${st.iotlbHits} hits / ${st.iotlbMisses} misses), ${st.interruptEntryCache.entries} IRTEs`,
    ];
    if (this.config.intremap) {
      lines.push(
        `interrupt remapping table ${hex(irta - (irta % 4096))}, ${this.interruptRemapper.tableEntries} entries${this.interruptRemapper.extendedMode ? ", x2APIC" : ""}`,
      );
    }
    return lines;
  }

  stats(): VtdStats {
    const io = this.iotlb.stats();
    const hosts: VtdHostStats[] = [];
    for (const ep of this.endpoints.values())
      if (ep.host !== null) hosts.push({ sourceId: ep.sourceId, ...ep.host.stats() });
    return {
      translations: this.translations,
      iotlbHits: io.hits,
      iotlbMisses: io.misses,
      iotlb: io,
      contextCache: {
        overflows: this.targets.overflows,
        entries: this.targets.size,
        hits: this.targets.hits,
        misses: this.targets.misses,
        invalidations: this.targets.invalidations,
      },
      interruptEntryCache: {
        entries: this.interruptRemapper.cachedEntries,
        hits: this.interruptRemapper.cacheHits,
        misses: this.interruptRemapper.cacheMisses,
      },
      tableEntryReads: this.tables.entryReads + this.secondStage.entryReads + this.firstStage.entryReads,
      dmaFaults: this.dmaFaults,
      faults: this.faults.stats(),
      queue: this.queue.stats(),
      registerInvalidations: this.registerInvalidations,
      interruptsRemapped: this.interruptRemapper.remapped,
      interruptFaults: this.interruptRemapper.faults,
      atsRequests: this.atsRequests,
      deviceTlbInvalidations: this.deviceTlbInvalidations,
      hosts,
      hostResyncsDeferred: this.replay.deferred,
    };
  }
}
