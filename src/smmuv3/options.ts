/**
 * How an SMMUv3 is built (`SmmuV3Options`), what it counts (`SmmuV3Stats`), and the interrupt
 * vectors it signals.
 */
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import type { ViommuInstance } from "../framework/viommu.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import type { EventQueueStats } from "./event-queue.ts";
import type { SmmuFeatures } from "./regs.ts";
import type { SmmuTlbStats } from "./tlb.ts";

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
