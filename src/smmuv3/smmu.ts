/**
 * An Arm SMMUv3 (IHI 0070) for one guest, on one physical IOMMU's vIOMMU instance.
 *
 * Guest-facing surface: the 128 KiB register frame (`IoHandler`), the stream table, context
 * descriptors and translation tables in guest memory, the command queue it consumes and the
 * event queue it fills. Device-facing surface: `DmaTranslator` (endpointId = vSID, no
 * SubstreamID), `substream(ssid)` for PASID-tagged traffic and `translateVa64` for 64-bit
 * device addresses (TTB1 region).
 *
 * Caches: decoded STEs and CDs until CFGI_*, and the engine `Iotlb` holding final translations
 * tagged VMID<<16 | ASID (plus a stage-2-only kind and the TTB1 half). Every invalidation bumps
 * `epoch`, so no translation survives a TLBI followed by CMD_SYNC.
 *
 * About 630 lines, kept whole on purpose: what is left here is the unit's shared state (register
 * frame, queue ownership, the translate entry points and their fast path); every separable
 * concern already has its own module (config-lookup, commands, event-queue, faults, stages, tlb).
 */
import { ACCESS_WRITE, type Access, type DmaFault, dmaFault } from "../engine/access.ts";
import { DmaAddressSpace } from "../engine/dma-space.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import { Tracer } from "../engine/trace.ts";
import { type DmaTranslator, Translation } from "../engine/translation.ts";
import type { PluggedState, ViommuModel } from "../framework/model.ts";
import type { Endpoint, ViommuInstance } from "../framework/viommu.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import { CommandQueue } from "./commands.ts";
import { S1DSS_BYPASS, S1DSS_SSID0, S1DSS_TERMINATE, STE_CFG_ABORT, type StreamConfig } from "./config.ts";
import { ConfigLookup } from "./config-lookup.ts";
import { EventQueue } from "./event-queue.ts";
import { CLASS_IN, EVT } from "./events.ts";
import { FaultReporter, Transaction } from "./faults.ts";
import {
  type SmmuV3Options,
  type SmmuV3Stats,
  VECTOR_CMD_SYNC,
  VECTOR_EVENTQ,
  VECTOR_GERROR,
} from "./options.ts";
import { permits } from "./pagetable.ts";
import { decodeQueueBase } from "./queue.ts";
import { SmmuRegisters } from "./registers.ts";
import {
  CR0_CMDQEN,
  CR0_EVENTQEN,
  CR0_SMMUEN,
  CR2_RECINVSID,
  DEFAULT_FEATURES,
  GBPA_ABORT,
  GERROR_CMDQ_ERR,
  GERROR_EVENTQ_ABT,
  IRQ_EVENTQ,
  IRQ_GERROR,
  REG,
  SMMU_FRAME_BYTES,
  type SmmuFeatures,
} from "./regs.ts";
import { enginePerms, P_BYPASS, P_READ_WRITE, Stages } from "./stages.ts";
import { SmmuTlb, stage1Tag } from "./tlb.ts";
import { SMMU_TRACE } from "./trace-points.ts";

export { type SmmuV3Options, type SmmuV3Stats, VECTOR_CMD_SYNC, VECTOR_EVENTQ, VECTOR_GERROR };

const TWO48 = 2 ** 48;
/** `fastPath` served the transaction. */
const FAST_HIT = -2;
const CR0 = REG.CR0 >> 2;
const CR2 = REG.CR2 >> 2;
const GBPA = REG.GBPA >> 2;
const IRQ_CTRL = REG.IRQ_CTRL >> 2;
const GERROR = REG.GERROR >> 2;
const GERRORN = REG.GERRORN >> 2;

/**
 * The SMMUv3 backend of the generic vIOMMU layer: its per-endpoint state is nothing (stream
 * configuration lives in the guest's stream table), its plug options none.
 */
export class SmmuV3 implements IoHandler, DmaTranslator, ViommuModel<undefined, undefined> {
  readonly modelName = "smmuv3";
  readonly features: SmmuFeatures;
  readonly memory: GuestMemory;
  readonly viommu: ViommuInstance;
  readonly tracer: Tracer;
  readonly tlb: SmmuTlb;
  /** The register frame (SMMUv3 6.3), declared in registers.ts. */
  readonly regs: SmmuRegisters;
  /** STE / CD lookup and their caches. */
  readonly config: ConfigLookup;
  private readonly sink: InterruptSink;
  private readonly requesterId: number;
  private readonly commandBudget: number;
  private readonly eventq: EventQueue;
  private readonly faults: FaultReporter;
  private readonly commands: CommandQueue;
  private readonly stages: Stages;
  /** The transaction being translated (one at a time; reused). */
  private readonly tx = new Transaction();

  /** Bumped by every configuration change and every invalidation command. */
  private ownEpoch = 0;
  /** Bumped by configuration changes only (CFGI_*, CR0, GBPA, stream table base). */
  private configEpoch = 0;
  // One-entry fast path for the last stage-1 stream context (TTB0 region, no SubstreamID).
  private fastSid = -1;
  private fastSsid = -2;
  private fastConfigEpoch = -1;
  private fastViommuEpoch = -1;
  private fastTag = 0;
  private fastLimit = 0;
  private fastPrivileged = false;
  private fastInstruction = false;

  private readonly hit = new Translation();
  private readonly substreams = new Map<number, DmaTranslator>();
  private readonly va64Out = new Translation();

  // Counters.
  private translations = 0;
  private msiWrites = 0;
  private interruptCount = 0;
  private badRegisterAccesses = 0;
  private ignoredRegisterWrites = 0;
  private ownershipViolations = 0;

  constructor(options: SmmuV3Options) {
    this.features = { ...DEFAULT_FEATURES, ...options.features };
    const f = this.features;
    if (!(f.sidBits >= 1 && f.sidBits <= 32) || !(f.ssidBits >= 0 && f.ssidBits <= 20)) {
      throw new Error("SMMUv3: sidBits must be 1..32 and ssidBits 0..20");
    }
    if (!(f.cmdqLog2Max >= 1 && f.cmdqLog2Max <= 19 && f.eventqLog2Max >= 1 && f.eventqLog2Max <= 19)) {
      throw new Error("SMMUv3: queue sizes must be 2^1..2^19");
    }
    if (!f.stage1 && !f.stage2) throw new Error("SMMUv3: at least one translation stage must be implemented");
    this.memory = options.memory;
    this.viommu = options.viommu;
    this.sink = options.interrupts;
    this.requesterId = options.requesterId ?? 0;
    this.tracer = options.tracer ?? new Tracer();
    this.tlb = new SmmuTlb(options.iotlbCapacity ?? 4096);
    this.commandBudget = Math.max(1, options.commandBudget ?? 4096);
    this.regs = new SmmuRegisters(f);
    this.eventq = new EventQueue(this.memory, options.eventsPerStream ?? 64);
    this.faults = new FaultReporter(this.viommu, this.eventq, this.eventQueueOwner(), this.tracer);
    const cdCacheLimit = Math.max(1, options.cdCacheLimit ?? 65536);
    this.config = new ConfigLookup(
      this.memory,
      f,
      this.regs,
      this.tlb,
      this.faults,
      this.tracer,
      cdCacheLimit,
      this.tx,
    );
    this.stages = new Stages(this.tlb, this.viommu, this.faults, this.config);
    this.commands = new CommandQueue({
      features: f,
      memory: this.memory,
      regs: this.regs,
      tlb: this.tlb,
      viommu: this.viommu,
      config: this.config,
      tracer: this.tracer,
      commandError: () => this.raiseGerror(GERROR_CMDQ_ERR),
      configChanged: () => this.configChanged(),
      ownedOrRefused: (sid, action) => this.ownedOrRefused(sid, action),
      syncInterrupt: (addrLo, addrHi, data) => this.signal(addrLo, addrHi, data, VECTOR_CMD_SYNC, true),
    });
    this.viommu.hostStage2?.onUnmap(() => {
      // Cached entries hold host PAs: drop them all when the host takes memory away.
      this.tlb.invalidateAll();
    });
    this.viommu.bindModel(this);
  }

  // ---------------------------------------------------------------------------------------------
  // The generic vIOMMU layer's plug and unplug (framework/model.ts).

  /** A plugged stream gets its address space (endpointId = vSID); its configuration is the guest's. */
  plugEndpoint(endpoint: Endpoint): PluggedState<undefined> {
    return { space: new DmaAddressSpace(this.memory, this, endpoint.vId), state: undefined };
  }

  /**
   * Nothing to drop: the instance's epoch changes with the unplug, which ends the fast path, and
   * from then on the stream is C_BAD_STREAMID (not owned).
   */
  unplugEndpoint(): void {}

  private eventQueueOwner() {
    return {
      eventQueueWritable: () => (this.cr0 & CR0_EVENTQEN) !== 0 && !this.gerrorActive(GERROR_EVENTQ_ABT),
      eventQueueAborted: () => this.raiseGerror(GERROR_EVENTQ_ABT),
      eventQueueInterrupt: () => {
        if ((this.regs.values[IRQ_CTRL] & IRQ_EVENTQ) !== 0)
          this.signalConfigured(REG.EVENTQ_IRQ_CFG0, VECTOR_EVENTQ);
      },
      recordsInvalidStreamIds: () => (this.regs.values[CR2] & CR2_RECINVSID) !== 0,
    };
  }

  /** Changes whenever any translation handed out may be stale. */
  get epoch(): number {
    return this.tlb.epoch + this.ownEpoch + this.viommu.epoch + (this.viommu.hostStage2?.epoch ?? 0);
  }

  private get cr0(): number {
    return this.regs.values[CR0];
  }

  // ---------------------------------------------------------------------------------------------
  // Register file (SMMUv3 6.3): masks and locks are the table's (registers.ts), effects are here.

  read(offset: number, sizeBytes: AccessSize): number {
    if (sizeBytes === 8) {
      const v = this.readWide(offset);
      return Number(v & 0x1f_ffff_ffff_ffffn);
    }
    if (sizeBytes !== 4 || offset % 4 !== 0 || offset < 0 || offset >= SMMU_FRAME_BYTES) {
      this.badRegisterAccesses++;
      return 0;
    }
    return this.read32(offset);
  }

  /** 64-bit read of a 64-bit register; RAZ (and counted) anywhere else. */
  readWide(offset: number): bigint {
    if (!this.regs.is64Bit(offset)) {
      this.badRegisterAccesses++;
      return 0n;
    }
    return (BigInt(this.read32(offset + 4)) << 32n) | BigInt(this.read32(offset));
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    if (sizeBytes === 8) {
      if (!Number.isSafeInteger(value) || value < 0) {
        this.badRegisterAccesses++;
        return;
      }
      this.writeWide(offset, BigInt(value));
      return;
    }
    if (sizeBytes !== 4 || offset % 4 !== 0 || offset < 0 || offset >= SMMU_FRAME_BYTES) {
      this.badRegisterAccesses++;
      return;
    }
    this.write32(offset, value >>> 0);
  }

  /** 64-bit write of a 64-bit register (low word first, as one access); ignored elsewhere. */
  writeWide(offset: number, value: bigint): void {
    if (!this.regs.is64Bit(offset)) {
      this.badRegisterAccesses++;
      return;
    }
    const v = BigInt.asUintN(64, value);
    this.write32(offset, Number(v & 0xffffffffn));
    this.write32(offset + 4, Number(v >> 32n));
  }

  private read32(offset: number): number {
    switch (offset) {
      case REG.CMDQ_CONS:
        // Polling CONS is how a driver waits: it also gives the queue its next budget.
        this.pump();
        break;
      // The event queue pointers are the queue's own state (event-queue.ts).
      case REG.EVENTQ_PROD:
      case REG.EVENTQ_PROD_P0:
        return this.eventq.prod;
      case REG.EVENTQ_CONS:
      case REG.EVENTQ_CONS_P0:
        return this.eventq.cons;
    }
    // Reserved and unimplemented registers are RES0 (6.2).
    return this.regs.readDword(offset >> 2);
  }

  private write32(offset: number, value: number): void {
    const regs = this.regs;
    // ID, ACK, GERROR and STATUSR registers, reserved space, and locked registers ignore writes.
    if (regs.guestWrite(offset >> 2, value) === undefined) {
      this.ignoredRegisterWrites++;
      return;
    }
    const stored = regs.values[offset >> 2];
    switch (offset) {
      case REG.CR0:
        this.cr0Written(regs.previous, stored);
        return;
      case REG.GBPA:
        this.configChanged();
        SMMU_TRACE.gbpa(this.tracer, stored);
        return;
      case REG.IRQ_CTRL:
        regs.set32(REG.IRQ_CTRLACK, stored);
        SMMU_TRACE.irq_ctrl(this.tracer, stored);
        return;
      case REG.GERRORN: {
        // Acknowledging CMDQ_ERR restarts consumption at CONS (7.1).
        const wasCmdqErr = ((regs.values[GERROR] ^ regs.previous) & GERROR_CMDQ_ERR) !== 0;
        if (wasCmdqErr && !this.gerrorActive(GERROR_CMDQ_ERR)) this.commands.process(this.commandBudget);
        return;
      }
      case REG.STRTAB_BASE:
      case REG.STRTAB_BASE + 4:
      case REG.STRTAB_BASE_CFG:
        this.config.invalidateAll();
        this.configChanged();
        return;
      case REG.CMDQ_PROD:
        this.commands.process(this.commandBudget);
        return;
      case REG.EVENTQ_PROD:
      case REG.EVENTQ_PROD_P0:
        this.eventq.writeProd(stored);
        return;
      case REG.EVENTQ_CONS:
      case REG.EVENTQ_CONS_P0:
        this.eventq.writeCons(stored);
        return;
    }
  }

  private cr0Written(old: number, value: number): void {
    this.regs.set32(REG.CR0ACK, value);
    if ((value & CR0_EVENTQEN) !== 0 && (old & CR0_EVENTQEN) === 0) {
      const r = this.regs;
      const lo = r.get32(REG.EVENTQ_BASE);
      const g = decodeQueueBase(lo, r.getHi(REG.EVENTQ_BASE), this.features.eventqLog2Max, 32);
      this.eventq.configure(g.baseGpa, g.log2size);
    }
    if ((value & CR0_CMDQEN) !== 0 && (old & CR0_CMDQEN) === 0) this.commands.enable();
    if ((value ^ old) & CR0_SMMUEN) this.configChanged();
    SMMU_TRACE.cr0(this.tracer, value, old);
    if ((value & CR0_CMDQEN) !== 0) this.commands.process(this.commandBudget);
  }

  // ---------------------------------------------------------------------------------------------
  // Global errors and interrupts (SMMUv3 7.5, 3.18)

  private gerrorActive(bit: number): boolean {
    return ((this.regs.values[GERROR] ^ this.regs.values[GERRORN]) & bit) !== 0;
  }

  private raiseGerror(bit: number): void {
    if (this.gerrorActive(bit)) return;
    const gerror = (this.regs.values[GERROR] ^ bit) >>> 0;
    this.regs.set32(REG.GERROR, gerror);
    SMMU_TRACE.gerror(this.tracer, bit, gerror);
    if ((this.regs.values[IRQ_CTRL] & IRQ_GERROR) !== 0)
      this.signalConfigured(REG.GERROR_IRQ_CFG0, VECTOR_GERROR);
  }

  /** The interrupt of a source configured by IRQ_CFG0 (ADDR) at `cfg0` and IRQ_CFG1 (DATA) at cfg0 + 8. */
  private signalConfigured(cfg0: number, vector: number): void {
    const r = this.regs;
    this.signal(r.get32(cfg0), r.getHi(cfg0), r.get32(cfg0 + 8), vector, false);
  }

  /**
   * Sends an interrupt (3.18). With a non-zero address field (ADDR 51:2, or MSIAddress 55:2 for
   * CMD_SYNC) it is an MSI: a 32-bit write of `data` to the address truncated to the OAS. A
   * doorbell in guest RAM is written there (Linux points CMD_SYNC MSIs at the command itself); any
   * other address goes to the platform's interrupt sink as an MSI. The wired output (`setPin`
   * pulse) fires when there is no MSI address, and for CMD_SYNC always (4.7.3: "regardless of the
   * value of MSIAddress").
   */
  private signal(addrLo: number, addrHi: number, data: number, vector: number, wiredAlways: boolean): void {
    const msi = (addrLo & 0xfffffffc) !== 0 || addrHi !== 0;
    this.interruptCount++;
    if (wiredAlways || !msi) {
      this.sink.setPin(this.requesterId, vector, true);
      this.sink.setPin(this.requesterId, vector, false);
    }
    if (!msi) return;
    const address = (addrHi & 0xffff) * 2 ** 32 + ((addrLo & 0xfffffffc) >>> 0);
    if (this.memory.tryWriteU32(address, data >>> 0)) {
      this.msiWrites++;
      return;
    }
    this.sink.signalMsi(this.requesterId, { address, data: data >>> 0 }, vector);
  }

  // ---------------------------------------------------------------------------------------------
  // Command queue (SMMUv3 4, 7.1): the consumer is commands.ts.

  /** Consumes up to `budget` commands now; returns how many were consumed. */
  pump(budget = this.commandBudget): number {
    return this.commands.process(budget);
  }

  /** True when commands are waiting and the queue can make progress. */
  get hasPendingCommands(): boolean {
    return this.commands.pending;
  }

  /** The endpoint the guest owns as `sid`, or undefined after refusing (C_BAD_STREAMID + report). */
  private ownedOrRefused(sid: number, action: string): Endpoint | undefined {
    const ep = this.viommu.endpoint(sid);
    if (ep !== undefined) return ep;
    this.ownershipViolations++;
    this.viommu.violation(sid, action);
    this.faults.badStreamCommand(sid);
    return undefined;
  }

  private configChanged(): void {
    this.ownEpoch++;
    this.configEpoch++;
  }

  // ---------------------------------------------------------------------------------------------
  // Translation (SMMUv3 3.2-3.4): input checks and the fast path here; configuration lookup in
  // config-lookup.ts; walks and the output step in stages.ts.

  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.tx.inputKnown = false;
    return this.translateStream(endpointId, -1, iova, access, out);
  }

  /** A translator for SubstreamID `ssid` of every endpoint (endpointId = vSID). */
  substream(ssid: number): DmaTranslator {
    let t = this.substreams.get(ssid);
    if (t === undefined) {
      const smmu = this;
      t = {
        get epoch(): number {
          return smmu.epoch;
        },
        translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
          smmu.tx.inputKnown = false;
          return smmu.translateStream(endpointId, ssid, iova, access, out);
        },
      };
      this.substreams.set(ssid, t);
    }
    return t;
  }

  /**
   * Translates a full 64-bit device address (TTB1 region, tagged pointers). Returns the output
   * address, or the fault.
   */
  translateVa64(sid: number, ssid: number, va: bigint, access: Access): number | DmaFault {
    this.tx.inputKnown = true;
    this.tx.input = va;
    const f = this.translateStream(sid, ssid, -1, access, this.va64Out);
    if (f !== null) return f;
    const t = this.va64Out;
    return t.gpaBase + (Number(va & 0xffff_ffff_ffffn) - t.iovaBase);
  }

  /**
   * The translation of one transaction. `iova` < 0 means "use tx.input" (64-bit path). The
   * output Translation covers the input key space: the low 48 bits of the address.
   */
  private translateStream(
    sid: number,
    ssid: number,
    iova: number,
    access: Access,
    out: Translation,
  ): DmaFault | null {
    this.translations++;
    const tx = this.tx;
    const write = access === ACCESS_WRITE;
    const lookedTag = this.fastPath(sid, ssid, iova, write, out);
    if (lookedTag === FAST_HIT) return null;
    this.tlb.pruneTags();
    tx.begin(sid, ssid, write);
    if (!tx.setInput(iova)) return this.faults.stage1(tx, EVT.F_UUT, true, 0);
    if (!Number.isInteger(sid) || sid < 0 || sid >= 2 ** 32) {
      tx.sid = 0;
      return this.faults.stage1(tx, EVT.F_UUT, true, 0);
    }
    // SMMUEN == 0: GBPA decides, and nothing is recorded (6.3.14).
    if ((this.cr0 & CR0_SMMUEN) === 0) {
      if ((this.regs.values[GBPA] & GBPA_ABORT) !== 0 || tx.top16 !== 0) {
        return dmaFault("blocked", sid, tx.iova, access, 0, "SMMU disabled, GBPA.ABORT");
      }
      this.stages.block.uncached(0, TWO48, 0, P_READ_WRITE);
      return this.stages.output(tx, tx.key, access, out);
    }
    if (this.viommu.endpoint(sid) === undefined) return this.faults.config(tx, EVT.C_BAD_STREAMID);
    if (ssid >= 0 && (!Number.isInteger(ssid) || ssid >= 2 ** this.features.ssidBits)) {
      tx.ssid = Number.isInteger(ssid) ? ssid % 2 ** 20 : 0;
      return this.faults.config(tx, EVT.C_BAD_SUBSTREAMID);
    }
    const ste = this.config.stream(tx, sid);
    if ("reason" in ste) return ste;
    tx.privileged = ste.privileged;
    tx.instruction = ste.instruction;
    tx.mergeEvents = ste.mergeEvents;
    if (ste.config === STE_CFG_ABORT) {
      // Config abort: terminated without an event (5.2).
      return dmaFault("blocked", sid, tx.iova, access, 0, "STE.Config abort");
    }
    const cdIndex = this.stage1Context(tx, ste, ssid);
    if (typeof cdIndex !== "number") return cdIndex;
    if (cdIndex < 0 && !ste.stage2) {
      // Bypass (STE.Config bypass, or S1DSS bypass of a stage-1-only stream): the input must fit
      // the output size (F_ADDR_SIZE otherwise, 7.3.14).
      if (tx.top16 !== 0) return this.faults.stage1(tx, EVT.F_ADDR_SIZE, true, CLASS_IN);
      this.stages.block.uncached(0, TWO48, 0, P_BYPASS);
      return this.stages.output(tx, tx.key, access, out);
    }
    tx.nestedS2 = ste.stage2 ? ste.s2 : null;
    tx.nestedVmid = ste.vmid;
    if (cdIndex < 0) {
      const f = this.stages.stage2Only(tx, ste, tx.top16, tx.key);
      return f ?? this.stages.output(tx, tx.key, access, out);
    }
    return this.translateStage1(tx, ste, cdIndex, lookedTag, access, out);
  }

  /**
   * Fast path: same stream context as last time, configuration unchanged, IOTLB hit: fills
   * `out` and returns FAST_HIT. Otherwise returns the tag it looked up (-1 for none): after a
   * fast-path miss the slow path does not look the TLB up again (one miss is one miss).
   */
  private fastPath(sid: number, ssid: number, iova: number, write: boolean, out: Translation): number {
    if (
      sid !== this.fastSid ||
      ssid !== this.fastSsid ||
      this.configEpoch !== this.fastConfigEpoch ||
      this.viommu.epoch !== this.fastViommuEpoch ||
      this.tx.inputKnown ||
      !(iova >= 0 && iova < this.fastLimit && Number.isInteger(iova))
    ) {
      return -1;
    }
    const h = this.hit;
    const priv = this.fastPrivileged;
    const inst = this.fastInstruction;
    if (this.tlb.lookup(this.fastTag, iova, h) && permits(h.perms, write, priv, inst)) {
      out.set(h.iovaBase, h.gpaBase, h.sizeBytes, enginePerms(h.perms, priv, inst));
      return FAST_HIT;
    }
    return this.fastTag;
  }

  /**
   * Which CD a stream's transaction uses (5.2 S1CDMax, S1DSS): its index, -1 when stage 1 is
   * not used (no stage 1, or S1DSS bypass), or the configuration fault.
   */
  private stage1Context(tx: Transaction, ste: StreamConfig, ssid: number): number | DmaFault {
    if (!ste.stage1) {
      // A SubstreamID on a stream without stage 1 (5.2, S1CDMax).
      return ssid >= 0 ? this.faults.config(tx, EVT.C_BAD_SUBSTREAMID) : -1;
    }
    if (ssid >= 0) {
      if (ste.s1CdMax === 0 || ssid >= 2 ** ste.s1CdMax) return this.faults.config(tx, EVT.C_BAD_SUBSTREAMID);
      // CD 0 is reserved for non-substream traffic when S1DSS == 0b10 (7.3.7).
      if (ste.s1Dss === S1DSS_SSID0 && ssid === 0) return this.faults.config(tx, EVT.F_STREAM_DISABLED);
      return ssid;
    }
    if (ste.s1CdMax !== 0) {
      if (ste.s1Dss === S1DSS_TERMINATE) return this.faults.config(tx, EVT.F_STREAM_DISABLED);
      if (ste.s1Dss === S1DSS_BYPASS) return -1;
    }
    return 0;
  }

  /** Stage 1 (and stage 2 under it): CD, TTB0/TTB1 region, IOTLB, walk, output. */
  private translateStage1(
    tx: Transaction,
    ste: StreamConfig,
    cdIndex: number,
    lookedTag: number,
    access: Access,
    out: Translation,
  ): DmaFault | null {
    const cd = this.config.context(tx, ste, cdIndex);
    if ("reason" in cd) return cd;
    const { top16, key } = tx;
    // VA[55] selects TTB1; bits 63:56 must match it unless TBI ignores them (Arm ARM D8.8).
    const upper = ((top16 >>> 7) & 1) === 1;
    const fill = upper ? 0xff : 0;
    const tbi = upper ? cd.tbi1 : cd.tbi0;
    const region = upper ? cd.ttb1 : cd.ttb0;
    if ((top16 & 0xff) !== fill || (!tbi && top16 >>> 8 !== fill) || region === null) {
      return this.faults.stage1(tx, EVT.F_TRANSLATION, cd.record, CLASS_IN);
    }
    const regionBase = upper ? TWO48 - 2 ** region.inputBits : 0;
    if (upper ? key < regionBase : key >= 2 ** region.inputBits) {
      return this.faults.stage1(tx, EVT.F_TRANSLATION, cd.record, CLASS_IN);
    }
    const tag = stage1Tag(ste.vmid, cd.asid, upper);
    if (!upper) {
      this.fastSid = tx.sid;
      this.fastSsid = tx.ssid;
      this.fastConfigEpoch = this.configEpoch;
      this.fastViommuEpoch = this.viommu.epoch;
      this.fastTag = tag;
      this.fastLimit = 2 ** region.inputBits;
      this.fastPrivileged = ste.privileged;
      this.fastInstruction = ste.instruction;
    }
    const h = this.hit;
    if (
      tag !== lookedTag &&
      this.tlb.lookup(tag, key, h) &&
      permits(h.perms, tx.write, ste.privileged, ste.instruction)
    ) {
      out.set(h.iovaBase, h.gpaBase, h.sizeBytes, enginePerms(h.perms, ste.privileged, ste.instruction));
      return null;
    }
    const f = this.stages.stage1(tx, ste, cd.record, region, regionBase, key, tag);
    return f ?? this.stages.output(tx, key, access, out);
  }

  // ---------------------------------------------------------------------------------------------

  stats(): SmmuV3Stats {
    return {
      translations: this.translations,
      faults: { ...this.faults.counts },
      unrecordedFaults: this.faults.unrecorded,
      hostStage2Faults: this.stages.hostStage2Faults,
      iotlb: this.tlb.stats(),
      steCache: this.config.steStats(),
      cdCache: this.config.cdStats(),
      commands: this.commands.byName(),
      commandErrors: this.commands.errors,
      syncs: this.commands.syncs,
      msiWrites: this.msiWrites,
      interrupts: this.interruptCount,
      eventQueue: this.eventq.stats(),
      badRegisterAccesses: this.badRegisterAccesses,
      ignoredRegisterWrites: this.ignoredRegisterWrites,
      ownershipViolations: this.ownershipViolations,
    };
  }
}
