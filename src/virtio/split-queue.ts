/**
 * The device side of a split virtqueue (VIRTIO 1.3 2.7), independent of transport and device.
 *
 * Every ring and buffer access goes through the queue's `DmaAddressSpace`, so with
 * VIRTIO_F_ACCESS_PLATFORM the addresses are IOVAs translated by the IOMMU. Nothing here
 * throws on guest data: a malformed ring or chain makes `pop` return POP_ERROR with the reason
 * in `brokenReason`, and the queue stays broken (the transport then sets DEVICE_NEEDS_RESET and
 * sends a configuration change notification, 2.1.2). Rules enforced on each chain (2.7.5.3.1,
 * 2.7.5.3.2 and QEMU's equivalents where the specification leaves the device's answer open):
 *   - head and next indices below the queue size (inside the indirect table for indirect chains)
 *   - no chain longer than the queue size (the table size inside an indirect table): no loops
 *   - INDIRECT only when negotiated, not together with NEXT, never inside an indirect table,
 *     table length a non-zero multiple of 16
 *   - no zero-length buffer and no buffer beyond 2^53 (the engine's address limit)
 *   - every device-writable descriptor after every device-readable one
 *   - total chain length below 2^32 bytes
 *   - the driver never makes more than `size` new buffers available at once (avail.idx sanity)
 *
 * VIRTIO_F_EVENT_IDX (2.7.10): after each pop the device publishes avail_event = next avail index
 * it will read; interrupts are suppressed unless used_event falls in the newly used range.
 * Without it, avail.flags VIRTQ_AVAIL_F_NO_INTERRUPT suppresses them (2.7.7).
 *
 * Memory ordering: the device re-reads avail.idx after publishing avail_event and reads
 * used_event after writing used.idx, in program order. JavaScript cannot emit a store-load
 * fence on plain memory, so a host whose vCPUs run concurrently with device code (not the
 * synchronous hosts here, where the guest is stopped during the access) relies on the driver's
 * own barriers and the next notification for the x86 store-load window.
 */
import type { DmaFault } from "../engine/access.ts";
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import * as C from "./constants.ts";
import { RingWindow } from "./ring-window.ts";

// Module-local copies of hot constants: under tsx, imported bindings are read through getter
// calls, which showed up as ~10 % of a request round trip in the profile.
const DESCRIPTOR_SIZE = C.DESCRIPTOR_SIZE;
const MAX_QUEUE_SIZE = C.MAX_QUEUE_SIZE;
const VIRTQ_AVAIL_F_NO_INTERRUPT = C.VIRTQ_AVAIL_F_NO_INTERRUPT;
const VIRTQ_DESC_F_INDIRECT = C.VIRTQ_DESC_F_INDIRECT;
const VIRTQ_DESC_F_NEXT = C.VIRTQ_DESC_F_NEXT;
const VIRTQ_DESC_F_WRITE = C.VIRTQ_DESC_F_WRITE;

export const POP_EMPTY = 0;
export const POP_CHAIN = 1;
export const POP_ERROR = -1;
export type PopResult = typeof POP_EMPTY | typeof POP_CHAIN | typeof POP_ERROR;

const MAX_ADDRESS_EXCLUSIVE = 2 ** 53;

/**
 * One descriptor chain as the device sees it: readable segments first, then writable ones.
 * Reused between pops (no allocation per chain once grown).
 */
export class DescriptorChain {
  head = 0;
  count = 0;
  /** Index of the first writable segment (== count when there is none). */
  firstWritable = 0;
  readableBytes = 0;
  writableBytes = 0;
  addrs = new Float64Array(16);
  lengths = new Float64Array(16);

  clear(): void {
    this.count = 0;
    this.firstWritable = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
  }

  push(addr: number, length: number, writable: boolean): void {
    const n = this.count;
    if (n === this.addrs.length) {
      const a = new Float64Array(n * 2);
      const l = new Float64Array(n * 2);
      a.set(this.addrs);
      l.set(this.lengths);
      this.addrs = a;
      this.lengths = l;
    }
    this.addrs[n] = addr;
    this.lengths[n] = length;
    this.count = n + 1;
    if (writable) this.writableBytes += length;
    else {
      this.readableBytes += length;
      this.firstWritable = n + 1;
    }
  }

  /**
   * Copies readable bytes starting at `offset` (within the readable part) into `dest`, as many
   * as fit; returns the number copied, or the fault.
   */
  read(dma: DmaAddressSpace, offset: number, dest: Uint8Array): number | DmaFault {
    let skip = offset;
    let done = 0;
    for (let i = 0; i < this.firstWritable && done < dest.length; i++) {
      const len = this.lengths[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, dest.length - done);
      // The whole destination from one buffer (the common case) needs no subarray.
      const f = dma.read(this.addrs[i] + skip, n === dest.length ? dest : dest.subarray(done, done + n));
      if (f !== null) return f;
      done += n;
      skip = 0;
    }
    return done;
  }

  /**
   * Writes `src` into the writable part starting at `offset`; returns bytes written (fewer when
   * the writable part is shorter), or the fault.
   */
  write(dma: DmaAddressSpace, offset: number, src: Uint8Array): number | DmaFault {
    let skip = offset;
    let done = 0;
    for (let i = this.firstWritable; i < this.count && done < src.length; i++) {
      const len = this.lengths[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, src.length - done);
      const f = dma.write(this.addrs[i] + skip, n === src.length ? src : src.subarray(done, done + n));
      if (f !== null) return f;
      done += n;
      skip = 0;
    }
    return done;
  }
}

export interface SplitQueueStats {
  readonly popped: number;
  readonly usedPushed: number;
  readonly interruptsSuppressed: number;
  readonly dmaFaults: number;
  /** Ring field accesses served by the cached ring windows, and window (re)translations. */
  readonly ringWindowHits: number;
  readonly ringWindowRefills: number;
}

export class SplitQueue {
  readonly index: number;
  readonly maxSize: number;
  /** Configuration latched when the queue is enabled. */
  size = 0;
  descAddr = 0;
  driverAddr = 0;
  deviceAddr = 0;
  eventIdx = false;
  indirect = false;
  dma: DmaAddressSpace | undefined;

  // Direct views of the ring areas, re-translated whenever the translator's epoch changes.
  private readonly descWindow = new RingWindow(false);
  private readonly availWindow = new RingWindow(false);
  private readonly usedWindow = new RingWindow(true);
  private readonly indirectWindow = new RingWindow(false);
  private lastAvailIdx = 0;
  private usedIdx = 0;
  private lastSignalledUsed = 0;
  private signalledValid = false;
  brokenReason: string | null = null;

  popped = 0;
  usedPushed = 0;
  interruptsSuppressed = 0;
  dmaFaults = 0;

  constructor(index: number, maxSize: number) {
    this.index = index;
    this.maxSize = maxSize;
  }

  /**
   * Latches the ring configuration; returns an error string when it is invalid (2.7: size a
   * power of two up to the maximum; alignment 16 / 2 / 4 for descriptor table, driver and device
   * areas, 2.7.2; areas representable).
   */
  start(
    dma: DmaAddressSpace,
    size: number,
    descAddr: number,
    driverAddr: number,
    deviceAddr: number,
    eventIdx: boolean,
    indirect: boolean,
  ): string | null {
    this.reset();
    if (size === 0 || size > this.maxSize || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      return `queue ${this.index}: size ${size} invalid`;
    }
    if (descAddr < 0 || driverAddr < 0 || deviceAddr < 0) return `queue ${this.index}: address above 2^53`;
    if (descAddr % 16 !== 0 || driverAddr % 2 !== 0 || deviceAddr % 4 !== 0) {
      return `queue ${this.index}: misaligned ring`;
    }
    if (
      descAddr + size * DESCRIPTOR_SIZE > MAX_ADDRESS_EXCLUSIVE ||
      driverAddr + 6 + 2 * size > MAX_ADDRESS_EXCLUSIVE ||
      deviceAddr + 6 + 8 * size > MAX_ADDRESS_EXCLUSIVE
    ) {
      return `queue ${this.index}: ring beyond 2^53`;
    }
    this.dma = dma;
    this.descWindow.bind(dma, descAddr, size * DESCRIPTOR_SIZE);
    this.availWindow.bind(dma, driverAddr, 6 + 2 * size);
    this.usedWindow.bind(dma, deviceAddr, 6 + 8 * size);
    this.size = size;
    this.descAddr = descAddr;
    this.driverAddr = driverAddr;
    this.deviceAddr = deviceAddr;
    this.eventIdx = eventIdx;
    this.indirect = indirect;
    return null;
  }

  get ready(): boolean {
    return this.dma !== undefined && this.brokenReason === null;
  }

  reset(): void {
    this.dma = undefined;
    this.descWindow.unbind();
    this.availWindow.unbind();
    this.usedWindow.unbind();
    this.indirectWindow.unbind();
    this.size = 0;
    this.lastAvailIdx = 0;
    this.usedIdx = 0;
    this.lastSignalledUsed = 0;
    this.signalledValid = false;
    this.brokenReason = null;
  }

  private fail(reason: string): PopResult {
    if (this.brokenReason === null) this.brokenReason = `queue ${this.index}: ${reason}`;
    return POP_ERROR;
  }

  private ringFault(): PopResult {
    this.dmaFaults++;
    return this.fail("ring access faulted");
  }

  /** Takes the next available chain into `chain`. */
  pop(chain: DescriptorChain): PopResult {
    const dma = this.dma;
    if (dma === undefined || this.brokenReason !== null) return POP_ERROR;
    let availIdx = this.availWindow.read16(this.driverAddr + 2);
    if (availIdx < 0) return this.ringFault();
    let pending = (availIdx - this.lastAvailIdx) & 0xffff;
    if (pending === 0) {
      if (!this.eventIdx) return POP_EMPTY;
      // 2.7.10: publish avail_event, then look again: a driver that made a buffer available
      // before seeing the new avail_event may not notify for it.
      this.publishAvailEvent();
      availIdx = this.availWindow.read16(this.driverAddr + 2);
      if (availIdx < 0) return this.ringFault();
      pending = (availIdx - this.lastAvailIdx) & 0xffff;
      if (pending === 0) return POP_EMPTY;
    }
    if (pending > this.size) return this.fail(`avail.idx moved by ${pending} > size ${this.size}`);
    const slot = this.lastAvailIdx & (this.size - 1);
    const head = this.availWindow.read16(this.driverAddr + 4 + 2 * slot);
    if (head < 0) return this.ringFault();
    const r = this.walk(dma, head, chain);
    if (r !== POP_CHAIN) return r;
    this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
    if (this.eventIdx) this.publishAvailEvent();
    this.popped++;
    return POP_CHAIN;
  }

  /** 2.7.10: avail_event (after used.ring[size]) tells the driver which index to notify at. */
  private publishAvailEvent(): void {
    if (!this.usedWindow.write16(this.deviceAddr + 4 + 8 * this.size, this.lastAvailIdx)) this.ringFault();
  }

  private walk(dma: DmaAddressSpace, head: number, chain: DescriptorChain): PopResult {
    chain.clear();
    chain.head = head;
    if (head >= this.size) return this.fail(`head ${head} >= size`);
    let table = this.descAddr;
    let tableSize = this.size;
    let window = this.descWindow;
    let index = head;
    let inIndirect = false;
    let seen = 0;
    let total = 0;
    for (;;) {
      if (++seen > tableSize) return this.fail("descriptor chain longer than its table (loop)");
      const d = table + DESCRIPTOR_SIZE * index;
      const addrLo = window.read32(d);
      const addrHi = window.read32(d + 4);
      const len = window.read32(d + 8);
      const flagsNext = window.read32(d + 12);
      if (addrLo < 0 || addrHi < 0 || len < 0 || flagsNext < 0) return this.ringFault();
      const flags = flagsNext & 0xffff;
      const next = flagsNext >>> 16;
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) return this.fail("INDIRECT without VIRTIO_F_INDIRECT_DESC");
        if (inIndirect) return this.fail("INDIRECT inside an indirect table");
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) return this.fail("INDIRECT together with NEXT");
        if (len === 0 || len % DESCRIPTOR_SIZE !== 0) return this.fail(`indirect table length ${len}`);
        if (addrHi >= 0x200000 || addrHi * 2 ** 32 + addrLo + len > MAX_ADDRESS_EXCLUSIVE) {
          return this.fail("indirect table beyond 2^53");
        }
        const addr = addrHi * 2 ** 32 + addrLo;
        if (addr % DESCRIPTOR_SIZE !== 0) return this.fail("misaligned indirect table");
        // 2.7.5.3.2: the device ignores the WRITE flag of the descriptor that refers to the table.
        table = addr;
        tableSize = len / DESCRIPTOR_SIZE;
        window = this.indirectWindow;
        window.bind(dma, addr, len);
        if (tableSize > MAX_QUEUE_SIZE) return this.fail("indirect table larger than 32768 entries");
        index = 0;
        seen = 0;
        inIndirect = true;
        continue;
      }
      if (len === 0) return this.fail("zero-length descriptor");
      if (addrHi >= 0x200000 || addrHi * 2 ** 32 + addrLo + len > MAX_ADDRESS_EXCLUSIVE) {
        return this.fail("buffer beyond 2^53");
      }
      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (!writable && chain.writableBytes > 0) return this.fail("readable descriptor after a writable one");
      total += len;
      if (total > 0xffffffff) return this.fail("chain longer than 2^32 bytes");
      chain.push(addrHi * 2 ** 32 + addrLo, len, writable);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return POP_CHAIN;
      if (next >= tableSize) return this.fail(`next ${next} outside the table`);
      index = next;
    }
  }

  /** Returns a chain to the driver with `lengthBytes` written (2.7.8). */
  pushUsed(head: number, lengthBytes: number): boolean {
    const dma = this.dma;
    if (dma === undefined || this.brokenReason !== null) return false;
    const slot = this.usedIdx & (this.size - 1);
    const e = this.deviceAddr + 4 + 8 * slot;
    const w = this.usedWindow;
    if (!w.write32(e, head) || !w.write32(e + 4, lengthBytes >>> 0)) {
      this.ringFault();
      return false;
    }
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    if (!w.write16(this.deviceAddr + 2, this.usedIdx)) {
      this.ringFault();
      return false;
    }
    this.usedPushed++;
    return true;
  }

  /**
   * Whether the driver wants a used buffer notification now (call after pushing a batch).
   * 2.7.10: with EVENT_IDX, notify iff used_event is in [old, new) (modulo 2^16).
   */
  needsInterrupt(): boolean {
    const dma = this.dma;
    if (dma === undefined || this.brokenReason !== null) return false;
    if (this.eventIdx) {
      const usedEvent = this.availWindow.read16(this.driverAddr + 4 + 2 * this.size);
      if (usedEvent < 0) {
        this.ringFault();
        return false;
      }
      const newIdx = this.usedIdx;
      const oldIdx = this.lastSignalledUsed;
      const valid = this.signalledValid;
      this.lastSignalledUsed = newIdx;
      this.signalledValid = true;
      if (!valid) return true;
      const fire = ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
      if (!fire) this.interruptsSuppressed++;
      return fire;
    }
    const flags = this.availWindow.read16(this.driverAddr);
    if (flags < 0) {
      this.ringFault();
      return false;
    }
    if ((flags & VIRTQ_AVAIL_F_NO_INTERRUPT) !== 0) {
      this.interruptsSuppressed++;
      return false;
    }
    return true;
  }

  stats(): SplitQueueStats {
    return {
      popped: this.popped,
      usedPushed: this.usedPushed,
      interruptsSuppressed: this.interruptsSuppressed,
      dmaFaults: this.dmaFaults,
      ringWindowHits:
        this.descWindow.hits + this.availWindow.hits + this.usedWindow.hits + this.indirectWindow.hits,
      ringWindowRefills:
        this.descWindow.refills +
        this.availWindow.refills +
        this.usedWindow.refills +
        this.indirectWindow.refills,
    };
  }
}
