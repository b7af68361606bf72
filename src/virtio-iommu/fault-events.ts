/**
 * Fault records for the event queue (5.13.6.9) and the bounded queue that holds them until the
 * transport has an eventq buffer.
 *
 * A guest-driven device can fault at any rate, so records are limited three ways: a total
 * queue depth; per endpoint, a limit on records not yet taken (one flooding endpoint cannot fill
 * the queue and hide the others' faults); and per endpoint, a token bucket on the rate of records
 * (so a driver that keeps the eventq stocked is not stormed with reports). Dropping is allowed:
 * "If no buffer is available, the device can either wait for one to be consumed, or drop the
 * event" (5.13.6.9). Every drop is counted by cause.
 */
import { writeU32Le, writeU64Le } from "../engine/little-endian.ts";
import { FAULT_RECORD_BYTES } from "./wire.ts";

/** Encodes a 24-byte virtio_iommu_fault; reserved fields are zero (5.13.6.9.2). */
export function encodeFaultRecord(
  reason: number,
  flags: number,
  endpointId: number,
  address: number,
): Uint8Array {
  const b = new Uint8Array(FAULT_RECORD_BYTES);
  b[0] = reason;
  writeU32Le(b, 4, flags);
  writeU32Le(b, 8, endpointId);
  writeU64Le(b, 16, address);
  return b;
}

export interface DecodedFaultRecord {
  readonly reason: number;
  readonly reservedNonZero: boolean;
  readonly flags: number;
  readonly endpointId: number;
  readonly address: bigint;
}

export function decodeFaultRecord(b: Uint8Array): DecodedFaultRecord {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    reason: v.getUint8(0),
    reservedNonZero: v.getUint8(1) !== 0 || v.getUint16(2, true) !== 0 || v.getUint32(12, true) !== 0,
    flags: v.getUint32(4, true),
    endpointId: v.getUint32(8, true),
    address: v.getBigUint64(16, true),
  };
}

/** What the queue keeps per endpoint a record belongs to. */
export interface EventSource {
  pendingEvents: number;
  eventsDropped: number;
  /** Token bucket state: records the endpoint may still report now, and when it was refilled. */
  eventTokens: number;
  eventTokensAtMs: number;
}

export interface FaultEventLimits {
  /** Records held in total. */
  readonly depth: number;
  /** Records of one endpoint not yet taken. */
  readonly maxPendingPerSource: number;
  /** Sustained records per second per endpoint. */
  readonly ratePerSecond: number;
  /** Records an endpoint may report in a burst (the bucket size). */
  readonly burst: number;
}

export class FaultEventQueue {
  readonly depth: number;
  readonly maxPendingPerSource: number;
  readonly ratePerSecond: number;
  readonly burst: number;
  private readonly records: (Uint8Array | undefined)[];
  private readonly sources: (EventSource | undefined)[];
  private head = 0;
  private count = 0;
  queued = 0;
  taken = 0;
  droppedQueueFull = 0;
  droppedSourceLimit = 0;
  droppedRateLimit = 0;

  constructor(limits: FaultEventLimits) {
    this.depth = limits.depth;
    this.maxPendingPerSource = limits.maxPendingPerSource;
    this.ratePerSecond = limits.ratePerSecond;
    this.burst = limits.burst;
    this.records = new Array(limits.depth);
    this.sources = new Array(limits.depth);
  }

  get pending(): number {
    return this.count;
  }

  /** A new endpoint starts with a full bucket. */
  initSource(source: EventSource, nowMs: number): void {
    source.eventTokens = this.burst;
    source.eventTokensAtMs = nowMs;
  }

  /** Queues a record reported at `nowMs`; false (and counted) when a limit drops it. */
  push(source: EventSource, record: Uint8Array, nowMs: number): boolean {
    const elapsedMs = nowMs - source.eventTokensAtMs;
    if (elapsedMs > 0) {
      source.eventTokens = Math.min(this.burst, source.eventTokens + (elapsedMs * this.ratePerSecond) / 1000);
      source.eventTokensAtMs = nowMs;
    }
    if (source.eventTokens < 1) {
      this.droppedRateLimit++;
      source.eventsDropped++;
      return false;
    }
    if (source.pendingEvents >= this.maxPendingPerSource) {
      this.droppedSourceLimit++;
      source.eventsDropped++;
      return false;
    }
    if (this.count >= this.depth) {
      this.droppedQueueFull++;
      source.eventsDropped++;
      return false;
    }
    const i = (this.head + this.count) % this.depth;
    this.records[i] = record;
    this.sources[i] = source;
    this.count++;
    source.pendingEvents++;
    source.eventTokens -= 1;
    this.queued++;
    return true;
  }

  take(): Uint8Array | undefined {
    if (this.count === 0) return undefined;
    const i = this.head;
    const record = this.records[i];
    const source = this.sources[i];
    this.records[i] = undefined;
    this.sources[i] = undefined;
    this.head = (i + 1) % this.depth;
    this.count--;
    if (source !== undefined) source.pendingEvents--;
    this.taken++;
    return record;
  }

  /** Drops everything pending (device reset). */
  clear(): void {
    while (this.count > 0) {
      const i = this.head;
      const source = this.sources[i];
      if (source !== undefined) source.pendingEvents--;
      this.records[i] = undefined;
      this.sources[i] = undefined;
      this.head = (i + 1) % this.depth;
      this.count--;
    }
  }
}
