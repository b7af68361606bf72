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
import { type Access, type DmaFault, MAX_ADDRESS, PERM_RW } from "../engine/access.ts";
import { DmaAddressSpace } from "../engine/dma-space.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import { HostNotifier } from "../engine/host-notifier.ts";
import { Iotlb } from "../engine/iotlb.ts";
import { Tracer } from "../engine/trace.ts";
import type { DmaTranslator, Translation } from "../engine/translation.ts";
import type { PluggedState, ViommuModel } from "../framework/model.ts";
import { ViommuRegistry } from "../framework/registry.ts";
import type { Endpoint, ViommuInstance } from "../framework/viommu.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import {
  capRegister,
  DEFAULT_VTD_CONFIG,
  ecapRegister,
  parseVtdConfig,
  type VtdConfig,
  validateVtdConfig,
} from "./config.ts";
import { FR } from "./fault-reasons.ts";
import { FaultLog } from "./faults.ts";
import { FirstStageWalker } from "./first-stage.ts";
import { HostReplay } from "./host-replay.ts";
import {
  INTERRUPT_WINDOW_BASE,
  INTERRUPT_WINDOW_LAST,
  InterruptRemapper,
  isInterruptAddress,
  type RemapResult,
} from "./interrupt-remap.ts";
import { InvalidationQueue } from "./invalidation-queue.ts";
import { CacheInvalidation } from "./invalidations.ts";
import { NestedSecondStage } from "./nested-stage.ts";
import {
  type AtsCompletion,
  type EndpointOptions,
  type EndpointState,
  IOTLB_PREFETCH_PAGES,
  type VtdHostStats,
  type VtdOptions,
  type VtdStats,
} from "./options.ts";
import { RegisterCommands } from "./register-commands.ts";
import {
  ECTL,
  FSTS,
  GCMD,
  REG,
  REGISTER_FILE_BYTES,
  RegisterFile,
  readRegisters,
  readRegistersWide,
  registerLayout,
  writeRegisters,
  writeRegistersWide,
} from "./registers.ts";
import { SecondStageWalker, WALK } from "./second-stage.ts";
import { TableReader } from "./tables.ts";
import { endpointKey, TARGET, TargetCache, TRANSLATED_KEY } from "./target.ts";
import { VTD_TRACE } from "./trace-points.ts";
import { TargetTranslator } from "./translate.ts";

export type {
  AtsCompletion,
  DeviceTlb,
  EndpointOptions,
  VtdHostStats,
  VtdOptions,
  VtdStats,
} from "./options.ts";
export { IOTLB_PREFETCH_PAGES } from "./options.ts";

// Imported bindings are read through accessors under tsx: the translation path uses copies.
const RW: number = PERM_RW;
const _K_IDENTITY: number = TARGET.IDENTITY;
const _K_SECOND_STAGE: number = TARGET.SECOND_STAGE;
const _K_NESTED: number = TARGET.NESTED;
const _WALK_OK: number = WALK.OK;
const TRANSLATED: number = TRANSLATED_KEY;
const IDENTITY_BLOCK = MAX_ADDRESS + 1;

/** The interrupt window: DMA whose output lands here faults (VT-d 3.14). */
const INTERRUPT_BASE: number = INTERRUPT_WINDOW_BASE;
const INTERRUPT_LAST: number = INTERRUPT_WINDOW_LAST;

function bdf(sourceId: number): string {
  const bus = (sourceId >> 8).toString(16).padStart(2, "0");
  const dev = ((sourceId >> 3) & 0x1f).toString(16).padStart(2, "0");
  return `${bus}:${dev}.${sourceId & 7}`;
}

/** Narrows a block that spans the input interrupt window to the 4 KiB page holding `iova`. */
function _clipToInputWindow(out: Translation, iova: number): void {
  if (out.iovaBase <= INTERRUPT_LAST && out.iovaBase + out.sizeBytes > INTERRUPT_BASE) {
    const offset = iova - (iova % 4096) - out.iovaBase;
    out.set(out.iovaBase + offset, out.gpaBase + offset, 4096, out.perms);
  }
}

/**
 * The VT-d model, and its backend of the generic vIOMMU layer: the endpoint table is the
 * `viommu` instance's, whose state per endpoint is an `EndpointState` (options.ts).
 */
export class VtdUnit implements DmaTranslator, IoHandler, ViommuModel<EndpointState, EndpointOptions> {
  readonly modelName = "vt-d";
  readonly config: VtdConfig;
  /** The guest's vIOMMU in the framework's registry: plug and unplug endpoints there. */
  readonly viommu: ViommuInstance<EndpointState, EndpointOptions>;
  readonly memory: GuestMemory;
  readonly tracer: Tracer;
  readonly regs: RegisterFile;
  readonly faults: FaultLog;
  readonly queue: InvalidationQueue;
  readonly interruptRemapper: InterruptRemapper;
  readonly iotlb: Iotlb;
  /** What each cache invalidation drops (invalidations.ts). */
  readonly invalidation: CacheInvalidation;
  private readonly commands: RegisterCommands;
  private readonly tables: TableReader;
  private readonly targets: TargetCache;
  private readonly secondStage: SecondStageWalker;
  private readonly firstStage: FirstStageWalker;
  private readonly interrupts: InterruptSink | null;
  private readonly unitSourceId: number;
  /** The framework's endpoint table (`viommu.states`), read-only here. */
  private readonly endpoints: ReadonlyMap<number, EndpointState>;
  /** Targets, IOTLB and walks (translate.ts). */
  private readonly translator: TargetTranslator;
  private ownEpoch = 0;
  private readonly replay: HostReplay;

  translations = 0;
  atsRequests = 0;

  // The constructor is long because it only wires the unit's collaborators to each other (each
  // gets the callbacks it needs); there is no logic in it to split out.
  // biome-ignore lint/complexity/noExcessiveLinesPerFunction: wiring only, see above
  constructor(memory: GuestMemory, options: VtdOptions = {}) {
    const c = options.config;
    this.config =
      c === undefined ? DEFAULT_VTD_CONFIG : typeof c === "string" ? parseVtdConfig(c) : validateVtdConfig(c);
    this.memory = memory;
    this.viommu =
      options.viommu ?? ViommuRegistry.single<EndpointState, EndpointOptions>("vt-d", 16).instance;
    this.endpoints = this.viommu.states;
    this.tracer = options.tracer ?? new Tracer();
    this.interrupts = options.interrupts ?? null;
    this.unitSourceId = options.unitSourceId ?? 0;
    this.regs = new RegisterFile(registerLayout(this.config), REGISTER_FILE_BYTES);
    this.regs.onWrite = (reg, index, written) => this.commands.onWrite(reg, index, written);
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
    this.replay = new HostReplay(
      memory,
      this.secondStage,
      this.firstStage,
      {
        translationEnabled: () => this.translationEnabled,
        targetOf: (sourceId) => this.translator.lookupTarget(sourceId),
      },
      this.tracer,
    );
    this.faults = new FaultLog(this.regs, (a, d) => this.sendEvent(a, d), this.tracer);
    this.faults.onGuestDmaFault = (sourceId, f) => this.viommu.guestFaultOf(sourceId, f);
    const walkers = {
      secondStage: this.secondStage,
      firstStage: this.firstStage,
      nestedStage: new NestedSecondStage(this.secondStage),
    };
    const prefetch = options.iotlbPrefetchPages ?? IOTLB_PREFETCH_PAGES;
    if (!Number.isInteger(prefetch) || prefetch < 0 || prefetch > 511) {
      throw new RangeError(`iotlbPrefetchPages must be an integer in [0, 511], got ${prefetch}`);
    }
    this.translator = new TargetTranslator(this.targets, this.iotlb, walkers, this.faults, this.tracer);
    this.translator.prefetchPages = prefetch;
    this.interruptRemapper = new InterruptRemapper(
      memory,
      this.config.eim,
      (sid, reason, handle, _qualified, fpd) => this.faults.recordInterrupt(sid, reason, handle, fpd),
      this.tracer,
    );
    this.invalidation = new CacheInvalidation({
      tracer: this.tracer,
      targets: this.targets,
      iotlb: this.iotlb,
      interruptRemapper: this.interruptRemapper,
      endpoints: this.endpoints,
      replay: this.replay,
      bumpEpoch: () => this.bumpEpoch(),
      hostTargetKind: (ep, domainId) => this.hostTargetKind(ep, domainId),
    });
    this.queue = new InvalidationQueue(
      this.regs,
      memory,
      this.invalidation,
      {
        scalableModeSupported: this.config.scalableMode,
        deviceTlbSupported: this.config.deviceIotlb,
        interruptRemappingSupported: this.config.intremap,
        scalableModeActive: () => this.translator.translationTableMode === 1,
        sendCompletionEvent: (a, d) => this.sendEvent(a, d),
        setFaultStatus: (bit) => this.faults.setStatus(bit),
        beginBatch: () => this.replay.beginBatch(this.endpoints.values()),
        endBatch: () => this.replay.endBatch(this.endpoints.values()),
        beforeWaitCompletion: () => this.replay.flush(this.endpoints.values()),
      },
      this.tracer,
    );
    this.commands = new RegisterCommands({
      regs: this.regs,
      config: this.config,
      tracer: this.tracer,
      faults: this.faults,
      queue: this.queue,
      interruptRemapper: this.interruptRemapper,
      targets: this.targets,
      iotlb: this.iotlb,
      invalidation: this.invalidation,
      bumpEpoch: () => this.bumpEpoch(),
      setRootTable: (rootTable, translationTableMode) => {
        this.translator.rootTable = rootTable;
        this.translator.translationTableMode = translationTableMode;
      },
      resyncHosts: () => {
        for (const ep of this.endpoints.values()) if (ep.host !== null) this.replay.resync(ep);
      },
    });
    this.resetRegisters();
    this.viommu.bindModel(this);
  }

  /**
   * Platform reset: registers to their power-on values (translation, queued invalidation and
   * interrupt remapping off), every cache emptied. Endpoints stay attached; assigned ones are
   * resynchronised (identity over RAM, as DMA is untranslated again).
   */
  reset(): void {
    this.resetRegisters();
    this.translator.rootTable = 0;
    this.translator.translationTableMode = 0;
    this.targets.clear();
    this.iotlb.invalidateAll();
    this.interruptRemapper.setTable(0, 0);
    this.faults.reset();
    this.bumpEpoch();
    VTD_TRACE.reset(this.tracer);
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
    VTD_TRACE.eventMsi(this.tracer, address, data);
    this.interrupts?.signalMsi(this.unitSourceId, { address, data }, 0);
  }

  // ---------------------------------------------------------------- endpoints

  /**
   * Adds the endpoint `sourceId` (its PCI BDF) and returns its DMA address space: a plug through
   * the framework (`viommu.plugOrThrow`), which throws when it is refused.
   */
  addEndpoint(sourceId: number, options: EndpointOptions = {}): DmaAddressSpace {
    return this.viommu.plugOrThrow({ vId: sourceId, name: `vt-d ${bdf(sourceId)}`, options });
  }

  /** Removes an endpoint (hot-unplug, through the framework): see `unplugEndpoint`. */
  removeEndpoint(sourceId: number): boolean {
    return this.viommu.unplug(sourceId);
  }

  /**
   * The framework plugs an endpoint. One backed by a host IOMMU needs caching mode; one with a
   * device-TLB needs device-iotlb.
   */
  plugEndpoint(endpoint: Endpoint, options: EndpointOptions = {}): PluggedState<EndpointState> {
    const sourceId = endpoint.vId;
    if (sourceId > 0xffff) throw new Error(`VT-d: source id ${sourceId} is not a 16-bit BDF`);
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
    if (host !== null) this.replay.resync(ep);
    VTD_TRACE.endpoint(this.tracer, sourceId, host !== null, ep.deviceTlb !== null);
    return { space: dma, state: ep };
  }

  /**
   * The framework unplugs an endpoint: its host mappings are unmapped and its cached contexts
   * dropped. Address spaces handed out for it keep translating through the unit's tables but
   * no longer reach a host IOMMU or a device-TLB.
   */
  unplugEndpoint(_endpoint: Endpoint, ep: EndpointState): void {
    ep.host?.clear();
    this.targets.dropWhere((t) => t.sourceId === ep.sourceId);
    this.bumpEpoch();
    VTD_TRACE.endpointRemoved(this.tracer, ep.sourceId);
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

  // ---------------------------------------------------------------- translation (translate.ts)

  /** DmaTranslator: translates a DMA request (VT-d 3.x), recording faults. */
  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.translations++;
    if (!this.translationEnabled) {
      out.set(0, 0, IDENTITY_BLOCK, RW);
      return null;
    }
    if (endpointId >= TRANSLATED) {
      return this.translator.translateTranslated(endpointId - TRANSLATED, iova, access, out);
    }
    return this.translator.translateUntranslated(endpointId, iova, access, out);
  }

  /**
   * An ATS translation request from `sourceId` (VT-d 4.2.3): Unsupported Request unless the
   * endpoint has a device-TLB, translation is enabled and the PASID is valid; then the
   * completion of translate.ts.
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
    if (ep === undefined || ep.deviceTlb === null || !this.translationEnabled) {
      return { status: "unsupported-request", reason: FR.TRANSLATION_BLOCKED };
    }
    if (pasid !== -1 && !(Number.isInteger(pasid) && pasid >= 0 && pasid < 2 ** 20)) {
      return { status: "unsupported-request", reason: FR.SM_PASID_OVER_PDTS };
    }
    return this.translator.translationRequest(endpointKey(sourceId, pasid, privileged), iova, write);
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

  // ---------------------------------------------------------------- invalidation (invalidations.ts)

  private bumpEpoch(): void {
    this.ownEpoch++;
  }

  // ---------------------------------------------------------------- caching mode (host shadow)

  /** The kind of an assigned endpoint's current target when it is in `domainId`, else -1. */
  private hostTargetKind(ep: EndpointState, domainId: number): number {
    if (ep.host === null || !this.translationEnabled) return -1;
    const t = this.translator.lookupTarget(ep.sourceId);
    return t === null || t.domainId !== domainId ? -1 : t.kind;
  }

  // ---------------------------------------------------------------- IoHandler (registers.ts)

  read(offset: number, sizeBytes: AccessSize): number {
    return readRegisters(this.regs, offset, sizeBytes);
  }

  /** Exact 64-bit read (CAP, ECAP and others carry bits above 2^53). */
  readWide(offset: number): bigint {
    return readRegistersWide(this.regs, offset);
  }

  /**
   * 4- and 8-byte writes (the only sizes VT-d defines, 11.1); 1- and 2-byte writes are ignored.
   * An 8-byte `number` above 2^53 has lost its low bits: hosts use `writeWide` for those.
   */
  write(offset: number, sizeBytes: AccessSize, value: number): void {
    writeRegisters(this.regs, offset, sizeBytes, value);
  }

  /** Exact 64-bit write. */
  writeWide(offset: number, value: bigint): void {
    writeRegistersWide(this.regs, offset, value);
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
      `root table ${hex(this.translator.rootTable)} (${["legacy", "scalable", "reserved TTM", "abort TTM"][this.translator.translationTableMode]})`,
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
      dmaFaults: this.faults.dmaFaults,
      faults: this.faults.stats(),
      queue: this.queue.stats(),
      registerInvalidations: this.commands.registerInvalidations,
      interruptsRemapped: this.interruptRemapper.remapped,
      interruptFaults: this.interruptRemapper.faults,
      atsRequests: this.atsRequests,
      deviceTlbInvalidations: this.invalidation.deviceTlbInvalidations,
      hosts,
      hostResyncsDeferred: this.replay.deferred,
    };
  }
}
