/**
 * Test fixtures for the SMMUv3 model: guest RAM with a page allocator, translation table and
 * STE/CD writers, and a driver that programs the SMMU the way Linux's arm-smmu-v3 does.
 */
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Tracer } from "../../src/engine/trace.ts";
import type { HostStage2 } from "../../src/framework/host-stage2.ts";
import { ViommuRegistry } from "../../src/framework/registry.ts";
import { RecordingBackend, type ViommuInstance } from "../../src/framework/viommu.ts";
import { IoBus } from "../../src/platform/bus.ts";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import { EventRecord } from "../../src/smmuv3/events.ts";
import { REG, SMMU_FRAME_BYTES, type SmmuFeatures } from "../../src/smmuv3/regs.ts";
import { SmmuV3, type SmmuV3Options } from "../../src/smmuv3/smmu.ts";

export const RAM_BYTES = 32 << 20;
export const SMMU_BASE = 0x0905_0000;
/** A doorbell outside RAM, like a GICv3 ITS GITS_TRANSLATER. */
export const ITS_DOORBELL = 0x0808_0040;

export class PageAllocator {
  private next: number;
  private readonly end: number;
  readonly memory: GuestMemory;
  /** Allocates from 1 MiB into the (single) RAM region. */
  constructor(memory: GuestMemory) {
    this.memory = memory;
    const ram = memory.regions[0];
    this.next = ram.gpa + 0x10_0000;
    this.end = ram.gpa + ram.sizeBytes;
  }
  alloc(sizeBytes: number, align = 4096): number {
    const a = Math.max(align, 8);
    const gpa = Math.ceil(this.next / a) * a;
    this.next = gpa + sizeBytes;
    if (this.next > this.end) throw new Error("test RAM exhausted");
    this.memory.fill(gpa, sizeBytes, 0);
    return gpa;
  }
}

export function writeWords(memory: GuestMemory, gpa: number, words: readonly number[]): void {
  for (let i = 0; i < words.length; i++) memory.writeU32(gpa + i * 4, words[i] >>> 0);
}

function lo32(x: number): number {
  return (x % 2 ** 32) >>> 0;
}
function hi32(x: number): number {
  return Math.floor(x / 2 ** 32);
}

export interface SteFields {
  config: number; // 0 abort, 4 bypass, 5 S1, 6 S2, 7 nested
  valid?: boolean;
  s1Fmt?: number;
  cdTable?: number;
  s1CdMax?: number;
  s1Dss?: number;
  strw?: number;
  privcfg?: number;
  instcfg?: number;
  vmid?: number;
  s2t0sz?: number;
  s2sl0?: number;
  s2tg?: number;
  s2ps?: number;
  s2aa64?: boolean;
  s2endi?: boolean;
  s2affd?: boolean;
  s2s?: boolean;
  s2r?: boolean;
  s2ha?: boolean;
  s1stalld?: boolean;
  mev?: boolean;
  s2ttb?: number;
}

export function steWords(f: SteFields): number[] {
  const w = new Array<number>(16).fill(0);
  const ctx = f.cdTable ?? 0;
  w[0] = ((f.valid ?? true) ? 1 : 0) | (f.config << 1) | ((f.s1Fmt ?? 0) << 4) | (lo32(ctx) & 0xffffffc0);
  w[1] = (hi32(ctx) & 0xfffff) | ((f.s1CdMax ?? 0) << 27);
  w[2] = (f.s1Dss ?? 0) | (f.mev ? 1 << 19 : 0) | (f.s1stalld ? 1 << 27 : 0) | ((f.strw ?? 0) << 30);
  w[3] = ((f.privcfg ?? 0) << 16) | ((f.instcfg ?? 0) << 18);
  w[4] = f.vmid ?? 0;
  w[5] =
    (f.s2t0sz ?? 0) |
    ((f.s2sl0 ?? 0) << 6) |
    ((f.s2tg ?? 0) << 14) |
    ((f.s2ps ?? 5) << 16) |
    ((f.s2aa64 ?? true) ? 1 << 19 : 0) |
    (f.s2endi ? 1 << 20 : 0) |
    (f.s2affd ? 1 << 21 : 0) |
    (f.s2ha ? 1 << 24 : 0) |
    (f.s2s ? 1 << 25 : 0) |
    ((f.s2r ?? true) ? 1 << 26 : 0);
  const ttb = f.s2ttb ?? 0;
  w[6] = lo32(ttb) & 0xfffffff0;
  w[7] = hi32(ttb) & 0xfffff;
  return w.map((x) => x >>> 0);
}

export interface CdFields {
  valid?: boolean;
  t0sz?: number;
  tg0?: number;
  epd0?: boolean;
  t1sz?: number;
  tg1?: number;
  epd1?: boolean;
  endi?: boolean;
  ips?: number;
  affd?: boolean;
  wxn?: boolean;
  tbi0?: boolean;
  tbi1?: boolean;
  aa64?: boolean;
  record?: boolean;
  abort?: boolean;
  stall?: boolean;
  ha?: boolean;
  asid?: number;
  ttb0?: number;
  ttb1?: number;
}

export function cdWords(f: CdFields): number[] {
  const w = new Array<number>(16).fill(0);
  w[0] =
    (f.t0sz ?? 16) |
    ((f.tg0 ?? 0) << 6) |
    (f.epd0 ? 1 << 14 : 0) |
    (f.endi ? 1 << 15 : 0) |
    ((f.t1sz ?? 16) << 16) |
    ((f.tg1 ?? 2) << 22) |
    ((f.epd1 ?? true) ? 1 << 30 : 0) |
    ((f.valid ?? true) ? 1 << 31 : 0);
  w[1] =
    (f.ips ?? 5) |
    (f.affd ? 1 << 3 : 0) |
    (f.wxn ? 1 << 4 : 0) |
    (f.tbi0 ? 1 << 6 : 0) |
    (f.tbi1 ? 1 << 7 : 0) |
    ((f.aa64 ?? true) ? 1 << 9 : 0) |
    (f.ha ? 1 << 11 : 0) |
    (f.stall ? 1 << 12 : 0) |
    ((f.record ?? true) ? 1 << 13 : 0) |
    ((f.abort ?? true) ? 1 << 14 : 0) |
    ((f.asid ?? 0) << 16);
  const t0 = f.ttb0 ?? 0;
  const t1 = f.ttb1 ?? 0;
  w[2] = lo32(t0) & 0xfffffff0;
  w[3] = hi32(t0) & 0xfffff;
  w[4] = lo32(t1) & 0xfffffff0;
  w[5] = hi32(t1) & 0xfffff;
  return w.map((x) => x >>> 0);
}

/** Stage-1 leaf attributes: AF, inner shareable, AP[2:1], nG, UXN/PXN. */
export function s1Attrs(
  opts: { ap?: number; af?: boolean; uxn?: boolean; pxn?: boolean; global?: boolean } = {},
): {
  lo: number;
  hi: number;
} {
  // nG is set unless `global`, as Linux's io-pgtable does for every stage-1 mapping.
  const lo =
    ((opts.af ?? true) ? 1 << 10 : 0) | (0b11 << 8) | ((opts.ap ?? 0b01) << 6) | (opts.global ? 0 : 1 << 11);
  const hi = (opts.pxn ? 1 << 21 : 0) | (opts.uxn ? 1 << 22 : 0);
  return { lo, hi };
}

/** Stage-2 leaf attributes: AF, S2AP (bit 6 read, bit 7 write), XN. */
export function s2Attrs(opts: { s2ap?: number; af?: boolean; xn?: boolean } = {}): {
  lo: number;
  hi: number;
} {
  const lo = ((opts.af ?? true) ? 1 << 10 : 0) | (0b11 << 8) | ((opts.s2ap ?? 0b11) << 6) | (0b1111 << 2);
  return { lo, hi: opts.xn ? 1 << 22 : 0 };
}

/** Builds VMSAv8-64 tables in guest memory. */
export class PageTables {
  readonly root: number;
  private readonly memory: GuestMemory;
  private readonly alloc: PageAllocator;
  readonly g: number;
  readonly inputBits: number;
  readonly startLevel: number;

  constructor(alloc: PageAllocator, g: number, inputBits: number, startLevel?: number) {
    this.alloc = alloc;
    this.memory = alloc.memory;
    this.g = g;
    this.inputBits = inputBits;
    const stride = g - 3;
    this.startLevel = startLevel ?? 4 - Math.ceil((inputBits - g) / stride);
    const bitsAtStart = inputBits - (g + (3 - this.startLevel) * stride);
    const bytes = 2 ** (bitsAtStart + 3);
    this.root = alloc.alloc(Math.max(bytes, 64), Math.max(bytes, 64));
  }

  private shiftAt(level: number): number {
    return this.g + (3 - level) * (this.g - 3);
  }

  /** Address of the descriptor for `va` at `level`, creating table descriptors on the way. */
  slot(va: number, level: number, create = true): number {
    let table = this.root;
    for (let l = this.startLevel; ; l++) {
      const shift = this.shiftAt(l);
      const bits = l === this.startLevel ? this.inputBits - shift : this.g - 3;
      const index = Math.floor(va / 2 ** shift) % 2 ** bits;
      const addr = table + index * 8;
      if (l === level) return addr;
      const lo = this.memory.readU32(addr);
      const hi = this.memory.readU32(addr + 4);
      if ((lo & 3) === 3) {
        table = (hi & 0xffff) * 2 ** 32 + (lo - (lo % 2 ** this.g));
        continue;
      }
      if (!create) return -1;
      const next = this.alloc.alloc(2 ** this.g, 2 ** this.g);
      this.memory.writeU32(addr, (lo32(next) | 3) >>> 0);
      this.memory.writeU32(addr + 4, hi32(next));
      table = next;
    }
  }

  /** Maps a leaf (page at level 3, block above) of `va` -> `pa` with attribute words. */
  map(va: number, pa: number, level: number, attrs: { lo: number; hi: number }): void {
    const addr = this.slot(va, level);
    const type = level === 3 ? 3 : 1;
    this.memory.writeU32(addr, (lo32(pa) | attrs.lo | type) >>> 0);
    this.memory.writeU32(addr + 4, (hi32(pa) | attrs.hi) >>> 0);
  }

  setRaw(va: number, level: number, lo: number, hi: number): number {
    const addr = this.slot(va, level);
    this.memory.writeU32(addr, lo >>> 0);
    this.memory.writeU32(addr + 4, hi >>> 0);
    return addr;
  }

  unmap(va: number, level: number): void {
    const addr = this.slot(va, level, false);
    if (addr >= 0) this.setRaw(va, level, 0, 0);
  }
}

export type Cmd = readonly [number, number, number, number];

export const cmd = {
  cfgiSte: (sid: number): Cmd => [0x03, sid, 1, 0],
  cfgiAll: (): Cmd => [0x04, 0, 31, 0],
  cfgiCd: (sid: number, ssid: number): Cmd => [0x05 | (ssid << 12), sid, 1, 0],
  cfgiCdAll: (sid: number): Cmd => [0x06, sid, 0, 0],
  tlbiNhAll: (vmid: number): Cmd => [0x10, vmid, 0, 0],
  tlbiNhAsid: (vmid: number, asid: number): Cmd => [0x11, vmid | (asid << 16), 0, 0],
  tlbiNhVa: (vmid: number, asid: number, va: number, leaf = true): Cmd => [
    0x12,
    vmid | (asid << 16),
    (lo32(va) & 0xfffff000) | (leaf ? 1 : 0),
    hi32(va),
  ],
  tlbiNhVaa: (vmid: number, va: number): Cmd => [0x13, vmid, (lo32(va) & 0xfffff000) | 1, hi32(va)],
  tlbiS12Vmall: (vmid: number): Cmd => [0x28, vmid, 0, 0],
  tlbiS2Ipa: (vmid: number, ipa: number): Cmd => [0x2a, vmid, (lo32(ipa) & 0xfffff000) | 1, hi32(ipa)],
  tlbiNsnhAll: (): Cmd => [0x30, 0, 0, 0],
  sync: (cs: number, msiAddr = 0, msiData = 0): Cmd => [
    0x46 | (cs << 12),
    msiData,
    lo32(msiAddr) & 0xfffffffc,
    hi32(msiAddr),
  ],
};

export interface Fixture {
  memory: GuestMemory;
  alloc: PageAllocator;
  registry: ViommuRegistry;
  backend: RecordingBackend;
  viommu: ViommuInstance;
  smmu: SmmuV3;
  sink: RecordingInterruptSink;
  bus: IoBus;
  driver: LinuxLikeDriver;
  tracer: Tracer;
}

export interface FixtureOptions {
  sids?: readonly number[];
  assigned?: readonly number[];
  hostStage2?: (memory: GuestMemory) => HostStage2;
  features?: Partial<SmmuFeatures>;
  smmu?: Partial<SmmuV3Options>;
  /** Where the guest's RAM_BYTES of RAM start (default 0). */
  ramGpa?: number;
}

export function makeFixture(opts: FixtureOptions = {}): Fixture {
  const memory = GuestMemory.anonymous([{ gpa: opts.ramGpa ?? 0, sizeBytes: RAM_BYTES, name: "ram" }]);
  const alloc = new PageAllocator(memory);
  const registry = new ViommuRegistry();
  const backend = new RecordingBackend("psmmu0");
  registry.registerPhysical({ id: "psmmu0", backend, idBits: 16, vmidCount: 1 << 16 });
  const created = registry.createViommu("guest0", "psmmu0", opts.hostStage2?.(memory) ?? null);
  if (!created.ok) throw new Error(created.error);
  const viommu = created.value;
  for (const sid of opts.sids ?? [8, 9, 16, 300]) {
    const kind = opts.assigned?.includes(sid) ? "assigned" : "emulated";
    const r = registry.assign("psmmu0", viommu, sid, 0x1000 + sid, kind, `dev${sid}`);
    if (!r.ok) throw new Error(r.error);
  }
  const sink = new RecordingInterruptSink();
  const tracer = new Tracer();
  const smmu = new SmmuV3({
    memory,
    viommu,
    interrupts: sink,
    requesterId: 0xff,
    tracer,
    ...(opts.features ? { features: opts.features } : {}),
    ...opts.smmu,
  });
  const bus = new IoBus("mmio");
  bus.register(SMMU_BASE, SMMU_FRAME_BYTES, smmu, "smmuv3");
  const driver = new LinuxLikeDriver(bus, SMMU_BASE, memory, alloc);
  return { memory, alloc, registry, backend, viommu, smmu, sink, bus, driver, tracer };
}

export interface ProbeOptions {
  twoLevel?: boolean;
  sidBits?: number;
  cmdqLog2?: number;
  eventqLog2?: number;
  msi?: boolean;
}

/** A fixture whose SMMU the driver has probed and enabled. */
export function ready(opts: FixtureOptions = {}, probe: ProbeOptions = {}): Fixture {
  const fx = makeFixture(opts);
  fx.driver.probe(probe);
  return fx;
}

/**
 * Programs the SMMU in the order of Linux's arm_smmu_device_hw_probe() and
 * arm_smmu_device_reset(), and offers its command submission and event draining.
 */
export class LinuxLikeDriver {
  readonly bus: IoBus;
  readonly base: number;
  readonly memory: GuestMemory;
  readonly alloc: PageAllocator;
  /** Every register access, in order, for sequence checks. */
  readonly log: string[] = [];
  strtab = 0;
  twoLevel = false;
  split = 8;
  sidBits = 16;
  cmdq = 0;
  cmdqLog2 = 8;
  eventq = 0;
  eventqLog2 = 7;
  cmdqProd = 0;
  evtCons = 0;
  readonly l2Tables = new Map<number, number>();

  constructor(bus: IoBus, base: number, memory: GuestMemory, alloc: PageAllocator) {
    this.bus = bus;
    this.base = base;
    this.memory = memory;
    this.alloc = alloc;
  }

  r32(off: number): number {
    const v = this.bus.read(this.base + off, 4);
    this.log.push(`r 0x${off.toString(16)}`);
    return v;
  }
  w32(off: number, v: number): void {
    this.log.push(`w 0x${off.toString(16)}`);
    this.bus.write(this.base + off, 4, v >>> 0);
  }
  w64(off: number, v: number): void {
    this.log.push(`w64 0x${off.toString(16)}`);
    this.bus.write(this.base + off, 8, v);
  }

  private poll(off: number, want: number, mask: number): void {
    for (let i = 0; i < 100; i++) if ((this.r32(off) & mask) === want) return;
    throw new Error(`timeout polling 0x${off.toString(16)}`);
  }

  private writeCr0(v: number): void {
    this.w32(REG.CR0, v);
    this.poll(REG.CR0ACK, v, 0xffffffff);
  }

  probe(o: ProbeOptions = {}): void {
    const idr0 = this.r32(REG.IDR0);
    const idr1 = this.r32(REG.IDR1);
    this.r32(REG.IDR3);
    const idr5 = this.r32(REG.IDR5);
    this.r32(REG.IIDR);
    if (((idr0 >>> 21) & 3) === 1) throw new Error("big-endian only SMMU");
    if ((idr0 & 3) === 0) throw new Error("no translation stages");
    if (((idr1 >>> 29) & 3) !== 0) throw new Error("preset tables/queues not supported");
    if (((idr1 >>> 21) & 0x1f) < 7) throw new Error("command queue too small");
    if ((idr5 & 0x70) === 0) throw new Error("no granule");
    this.sidBits = o.sidBits ?? Math.min(idr1 & 0x3f, 16);
    this.twoLevel = o.twoLevel ?? ((idr0 >>> 27) & 3) === 1;
    this.cmdqLog2 = o.cmdqLog2 ?? 8;
    this.eventqLog2 = o.eventqLog2 ?? 7;
    // arm_smmu_device_reset
    if ((this.r32(REG.CR0) & 1) !== 0) {
      this.w32(REG.GBPA, this.r32(REG.GBPA) | (1 << 20) | (1 << 31));
      this.poll(REG.GBPA, 0, 1 << 31);
    }
    this.writeCr0(0);
    this.w32(REG.CR1, (1 << 0) | (1 << 2) | (3 << 4) | (1 << 6) | (1 << 8) | (3 << 10));
    this.w32(REG.CR2, 1 << 1);
    if (this.twoLevel) {
      const l1Entries = 2 ** Math.max(0, this.sidBits - this.split);
      this.strtab = this.alloc.alloc(l1Entries * 8, Math.max(64, l1Entries * 8));
      this.w64(REG.STRTAB_BASE, this.strtab + 2 ** 62 * 0);
      this.w32(REG.STRTAB_BASE_CFG, this.sidBits | (this.split << 6) | (1 << 16));
    } else {
      const bytes = 2 ** this.sidBits * 64;
      this.strtab = this.alloc.alloc(bytes, bytes);
      this.w64(REG.STRTAB_BASE, this.strtab);
      this.w32(REG.STRTAB_BASE_CFG, this.sidBits);
    }
    this.cmdq = this.alloc.alloc(2 ** this.cmdqLog2 * 16, 2 ** this.cmdqLog2 * 16);
    this.w64(REG.CMDQ_BASE, this.cmdq + this.cmdqLog2);
    this.w32(REG.CMDQ_PROD, 0);
    this.w32(REG.CMDQ_CONS, 0);
    this.cmdqProd = 0;
    this.writeCr0(1 << 3);
    this.submit([cmd.cfgiAll()]);
    this.submit([cmd.tlbiNsnhAll()]);
    this.eventq = this.alloc.alloc(2 ** this.eventqLog2 * 32, 2 ** this.eventqLog2 * 32);
    this.w64(REG.EVENTQ_BASE, this.eventq + this.eventqLog2);
    this.w32(REG.EVENTQ_PROD, 0);
    this.w32(REG.EVENTQ_CONS, 0);
    this.evtCons = 0;
    this.writeCr0((1 << 3) | (1 << 2));
    this.w32(REG.IRQ_CTRL, 0);
    this.poll(REG.IRQ_CTRLACK, 0, 0xffffffff);
    if (o.msi ?? true) {
      this.w64(REG.GERROR_IRQ_CFG0, ITS_DOORBELL);
      this.w32(REG.GERROR_IRQ_CFG1, 0x21);
      this.w32(REG.GERROR_IRQ_CFG2, 1);
      this.w64(REG.EVENTQ_IRQ_CFG0, ITS_DOORBELL);
      this.w32(REG.EVENTQ_IRQ_CFG1, 0x20);
      this.w32(REG.EVENTQ_IRQ_CFG2, 1);
    }
    this.w32(REG.IRQ_CTRL, (1 << 0) | (1 << 2));
    this.poll(REG.IRQ_CTRLACK, 5, 0xffffffff);
    this.writeCr0((1 << 3) | (1 << 2) | 1);
  }

  /** The guest-physical address of the STE of `sid` (allocating a 2-level leaf on demand). */
  steAddr(sid: number): number {
    if (!this.twoLevel) return this.strtab + sid * 64;
    const l1 = Math.floor(sid / 2 ** this.split);
    let l2 = this.l2Tables.get(l1);
    if (l2 === undefined) {
      l2 = this.alloc.alloc(2 ** this.split * 64, 2 ** this.split * 64);
      this.l2Tables.set(l1, l2);
      const span = this.split + 1;
      this.memory.writeU32(this.strtab + l1 * 8, (lo32(l2) | span) >>> 0);
      this.memory.writeU32(this.strtab + l1 * 8 + 4, hi32(l2));
    }
    return l2 + (sid % 2 ** this.split) * 64;
  }

  writeSte(sid: number, f: SteFields): void {
    writeWords(this.memory, this.steAddr(sid), steWords(f));
  }

  /** Queues commands and waits for a CMD_SYNC, as arm_smmu_cmdq_issue_cmdlist(sync=true). */
  submit(cmds: readonly Cmd[], syncMode: "msi" | "sev" = "msi"): { consErr: number } {
    const size = 2 ** this.cmdqLog2;
    const put = (c: Cmd): number => {
      const index = this.cmdqProd % size;
      const slot = this.cmdq + index * 16;
      writeWords(this.memory, slot, c);
      this.cmdqProd = (this.cmdqProd + 1) % (2 * size);
      return slot;
    };
    for (const c of cmds) put(c);
    const syncSlot = this.cmdq + (this.cmdqProd % size) * 16;
    if (syncMode === "msi") put(cmd.sync(1, syncSlot, 0));
    else put(cmd.sync(2));
    this.w32(REG.CMDQ_PROD, this.cmdqProd);
    if (syncMode === "msi") {
      // The SMMU writes MSIData (0) over the first word of the CMD_SYNC itself.
      if (this.memory.readU32(syncSlot) !== 0) return { consErr: (this.r32(REG.CMDQ_CONS) >>> 24) & 0x7f };
      return { consErr: 0 };
    }
    const cons = this.r32(REG.CMDQ_CONS);
    return { consErr: (cons >>> 24) & 0x7f };
  }

  /** Reads and consumes every pending event record (arm_smmu_evtq_thread). */
  drainEvents(): EventRecord[] {
    const out: EventRecord[] = [];
    const size = 2 ** this.eventqLog2;
    const mask = 2 * size - 1;
    let prod = this.r32(REG.EVENTQ_PROD);
    for (;;) {
      if ((prod & mask) === (this.evtCons & mask)) break;
      const slot = this.eventq + (this.evtCons % size) * 32;
      const view = new DataView(this.memory.view(slot, 32).slice().buffer);
      out.push(EventRecord.decode(view, 0));
      this.evtCons = (this.evtCons + 1) & mask;
      prod = this.r32(REG.EVENTQ_PROD);
    }
    // Acknowledge overflow as Linux does: copy OVFLG into OVACKFLG.
    this.w32(REG.EVENTQ_CONS, (this.evtCons | (prod & 0x8000_0000)) >>> 0);
    return out;
  }
}

export interface AttachOptions {
  asid?: number;
  vmid?: number;
  granuleShift?: 12 | 14 | 16;
  inputBits?: number;
  cd?: Partial<CdFields>;
  ste?: Partial<SteFields>;
}

const TG0: Record<number, number> = { 12: 0, 14: 2, 16: 1 };

/** Gives `sid` a stage-1 domain as Linux does (CD, STE, CFGI_STE + CMD_SYNC); returns its tables. */
export function attachS1(fx: Fixture, sid: number, o: AttachOptions = {}): PageTables {
  const g = o.granuleShift ?? 12;
  const bits = o.inputBits ?? 48;
  const pt = new PageTables(fx.alloc, g, bits);
  const cd = fx.alloc.alloc(64, 64);
  writeWords(
    fx.memory,
    cd,
    cdWords({ t0sz: 64 - bits, tg0: TG0[g], asid: o.asid ?? 1, ttb0: pt.root, ...o.cd }),
  );
  fx.driver.writeSte(sid, { config: 0b101, cdTable: cd, vmid: o.vmid ?? 0, ...o.ste });
  fx.driver.submit([cmd.cfgiSte(sid)]);
  return pt;
}

/** Gives `sid` a stage-2-only configuration (4K granule, 40-bit IPA, SL0=1: start at level 1). */
export function attachS2(fx: Fixture, sid: number, vmid: number, o: Partial<SteFields> = {}): PageTables {
  const pt = new PageTables(fx.alloc, 12, 40, 1);
  fx.driver.writeSte(sid, { config: 0b110, vmid, s2t0sz: 24, s2sl0: 1, s2tg: 0, s2ttb: pt.root, ...o });
  fx.driver.submit([cmd.cfgiSte(sid)]);
  return pt;
}
