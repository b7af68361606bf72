/**
 * Fault records for the event queue (5.13.6.9) and the bounded queue that holds them until the
 * transport has an eventq buffer.
 *
 * A guest-driven device can fault at any rate, so the queue is bounded twice: a total depth,
 * and a per-endpoint limit on records not yet taken, which throttles each endpoint to the rate
 * the driver consumes its reports and keeps one flooding endpoint from hiding the faults of the
 * others. Dropping is allowed: "If no buffer is available, the device can either wait for one to
 * be consumed, or drop the event" (5.13.6.9). Every drop is counted.
 */
import { writeU32, writeU64 } from "./requests.ts";
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
  writeU32(b, 4, flags);
  writeU32(b, 8, endpointId);
  writeU64(b, 16, address);
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

/** What the queue needs to know of the endpoint a record belongs to. */
export interface EventSource {
  pendingEvents: number;
  eventsDropped: number;
}

export class FaultEventQueue {
  readonly depth: number;
  readonly maxPendingPerSource: number;
  private readonly records: (Uint8Array | undefined)[];
  private readonly sources: (EventSource | undefined)[];
  private head = 0;
  private count = 0;
  queued = 0;
  taken = 0;
  droppedQueueFull = 0;
  droppedSourceLimit = 0;

  constructor(depth: number, maxPendingPerSource: number) {
    this.depth = depth;
    this.maxPendingPerSource = maxPendingPerSource;
    this.records = new Array(depth);
    this.sources = new Array(depth);
  }

  get pending(): number {
    return this.count;
  }

  /** Queues a record; false (and counted) when a bound drops it. */
  push(source: EventSource, record: Uint8Array): boolean {
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
