/**
 * Device platform figures: configuration access through ECAM and 0xCF8/0xCFC, BAR MMIO
 * dispatch, MSI-X delivery, and full request round trips (driver posts, notifies, device
 * serves, driver reaps) for virtio-rng, virtio-blk and edu DMA, each with identity DMA and
 * behind virtio-iommu mappings, side by side.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EDU_DMA_BUFFER_ADDRESS, EduDevice } from "../src/devices/edu.ts";
import { VirtioBlk } from "../src/devices/virtio-blk.ts";
import { VirtioRng } from "../src/devices/virtio-rng.ts";
import { DmaAddressSpace, IDENTITY } from "../src/engine/dma-space.ts";
import type { VirtioDevice, VirtioDeviceContext } from "../src/virtio/device.ts";
import { VirtioPciTransport } from "../src/virtio/pci-transport.ts";
import { DescriptorChain, POP_CHAIN, SplitQueue } from "../src/virtio/split-queue.ts";
import { VirtioIommu } from "../src/virtio-iommu/device.ts";
import { DMA_IOVA_OFFSET, IommuMachine } from "../test/support/iommu-machine.ts";
import { TestMachine } from "../test/support/machine.ts";
import { attachRequest, mapRequest } from "../test/support/viommu-requests.ts";
import {
  GuestAllocator,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_VERSION_1,
  VirtioPciDriver,
} from "../test/support/virtio-driver.ts";
import type { BenchCase } from "./harness.ts";

const GROUP = "devices";
let sink = 0;

function pciCases(): BenchCase[] {
  const m = new TestMachine();
  const edu = new EduDevice();
  m.add(edu.pci, 4);
  const b = { bus: 0, device: 4, fn: 0 };
  const bars = m.driver.assignBars(b);
  const [cap] = m.driver.findCapabilities(b, 0x05);
  m.driver.enableMsi(b, cap, 0xfee00000, 0x30);
  const ecam = 0xb000_0000 + (4 << 15);
  const base = bars[0].address;
  return [
    {
      group: GROUP,
      name: "pci: config dword read via ECAM",
      run(n) {
        for (let i = 0; i < n; i++) sink ^= m.mmio.read(ecam, 4);
      },
    },
    {
      group: GROUP,
      name: "pci: config dword read via 0xCF8/0xCFC",
      run(n) {
        for (let i = 0; i < n; i++) {
          m.io.write(0xcf8, 4, 0x8000_2000);
          sink ^= m.io.read(0xcfc, 4);
        }
      },
    },
    {
      group: GROUP,
      name: "edu: BAR0 register read (bus decode + handler)",
      run(n) {
        for (let i = 0; i < n; i++) sink ^= m.mmio.read(base + 4, 4);
      },
    },
    {
      group: GROUP,
      name: "edu: interrupt raise + ack by MSI (2 MMIO writes)",
      run(n) {
        for (let i = 0; i < n; i++) {
          m.mmio.write(base + 0x60, 4, 1);
          m.mmio.write(base + 0x64, 4, 1);
        }
        m.irq.msis.length = 0;
      },
    },
  ];
}

function eduDmaCase(translated: boolean): BenchCase {
  let m: TestMachine;
  const edu = new EduDevice();
  let iova: number;
  if (translated) {
    const im = new IommuMachine();
    const rid = im.addBehindIommu(edu.pci, 4);
    im.mapDmaWindow(1, rid);
    iova = im.dmaAllocator.alloc(4096, 4096) + DMA_IOVA_OFFSET;
    m = im;
  } else {
    m = new TestMachine();
    m.add(edu.pci, 4);
    iova = 0x40_0000;
  }
  const base = m.driver.assignBars({ bus: 0, device: 4, fn: 0 })[0].address;
  return {
    group: GROUP,
    name: `edu: 4 KiB DMA RAM->device, ${translated ? "virtio-iommu mapping" : "identity"}`,
    run(n) {
      for (let i = 0; i < n; i++) {
        m.mmio.write(base + 0x80, 8, iova);
        m.mmio.write(base + 0x88, 8, EDU_DMA_BUFFER_ADDRESS);
        m.mmio.write(base + 0x90, 8, 4096);
        m.mmio.write(base + 0x98, 4, 1);
      }
      if (edu.dmaFaults !== 0) throw new Error("bench DMA faulted");
    },
  };
}

/** Driver + device for a virtio function at 00:02.0, identity or behind the virtio-iommu. */
function virtioSetup(fnOf: (accessPlatform: boolean) => VirtioPciTransport, translated: boolean) {
  if (translated) {
    const im = new IommuMachine();
    const t = fnOf(true);
    const rid = im.addBehindIommu(t.pci, 2);
    im.mapDmaWindow(1, rid);
    const drv = new VirtioPciDriver(im, { bus: 0, device: 2, fn: 0 }, im.dmaAllocator, DMA_IOVA_OFFSET);
    drv.bringUp(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM, 1, 256);
    return { m: im as TestMachine, drv, alloc: im.dmaAllocator };
  }
  const m = new TestMachine();
  const t = fnOf(false);
  m.add(t.pci, 2);
  const alloc = new GuestAllocator(4 << 20, 12 << 20);
  const drv = new VirtioPciDriver(m, { bus: 0, device: 2, fn: 0 }, alloc);
  drv.bringUp(VIRTIO_F_VERSION_1, 1, 256);
  return { m, drv, alloc };
}

function rngCase(translated: boolean): BenchCase {
  const { m, drv, alloc } = virtioSetup(
    (ap) => new VirtioPciTransport(new VirtioRng(), { accessPlatform: ap }),
    translated,
  );
  const q = drv.queues[0];
  const buf = alloc.alloc(64);
  const chain = [{ gpa: buf, len: 64, writable: true }];
  return {
    group: GROUP,
    name: `virtio-rng: 64 B request round trip, ${translated ? "virtio-iommu" : "identity"}`,
    run(n) {
      for (let i = 0; i < n; i++) {
        q.add(chain);
        drv.kick(0);
        sink ^= q.takeUsed().length;
      }
      m.irq.msis.length = 0;
    },
  };
}

/** A device that returns every chain unused: the cost of the rings and the transport alone. */
class NullDevice implements VirtioDevice {
  readonly name = "null";
  readonly deviceType = 4;
  readonly pciClassCode = 0xff0000;
  readonly deviceFeatures = 0n;
  readonly queueCount = 1;
  readonly queueMaxSize = 256;
  readonly configSizeBytes = 0;
  private ctx: VirtioDeviceContext | undefined;
  private readonly chain = new DescriptorChain();
  readConfig(): number {
    return 0;
  }
  writeConfig(): void {}
  acceptFeatures(): boolean {
    return true;
  }
  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
  }
  queueNotify(): void {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    const q = ctx.queue(0);
    while (q.pop(this.chain) === POP_CHAIN) q.pushUsed(this.chain.head, 0);
    ctx.notifyUsed(0);
  }
  reset(): void {
    this.ctx = undefined;
  }
}

function nullCase(translated: boolean, descriptors: number): BenchCase {
  const { m, drv, alloc } = virtioSetup(
    (ap) => new VirtioPciTransport(new NullDevice(), { accessPlatform: ap }),
    translated,
  );
  const q = drv.queues[0];
  const chain = Array.from({ length: descriptors }, (_, i) => ({
    gpa: alloc.alloc(512, 512),
    len: 512,
    writable: i === descriptors - 1,
  }));
  return {
    group: GROUP,
    name: `virtqueue: ${descriptors}-descriptor chain round trip, ${translated ? "virtio-iommu" : "identity"}`,
    run(n) {
      for (let i = 0; i < n; i++) {
        q.add(chain);
        drv.kick(0);
        sink ^= q.takeUsed().length;
      }
      m.irq.msis.length = 0;
    },
  };
}

/**
 * The device side alone: pop + pushUsed of 3-descriptor chains from a ring the bench fills once;
 * each batch only advances avail.idx by the queue size (one 2-byte write).
 */
function ringCase(translated: boolean): BenchCase {
  const SIZE = 256;
  const m = new TestMachine();
  const base = 0x40_0000;
  let dma: DmaAddressSpace;
  let offset = 0;
  if (translated) {
    const viommu = new VirtioIommu(m.memory);
    viommu.negotiate(viommu.deviceFeatures);
    dma = viommu.addEndpoint(0x10);
    offset = 0x0800_0000;
    const tail = new Uint8Array(4);
    viommu.handleRequest(attachRequest(1, 0x10), tail);
    viommu.handleRequest(mapRequest(1, base + offset, base + offset + (1 << 20) - 1, base, 3), tail);
    if (tail[0] !== 0) throw new Error("bench map failed");
  } else {
    dma = new DmaAddressSpace(m.memory, IDENTITY, 0x10);
  }
  const desc = base;
  const avail = base + 0x1000;
  const used = base + 0x2000;
  const mem = m.memory;
  for (let i = 0; i < SIZE; i++) {
    const d = desc + 16 * i;
    const last = i % 3 === 2;
    mem.writeU64(d, BigInt(base + offset + 0x10000 + 512 * i));
    mem.writeU32(d + 8, 512);
    mem.writeU16(d + 12, last ? 2 : 1);
    mem.writeU16(d + 14, last ? 0 : i + 1);
  }
  for (let k = 0; k < SIZE; k++) mem.writeU16(avail + 4 + 2 * k, 3 * (k % 85));
  const q = new SplitQueue(0, SIZE);
  const err = q.start(dma, SIZE, desc + offset, avail + offset, used + offset, false, false);
  if (err !== null) throw new Error(err);
  const chain = new DescriptorChain();
  let availIdx = 0;
  return {
    group: GROUP,
    name: `virtqueue device side: pop + push of a 3-desc chain, ${translated ? "virtio-iommu" : "identity"}`,
    initialBatch: SIZE,
    run(n) {
      for (let done = 0; done < n; ) {
        availIdx = (availIdx + SIZE) & 0xffff;
        mem.writeU16(avail + 2, availIdx);
        for (let k = 0; k < SIZE && done < n; k++, done++) {
          if (q.pop(chain) !== POP_CHAIN) throw new Error(q.brokenReason ?? "ring empty");
          q.pushUsed(chain.head, 0);
        }
        // A partial batch leaves chains available: drain them outside the count.
        while (q.pop(chain) === POP_CHAIN) q.pushUsed(chain.head, 0);
      }
    },
  };
}

/**
 * One IN request of `pages` 4 KiB buffers, each its own descriptor on every other page (as a
 * Linux scatterlist of separate pages: every buffer is its own view of guest memory).
 */
function blkCase(translated: boolean, path: string, pages = 1): BenchCase {
  const { m, drv, alloc } = virtioSetup(
    (ap) => new VirtioBlk({ path, accessPlatform: ap, queueSize: 256 }).transport,
    translated,
  );
  const q = drv.queues[0];
  const header = alloc.alloc(16);
  m.memory.writeU32(header, 0); // VIRTIO_BLK_T_IN
  const data = alloc.alloc(2 * 4096 * pages, 4096);
  const status = alloc.alloc(1);
  const chain = [
    { gpa: header, len: 16, writable: false },
    ...Array.from({ length: pages }, (_, i) => ({ gpa: data + 2 * 4096 * i, len: 4096, writable: true })),
    { gpa: status, len: 1, writable: true },
  ];
  const sectorsPerRequest = 8 * pages;
  const diskSectors = 4096; // the 2 MiB disk below
  let sector = 0;
  const what = pages === 1 ? "4 KiB read round trip" : `${4 * pages} KiB read in ${pages} scattered pages`;
  return {
    group: GROUP,
    name: `virtio-blk: ${what} (page cache), ${translated ? "virtio-iommu" : "identity"}`,
    run(n) {
      for (let i = 0; i < n; i++) {
        sector = (sector + sectorsPerRequest) % (diskSectors - sectorsPerRequest);
        m.memory.writeU64(header + 8, BigInt(sector));
        q.add(chain);
        drv.kick(0);
        sink ^= q.takeUsed().length;
      }
      if (m.memory.readU8(status) !== 0) throw new Error("bench read failed");
      m.irq.msis.length = 0;
    },
  };
}

const dir = mkdtempSync(join(tmpdir(), "viommu-bench-"));
const disk = join(dir, "disk.img");
writeFileSync(disk, new Uint8Array(2 << 20).fill(0x5a));
// Loading this module (bench/run.ts loads every case file) must not leave a disk in /tmp.
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

export const cases: BenchCase[] = [
  ...pciCases(),
  eduDmaCase(false),
  eduDmaCase(true),
  ringCase(false),
  ringCase(true),
  nullCase(false, 3),
  nullCase(true, 3),
  rngCase(false),
  rngCase(true),
  blkCase(false, disk),
  blkCase(true, disk),
  blkCase(true, disk, 32),
];

export function benchSink(): number {
  return sink;
}
