/**
 * Linux's I/O patterns under `viommu run`, without KVM: the x86 `Platform` that `viommu run`
 * builds (virtio-iommu-pci at 00:01.0, a virtio-blk `iommu=on` on a host file), driven as Linux
 * 6.12 drives it, each doorbell an MMIO write through `Platform.mmioWrite` with its data in a
 * kvm_run-like DataView, as `Machine`'s exit dispatch passes it. What one exit of the guest costs
 * the VMM after KVM_RUN returns, with the guest's own request pattern:
 *
 *   - an O_DIRECT read through the virtio-iommu: the virtio ring maps every scatterlist element
 *     with its own dma_map_page (header, each physically contiguous run of data pages, status,
 *     and the indirect descriptor table), and each MAP is one request and one doorbell
 *     (viommu_map_pages, then iotlb_sync_map); the UNMAPs that follow the completion are queued
 *     without a doorbell (lazy DMA mode: iommu_unmap_fast, no sync) and are served at the next
 *     MAP's doorbell. One blk doorbell per request; its completion is an MSI-X message.
 *   - guest VFIO (vfio-map-bench): MAP of 4 KiB and its doorbell, UNMAP and its doorbell (VFIO
 *     unmaps are strict).
 *
 * Where the bench's "guest" writes its rings it does so with DataViews over guest RAM, so the
 * figures are the device side's. Run one case under the profiler: `node --cpu-prof --import tsx
 * bench/vmm-io.bench.ts [case-substring] [ops]`.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { NULL_SINK } from "../src/devices/uart16550.ts";
import { GuestMemory } from "../src/engine/guest-memory.ts";
import { Tracer } from "../src/engine/trace.ts";
import { Kvm } from "../src/kvm/system.ts";
import {
  COMMON_CFG_OFFSET,
  MSIX_TABLE_OFFSET,
  NOTIFY_OFF_MULTIPLIER,
  NOTIFY_OFFSET,
} from "../src/virtio/pci-transport.ts";
import { PCI_ECAM_BASE, ramLayout } from "../src/vmm/x86/layout.ts";
import { Platform } from "../src/vmm/x86/platform.ts";
import { type Bdf, PciDriver } from "../test/support/pci-driver.ts";
import type { BenchCase } from "./harness.ts";
import { machineRunning } from "./kvm.bench.ts";

const GROUP = "vmm: Linux I/O patterns through the x86 platform (doorbell = MMIO exit)";
const MiB = 1 << 20;
const RAM_BYTES = 64 * MiB;
const DISK_BYTES = 8 * MiB;
const PAGE = 4096;
const QUEUE_SIZE = 256;

// Feature bits (VIRTIO 1.3 6; 5.13.3; 5.2.3): what Linux 6.12 accepts from these devices.
const F_VERSION_1 = 1n << 32n;
const F_ACCESS_PLATFORM = 1n << 33n;
const F_INDIRECT_DESC = 1n << 28n;
const F_EVENT_IDX = 1n << 29n;
const IOMMU_F_INPUT_RANGE = 1n << 0n;
const IOMMU_F_MAP_UNMAP = 1n << 2n;
const BLK_F_SEG_MAX = 1n << 2n;
const BLK_F_BLK_SIZE = 1n << 6n;

const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const DESC_F_INDIRECT = 4;
const NO_VECTOR = 0xffff;

/** A guest-side split ring with direct views of its areas; chains complete at the doorbell. */
class GuestRing {
  readonly desc: DataView;
  readonly avail: DataView;
  readonly used: DataView;
  private nextDesc = 0;
  private availIdx = 0;
  lastUsed = 0;

  constructor(memory: GuestMemory, descGpa: number, availGpa: number, usedGpa: number) {
    const view = (gpa: number, size: number) => {
      const u8 = memory.view(gpa, size);
      return new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    };
    this.desc = view(descGpa, 16 * QUEUE_SIZE);
    this.avail = view(availGpa, 6 + 2 * QUEUE_SIZE);
    this.used = view(usedGpa, 6 + 8 * QUEUE_SIZE);
  }

  /** Writes descriptor slots for buffers (addr, len, flags), chained; returns the head. */
  private chain(addrs: readonly number[], lens: readonly number[], flags: readonly number[]): number {
    const head = this.nextDesc;
    for (let i = 0; i < addrs.length; i++) {
      const slot = (head + i) % QUEUE_SIZE;
      const last = i === addrs.length - 1;
      const d = 16 * slot;
      this.desc.setUint32(d, addrs[i] % 2 ** 32, true);
      this.desc.setUint32(d + 4, Math.floor(addrs[i] / 2 ** 32), true);
      this.desc.setUint32(d + 8, lens[i], true);
      this.desc.setUint16(d + 12, flags[i] | (last ? 0 : DESC_F_NEXT), true);
      this.desc.setUint16(d + 14, last ? 0 : (slot + 1) % QUEUE_SIZE, true);
    }
    this.nextDesc = (head + addrs.length) % QUEUE_SIZE;
    return head;
  }

  /** Makes a chain available (its descriptors must not wrap the table: callers size for that). */
  post(addrs: readonly number[], lens: readonly number[], flags: readonly number[]): void {
    if (this.nextDesc + addrs.length > QUEUE_SIZE) this.nextDesc = 0;
    const head = this.chain(addrs, lens, flags);
    this.avail.setUint16(4 + 2 * (this.availIdx % QUEUE_SIZE), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.avail.setUint16(2, this.availIdx, true);
  }

  /** Takes every used element; returns how many. Publishes used_event when `wantInterrupts`. */
  reap(wantInterrupts: boolean): number {
    const usedIdx = this.used.getUint16(2, true);
    const n = (usedIdx - this.lastUsed) & 0xffff;
    this.lastUsed = usedIdx;
    // 2.7.10: used_event = the next used index the driver wants an interrupt for.
    if (wantInterrupts) this.avail.setUint16(4 + 2 * QUEUE_SIZE, usedIdx, true);
    return n;
  }
}

/** The platform of `viommu run --iommu virtio --disk path=...,iommu=on` (1 vCPU, 64 MiB). */
let diskPath: string | undefined;

/** One disk image for every machine of this process, removed when the process exits. */
function benchDisk(): string {
  if (diskPath !== undefined) return diskPath;
  const dir = mkdtempSync(join(tmpdir(), "viommu-vmm-io-bench-"));
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  diskPath = join(dir, "disk.img");
  writeFileSync(diskPath, new Uint8Array(DISK_BYTES).fill(0x5a));
  return diskPath;
}

function platformWithDisk(): Platform {
  const disk = benchDisk();
  return new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: RAM_BYTES }]),
    ramLayout: ramLayout(RAM_BYTES),
    cpus: 1,
    serial: NULL_SINK,
    iommu: { kind: "virtio" },
    devices: [{ kind: "disk", iommu: true, path: disk, readOnly: true }],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
    msiTarget: { signalMsi: () => true },
    onDebugExit: () => {},
  });
}

/** A doorbell as KVM reports it: a 2-byte MMIO write whose data sits in the kvm_run page. */
function doorbellOf(p: Platform): (gpa: number, queue: number) => void {
  const run = new DataView(new ArrayBuffer(8));
  return (gpa, queue) => {
    run.setUint16(0, queue, true);
    p.mmioWrite(gpa, 2, run, 0);
  };
}

/**
 * 3.1.1 initialisation of the virtio function with BAR0 at `base`: features, MSI-X on (vectors
 * 0-2), then each queue of `rings` (size QUEUE_SIZE, its MSI-X vector), then DRIVER_OK.
 */
function bringUp(
  p: Platform,
  bdf: Bdf,
  base: number,
  features: bigint,
  rings: readonly { gpa: number; vector: number }[],
): void {
  const pci = new PciDriver(p.pio, p.mmio, "ecam", PCI_ECAM_BASE);
  pci.write(bdf, 4, 2, pci.read(bdf, 4, 2) | 0x6); // memory decode, bus master
  const c = base + COMMON_CFG_OFFSET;
  p.mmio.write(c + 20, 1, 0);
  p.mmio.write(c + 20, 1, 3); // ACKNOWLEDGE | DRIVER
  p.mmio.write(c + 8, 4, 0);
  p.mmio.write(c + 12, 4, Number(features & 0xffffffffn));
  p.mmio.write(c + 8, 4, 1);
  p.mmio.write(c + 12, 4, Number(features >> 32n));
  p.mmio.write(c + 20, 1, 11); // FEATURES_OK
  if ((p.mmio.read(c + 20, 1) & 8) === 0) throw new Error("bench: FEATURES_OK refused");
  const [msix] = pci.findCapabilities(bdf, 0x11);
  for (let v = 0; v < 3; v++) pci.setMsixVector(base + MSIX_TABLE_OFFSET, v, 0xfee00000, 0x40 + v);
  pci.enableMsix(bdf, msix);
  rings.forEach((r, q) => {
    p.mmio.write(c + 22, 2, q);
    p.mmio.write(c + 24, 2, QUEUE_SIZE);
    p.mmio.write(c + 26, 2, r.vector);
    p.mmio.write(c + 32, 4, r.gpa); // desc, then avail and used at +4 KiB, +8 KiB
    p.mmio.write(c + 40, 4, r.gpa + 0x1000);
    p.mmio.write(c + 48, 4, r.gpa + 0x2000);
    p.mmio.write(c + 28, 2, 1);
  });
  p.mmio.write(c + 20, 1, 15); // DRIVER_OK
}

/**
 * Linux's side of the virtio-iommu requestq (drivers/iommu/virtio-iommu.c): requests in slots
 * (request, 4-byte tail, indirect table), added to the ring; `sync` is the doorbell.
 */
class GuestIommuQueue {
  private readonly ring: GuestRing;
  private readonly slots: DataView;
  private readonly slotsGpa: number;
  private readonly doorbell: () => void;
  private slot = 0;
  private pending = 0;
  private readonly addrs = [0];
  private readonly lens = [32];
  private readonly flags = [DESC_F_INDIRECT];

  constructor(memory: GuestMemory, ringGpa: number, slotsGpa: number, doorbell: () => void) {
    this.ring = new GuestRing(memory, ringGpa, ringGpa + 0x1000, ringGpa + 0x2000);
    const u8 = memory.view(slotsGpa, REQ_SLOT_BYTES * REQ_SLOTS);
    this.slots = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    this.slotsGpa = slotsGpa;
    this.doorbell = doorbell;
  }

  /**
   * Adds one request whose fields `fill` writes at `o` (zeroed first); `len` readable bytes. Two
   * buffers (the request, the tail) make Linux's ring use an indirect table when INDIRECT_DESC
   * was negotiated (virtqueue_use_indirect), so every request is one indirect descriptor.
   */
  private add(len: number, fill: (v: DataView, o: number) => void): void {
    // A full ring: viommu_add_req gets -ENOSPC, syncs (a doorbell) and adds again.
    if (this.pending >= QUEUE_SIZE / 2 - 2) this.sync();
    this.pending++;
    const o = REQ_SLOT_BYTES * this.slot;
    this.slot = (this.slot + 1) % REQ_SLOTS;
    const v = this.slots;
    for (let k = 0; k < 40; k += 4) v.setUint32(o + k, 0, true);
    fill(v, o);
    const gpa = this.slotsGpa + o;
    // The indirect table at +64: the request (readable, NEXT), then the tail at +48 (writable).
    v.setUint32(o + 64, gpa, true);
    v.setUint32(o + 68, 0, true);
    v.setUint32(o + 72, len, true);
    v.setUint16(o + 76, DESC_F_NEXT, true);
    v.setUint16(o + 78, 1, true);
    v.setUint32(o + 80, gpa + 48, true);
    v.setUint32(o + 84, 0, true);
    v.setUint32(o + 88, 4, true);
    v.setUint16(o + 92, DESC_F_WRITE, true);
    v.setUint16(o + 94, 0, true);
    this.addrs[0] = gpa + 64;
    this.ring.post(this.addrs, this.lens, this.flags);
  }

  /** 5.13.6.3 ATTACH: type, domain, endpoint, flags, reserved. */
  attach(domain: number, endpoint: number): void {
    this.add(24, (v, o) => {
      v.setUint8(o, 1);
      v.setUint32(o + 4, domain, true);
      v.setUint32(o + 8, endpoint, true);
    });
  }

  /** 5.13.6.5 MAP [iova, iova + size) to gpa, READ | WRITE. */
  map(domain: number, iova: number, sizeBytes: number, gpa: number): void {
    this.add(36, (v, o) => {
      v.setUint8(o, 3);
      v.setUint32(o + 4, domain, true);
      v.setUint32(o + 8, iova, true);
      v.setUint32(o + 16, iova + sizeBytes - 1, true);
      v.setUint32(o + 24, gpa, true);
      v.setUint32(o + 32, 3, true);
    });
  }

  /** 5.13.6.6 UNMAP [iova, iova + size). */
  unmap(domain: number, iova: number, sizeBytes: number): void {
    this.add(24, (v, o) => {
      v.setUint8(o, 4);
      v.setUint32(o + 4, domain, true);
      v.setUint32(o + 8, iova, true);
      v.setUint32(o + 16, iova + sizeBytes - 1, true);
    });
  }

  /** viommu_sync_req: the doorbell; the device has answered everything when the exit returns. */
  sync(): void {
    this.doorbell();
    const done = this.ring.reap(false);
    if (done !== this.pending) throw new Error(`bench: ${this.pending} requests, ${done} answered`);
    this.pending = 0;
  }
}

const REQ_SLOTS = 512;
/** A request slot: the request at 0, its tail at 48, its indirect table at 64. */
const REQ_SLOT_BYTES = 128;
const DOMAIN = 1;
/** Guest-physical layout: the IOMMU's rings and requests, the blk rings (IOVA = gpa + BLK_IOVA). */
const IOMMU_RING_GPA = 0x10_0000;
const IOMMU_EVENT_RING_GPA = 0x10_4000;
const IOMMU_SLOTS_GPA = 0x18_0000;
const BLK_RING_GPA = 0x20_0000;
const BLK_IOVA = 0x8000_0000;

/** The platform brought up as Linux does: both drivers bound, the disk attached, its rings mapped. */
function linuxLikeMachine() {
  const p = platformWithDisk();
  const memory = p.memory;
  const bar0 = (rid: number) => p.bars.find((b) => b.requesterId === rid && b.bar === 0)!.address;
  const doorbell = doorbellOf(p);
  const iommuBase = bar0(0x08);
  // Linux's requestq has no callback (no vector); its eventq gets vector 1.
  bringUp(
    p,
    { bus: 0, device: 1, fn: 0 },
    iommuBase,
    F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | IOMMU_F_MAP_UNMAP | IOMMU_F_INPUT_RANGE,
    [
      { gpa: IOMMU_RING_GPA, vector: NO_VECTOR },
      { gpa: IOMMU_EVENT_RING_GPA, vector: 1 },
    ],
  );
  const iommu = new GuestIommuQueue(memory, IOMMU_RING_GPA, IOMMU_SLOTS_GPA, () =>
    doorbell(iommuBase + NOTIFY_OFFSET, 0),
  );
  const blkRid = p.devices[0].requesterId;
  const blkBase = bar0(blkRid);
  // The disk's rings (dma_alloc_coherent at probe) are mapped before DRIVER_OK, as in Linux.
  iommu.attach(DOMAIN, blkRid);
  iommu.map(DOMAIN, BLK_IOVA + BLK_RING_GPA, 0x4000, BLK_RING_GPA);
  iommu.sync();
  if (p.viommu!.engine.stats().domains !== 1) throw new Error("bench: ATTACH failed");
  bringUp(
    p,
    { bus: 0, device: blkRid >> 3, fn: 0 },
    blkBase,
    F_VERSION_1 | F_ACCESS_PLATFORM | F_EVENT_IDX | F_INDIRECT_DESC | BLK_F_SEG_MAX | BLK_F_BLK_SIZE,
    [{ gpa: BLK_IOVA + BLK_RING_GPA, vector: 0 }],
  );
  const blkRing = new GuestRing(memory, BLK_RING_GPA, BLK_RING_GPA + 0x1000, BLK_RING_GPA + 0x2000);
  const blkNotify = blkBase + NOTIFY_OFFSET + 0 * NOTIFY_OFF_MULTIPLIER;
  return { p, memory, iommu, blkRing, blkDoorbell: () => doorbell(blkNotify, 0) };
}

type LinuxMachine = ReturnType<typeof linuxLikeMachine>;

/**
 * One O_DIRECT read of `runs` x `runBytes` (physically scattered runs) at the next sector, as
 * Linux's virtio-blk + virtio ring + dma-iommu issue it behind the virtio-iommu (header above).
 */
function blkReadCase(name: string, runs: number, runBytes: number): BenchCase {
  let m: LinuxMachine | undefined;
  const requestBytes = runs * runBytes;
  const windowBytes = 64 * MiB;
  // Guest-physical: header+status page, indirect table page, data runs at twice their stride.
  const HDR_GPA = 0x30_0000;
  const TABLE_GPA = 0x30_1000;
  const DATA_GPA = 16 * MiB;
  const addrs = [0];
  const lens = [16 * (runs + 2)];
  const flags = [DESC_F_INDIRECT];
  let op = 0;
  let table: DataView;
  let hdr: DataView;
  const setup = (mm: LinuxMachine) => {
    const t = mm.memory.view(TABLE_GPA, PAGE);
    table = new DataView(t.buffer, t.byteOffset, t.byteLength);
    const h = mm.memory.view(HDR_GPA, PAGE);
    hdr = new DataView(h.buffer, h.byteOffset, h.byteLength);
  };
  return {
    group: GROUP,
    name,
    initialBatch: runs > 1 ? 16 : 256,
    run(n) {
      if (m === undefined) {
        m = linuxLikeMachine();
        setup(m);
      }
      const mm = m;
      for (let i = 0; i < n; i++, op++) {
        // Fresh IOVAs each request (lazy unmaps of the last one are still queued): two windows.
        const iovaBase = 0x4000_0000 + (op & 1) * windowBytes;
        const hdrIova = iovaBase;
        const tableIova = iovaBase + PAGE;
        const statusIova = iovaBase + 2 * PAGE;
        const dataIova = iovaBase + 3 * PAGE;
        // Header: IN at the next sector; status byte at +16.
        hdr.setUint32(0, 0, true);
        hdr.setUint32(8, ((op * requestBytes) % DISK_BYTES) / 512, true);
        hdr.setUint32(12, 0, true);
        // dma_map_page per scatterlist element, each a MAP and a doorbell.
        const q = mm.iommu;
        q.map(DOMAIN, hdrIova, PAGE, HDR_GPA);
        q.sync();
        for (let r = 0; r < runs; r++) {
          q.map(DOMAIN, dataIova + r * runBytes, runBytes, DATA_GPA + 2 * r * runBytes);
          q.sync();
        }
        q.map(DOMAIN, statusIova, PAGE, HDR_GPA); // the status byte is an element of its own
        q.sync();
        q.map(DOMAIN, tableIova, PAGE, TABLE_GPA); // vring_map_single of the indirect table
        q.sync();
        // Indirect table: header (readable), data runs, status (writable).
        const put = (k: number, iova: number, len: number, f: number) => {
          const d = 16 * k;
          table.setUint32(d, iova % 2 ** 32, true);
          table.setUint32(d + 4, 0, true);
          table.setUint32(d + 8, len, true);
          table.setUint16(d + 12, f | (k === runs + 1 ? 0 : DESC_F_NEXT), true);
          table.setUint16(d + 14, k + 1, true);
        };
        put(0, hdrIova, 16, 0);
        for (let r = 0; r < runs; r++) put(1 + r, dataIova + r * runBytes, runBytes, DESC_F_WRITE);
        put(runs + 1, statusIova + 16, 1, DESC_F_WRITE);
        addrs[0] = tableIova;
        mm.blkRing.post(addrs, lens, flags);
        mm.blkDoorbell();
        if (mm.blkRing.reap(true) !== 1 || hdr.getUint8(16) !== 0) throw new Error("bench: blk read failed");
        // Completion: dma_unmap_page per element, queued UNMAPs without a doorbell (lazy mode).
        q.unmap(DOMAIN, hdrIova, PAGE);
        for (let r = 0; r < runs; r++) q.unmap(DOMAIN, dataIova + r * runBytes, runBytes);
        q.unmap(DOMAIN, statusIova, PAGE);
        q.unmap(DOMAIN, tableIova, PAGE);
      }
    },
  };
}

function vfioPairCase(): BenchCase {
  let m: LinuxMachine | undefined;
  return {
    group: GROUP,
    name: "guest VFIO 4 KiB MAP + doorbell, UNMAP + doorbell",
    run(n) {
      if (m === undefined) m = linuxLikeMachine();
      const mm = m;
      for (let i = 0; i < n; i++) {
        const iova = 0x6000_0000 + (i & 1023) * PAGE;
        mm.iommu.map(DOMAIN, iova, PAGE, 0x40_0000);
        mm.iommu.sync();
        mm.iommu.unmap(DOMAIN, iova, PAGE);
        mm.iommu.sync();
      }
    },
  };
}

/**
 * Under KVM only: a guest port write per iteration (a real exit and KVM_RUN re-entry) with, in
 * the exit's handler, one operation of `inner` (or nothing): what the device path costs right
 * after a world switch, against the exit alone. Where KVM runs nested under a software CPU (the
 * KVM lab's L1 under TCG), every switch between L2 and L1 flushes the software TLB, so this
 * differs from the same work in a loop without exits.
 */
function exitPlusCase(name: string, inner: BenchCase | null): BenchCase {
  let m: ReturnType<typeof machineRunning> | undefined;
  return {
    group: "vmm: exit round trip plus the device work of one operation in its handler",
    name,
    initialBatch: 200,
    run(n) {
      // mov dx, 0x3ff; out dx, al (COM1's scratch register)
      if (m === undefined) m = machineRunning([0x66, 0xba, 0xff, 0x03, 0xee]);
      const vcpu = m.vcpu;
      const p = m.platform;
      for (let i = 0; i < n; i++) {
        const e = vcpu.runOnce();
        if (e.kind !== "io") throw new Error(`unexpected exit ${e.kind}`);
        p.pio.write(e.port, e.sizeBytes, vcpu.run.getUint8(e.dataOffset));
        inner?.run(1);
      }
    },
  };
}

const vfioPair = vfioPairCase();
const read4k = blkReadCase("O_DIRECT 4 KiB read (4 MAP doorbells, 1 blk)", 1, PAGE);

export const cases: BenchCase[] = [
  blkReadCase("O_DIRECT 1 MiB read: 64 runs of 16 KiB (67 MAP doorbells, 1 blk)", 64, 16 * 1024),
  blkReadCase("O_DIRECT 1 MiB read: 128 single pages (131 MAP doorbells, 1 blk)", 128, PAGE),
  read4k,
  vfioPair,
  ...(Kvm.available()
    ? [
        exitPlusCase("port write exit alone", null),
        exitPlusCase(`port write exit + ${vfioPair.name}`, vfioPair),
        exitPlusCase(`port write exit + ${read4k.name}`, read4k),
      ]
    : []),
];

// Run directly: one case, `ops` operations, for `node --cpu-prof`.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const which = process.argv[2] ?? "";
  const ops = Number(process.argv[3] ?? 2000);
  const c = cases.find((x) => x.name.includes(which));
  if (c === undefined) throw new Error(`no case matches ${which}`);
  const t0 = process.hrtime.bigint();
  c.run(ops);
  const ns = Number(process.hrtime.bigint() - t0);
  console.log(`${c.name}: ${ops} ops, ${(ns / ops / 1000).toFixed(2)} us/op`);
}
