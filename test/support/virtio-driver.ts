/**
 * A guest-side virtio-pci driver for tests, written from VIRTIO 1.3 4.1 and 2.7 (not from our
 * device code): find the virtio capabilities, reset and negotiate (3.1.1), set up split queues
 * in guest RAM, post buffers (direct or indirect), notify, collect used buffers, and route
 * interrupts through MSI-X.
 *
 * Addresses the device sees are `gpa + iovaOffset`: 0 for a device that is not behind an IOMMU
 * (or with identity mappings); a test that maps [gpa + offset] -> gpa in an IOMMU passes that
 * offset, and the driver then hands out IOVAs exactly like Linux's DMA API would.
 */
import type { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { TestMachine } from "./machine.ts";
import { alignUp, type Bdf, type SizedBar } from "./pci-driver.ts";

export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;

export const S_ACKNOWLEDGE = 1;
export const S_DRIVER = 2;
export const S_DRIVER_OK = 4;
export const S_FEATURES_OK = 8;
export const S_NEEDS_RESET = 0x40;

export const MSI_ADDRESS = 0xfee0_0000;
/** MSI-X data the driver programs for vector v. */
export const msiData = (vector: number) => 0x100 + vector;

/** A bump allocator over a window of guest RAM. */
export class GuestAllocator {
  private next: number;
  readonly end: number;
  constructor(start: number, end: number) {
    this.next = start;
    this.end = end;
  }
  alloc(sizeBytes: number, align = 16): number {
    const at = alignUp(this.next, align);
    if (at + sizeBytes > this.end) throw new Error("test guest allocator exhausted");
    this.next = at + sizeBytes;
    return at;
  }
}

export interface Buffer {
  /** Guest-physical address of the buffer. */
  readonly gpa: number;
  readonly len: number;
  readonly writable: boolean;
}

export class DriverQueue {
  readonly index: number;
  readonly size: number;
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  private readonly memory: GuestMemory;
  private readonly iovaOffset: number;
  private readonly allocator: GuestAllocator;
  private freeHead = 0;
  private numFree: number;
  private availIdx = 0;
  private lastUsed = 0;
  private readonly chainLength = new Map<number, number>();

  constructor(
    index: number,
    size: number,
    memory: GuestMemory,
    allocator: GuestAllocator,
    iovaOffset: number,
  ) {
    this.index = index;
    this.size = size;
    this.memory = memory;
    this.allocator = allocator;
    this.iovaOffset = iovaOffset;
    // 2.7: descriptor table 16-aligned, driver area 2-aligned, device area 4-aligned.
    this.descGpa = allocator.alloc(16 * size, 4096);
    this.availGpa = allocator.alloc(6 + 2 * size, 2);
    this.usedGpa = allocator.alloc(6 + 8 * size, 4096);
    memory.fill(this.descGpa, 16 * size, 0);
    memory.fill(this.availGpa, 6 + 2 * size, 0);
    memory.fill(this.usedGpa, 6 + 8 * size, 0);
    for (let i = 0; i < size; i++) memory.writeU16(this.descGpa + 16 * i + 14, (i + 1) % size);
    this.numFree = size;
  }

  iova(gpa: number): number {
    return gpa + this.iovaOffset;
  }

  private writeDesc(
    tableGpa: number,
    i: number,
    addr: number,
    len: number,
    flags: number,
    next: number,
  ): void {
    const d = tableGpa + 16 * i;
    this.memory.writeU64(d, BigInt(addr));
    this.memory.writeU32(d + 8, len);
    this.memory.writeU16(d + 12, flags);
    this.memory.writeU16(d + 14, next);
  }

  /** Posts a chain (readable buffers first); returns the head index. */
  add(buffers: readonly Buffer[], options: { indirect?: boolean } = {}): number {
    if (options.indirect === true) {
      const table = this.allocator.alloc(16 * buffers.length, 16);
      buffers.forEach((b, i) => {
        const last = i === buffers.length - 1;
        this.writeDesc(
          table,
          i,
          this.iova(b.gpa),
          b.len,
          (b.writable ? 2 : 0) | (last ? 0 : 1),
          last ? 0 : i + 1,
        );
      });
      return this.addRaw([{ addr: this.iova(table), len: 16 * buffers.length, flags: 4 }]);
    }
    return this.addRaw(
      buffers.map((b) => ({ addr: this.iova(b.gpa), len: b.len, flags: b.writable ? 2 : 0 })),
    );
  }

  /** Posts raw descriptors (addresses as the device sees them, NEXT added between them). */
  addRaw(descs: readonly { addr: number; len: number; flags: number }[]): number {
    if (descs.length > this.numFree) throw new Error("queue full");
    const head = this.freeHead;
    let i = head;
    for (let k = 0; k < descs.length; k++) {
      const nextFree = this.memory.readU16(this.descGpa + 16 * i + 14);
      const last = k === descs.length - 1;
      this.writeDesc(
        this.descGpa,
        i,
        descs[k].addr,
        descs[k].len,
        descs[k].flags | (last ? 0 : 1),
        last ? 0 : nextFree,
      );
      if (!last) i = nextFree;
      else this.freeHead = nextFree;
    }
    this.numFree -= descs.length;
    this.chainLength.set(head, descs.length);
    this.publish(head);
    return head;
  }

  /** Makes `head` available (2.7.13). */
  publish(head: number): void {
    this.memory.writeU16(this.availGpa + 4 + 2 * (this.availIdx % this.size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.memory.writeU16(this.availGpa + 2, this.availIdx);
  }

  /** Used elements since the last call (2.7.14), returning their descriptors to the free list. */
  takeUsed(): { id: number; len: number }[] {
    const out: { id: number; len: number }[] = [];
    const usedIdx = this.memory.readU16(this.usedGpa + 2);
    while (this.lastUsed !== usedIdx) {
      const e = this.usedGpa + 4 + 8 * (this.lastUsed % this.size);
      const id = this.memory.readU32(e);
      out.push({ id, len: this.memory.readU32(e + 4) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      const n = this.chainLength.get(id) ?? 0;
      this.chainLength.delete(id);
      // Return the chain to the free list.
      let tail = id;
      for (let k = 1; k < n; k++) tail = this.memory.readU16(this.descGpa + 16 * tail + 14);
      if (n > 0) {
        this.memory.writeU16(this.descGpa + 16 * tail + 14, this.freeHead);
        this.freeHead = id;
        this.numFree += n;
      }
    }
    return out;
  }

  setAvailFlags(flags: number): void {
    this.memory.writeU16(this.availGpa, flags);
  }
  /** used_event (EVENT_IDX): interrupt me when used.idx passes this. */
  setUsedEvent(idx: number): void {
    this.memory.writeU16(this.availGpa + 4 + 2 * this.size, idx);
  }
  availEvent(): number {
    return this.memory.readU16(this.usedGpa + 4 + 8 * this.size);
  }
}

export interface VirtioCaps {
  common: number;
  notify: number;
  notifyMultiplier: number;
  isr: number;
  device: number;
  pciCfg: number;
}

export class VirtioPciDriver {
  readonly m: TestMachine;
  readonly b: Bdf;
  readonly allocator: GuestAllocator;
  readonly iovaOffset: number;
  bars: SizedBar[] = [];
  caps: VirtioCaps = { common: 0, notify: 0, notifyMultiplier: 0, isr: 0, device: 0, pciCfg: 0 };
  capOffsets: Record<string, number> = {};
  readonly queues: DriverQueue[] = [];
  msixTable = 0;

  constructor(m: TestMachine, b: Bdf, allocator: GuestAllocator, iovaOffset = 0) {
    this.m = m;
    this.b = b;
    this.allocator = allocator;
    this.iovaOffset = iovaOffset;
  }

  /** Assigns BARs and locates the structures through the vendor capabilities (4.1.4). */
  probe(): void {
    const d = this.m.driver;
    this.bars = d.assignBars(this.b);
    const barAddr = (i: number) => this.bars.find((x) => x.index === i)?.address ?? 0;
    for (const cap of d.findCapabilities(this.b, 0x09)) {
      const type = d.read(this.b, cap + 3, 1);
      const addr = barAddr(d.read(this.b, cap + 4, 1)) + d.read(this.b, cap + 8, 4);
      if (type === 1) this.caps.common = addr;
      if (type === 2) {
        this.caps.notify = addr;
        this.caps.notifyMultiplier = d.read(this.b, cap + 16, 4);
      }
      if (type === 3) this.caps.isr = addr;
      if (type === 4) this.caps.device = addr;
      if (type === 5) this.caps.pciCfg = cap;
      this.capOffsets[`type${type}`] = cap;
    }
    const [msix] = d.findCapabilities(this.b, 0x11);
    if (msix !== undefined) this.msixTable = d.msixLayout(this.b, msix, this.bars).tableAddress;
  }

  c8(o: number): number {
    return this.m.mmio.read(this.caps.common + o, 1);
  }
  c16(o: number): number {
    return this.m.mmio.read(this.caps.common + o, 2);
  }
  c32(o: number): number {
    return this.m.mmio.read(this.caps.common + o, 4);
  }
  w8(o: number, v: number): void {
    this.m.mmio.write(this.caps.common + o, 1, v);
  }
  w16(o: number, v: number): void {
    this.m.mmio.write(this.caps.common + o, 2, v);
  }
  w32(o: number, v: number): void {
    this.m.mmio.write(this.caps.common + o, 4, v);
  }

  get status(): number {
    return this.c8(20);
  }

  deviceFeatures(): bigint {
    this.w32(0, 0);
    const lo = this.c32(4);
    this.w32(0, 1);
    const hi = this.c32(4);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** 3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK and its check. */
  negotiate(wanted: bigint): { ok: boolean; features: bigint } {
    this.w8(20, 0);
    this.w8(20, S_ACKNOWLEDGE);
    this.w8(20, S_ACKNOWLEDGE | S_DRIVER);
    const features = this.deviceFeatures() & wanted;
    this.w32(8, 0);
    this.w32(12, Number(features & 0xffffffffn));
    this.w32(8, 1);
    this.w32(12, Number(features >> 32n));
    this.w8(20, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    return { ok: (this.status & S_FEATURES_OK) !== 0, features };
  }

  /** Writes the driver's feature bits exactly (even ones not offered) and tries FEATURES_OK. */
  negotiateExactly(features: bigint): boolean {
    this.w8(20, 0);
    this.w8(20, S_ACKNOWLEDGE | S_DRIVER);
    this.w32(8, 0);
    this.w32(12, Number(features & 0xffffffffn));
    this.w32(8, 1);
    this.w32(12, Number(features >> 32n));
    this.w8(20, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    return (this.status & S_FEATURES_OK) !== 0;
  }

  /** Configures queue `index` (4.1.5.1.3) with `size` (default: the device maximum). */
  setupQueue(index: number, options: { size?: number; msixVector?: number } = {}): DriverQueue {
    this.w16(22, index);
    const max = this.c16(24);
    const size = options.size ?? max;
    this.w16(24, size);
    const q = new DriverQueue(index, size, this.m.memory, this.allocator, this.iovaOffset);
    const put64 = (o: number, v: number) => {
      this.w32(o, v % 2 ** 32);
      this.w32(o + 4, Math.floor(v / 2 ** 32));
    };
    put64(32, q.iova(q.descGpa));
    put64(40, q.iova(q.availGpa));
    put64(48, q.iova(q.usedGpa));
    if (options.msixVector !== undefined) this.w16(26, options.msixVector);
    this.w16(28, 1);
    this.queues[index] = q;
    return q;
  }

  driverOk(): void {
    this.w8(20, this.status | S_DRIVER_OK);
  }

  /** Enables MSI-X with vector v -> (MSI_ADDRESS, msiData(v)) for v < count. */
  enableMsix(count: number): void {
    for (let v = 0; v < count; v++) this.m.driver.setMsixVector(this.msixTable, v, MSI_ADDRESS, msiData(v));
    const [cap] = this.m.driver.findCapabilities(this.b, 0x11);
    this.m.driver.enableMsix(this.b, cap);
  }

  /** 4.1.4.4: queue i's notify address is notify base + queue_notify_off * multiplier. */
  kick(index: number): void {
    this.w16(22, index);
    const off = this.c16(30);
    this.m.mmio.write(this.caps.notify + off * this.caps.notifyMultiplier, 2, index);
  }

  readIsr(): number {
    return this.m.mmio.read(this.caps.isr, 1);
  }

  deviceConfig(offset: number, size: 1 | 2 | 4): number {
    return this.m.mmio.read(this.caps.device + offset, size);
  }

  writeDeviceConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.m.mmio.write(this.caps.device + offset, size, value);
  }

  /** Full bring-up: probe, negotiate, MSI-X (queues + 1 vectors, config on the last), queues, DRIVER_OK. */
  bringUp(wanted: bigint, queueCount: number, queueSize?: number): bigint {
    this.probe();
    const { ok, features } = this.negotiate(wanted);
    if (!ok) throw new Error("FEATURES_OK refused");
    this.enableMsix(queueCount + 1);
    this.w16(16, queueCount);
    for (let i = 0; i < queueCount; i++) this.setupQueue(i, { size: queueSize, msixVector: i });
    this.driverOk();
    return features;
  }
}
