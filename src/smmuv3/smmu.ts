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
 */
import {
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  type DmaFaultReason,
  dmaFault,
  PERM_READ,
  PERM_WRITE,
} from "../engine/access.ts";
import { type GuestMemory, GuestMemoryError } from "../engine/guest-memory.ts";
import { Tracer } from "../engine/trace.ts";
import { type DmaTranslator, Translation } from "../engine/translation.ts";
import type { Endpoint, ViommuInstance } from "../framework/viommu.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import {
  CMD_BYTES,
  CS_IRQ,
  CS_SEV,
  cmdAsid,
  cmdLeaf,
  cmdNum,
  cmdOpcode,
  cmdRange,
  cmdScale,
  cmdSsec,
  cmdSsid,
  cmdSyncCs,
  cmdTg,
  cmdTtl,
  cmdVmid,
  OP,
  opName,
  rangeGranuleShift,
} from "./commands.ts";
import {
  CD_BYTES,
  type ContextConfig,
  type Decoded,
  decodeCd,
  decodeSte,
  S1DSS_BYPASS,
  S1DSS_SSID0,
  S1DSS_TERMINATE,
  S1FMT_2LVL_4K,
  S1FMT_2LVL_64K,
  STE_BYTES,
  STE_CFG_ABORT,
  type StreamConfig,
} from "./config.ts";
import { EventQueue, type EventQueueStats } from "./event-queue.ts";
import { CLASS_CD, CLASS_IN, CLASS_TT, EVT, EventRecord, eventName } from "./events.ts";
import {
  type DescriptorFetcher,
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
import { decodeQueueBase, ptrIncrement, ptrIndex, ptrMask, queueEmpty } from "./queue.ts";
import {
  AIDR_VALUE,
  CERROR_ABT,
  CERROR_ILL,
  CIDR_VALUES,
  CR0_CMDQEN,
  CR0_EVENTQEN,
  CR0_SMMUEN,
  CR0_WRITABLE,
  CR1_MASK,
  CR2_MASK,
  CR2_RECINVSID,
  DEFAULT_FEATURES,
  GBPA_ABORT,
  GBPA_FIELDS,
  GBPA_RESET,
  GBPA_UPDATE,
  GERROR_CMDQ_ERR,
  GERROR_EVENTQ_ABT,
  GERROR_MASK,
  IDR3_VALUE,
  IDR5_VALUE,
  IIDR_VALUE,
  IRQ_CTRL_MASK,
  IRQ_EVENTQ,
  IRQ_GERROR,
  idr0,
  idr1,
  OAS_BITS,
  REG,
  type SmmuFeatures,
  STRTAB_FMT_2LVL,
  STRTAB_FMT_LINEAR,
} from "./regs.ts";
import { isStage2OnlyTag, SmmuTlb, type SmmuTlbStats, stage1Tag, stage2Tag, tagVmid } from "./tlb.ts";

/** MSI vectors (the `vector` argument of InterruptSink.signalMsi) and wired pins. */
export const VECTOR_EVENTQ = 0;
export const VECTOR_GERROR = 1;
export const VECTOR_CMD_SYNC = 2;

export interface SmmuV3Options {
  readonly memory: GuestMemory;
  readonly viommu: ViommuInstance;
  readonly interrupts: InterruptSink;
  /** The SMMU's own requester ID for the MSIs it sends. */
  readonly requesterId?: number;
  readonly features?: Partial<SmmuFeatures>;
  readonly tracer?: Tracer;
  readonly iotlbCapacity?: number;
  /** Commands consumed per register access; the rest wait for the next access or `pump()`. */
  readonly commandBudget?: number;
  /** Unconsumed event records one stream may hold in the event queue. */
  readonly eventsPerStream?: number;
  /** Most cached CDs; beyond it the CD cache is emptied (it is only a cache). */
  readonly cdCacheLimit?: number;
}

export interface SmmuV3Stats {
  readonly translations: number;
  readonly faults: Readonly<Record<string, number>>;
  readonly unrecordedFaults: number;
  readonly hostStage2Faults: number;
  readonly iotlb: SmmuTlbStats;
  readonly steCache: { readonly entries: number; readonly hits: number; readonly misses: number };
  readonly cdCache: { readonly entries: number; readonly hits: number; readonly misses: number };
  readonly commands: Readonly<Record<string, number>>;
  readonly commandErrors: number;
  readonly syncs: number;
  readonly msiWrites: number;
  readonly interrupts: number;
  readonly eventQueue: EventQueueStats;
  readonly badRegisterAccesses: number;
  readonly ignoredRegisterWrites: number;
  readonly ownershipViolations: number;
}

const TWO48 = 2 ** 48;

/**
 * The MSI configuration of one interrupt source: IRQ_CFG0 (ADDR 51:2, two words), IRQ_CFG1
 * (DATA) and IRQ_CFG2 (MemAttr, SH), at byte offsets 0, 4, 8 and 12 from its IRQ_CFG0
 * (GERROR 6.3.19-6.3.21, EVENTQ 6.3.31-6.3.33).
 */
class MsiConfig {
  addrLo = 0;
  addrHi = 0;
  data = 0;
  attr = 0;

  read(rel: number): number {
    return rel === 0 ? this.addrLo : rel === 4 ? this.addrHi : rel === 8 ? this.data : this.attr;
  }

  write(rel: number, value: number): void {
    if (rel === 0) this.addrLo = (value & 0xfffffffc) >>> 0;
    else if (rel === 4) this.addrHi = value & 0xfffff;
    else if (rel === 8) this.data = value;
    else this.attr = value & 0x3f;
  }
}

function faultReason(event: number): DmaFaultReason {
  switch (event) {
    case EVT.F_TRANSLATION:
    case EVT.F_ACCESS:
      return "unmapped";
    case EVT.F_PERMISSION:
      return "permission";
    case EVT.F_ADDR_SIZE:
    case EVT.F_UUT:
      return "address-range";
    case EVT.C_BAD_STREAMID:
    case EVT.F_STREAM_DISABLED:
      return "blocked";
    default:
      return "bad-table";
  }
}

/** Converts P_* leaf permissions to engine permissions for a stream's access attributes. */
function enginePerms(perms: number, privileged: boolean, instruction: boolean): number {
  let p = 0;
  if (permits(perms, false, privileged, instruction)) p |= PERM_READ;
  if (permits(perms, true, privileged, instruction)) p |= PERM_WRITE;
  return p;
}

export class SmmuV3 implements IoHandler, DmaTranslator {
  readonly features: SmmuFeatures;
  readonly memory: GuestMemory;
  readonly viommu: ViommuInstance;
  readonly tracer: Tracer;
  readonly tlb: SmmuTlb;
  private readonly sink: InterruptSink;
  private readonly requesterId: number;
  private readonly commandBudget: number;
  private readonly cdCacheLimit: number;

  // Registers (SMMUv3 6.3).
  private cr0 = 0;
  private cr1 = 0;
  private cr2 = 0;
  private gbpa = GBPA_RESET;
  private irqCtrl = 0;
  private gerror = 0;
  private gerrorn = 0;
  private readonly gerrorIrq = new MsiConfig();
  private strtabBaseLo = 0;
  private strtabBaseHi = 0;
  private strtabBaseCfg = 0;
  private cmdqBaseLo = 0;
  private cmdqBaseHi = 0;
  private cmdqProd = 0;
  private cmdqCons = 0;
  private cmdqErr = 0;
  private eventqBaseLo = 0;
  private eventqBaseHi = 0;
  private readonly eventqIrq = new MsiConfig();
  private readonly eventq: EventQueue;
  // Active command queue geometry (latched when CMDQEN is set).
  private cmdqBaseGpa = 0;
  private cmdqLog2 = 0;

  // Caches.
  private readonly steCache = new Map<number, StreamConfig>();
  private readonly cdCache = new Map<number, Map<number, ContextConfig>>();
  private cdCacheEntries = 0;
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

  // Scratch, reused on every miss.
  private readonly words = new Uint32Array(16);
  private readonly r1 = new WalkResult();
  private readonly r2 = new WalkResult();
  private readonly rFetch = new WalkResult();
  private readonly hostOut = new Translation();
  private readonly hit = new Translation();
  private readonly event = new EventRecord();
  private readonly physFetcher: DescriptorFetcher;
  private readonly nestedFetcher: DescriptorFetcher;
  private nestedS2: StageParams | null = null;
  private nestedVmid = 0;
  private readonly substreams = new Map<number, DmaTranslator>();
  private readonly va64Out = new Translation();

  // Per-translation context, for fault records.
  private curSid = 0;
  private curSsid = -1;
  private curInput = 0n;
  private curInputKnown = false;
  private curIova = 0;
  private curWrite = false;
  private curInstruction = false;
  private curPrivileged = false;
  private curMergeEvents = false;

  // Counters.
  private translations = 0;
  private readonly faultCounts: Record<string, number> = {};
  private unrecordedFaults = 0;
  private hostStage2Faults = 0;
  private steHits = 0;
  private steMisses = 0;
  private cdHits = 0;
  private cdMisses = 0;
  /** Commands consumed, by opcode. */
  private readonly commandCounts = new Float64Array(256);
  private commandErrors = 0;
  private syncs = 0;
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
    this.cdCacheLimit = Math.max(1, options.cdCacheLimit ?? 65536);
    this.eventq = new EventQueue(this.memory, options.eventsPerStream ?? 64);
    const memory = this.memory;
    this.physFetcher = {
      fetch: (addr: number, r: WalkResult): boolean => {
        if (!memory.isRam(addr, 8)) {
          r.fault = EVT.F_WALK_EABT;
          r.fetchAddr = addr;
          return false;
        }
        r.lo = memory.readU32(addr);
        r.hi = memory.readU32(addr + 4);
        return true;
      },
    };
    // Stage-1 table fetches of a nested stream: the table address is an IPA (SMMUv3 3.4.3).
    this.nestedFetcher = {
      fetch: (ipa: number, r: WalkResult): boolean => {
        const pa = this.stage2ForFetch(ipa, CLASS_TT, r);
        if (pa < 0) return false;
        return this.physFetcher.fetch(pa, r);
      },
    };
    this.viommu.hostStage2?.onUnmap(() => {
      // Cached entries hold host PAs: drop them all when the host takes memory away.
      this.tlb.invalidateAll();
    });
  }

  /** Changes whenever any translation handed out may be stale. */
  get epoch(): number {
    return this.tlb.epoch + this.ownEpoch + this.viommu.epoch + (this.viommu.hostStage2?.epoch ?? 0);
  }

  // ---------------------------------------------------------------------------------------------
  // Register file (SMMUv3 6.3)

  read(offset: number, sizeBytes: AccessSize): number {
    if (sizeBytes === 8) {
      const v = this.readWide(offset);
      return Number(v & 0x1f_ffff_ffff_ffffn);
    }
    if (sizeBytes !== 4 || offset % 4 !== 0 || offset < 0 || offset >= 0x20000) {
      this.badRegisterAccesses++;
      return 0;
    }
    return this.read32(offset);
  }

  /** 64-bit read of a 64-bit register; RAZ (and counted) anywhere else. */
  readWide(offset: number): bigint {
    if (!this.is64BitRegister(offset)) {
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
    if (sizeBytes !== 4 || offset % 4 !== 0 || offset < 0 || offset >= 0x20000) {
      this.badRegisterAccesses++;
      return;
    }
    this.write32(offset, value >>> 0);
  }

  /** 64-bit write of a 64-bit register (low word first, as one access); ignored elsewhere. */
  writeWide(offset: number, value: bigint): void {
    if (!this.is64BitRegister(offset)) {
      this.badRegisterAccesses++;
      return;
    }
    const v = BigInt.asUintN(64, value);
    this.write32(offset, Number(v & 0xffffffffn));
    this.write32(offset + 4, Number(v >> 32n));
  }

  private is64BitRegister(offset: number): boolean {
    return (
      offset === REG.GERROR_IRQ_CFG0 ||
      offset === REG.STRTAB_BASE ||
      offset === REG.CMDQ_BASE ||
      offset === REG.EVENTQ_BASE ||
      offset === REG.EVENTQ_IRQ_CFG0
    );
  }

  private read32(offset: number): number {
    switch (offset) {
      case REG.IDR0:
        return idr0(this.features);
      case REG.IDR1:
        return idr1(this.features);
      case REG.IDR2:
      case REG.IDR4:
        return 0;
      case REG.IDR3:
        return IDR3_VALUE;
      case REG.IDR5:
        return IDR5_VALUE;
      case REG.IIDR:
        return IIDR_VALUE;
      case REG.AIDR:
        return AIDR_VALUE;
      case REG.CR0:
      case REG.CR0ACK:
        // The model completes every CR0 update before the write returns (6.3.10).
        return this.cr0;
      case REG.CR1:
        return this.cr1;
      case REG.CR2:
        return this.cr2;
      case REG.STATUSR:
      case REG.AGBPA:
        return 0;
      case REG.GBPA:
        return this.gbpa; // Update always reads 0: updates complete immediately.
      case REG.IRQ_CTRL:
      case REG.IRQ_CTRLACK:
        return this.irqCtrl;
      case REG.GERROR:
        return this.gerror;
      case REG.GERRORN:
        return this.gerrorn;
      case REG.GERROR_IRQ_CFG0:
      case REG.GERROR_IRQ_CFG0 + 4:
      case REG.GERROR_IRQ_CFG1:
      case REG.GERROR_IRQ_CFG2:
        return this.gerrorIrq.read(offset - REG.GERROR_IRQ_CFG0);
      case REG.STRTAB_BASE:
        return this.strtabBaseLo;
      case REG.STRTAB_BASE + 4:
        return this.strtabBaseHi;
      case REG.STRTAB_BASE_CFG:
        return this.strtabBaseCfg;
      case REG.CMDQ_BASE:
        return this.cmdqBaseLo;
      case REG.CMDQ_BASE + 4:
        return this.cmdqBaseHi;
      case REG.CMDQ_PROD:
        return this.cmdqProd;
      case REG.CMDQ_CONS:
        // Polling CONS is how a driver waits: it also gives the queue its next budget.
        this.pump();
        return (this.cmdqCons | (this.cmdqErr << 24)) >>> 0;
      case REG.EVENTQ_BASE:
        return this.eventqBaseLo;
      case REG.EVENTQ_BASE + 4:
        return this.eventqBaseHi;
      case REG.EVENTQ_PROD:
      case REG.EVENTQ_PROD_P0:
        return this.eventq.prod;
      case REG.EVENTQ_CONS:
      case REG.EVENTQ_CONS_P0:
        return this.eventq.cons;
      case REG.EVENTQ_IRQ_CFG0:
      case REG.EVENTQ_IRQ_CFG0 + 4:
      case REG.EVENTQ_IRQ_CFG1:
      case REG.EVENTQ_IRQ_CFG2:
        return this.eventqIrq.read(offset - REG.EVENTQ_IRQ_CFG0);
      case REG.CIDR0:
      case REG.CIDR1:
      case REG.CIDR2:
      case REG.CIDR3:
        return CIDR_VALUES[(offset - REG.CIDR0) / 4];
      default:
        return 0; // Reserved and unimplemented registers are RES0 (6.2).
    }
  }

  private ignored(): void {
    this.ignoredRegisterWrites++;
  }

  private write32(offset: number, value: number): void {
    const smmuen = (this.cr0 & CR0_SMMUEN) !== 0;
    const cmdqen = (this.cr0 & CR0_CMDQEN) !== 0;
    const eventqen = (this.cr0 & CR0_EVENTQEN) !== 0;
    switch (offset) {
      case REG.CR0:
        this.writeCr0(value & CR0_WRITABLE);
        return;
      case REG.CR1:
        // CR1 may only change while the SMMU and both queues are disabled (6.3.11).
        if (smmuen || cmdqen || eventqen) {
          this.ignored();
          return;
        }
        this.cr1 = value & CR1_MASK;
        return;
      case REG.CR2:
        if (smmuen) {
          this.ignored();
          return;
        }
        this.cr2 = value & CR2_MASK;
        return;
      case REG.GBPA:
        // 6.3.14: fields take effect only with a write that sets Update; Update then reads 0.
        if ((value & GBPA_UPDATE) === 0) {
          this.ignored();
          return;
        }
        this.gbpa = value & GBPA_FIELDS;
        this.configChanged();
        if (this.tracer.on("config")) this.trace("config", "gbpa", { value: this.gbpa });
        return;
      case REG.IRQ_CTRL:
        this.irqCtrl = value & IRQ_CTRL_MASK;
        if (this.tracer.on("irq")) this.trace("irq", "irq_ctrl", { value: this.irqCtrl });
        return;
      case REG.GERRORN:
        this.writeGerrorn(value & GERROR_MASK);
        return;
      case REG.GERROR_IRQ_CFG0:
      case REG.GERROR_IRQ_CFG0 + 4:
      case REG.GERROR_IRQ_CFG1:
      case REG.GERROR_IRQ_CFG2:
        this.writeMsiConfig(this.gerrorIrq, IRQ_GERROR, offset - REG.GERROR_IRQ_CFG0, value);
        return;
      case REG.STRTAB_BASE:
      case REG.STRTAB_BASE + 4:
      case REG.STRTAB_BASE_CFG:
        // Stream table base registers are ignored while SMMUEN == 1 (6.3.23).
        if (smmuen) {
          this.ignored();
          return;
        }
        if (offset === REG.STRTAB_BASE) this.strtabBaseLo = (value & 0xffffffc0) >>> 0;
        else if (offset === REG.STRTAB_BASE + 4) this.strtabBaseHi = value & ((1 << 30) | 0xfffff);
        else this.strtabBaseCfg = value & 0x307ff;
        this.dropConfigCaches();
        return;
      case REG.CMDQ_BASE:
      case REG.CMDQ_BASE + 4:
        if (cmdqen) {
          this.ignored();
          return;
        }
        if (offset === REG.CMDQ_BASE) this.cmdqBaseLo = value;
        else this.cmdqBaseHi = value & ((1 << 30) | 0xfffff);
        return;
      case REG.CMDQ_PROD:
        this.cmdqProd = value & 0xfffff;
        this.processCommands(this.commandBudget);
        return;
      case REG.CMDQ_CONS:
        // CONS is read-only while the queue is enabled (6.3.26).
        if (cmdqen) {
          this.ignored();
          return;
        }
        this.cmdqCons = value & 0xfffff;
        return;
      case REG.EVENTQ_BASE:
      case REG.EVENTQ_BASE + 4:
        if (eventqen) {
          this.ignored();
          return;
        }
        if (offset === REG.EVENTQ_BASE) this.eventqBaseLo = value;
        else this.eventqBaseHi = value & ((1 << 30) | 0xfffff);
        return;
      case REG.EVENTQ_PROD:
      case REG.EVENTQ_PROD_P0:
        // PROD belongs to the SMMU while the queue is enabled (6.3.28).
        if (eventqen) {
          this.ignored();
          return;
        }
        this.eventq.writeProd(value & (0x8000_0000 | 0xfffff));
        return;
      case REG.EVENTQ_CONS:
      case REG.EVENTQ_CONS_P0:
        this.eventq.writeCons(value & (0x8000_0000 | 0xfffff));
        return;
      case REG.EVENTQ_IRQ_CFG0:
      case REG.EVENTQ_IRQ_CFG0 + 4:
      case REG.EVENTQ_IRQ_CFG1:
      case REG.EVENTQ_IRQ_CFG2:
        this.writeMsiConfig(this.eventqIrq, IRQ_EVENTQ, offset - REG.EVENTQ_IRQ_CFG0, value);
        return;
      default:
        // ID registers, ACK registers, GERROR, STATUSR and reserved space are read-only.
        this.ignored();
        return;
    }
  }

  /** IRQ configuration may change only while that interrupt is disabled (6.3.19, 6.3.31). */
  private writeMsiConfig(cfg: MsiConfig, enableBit: number, rel: number, value: number): void {
    if ((this.irqCtrl & enableBit) !== 0) {
      this.ignored();
      return;
    }
    cfg.write(rel, value);
  }

  private writeCr0(value: number): void {
    const old = this.cr0;
    if ((value & CR0_EVENTQEN) !== 0 && (old & CR0_EVENTQEN) === 0) {
      const g = decodeQueueBase(this.eventqBaseLo, this.eventqBaseHi, this.features.eventqLog2Max, 32);
      this.eventq.configure(g.baseGpa, g.log2size);
    }
    if ((value & CR0_CMDQEN) !== 0 && (old & CR0_CMDQEN) === 0) {
      const g = decodeQueueBase(this.cmdqBaseLo, this.cmdqBaseHi, this.features.cmdqLog2Max, CMD_BYTES);
      this.cmdqBaseGpa = g.baseGpa;
      this.cmdqLog2 = g.log2size;
      this.cmdqProd &= ptrMask(this.cmdqLog2);
      this.cmdqCons &= ptrMask(this.cmdqLog2);
    }
    this.cr0 = value;
    if ((value ^ old) & CR0_SMMUEN) this.configChanged();
    if (this.tracer.on("config")) this.trace("config", "cr0", { value, old });
    if ((value & CR0_CMDQEN) !== 0) this.processCommands(this.commandBudget);
  }

  // ---------------------------------------------------------------------------------------------
  // Global errors and interrupts (SMMUv3 7.5, 3.18)

  private gerrorActive(bit: number): boolean {
    return ((this.gerror ^ this.gerrorn) & bit) !== 0;
  }

  private raiseGerror(bit: number): void {
    if (this.gerrorActive(bit)) return;
    this.gerror = (this.gerror ^ bit) >>> 0;
    if (this.tracer.on("irq")) this.trace("irq", "gerror", { bit, gerror: this.gerror });
    if ((this.irqCtrl & IRQ_GERROR) !== 0) {
      const c = this.gerrorIrq;
      this.signal(c.addrLo, c.addrHi, c.data, VECTOR_GERROR, false);
    }
  }

  private writeGerrorn(value: number): void {
    const wasCmdqErr = this.gerrorActive(GERROR_CMDQ_ERR);
    this.gerrorn = value;
    // Acknowledging CMDQ_ERR restarts consumption at CONS (7.1).
    if (wasCmdqErr && !this.gerrorActive(GERROR_CMDQ_ERR)) this.processCommands(this.commandBudget);
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
    if (this.memory.isRam(address, 4)) {
      this.memory.writeU32(address, data >>> 0);
      this.msiWrites++;
      return;
    }
    this.sink.signalMsi(this.requesterId, { address, data: data >>> 0 }, vector);
  }

  // ---------------------------------------------------------------------------------------------
  // Command queue (SMMUv3 4, 7.1)

  /** Consumes up to `budget` commands now; returns how many were consumed. */
  pump(budget = this.commandBudget): number {
    return this.processCommands(budget);
  }

  /** True when commands are waiting and the queue can make progress. */
  get hasPendingCommands(): boolean {
    return (
      (this.cr0 & CR0_CMDQEN) !== 0 &&
      !this.gerrorActive(GERROR_CMDQ_ERR) &&
      !queueEmpty(this.cmdqProd, this.cmdqCons, this.cmdqLog2)
    );
  }

  private processCommands(budget: number): number {
    let done = 0;
    while (this.hasPendingCommands && done < budget) {
      const log2 = this.cmdqLog2;
      const gpa = this.cmdqBaseGpa + ptrIndex(this.cmdqCons, log2) * CMD_BYTES;
      if (!this.memory.isRam(gpa, CMD_BYTES)) {
        this.commandError(CERROR_ABT);
        break;
      }
      const m = this.memory;
      const ok = this.execute(m.readU32(gpa), m.readU32(gpa + 4), m.readU32(gpa + 8), m.readU32(gpa + 12));
      if (!ok) {
        this.commandError(CERROR_ILL);
        break;
      }
      this.cmdqCons = ptrIncrement(this.cmdqCons, log2);
      done++;
    }
    return done;
  }

  private commandError(code: number): void {
    this.commandErrors++;
    this.cmdqErr = code;
    if (this.tracer.on("queue")) this.trace("queue", "cmdq_error", { code, cons: this.cmdqCons });
    this.raiseGerror(GERROR_CMDQ_ERR);
  }

  private count(op: number): void {
    this.commandCounts[op]++;
  }

  /** Executes one command; false means CERROR_ILL (4.1.3). */
  private execute(w0: number, w1: number, w2: number, w3: number): boolean {
    const op = cmdOpcode(w0);
    const f = this.features;
    switch (op) {
      case OP.PREFETCH_CONFIG:
      case OP.PREFETCH_ADDR: {
        // Prefetches are hints: accepted and performed as no-ops (4.2). SSec=1 is ILLEGAL on
        // the Non-secure queue (4.1.6).
        if (cmdSsec(w0)) return false;
        this.count(op);
        return true;
      }
      case OP.CFGI_STE: {
        if (cmdSsec(w0)) return false;
        this.count(op);
        const sid = w1 >>> 0;
        const ep = this.ownedOrRefused(sid, "CFGI_STE");
        if (ep === undefined) return true;
        this.invalidateStreamConfig(sid);
        if (ep.kind === "assigned") this.viommu.forward({ scope: "config", pId: ep.pId });
        return true;
      }
      case OP.CFGI_STE_RANGE: {
        if (cmdSsec(w0)) return false;
        this.count(op);
        const range = cmdRange(w2);
        if (range === 31) {
          this.dropConfigCaches(); // CFGI_ALL
          for (const ep of this.viommu.endpoints()) {
            if (ep.kind === "assigned") this.viommu.forward({ scope: "config", pId: ep.pId });
          }
          return true;
        }
        const span = 2 ** (range + 1);
        const first = (w1 >>> 0) - ((w1 >>> 0) % span);
        // Walk the owned endpoints, never the (guest-sized) range.
        for (const ep of this.viommu.endpoints()) {
          if (ep.vId >= first && ep.vId < first + span) {
            this.invalidateStreamConfig(ep.vId);
            if (ep.kind === "assigned") this.viommu.forward({ scope: "config", pId: ep.pId });
          }
        }
        this.configChanged();
        return true;
      }
      case OP.CFGI_CD:
      case OP.CFGI_CD_ALL: {
        if (cmdSsec(w0)) return false;
        const ssid = cmdSsid(w0);
        this.count(op);
        // An out-of-range SubstreamID has no effect (4.1.7, CONSTRAINED UNPREDICTABLE choice).
        if (op === OP.CFGI_CD && ssid >= 2 ** f.ssidBits) return true;
        const sid = w1 >>> 0;
        const ep = this.ownedOrRefused(sid, opName(op));
        if (ep === undefined) return true;
        const cds = this.cdCache.get(sid);
        if (cds !== undefined) {
          if (op === OP.CFGI_CD_ALL) {
            this.cdCacheEntries -= cds.size;
            this.cdCache.delete(sid);
          } else if (cds.delete(ssid)) this.cdCacheEntries--;
        }
        this.configChanged();
        if (ep.kind === "assigned") {
          this.viommu.forward({ scope: "context", pId: ep.pId, ssid: op === OP.CFGI_CD ? ssid : -1 });
        }
        return true;
      }
      case OP.TLBI_NH_ALL: {
        this.count(op);
        const vmid = this.vmidOf(w1);
        this.tlb.invalidateMatching((t) => !isStage2OnlyTag(t) && tagVmid(t) === vmid);
        this.viommu.forward({ scope: "all" });
        if (this.tracer.on("invalidate")) this.trace("invalidate", "tlbi_nh_all", { vmid });
        return true;
      }
      case OP.TLBI_NH_ASID: {
        this.count(op);
        const vmid = this.vmidOf(w1);
        const asid = this.asidOf(w1);
        this.tlb.invalidateTag(stage1Tag(vmid, asid, false));
        this.tlb.invalidateTag(stage1Tag(vmid, asid, true));
        this.viommu.forward({ scope: "asid", asid });
        if (this.tracer.on("invalidate")) this.trace("invalidate", "tlbi_nh_asid", { vmid, asid });
        return true;
      }
      case OP.TLBI_NH_VA:
      case OP.TLBI_NH_VAA: {
        const tg = cmdTg(w2);
        if (!this.rangeFieldsLegal(w0, w2)) return false;
        this.count(op);
        // Address bits 63:12; VA[55] (word 3 bit 23) selects the TTB1 half, the key is VA[47:0].
        const upper = ((w3 >>> 23) & 1) === 1;
        const key = (w3 & 0xffff) * 2 ** 32 + ((w2 & 0xfffff000) >>> 0);
        const sizeBytes = this.rangeBytes(w0, tg);
        const vmid = this.vmidOf(w1);
        if (op === OP.TLBI_NH_VA) {
          const asid = this.asidOf(w1);
          const tag = stage1Tag(vmid, asid, upper);
          this.tlb.invalidateRange(tag, key, sizeBytes);
          // 4.4.2.4: global entries of the VMID are invalidated whatever ASID cached them.
          this.tlb.invalidateGlobalRange(vmid, upper, tag, key, sizeBytes);
          this.viommu.forward({ scope: "va", asid, iova: key, sizeBytes, leaf: cmdLeaf(w2) });
        } else {
          // All ASIDs of the VMID: invalidate the range in every address space (over-broad is
          // permitted; under-invalidation never is).
          this.tlb.invalidateRange(null, key, sizeBytes);
          this.viommu.forward({ scope: "vaa", iova: key, sizeBytes, leaf: cmdLeaf(w2) });
        }
        if (this.tracer.on("invalidate"))
          this.trace("invalidate", opName(op).toLowerCase(), { vmid, key, sizeBytes });
        return true;
      }
      case OP.TLBI_S12_VMALL: {
        this.count(op);
        const vmid = this.vmidOf(w1);
        this.tlb.invalidateMatching((t) => tagVmid(t) === vmid);
        if (this.tracer.on("invalidate")) this.trace("invalidate", "tlbi_s12_vmall", { vmid });
        return true;
      }
      case OP.TLBI_S2_IPA: {
        const tg = cmdTg(w2);
        if (!this.rangeFieldsLegal(w0, w2)) return false;
        this.count(op);
        const vmid = this.vmidOf(w1);
        const ipa = (w3 & 0xfffff) * 2 ** 32 + ((w2 & 0xfffff000) >>> 0);
        const sizeBytes = this.rangeBytes(w0, tg);
        this.tlb.invalidateRange(stage2Tag(vmid), ipa, sizeBytes);
        // Combined stage-1+2 entries of this VMID cannot be found by IPA: drop them all.
        this.tlb.invalidateMatching((t) => !isStage2OnlyTag(t) && tagVmid(t) === vmid);
        if (this.tracer.on("invalidate")) this.trace("invalidate", "tlbi_s2_ipa", { vmid, ipa, sizeBytes });
        return true;
      }
      case OP.TLBI_NSNH_ALL:
        this.count(op);
        this.tlb.invalidateAll();
        this.viommu.forward({ scope: "all" });
        if (this.tracer.on("invalidate")) this.trace("invalidate", "tlbi_nsnh_all", {});
        return true;
      case OP.CMD_SYNC: {
        const cs = cmdSyncCs(w0);
        if (cs === 3) return false; // CS 0b11 is reserved (4.7.3)
        this.count(op);
        this.syncs++;
        // Every earlier command has completed: the model executes them in order, synchronously.
        if (cs === CS_IRQ) {
          // MSIAddress[55:2]: the zero check covers the whole field (4.7.3).
          this.signal(w2, w3 & 0xffffff, w1, VECTOR_CMD_SYNC, true);
        } else if (cs === CS_SEV) {
          if (this.tracer.on("queue")) this.trace("queue", "sync_sev", {});
        }
        return true;
      }
      // TLBI_EL3_* need a Secure queue; TLBI_EL2_* need Hyp; ATC_INV needs ATS; PRI_RESP needs
      // PRI; RESUME/STALL_TERM need stalls. IDR0 advertises none of these, so each is ILLEGAL.
      default:
        return false;
    }
  }

  private vmidOf(w1: number): number {
    return cmdVmid(w1) & (this.features.vmid16 ? 0xffff : 0xff);
  }

  private asidOf(w1: number): number {
    return cmdAsid(w1) & (this.features.asid16 ? 0xffff : 0xff);
  }

  /**
   * 4.4.1.1: with TG != 0, NUM == 0 && SCALE == 0 && TTL == 0 is Reserved, and TTL == 0b01 with a
   * 16 KiB TG is Reserved without SMMU_IDR5.DS; both raise CERROR_ILL.
   */
  private rangeFieldsLegal(w0: number, w2: number): boolean {
    const tg = cmdTg(w2);
    if (tg === 0) return true;
    const ttl = cmdTtl(w2);
    if (cmdNum(w0) === 0 && cmdScale(w0) === 0 && ttl === 0) return false;
    return !(tg === 2 && ttl === 1);
  }

  /** Bytes covered by a TLBI: a range (RIL, 4.4.1.1) or 0 for "the leaf at Address". */
  private rangeBytes(w0: number, tg: number): number {
    const g = rangeGranuleShift(tg);
    if (g === 0) return 0;
    return Math.min((cmdNum(w0) + 1) * 2 ** cmdScale(w0) * 2 ** g, TWO48);
  }

  /** The endpoint the guest owns as `sid`, or undefined after refusing (C_BAD_STREAMID + report). */
  private ownedOrRefused(sid: number, action: string): Endpoint | undefined {
    const ep = this.viommu.endpoint(sid);
    if (ep !== undefined) return ep;
    this.ownershipViolations++;
    this.viommu.violation(sid, action);
    if ((this.cr2 & CR2_RECINVSID) !== 0) this.recordEvent(this.event.reset(EVT.C_BAD_STREAMID, sid));
    return undefined;
  }

  // ---------------------------------------------------------------------------------------------
  // Invalidation helpers

  private configChanged(): void {
    this.ownEpoch++;
    this.configEpoch++;
  }

  private invalidateStreamConfig(sid: number): void {
    this.steCache.delete(sid);
    const cds = this.cdCache.get(sid);
    if (cds !== undefined) {
      this.cdCacheEntries -= cds.size;
      this.cdCache.delete(sid);
    }
    this.configChanged();
    if (this.tracer.on("invalidate")) this.trace("invalidate", "cfgi_ste", { sid });
  }

  private dropConfigCaches(): void {
    this.steCache.clear();
    this.cdCache.clear();
    this.cdCacheEntries = 0;
    this.configChanged();
  }

  // ---------------------------------------------------------------------------------------------
  // Events (SMMUv3 7.3)

  /** Writes an event record for the current transaction's stream; raises IRQ / EVENTQ_ABT. */
  private recordEvent(e: EventRecord): void {
    const name = eventName(e.type);
    this.faultCounts[name] = (this.faultCounts[name] ?? 0) + 1;
    const enabled = (this.cr0 & CR0_EVENTQEN) !== 0 && !this.gerrorActive(GERROR_EVENTQ_ABT);
    // 7.3.1: events that can arise before an STE is found may always merge; others per STE.MEV.
    const mergeable =
      e.type === EVT.F_UUT ||
      e.type === EVT.C_BAD_STREAMID ||
      e.type === EVT.F_STE_FETCH ||
      e.type === EVT.C_BAD_STE ||
      this.curMergeEvents;
    const { result, overflowSignalled } = this.eventq.push(e, enabled, mergeable);
    if (this.tracer.on("fault")) {
      this.trace("fault", name.toLowerCase(), { sid: e.streamId, ssid: e.ssv ? e.substreamId : -1, result });
    }
    if (result === "abort") this.raiseGerror(GERROR_EVENTQ_ABT);
    if ((result === "written" || overflowSignalled) && (this.irqCtrl & IRQ_EVENTQ) !== 0) {
      const c = this.eventqIrq;
      this.signal(c.addrLo, c.addrHi, c.data, VECTOR_EVENTQ, false);
    }
  }

  /** Builds the fault for the current transaction, recording an event when `record`. */
  private fail(
    type: number,
    record: boolean,
    s2: boolean,
    cls: number,
    ipa: number,
    fetchAddr: number,
    addrKind: "none" | "ipa" | "fetch",
  ): DmaFault {
    const access: Access = this.curWrite ? ACCESS_WRITE : 1;
    if (record) {
      const e = this.event.reset(type, this.curSid);
      // C_BAD_SUBSTREAMID always carries the SubstreamID and has no SSV bit (7.3.9).
      e.ssv = this.curSsid >= 0 && type !== EVT.C_BAD_SUBSTREAMID;
      e.substreamId = Math.max(this.curSsid, 0);
      e.rnw = !this.curWrite;
      e.pnu = this.curPrivileged;
      e.ind = this.curInstruction && !this.curWrite;
      e.s2 = s2;
      e.cls = cls;
      // TTRnW (bit 44): the stage-1 walk access that took a stage-2 Permission fault was a read.
      e.ttRead = type === EVT.F_PERMISSION && s2 && cls === CLASS_TT;
      e.inputAddr = this.curInputKnown ? this.curInput : BigInt(this.curIova);
      e.ipa = ipa;
      e.fetchAddr = fetchAddr;
      e.addrKind = addrKind;
      this.recordEvent(e);
      const ep = this.viommu.endpoint(this.curSid);
      const f = dmaFault(faultReason(type), this.curSid, this.curIova, access, type, eventName(type));
      if (ep !== undefined) this.viommu.guestFault(ep, f);
      return f;
    }
    this.unrecordedFaults++;
    return dmaFault(
      faultReason(type),
      this.curSid,
      this.curIova,
      access,
      type,
      `${eventName(type)} (not recorded)`,
    );
  }

  private failConfig(type: number): DmaFault {
    // C_BAD_STREAMID is recorded only when CR2.RECINVSID == 1 (7.3.3).
    const record = type !== EVT.C_BAD_STREAMID || (this.cr2 & CR2_RECINVSID) !== 0;
    return this.fail(type, record, false, 0, 0, 0, "none");
  }

  /** A stage-1 or stage-2 walk fault from `r`. */
  private failWalk(r: WalkResult, stage1Record: boolean, s2Record: boolean): DmaFault {
    if (r.fault === EVT.F_WALK_EABT) {
      // 7.3.12: an abort on a stage-1 descriptor access is S2 == 0, CLASS == TT.
      const cls = r.faultS2 ? r.faultClass : CLASS_TT;
      return this.fail(EVT.F_WALK_EABT, true, r.faultS2, cls, 0, r.fetchAddr, "fetch");
    }
    if (r.faultS2) return this.fail(r.fault, s2Record, true, r.faultClass, r.faultIpa, 0, "ipa");
    return this.fail(r.fault, stage1Record, false, CLASS_IN, 0, 0, "none");
  }

  // ---------------------------------------------------------------------------------------------
  // Configuration lookup (SMMUv3 3.3)

  private readWords(gpa: number, bytes: number): boolean {
    if (!this.memory.isRam(gpa, bytes)) return false;
    let view: Uint8Array;
    try {
      view = this.memory.view(gpa, bytes);
    } catch (e) {
      // RAM without bytes to view (vfio-user memory reached by messages): not usable here.
      if (e instanceof GuestMemoryError) return false;
      throw e;
    }
    for (let i = 0; i < bytes / 4; i++) {
      this.words[i] =
        view[i * 4] | (view[i * 4 + 1] << 8) | (view[i * 4 + 2] << 16) | (view[i * 4 + 3] << 24);
    }
    return true;
  }

  /** The STE of `sid`, from the cache or the stream table; a fault when it cannot be used. */
  private stream(sid: number): StreamConfig | DmaFault {
    const cached = this.steCache.get(sid);
    if (cached !== undefined) {
      this.steHits++;
      return cached;
    }
    this.steMisses++;
    const cfg = this.strtabBaseCfg;
    const log2size = Math.min(cfg & 0x3f, this.features.sidBits);
    const fmt = (cfg >>> 16) & 3;
    const base = (this.strtabBaseHi & 0xfffff) * 2 ** 32 + this.strtabBaseLo;
    if (sid >= 2 ** log2size) return this.failConfig(EVT.C_BAD_STREAMID);
    let steGpa: number;
    if (fmt === STRTAB_FMT_LINEAR) {
      steGpa = base + sid * STE_BYTES;
    } else if (fmt === STRTAB_FMT_2LVL) {
      const split = (cfg >>> 6) & 0x1f;
      // SPLIT other than 6, 8 or 10 is reserved; it behaves as 6 here (CONSTRAINED UNPREDICTABLE).
      const s = split === 8 || split === 10 ? split : 6;
      const l1Gpa = base + Math.floor(sid / 2 ** s) * 8;
      if (!this.readWords(l1Gpa, 8)) return this.fail(EVT.F_STE_FETCH, true, false, 0, 0, l1Gpa, "fetch");
      const span = this.words[0] & 0x1f;
      // Span 0 marks an invalid L1 descriptor; Span > SPLIT+1 is reserved (5.1.2).
      if (span === 0 || span > s + 1) return this.failConfig(EVT.C_BAD_STREAMID);
      const low = sid % 2 ** s;
      if (low >= 2 ** (span - 1)) return this.failConfig(EVT.C_BAD_STREAMID);
      const l2 = (this.words[1] & 0xfffff) * 2 ** 32 + ((this.words[0] & 0xffffffc0) >>> 0);
      steGpa = l2 + low * STE_BYTES;
    } else {
      // FMT 0b1x is reserved: no stream is reachable (CONSTRAINED UNPREDICTABLE choice).
      return this.failConfig(EVT.C_BAD_STREAMID);
    }
    if (!this.readWords(steGpa, STE_BYTES))
      return this.fail(EVT.F_STE_FETCH, true, false, 0, 0, steGpa, "fetch");
    const d = decodeSte(this.words, this.features);
    if (!d.ok) {
      if (this.tracer.on("config")) this.trace("config", "bad_ste", { sid, why: d.why });
      return this.failConfig(d.event);
    }
    this.steCache.set(sid, d.value);
    return d.value;
  }

  /** Translates a configuration-structure IPA through the stream's stage 2 (nested only). */
  private stage2ForFetch(ipa: number, cls: number, r: WalkResult): number {
    const s2 = this.nestedS2;
    if (s2 === null) return ipa;
    const tag = stage2Tag(this.nestedVmid);
    const h = this.hit;
    if (ipa < 2 ** s2.inputBits && this.tlb.lookup(tag, ipa, h) && (h.perms & P_PR) !== 0) {
      return h.gpaBase + (ipa - h.iovaBase);
    }
    const f = this.rFetch;
    f.clearFault();
    if (ipa >= 2 ** s2.inputBits) return this.fetchFault(r, EVT.F_TRANSLATION, cls, ipa, 0);
    if (!walk(s2, ipa, this.physFetcher, f)) return this.fetchFault(r, f.fault, cls, ipa, f.fetchAddr);
    if ((f.perms & P_PR) === 0) return this.fetchFault(r, EVT.F_PERMISSION, cls, ipa, 0);
    this.tlb.insert(tag, ipa, f.inputBase, f.outputBase, f.blockBytes, f.perms, f.inputBase, f.blockBytes);
    return f.outputBase + (ipa - f.inputBase);
  }

  /** Records a stage-2 fault of a structure fetch in `r`; returns -1. */
  private fetchFault(r: WalkResult, type: number, cls: number, ipa: number, fetchAddr: number): number {
    r.fault = type;
    r.faultS2 = true;
    r.faultClass = cls;
    r.faultIpa = ipa;
    r.fetchAddr = fetchAddr;
    return -1;
  }

  /** The CD at `index` of the stream's CD table (5.4, 3.3.2). */
  private context(sid: number, ste: StreamConfig, index: number): ContextConfig | DmaFault {
    let cds = this.cdCache.get(sid);
    const cached = cds?.get(index);
    if (cached !== undefined) {
      this.cdHits++;
      return cached;
    }
    this.cdMisses++;
    let cdIpa: number;
    if (ste.s1CdMax === 0 || ste.s1Fmt === 0) {
      cdIpa = ste.cdTableBase + index * CD_BYTES;
    } else {
      const leafBits = ste.s1Fmt === S1FMT_2LVL_4K ? 6 : ste.s1Fmt === S1FMT_2LVL_64K ? 10 : 0;
      const l1Ipa = ste.cdTableBase + Math.floor(index / 2 ** leafBits) * 8;
      const l1Pa = this.stage2ForFetch(l1Ipa, CLASS_CD, this.r2);
      if (l1Pa < 0) return this.failStage2Fetch(this.r2, ste);
      if (!this.readWords(l1Pa, 8)) return this.fail(EVT.F_CD_FETCH, true, false, 0, 0, l1Pa, "fetch");
      // L1CD.V == 0: the SubstreamID has no CD table (C_BAD_SUBSTREAMID, 5.3).
      if ((this.words[0] & 1) === 0) return this.failConfig(EVT.C_BAD_SUBSTREAMID);
      const l2 = (this.words[1] & 0xfffff) * 2 ** 32 + ((this.words[0] & 0xfffff000) >>> 0);
      // An L1CD.L2Ptr beyond the address size is C_BAD_SUBSTREAMID too (7.3.9).
      if (l2 >= 2 ** OAS_BITS) return this.failConfig(EVT.C_BAD_SUBSTREAMID);
      cdIpa = l2 + (index % 2 ** leafBits) * CD_BYTES;
    }
    const cdPa = this.stage2ForFetch(cdIpa, CLASS_CD, this.r2);
    if (cdPa < 0) return this.failStage2Fetch(this.r2, ste);
    if (!this.readWords(cdPa, CD_BYTES)) return this.fail(EVT.F_CD_FETCH, true, false, 0, 0, cdPa, "fetch");
    const d: Decoded<ContextConfig> = decodeCd(this.words, this.features);
    if (!d.ok) {
      if (this.tracer.on("config")) this.trace("config", "bad_cd", { sid, ssid: index, why: d.why });
      return this.failConfig(d.event);
    }
    if (this.cdCacheEntries >= this.cdCacheLimit) {
      this.cdCache.clear();
      this.cdCacheEntries = 0;
    }
    cds = this.cdCache.get(sid);
    if (cds === undefined) {
      cds = new Map();
      this.cdCache.set(sid, cds);
    }
    cds.set(index, d.value);
    this.cdCacheEntries++;
    return d.value;
  }

  private failStage2Fetch(r: WalkResult, ste: StreamConfig): DmaFault {
    if (r.fault === EVT.F_WALK_EABT) {
      return this.fail(EVT.F_WALK_EABT, true, true, r.faultClass, 0, r.fetchAddr, "fetch");
    }
    return this.fail(r.fault, ste.s2Record, true, r.faultClass, r.faultIpa, 0, "ipa");
  }

  // ---------------------------------------------------------------------------------------------
  // Translation (SMMUv3 3.2-3.4)

  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.curInputKnown = false;
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
          smmu.curInputKnown = false;
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
    this.curInputKnown = true;
    this.curInput = va;
    const f = this.translateStream(sid, ssid, -1, access, this.va64Out);
    if (f !== null) return f;
    const t = this.va64Out;
    return t.gpaBase + (Number(va & 0xffff_ffff_ffffn) - t.iovaBase);
  }

  /**
   * The translation of one transaction. `iova` < 0 means "use curInput" (64-bit path). The
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
    const write = access === ACCESS_WRITE;
    // Fast path: same stream context as last time, configuration unchanged, IOTLB hit. After a
    // fast-path miss the slow path does not look the TLB up again (one miss is one miss).
    let lookedTag = -1;
    if (
      sid === this.fastSid &&
      ssid === this.fastSsid &&
      this.configEpoch === this.fastConfigEpoch &&
      this.viommu.epoch === this.fastViommuEpoch &&
      !this.curInputKnown &&
      iova >= 0 &&
      iova < this.fastLimit &&
      Number.isInteger(iova)
    ) {
      const h = this.hit;
      const priv = this.fastPrivileged;
      const inst = this.fastInstruction;
      if (this.tlb.lookup(this.fastTag, iova, h) && permits(h.perms, write, priv, inst)) {
        out.set(h.iovaBase, h.gpaBase, h.sizeBytes, enginePerms(h.perms, priv, inst));
        return null;
      }
      lookedTag = this.fastTag;
    }
    this.tlb.pruneTags();
    this.curSid = sid;
    this.curSsid = ssid;
    this.curWrite = write;
    this.curPrivileged = false;
    this.curInstruction = false;
    this.curMergeEvents = false;
    // Split the input into the top 16 bits and the 48-bit key.
    let hi16: number;
    let key: number;
    if (this.curInputKnown) {
      const va = this.curInput;
      if (va < 0n || va >= 1n << 64n) {
        this.curIova = 0;
        this.curInput = BigInt.asUintN(64, va);
        return this.fail(EVT.F_UUT, true, false, 0, 0, 0, "none");
      }
      hi16 = Number(va >> 48n);
      key = Number(va & 0xffff_ffff_ffffn);
      this.curIova = key;
    } else {
      if (!Number.isSafeInteger(iova) || iova < 0) {
        this.curIova = 0;
        return this.fail(EVT.F_UUT, true, false, 0, 0, 0, "none");
      }
      hi16 = Math.floor(iova / TWO48);
      key = iova % TWO48;
      this.curIova = iova;
    }
    if (!Number.isInteger(sid) || sid < 0 || sid >= 2 ** 32) {
      this.curSid = 0;
      return this.fail(EVT.F_UUT, true, false, 0, 0, 0, "none");
    }
    // SMMUEN == 0: GBPA decides, and nothing is recorded (6.3.14).
    if ((this.cr0 & CR0_SMMUEN) === 0) {
      if ((this.gbpa & GBPA_ABORT) !== 0 || hi16 !== 0) {
        return dmaFault("blocked", sid, this.curIova, access, 0, "SMMU disabled, GBPA.ABORT");
      }
      return this.output(sid, key, 0, TWO48, 0, P_UR | P_UW | P_PR | P_PW, access, out, -1, 0, 0);
    }
    const ep = this.viommu.endpoint(sid);
    if (ep === undefined) return this.failConfig(EVT.C_BAD_STREAMID);
    if (ssid >= 0 && (!Number.isInteger(ssid) || ssid >= 2 ** this.features.ssidBits)) {
      this.curSsid = Number.isInteger(ssid) ? ssid % 2 ** 20 : 0;
      return this.failConfig(EVT.C_BAD_SUBSTREAMID);
    }
    const ste = this.stream(sid);
    if ("reason" in ste) return ste;
    this.curPrivileged = ste.privileged;
    this.curInstruction = ste.instruction;
    this.curMergeEvents = ste.mergeEvents;
    if (ste.config === STE_CFG_ABORT) {
      // Config abort: terminated without an event (5.2).
      return dmaFault("blocked", sid, this.curIova, access, 0, "STE.Config abort");
    }
    let stage1 = ste.stage1;
    let cdIndex = 0;
    if (stage1) {
      if (ssid >= 0) {
        if (ste.s1CdMax === 0 || ssid >= 2 ** ste.s1CdMax) return this.failConfig(EVT.C_BAD_SUBSTREAMID);
        // CD 0 is reserved for non-substream traffic when S1DSS == 0b10 (7.3.7).
        if (ste.s1Dss === S1DSS_SSID0 && ssid === 0) return this.failConfig(EVT.F_STREAM_DISABLED);
        cdIndex = ssid;
      } else if (ste.s1CdMax !== 0) {
        if (ste.s1Dss === S1DSS_TERMINATE) return this.failConfig(EVT.F_STREAM_DISABLED);
        if (ste.s1Dss === S1DSS_BYPASS) stage1 = false;
      }
    } else if (ssid >= 0) {
      // A SubstreamID on a stream without stage 1 (5.2, S1CDMax).
      return this.failConfig(EVT.C_BAD_SUBSTREAMID);
    }
    if (!stage1 && !ste.stage2) {
      // Bypass (STE.Config bypass, or S1DSS bypass of a stage-1-only stream): the input must fit
      // the output size (F_ADDR_SIZE otherwise, 7.3.14).
      if (hi16 !== 0) return this.fail(EVT.F_ADDR_SIZE, true, false, CLASS_IN, 0, 0, "none");
      return this.output(
        sid,
        key,
        0,
        TWO48,
        0,
        P_UR | P_UW | P_PR | P_PW | P_UX | P_PX,
        access,
        out,
        -1,
        0,
        0,
      );
    }
    this.nestedS2 = ste.stage2 ? ste.s2 : null;
    this.nestedVmid = ste.vmid;
    if (!stage1) return this.translateS2Only(ste, hi16, key, access, out);
    const cd = this.context(sid, ste, cdIndex);
    if ("reason" in cd) return cd;
    // VA[55] selects TTB1; bits 63:56 must match it unless TBI ignores them (Arm ARM D8.8).
    const upper = ((hi16 >>> 7) & 1) === 1;
    const fill = upper ? 0xff : 0;
    const tbi = upper ? cd.tbi1 : cd.tbi0;
    const region = upper ? cd.ttb1 : cd.ttb0;
    if ((hi16 & 0xff) !== fill || (!tbi && hi16 >>> 8 !== fill) || region === null) {
      return this.fail(EVT.F_TRANSLATION, cd.record, false, CLASS_IN, 0, 0, "none");
    }
    const regionBase = upper ? TWO48 - 2 ** region.inputBits : 0;
    if (upper ? key < regionBase : key >= 2 ** region.inputBits) {
      return this.fail(EVT.F_TRANSLATION, cd.record, false, CLASS_IN, 0, 0, "none");
    }
    const tag = stage1Tag(ste.vmid, cd.asid, upper);
    if (!upper) {
      this.fastSid = sid;
      this.fastSsid = ssid;
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
      permits(h.perms, write, ste.privileged, ste.instruction)
    ) {
      out.set(h.iovaBase, h.gpaBase, h.sizeBytes, enginePerms(h.perms, ste.privileged, ste.instruction));
      return null;
    }
    // Stage-1 walk.
    const r = this.r1;
    r.clearFault();
    const input = key - regionBase;
    if (!walk(region, input, ste.stage2 ? this.nestedFetcher : this.physFetcher, r)) {
      return this.failWalk(r, cd.record, ste.s2Record);
    }
    if (!permits(r.perms, write, ste.privileged, ste.instruction)) {
      return this.fail(EVT.F_PERMISSION, cd.record, false, CLASS_IN, 0, 0, "none");
    }
    if (!r.nonGlobal) this.tlb.markGlobal(tag);
    const s1In = r.inputBase + regionBase;
    const s1Bytes = r.blockBytes;
    let outBase = r.outputBase;
    let inBase = s1In;
    let bytes = s1Bytes;
    let perms = r.perms;
    if (ste.stage2 && ste.s2 !== null) {
      const ipa = r.outputBase + (key - s1In);
      const s2 = this.stage2Output(ste, ipa, write);
      if (s2 !== null) return s2;
      // Intersect the stage-1 block with the stage-2 block around the IPA.
      const r2 = this.r2;
      const ipaLo = Math.max(r.outputBase, r2.inputBase);
      const ipaHi = Math.min(r.outputBase + s1Bytes, r2.inputBase + r2.blockBytes);
      inBase = s1In + (ipaLo - r.outputBase);
      bytes = ipaHi - ipaLo;
      outBase = r2.outputBase + (ipaLo - r2.inputBase);
      perms &= r2.perms;
    }
    return this.output(sid, key, inBase, bytes, outBase, perms, access, out, tag, s1In, s1Bytes);
  }

  /** Stage-2 translation of a transaction's IPA into r2; a fault (CLASS IN) or null. */
  private stage2Output(ste: StreamConfig, ipa: number, write: boolean): DmaFault | null {
    const s2 = ste.s2!;
    const r2 = this.r2;
    r2.clearFault();
    if (ipa >= 2 ** s2.inputBits) {
      return this.fail(EVT.F_TRANSLATION, ste.s2Record, true, CLASS_IN, ipa, 0, "ipa");
    }
    const tag = stage2Tag(ste.vmid);
    const h = this.hit;
    if (this.tlb.lookup(tag, ipa, h) && permits(h.perms, write, ste.privileged, ste.instruction)) {
      r2.inputBase = h.iovaBase;
      r2.outputBase = h.gpaBase;
      r2.blockBytes = h.sizeBytes;
      r2.perms = h.perms;
      return null;
    }
    if (!walk(s2, ipa, this.physFetcher, r2)) {
      if (r2.fault === EVT.F_WALK_EABT)
        return this.fail(EVT.F_WALK_EABT, true, true, CLASS_IN, 0, r2.fetchAddr, "fetch");
      return this.fail(r2.fault, ste.s2Record, true, CLASS_IN, ipa, 0, "ipa");
    }
    if (!permits(r2.perms, write, ste.privileged, ste.instruction)) {
      return this.fail(EVT.F_PERMISSION, ste.s2Record, true, CLASS_IN, ipa, 0, "ipa");
    }
    this.tlb.insert(
      tag,
      ipa,
      r2.inputBase,
      r2.outputBase,
      r2.blockBytes,
      r2.perms,
      r2.inputBase,
      r2.blockBytes,
    );
    return null;
  }

  private translateS2Only(
    ste: StreamConfig,
    hi16: number,
    key: number,
    access: Access,
    out: Translation,
  ): DmaFault | null {
    const s2 = ste.s2!;
    // Stage 1 bypassed: an input beyond the implemented address size is a stage-1 F_ADDR_SIZE
    // (7.3.14, CLASS IN, S2 == 0); beyond S2T0SZ it is a stage-2 F_TRANSLATION.
    if (hi16 !== 0) return this.fail(EVT.F_ADDR_SIZE, true, false, CLASS_IN, 0, 0, "none");
    if (key >= 2 ** s2.inputBits) {
      return this.fail(EVT.F_TRANSLATION, ste.s2Record, true, CLASS_IN, key, 0, "ipa");
    }
    const f = this.stage2Output(ste, key, access === ACCESS_WRITE);
    if (f !== null) return f;
    const r2 = this.r2;
    return this.output(
      this.curSid,
      key,
      r2.inputBase,
      r2.blockBytes,
      r2.outputBase,
      r2.perms,
      access,
      out,
      -1,
      0,
      0,
    );
  }

  /**
   * Finishes a translation: applies the host stage 2 (when the host constrains this guest),
   * caches the result under `tag` (unless tag < 0) and fills `out` in engine terms.
   */
  private output(
    sid: number,
    key: number,
    inBase: number,
    inBytes: number,
    outBase: number,
    perms: number,
    access: Access,
    out: Translation,
    tag: number,
    leafBase: number,
    leafBytes: number,
  ): DmaFault | null {
    let base = inBase;
    let bytes = inBytes;
    let pa = outBase;
    let p = perms;
    const host = this.viommu.hostStage2;
    if (host !== null) {
      const ipa = outBase + (key - inBase);
      const ho = this.hostOut;
      const hf = host.translate(sid, ipa, access, ho);
      if (hf !== null) {
        this.hostStage2Faults++;
        const ep = this.viommu.endpoint(sid);
        const f = dmaFault(hf.reason, sid, this.curIova, access, 0, hf.detail);
        if (ep !== undefined) this.viommu.hostFault(ep, f);
        return f;
      }
      const lo = Math.max(outBase, ho.iovaBase);
      const hi = Math.min(outBase + inBytes, ho.iovaBase + ho.sizeBytes);
      base = inBase + (lo - outBase);
      bytes = hi - lo;
      pa = ho.gpaBase + (lo - ho.iovaBase);
      if ((ho.perms & PERM_READ) === 0) p &= ~(P_UR | P_PR | P_UX | P_PX);
      if ((ho.perms & PERM_WRITE) === 0) p &= ~(P_UW | P_PW);
    }
    if (tag >= 0) this.tlb.insert(tag, key, base, pa, bytes, p, leafBase, leafBytes);
    const ep = enginePerms(p, this.curPrivileged, this.curInstruction);
    out.set(base, pa, bytes, ep);
    return null;
  }

  // ---------------------------------------------------------------------------------------------

  private trace(
    category: "config" | "queue" | "invalidate" | "fault" | "irq",
    name: string,
    fields: Record<string, number | string | boolean>,
  ): void {
    if (this.tracer.on(category)) this.tracer.emit(category, "smmuv3", name, fields);
  }

  private commandsByName(): Record<string, number> {
    const out: Record<string, number> = {};
    for (let op = 0; op < 256; op++) if (this.commandCounts[op] > 0) out[opName(op)] = this.commandCounts[op];
    return out;
  }

  stats(): SmmuV3Stats {
    return {
      translations: this.translations,
      faults: { ...this.faultCounts },
      unrecordedFaults: this.unrecordedFaults,
      hostStage2Faults: this.hostStage2Faults,
      iotlb: this.tlb.stats(),
      steCache: { entries: this.steCache.size, hits: this.steHits, misses: this.steMisses },
      cdCache: { entries: this.cdCacheEntries, hits: this.cdHits, misses: this.cdMisses },
      commands: this.commandsByName(),
      commandErrors: this.commandErrors,
      syncs: this.syncs,
      msiWrites: this.msiWrites,
      interrupts: this.interruptCount,
      eventQueue: this.eventq.stats(),
      badRegisterAccesses: this.badRegisterAccesses,
      ignoredRegisterWrites: this.ignoredRegisterWrites,
      ownershipViolations: this.ownershipViolations,
    };
  }
}
