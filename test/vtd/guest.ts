/**
 * A guest-side VT-d driver for tests, written from the architecture (and Linux's intel-iommu
 * init order): it allocates tables in guest RAM, programs the unit through its MMIO registers
 * only, and submits invalidations the way a driver does.
 */
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import type { VtdOptions } from "../../src/vtd/vtd.ts";
import { VtdUnit } from "../../src/vtd/vtd.ts";

export const RAM_BYTES = 64 << 20;

export class PageAllocator {
  private next: number;
  private readonly end: number;
  private readonly memory: GuestMemory;
  constructor(memory: GuestMemory, base: number, sizeBytes: number) {
    this.memory = memory;
    this.next = base;
    this.end = base + sizeBytes;
  }
  page(count = 1): number {
    const gpa = this.next;
    this.next += 4096 * count;
    if (this.next > this.end) throw new Error("test allocator exhausted");
    this.memory.fill(gpa, 4096 * count, 0);
    return gpa;
  }
}

export function q(lo: number, hi = 0): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** Second-stage (or first-stage) page tables in guest memory. */
export class PageTable {
  readonly root: number;
  readonly memory: GuestMemory;
  readonly alloc: PageAllocator;
  readonly levels: number;
  readonly firstStage: boolean;
  constructor(memory: GuestMemory, alloc: PageAllocator, levels: number, firstStage = false) {
    this.memory = memory;
    this.alloc = alloc;
    this.levels = levels;
    this.firstStage = firstStage;
    this.root = alloc.page();
  }

  private entryGpa(iova: number, level: number, create: boolean): number {
    let table = this.root;
    for (let l = this.levels; l > level; l--) {
      const e = table + (Math.floor(iova / 2 ** (12 + 9 * (l - 1))) % 512) * 8;
      let v = this.memory.readU64(e);
      const present = this.firstStage ? (v & 1n) !== 0n : (v & 3n) !== 0n;
      if (!present) {
        if (!create) return -1;
        const next = this.alloc.page();
        v = BigInt(next) | (this.firstStage ? 0x7n : 0x3n);
        this.memory.writeU64(e, v);
      }
      table = Number(v & 0x000f_ffff_ffff_f000n);
    }
    return table + (Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
  }

  /** Maps one page of 4 KiB (level 1), 2 MiB (2) or 1 GiB (3); `bits` are the low flag bits. */
  map(iova: number, gpa: number, level: number, bits: bigint): number {
    const e = this.entryGpa(iova, level, true);
    this.memory.writeU64(e, BigInt(gpa) | bits | (level > 1 ? 0x80n : 0n));
    return e;
  }

  /** Second-stage R/W leaf bits. */
  static ss(read: boolean, write: boolean): bigint {
    return (read ? 1n : 0n) | (write ? 2n : 0n);
  }

  unmap(iova: number, level = 1): void {
    const e = this.entryGpa(iova, level, false);
    if (e >= 0) this.memory.writeU64(e, 0n);
  }

  /** The gpa of the entry for iova at `level` (for crafting bad entries). */
  entry(iova: number, level: number): number {
    return this.entryGpa(iova, level, true);
  }
}

export interface Rig {
  memory: GuestMemory;
  unit: VtdUnit;
  alloc: PageAllocator;
  driver: GuestDriver;
}

export function rig(options: VtdOptions = {}): Rig {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: RAM_BYTES }]);
  const unit = new VtdUnit(memory, options);
  const alloc = new PageAllocator(memory, 32 << 20, 32 << 20);
  return { memory, unit, alloc, driver: new GuestDriver(unit, memory, alloc) };
}

export class GuestDriver {
  /** Persistent GCMD bits the driver believes are on (Linux keeps iommu->gcmd the same way). */
  gcmd = 0;
  rootTable = 0;
  scalable = false;
  private contextTables = new Map<number, number>();
  queueBase = 0;
  queueTail = 0;
  queueEntries = 256;
  wide = false;
  statusGpa = 0;
  private statusSeq = 1;

  readonly unit: VtdUnit;
  readonly memory: GuestMemory;
  readonly alloc: PageAllocator;
  constructor(unit: VtdUnit, memory: GuestMemory, alloc: PageAllocator) {
    this.unit = unit;
    this.memory = memory;
    this.alloc = alloc;
  }

  r32(off: number): number {
    return this.unit.read(off, 4);
  }
  w32(off: number, v: number): void {
    this.unit.write(off, 4, v);
  }
  r64(off: number): bigint {
    return this.unit.readWide(off);
  }
  w64(off: number, v: bigint): void {
    this.unit.writeWide(off, v);
  }

  /** Sets or clears a persistent GCMD bit and checks GSTS follows (11.4.4 programming rule). */
  setPersistent(bit: number, on: boolean): void {
    this.gcmd = on ? (this.gcmd | bit) >>> 0 : (this.gcmd & ~bit) >>> 0;
    this.w32(REG.GCMD, this.gcmd);
    const sts = this.r32(REG.GSTS);
    if (((sts & bit) !== 0) !== on) throw new Error(`GSTS did not follow GCMD bit 0x${bit.toString(16)}`);
  }

  /** Issues a one-shot command and waits for its status bit. */
  oneShot(bit: number): void {
    this.w32(REG.GCMD, (this.gcmd | bit) >>> 0);
    if ((this.r32(REG.GSTS) & bit) === 0) throw new Error(`one-shot 0x${bit.toString(16)} not acknowledged`);
  }

  /** Linux's dmar_enable_qi order: QIE off, IQT = 0, IQA, QIE on. */
  enableQueuedInvalidation(wide = false): void {
    this.wide = wide;
    this.queueBase = this.alloc.page(wide ? 2 : 1);
    this.statusGpa = this.alloc.page();
    this.queueEntries = wide ? 128 * 2 : 256;
    this.setPersistent(GCMD.QIE, false);
    this.w64(REG.IQT, 0n);
    this.w64(REG.IQA, BigInt(this.queueBase) | (wide ? 0x800n : 0n) | (wide ? 1n : 0n));
    this.queueTail = 0;
    this.setPersistent(GCMD.QIE, true);
  }

  /** Writes descriptors (pairs or quads of qwords) and moves the tail. */
  submit(descs: bigint[][]): void {
    const size = this.wide ? 32 : 16;
    for (const d of descs) {
      const gpa = this.queueBase + this.queueTail * size;
      for (let i = 0; i < size / 8; i++) this.memory.writeU64(gpa + 8 * i, d[i] ?? 0n);
      this.queueTail = (this.queueTail + 1) % this.queueEntries;
    }
    this.w64(REG.IQT, BigInt(this.queueTail * size));
  }

  /** Submits descriptors followed by a status-writing wait, and checks the status landed. */
  submitAndWait(descs: bigint[][]): boolean {
    const seq = this.statusSeq++;
    this.memory.writeU32(this.statusGpa, 0);
    this.submit([...descs, [q(0x25, seq), BigInt(this.statusGpa)]]);
    return this.memory.readU32(this.statusGpa) === seq;
  }

  /** Root table in legacy or scalable mode, latched with SRTP. */
  setRootTable(scalable: boolean): void {
    this.scalable = scalable;
    this.rootTable = this.alloc.page();
    this.w64(REG.RTADDR, BigInt(this.rootTable) | (scalable ? 0x400n : 0n));
    this.oneShot(GCMD.SRTP);
  }

  private contextTable(bus: number, upper: boolean): number {
    const key = bus * 2 + (upper ? 1 : 0);
    let t = this.contextTables.get(key);
    if (t === undefined) {
      t = this.alloc.page();
      this.contextTables.set(key, t);
      const root = this.rootTable + bus * 16 + (upper ? 8 : 0);
      this.memory.writeU64(root, BigInt(t) | 1n);
    }
    return t;
  }

  /** Legacy context entry address for sid. */
  legacyContextGpa(sid: number): number {
    return this.contextTable(sid >> 8, false) + (sid & 0xff) * 16;
  }

  setLegacyContext(
    sid: number,
    c: { did: number; aw?: number; tt?: number; slptptr: number; fpd?: boolean },
  ): void {
    const gpa = this.legacyContextGpa(sid);
    this.memory.writeU64(gpa, BigInt(c.slptptr) | (BigInt(c.tt ?? 0) << 2n) | (c.fpd ? 2n : 0n) | 1n);
    this.memory.writeU64(gpa + 8, BigInt(c.aw ?? 2) | (BigInt(c.did) << 8n));
  }

  scalableContextGpa(sid: number): number {
    const devfn = sid & 0xff;
    return this.contextTable(sid >> 8, devfn >= 128) + (devfn & 0x7f) * 32;
  }

  /** Scalable context entry with a fresh PASID directory; returns the directory gpa. */
  setScalableContext(
    sid: number,
    c: { pdts?: number; dte?: boolean; paside?: boolean; fpd?: boolean } = {},
  ): number {
    const dir = this.alloc.page();
    const gpa = this.scalableContextGpa(sid);
    this.memory.writeU64(
      gpa,
      BigInt(dir) |
        (BigInt(c.pdts ?? 0) << 9n) |
        (c.paside ? 8n : 0n) |
        (c.dte ? 4n : 0n) |
        (c.fpd ? 2n : 0n) |
        1n,
    );
    return dir;
  }

  /** Writes a PASID table entry (allocating the PASID table through the directory). */
  setPasidEntry(
    dir: number,
    pasid: number,
    e: {
      pgtt: number;
      did: number;
      aw?: number;
      slptptr?: number;
      flptptr?: number;
      flpm?: number;
      fpd?: boolean;
      wpe?: boolean;
    },
  ): number {
    const de = dir + (pasid >>> 6) * 8;
    let d = this.memory.readU64(de);
    if ((d & 1n) === 0n) {
      d = BigInt(this.alloc.page()) | 1n;
      this.memory.writeU64(de, d);
    }
    const pte = Number(d & 0x000f_ffff_ffff_f000n) + (pasid & 0x3f) * 64;
    this.memory.writeU64(
      pte,
      BigInt(e.slptptr ?? 0) | (BigInt(e.pgtt) << 6n) | (BigInt(e.aw ?? 2) << 2n) | (e.fpd ? 2n : 0n) | 1n,
    );
    this.memory.writeU64(pte + 8, BigInt(e.did));
    this.memory.writeU64(
      pte + 16,
      BigInt(e.flptptr ?? 0) | (BigInt(e.flpm ?? 0) << 2n) | (e.wpe ? 0x10n : 0n),
    );
    return pte;
  }
}

/** Descriptor builders (VT-d 6.5.2), each a list of qwords. */
export const D = {
  contextGlobal: (): bigint[] => [q(0x1 | (1 << 4)), 0n],
  contextDomain: (did: number): bigint[] => [q(0x1 | (2 << 4) | (did << 16)), 0n],
  contextDevice: (did: number, sid: number, fm = 0): bigint[] => [
    q(0x1 | (3 << 4) | (did << 16), sid | (fm << 16)),
    0n,
  ],
  iotlbGlobal: (): bigint[] => [q(0x2 | (1 << 4)), 0n],
  iotlbDomain: (did: number): bigint[] => [q(0x2 | (2 << 4) | (did << 16)), 0n],
  iotlbPage: (did: number, iova: number, am = 0): bigint[] => [
    q(0x2 | (3 << 4) | (did << 16)),
    BigInt(iova) | BigInt(am),
  ],
  deviceTlb: (sid: number, iova: number, sizeBit = false): bigint[] => [
    q(0x3, sid),
    BigInt(iova) | (sizeBit ? 1n : 0n),
  ],
  iecGlobal: (): bigint[] => [q(0x4), 0n],
  iecIndex: (index: number, im = 0): bigint[] => [q(0x4 | 0x10 | (im << 27), index), 0n],
  wait: (status: number, gpa: number, intr = false): bigint[] => [
    q(0x5 | 0x20 | (intr ? 0x10 : 0), status),
    BigInt(gpa),
  ],
  waitIntrOnly: (): bigint[] => [q(0x5 | 0x10), 0n],
  pasidIotlbAll: (did: number, pasid: number): bigint[] => [q(0x6 | (2 << 4) | (did << 16), pasid), 0n],
  pasidIotlbPage: (did: number, pasid: number, iova: number, am = 0): bigint[] => [
    q(0x6 | (3 << 4) | (did << 16), pasid),
    BigInt(iova) | BigInt(am),
  ],
  pasidCacheGlobal: (): bigint[] => [q(0x7 | (3 << 4)), 0n],
  pasidCachePasid: (did: number, pasid: number): bigint[] => [q(0x7 | (1 << 4) | (did << 16), pasid), 0n],
  pasidDeviceTlb: (sid: number, pasid: number, iova: number): bigint[] => [
    q(0x8 | (sid << 16), pasid),
    BigInt(iova),
  ],
};

/** The FRCD record i as (lo, hi) qwords. */
export function frcd(unit: VtdUnit, i: number): { lo: bigint; hi: bigint } {
  return { lo: unit.readWide(REG.FRCD + 16 * i), hi: unit.readWide(REG.FRCD + 16 * i + 8) };
}

export function decodeFrcd(r: { lo: bigint; hi: bigint }): {
  f: boolean;
  reason: number;
  sid: number;
  address: bigint;
  read: boolean;
  pp: boolean;
  pasid: number;
  at: number;
  priv: boolean;
} {
  return {
    f: r.hi >> 63n === 1n,
    reason: Number((r.hi >> 32n) & 0xffn),
    sid: Number(r.hi & 0xffffn),
    address: r.lo & ~0xfffn,
    read: ((r.hi >> 62n) & 1n) === 1n,
    pp: ((r.hi >> 31n) & 1n) === 1n,
    pasid: Number((r.hi >> 40n) & 0xfffffn),
    at: Number((r.hi >> 60n) & 3n),
    priv: ((r.hi >> 29n) & 1n) === 1n,
  };
}
