import assert from "node:assert/strict";
import { test } from "node:test";
import { EDU_DMA_BUFFER_ADDRESS, EduDevice } from "../../src/devices/edu.ts";
import { VirtioRng } from "../../src/devices/virtio-rng.ts";
import { VirtioPciTransport } from "../../src/virtio/pci-transport.ts";
import { DMA_IOVA_OFFSET, IommuMachine, VIOMMU_BDF } from "../support/iommu-machine.ts";
import { checksum, prng } from "../support/machine.ts";
import { detachRequest } from "../support/viommu-requests.ts";
import {
  MSI_ADDRESS,
  msiData,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_VERSION_1,
  VirtioPciDriver,
} from "../support/virtio-driver.ts";

function eduBehindIommu() {
  const m = new IommuMachine();
  const edu = new EduDevice();
  const rid = m.addBehindIommu(edu.pci, 3);
  const bdf = { bus: 0, device: 3, fn: 0 };
  const bars = m.driver.assignBars(bdf);
  const base = bars[0].address;
  const dma = (src: number, dst: number, count: number, cmd: number) => {
    m.mmio.write(base + 0x80, 8, src);
    m.mmio.write(base + 0x88, 8, dst);
    m.mmio.write(base + 0x90, 8, count);
    m.mmio.write(base + 0x98, 4, cmd);
  };
  return { m, edu, rid, bdf, base, dma };
}

test("virtio-iommu-pci: PCI 1af4:1057, class 00:ff (as QEMU), not offering ACCESS_PLATFORM for itself", () => {
  const m = new IommuMachine();
  const d = m.driver;
  assert.equal(d.read(VIOMMU_BDF, 0, 4), 0x1057_1af4);
  assert.equal(d.read(VIOMMU_BDF, 8, 4) >>> 8, 0x00ff00);
  assert.equal(m.viommuDriver.deviceFeatures() & VIRTIO_F_ACCESS_PLATFORM, 0n);
  assert.equal(m.viommuDriver.deviceFeatures() & (1n << 2n), 1n << 2n, "MAP_UNMAP offered");
});

test("VIRTIO 1.3 5.13.4: the configuration space is readable through the device configuration capability", () => {
  const m = new IommuMachine();
  const drv = m.viommuDriver;
  const lo = drv.deviceConfig(0, 4);
  assert.equal(lo & 0xfff, 0, "page_size_mask: 4 KiB granule, no smaller bit");
  assert.ok((lo & 0x1000) !== 0);
  assert.equal(drv.deviceConfig(28, 4), 0xffff, "domain_range.end");
});

test("requests over the requestq: ATTACH to an unknown endpoint is NOENT, a known one OK", () => {
  const { m, rid } = eduBehindIommu();
  assert.equal(m.attach(1, 0x999), 6);
  assert.equal(m.attach(1, rid), 0);
  assert.equal(m.request(detachRequest(1, rid)), 0);
  assert.ok(m.viommu.stats().requests >= 3);
});

test("edu DMA through virtio-iommu-pci mappings in both directions", () => {
  const { m, edu, rid, dma } = eduBehindIommu();
  m.mapDmaWindow(1, rid);
  const gpa = m.dmaAllocator.alloc(4096, 4096);
  const iova = gpa + DMA_IOVA_OFFSET;
  const data = Uint8Array.from({ length: 512 }, (_, i) => i & 0xff);
  m.memory.write(gpa, data);
  dma(iova, EDU_DMA_BUFFER_ADDRESS, 512, 0x1);
  assert.deepEqual(edu.buffer.subarray(0, 512), data);
  dma(EDU_DMA_BUFFER_ADDRESS, iova + 1024, 512, 0x3);
  assert.deepEqual(m.memory.view(gpa + 1024, 512), data);
  assert.equal(edu.stats().dmaFaults, 0);
});

test("edu DMA to an unmapped IOVA: nothing written, fault record delivered on the eventq with an MSI-X", () => {
  const { m, edu, rid, dma } = eduBehindIommu();
  m.mapDmaWindow(1, rid);
  m.postEventBuffers(2);
  const msisBefore = m.irq.msis.length;
  const sum = checksum(m.memory.view(4 << 20, 12 << 20));
  const iova = DMA_IOVA_OFFSET + (20 << 20);
  edu.buffer.fill(0x77);
  dma(EDU_DMA_BUFFER_ADDRESS, iova, 256, 0x3);
  assert.equal(checksum(m.memory.view(4 << 20, 12 << 20)), sum);
  assert.equal(edu.stats().dmaFaults, 1);
  const faults = m.takeFaults();
  assert.deepEqual(
    faults,
    [{ reason: 2, flags: 0x102, endpoint: rid, address: BigInt(iova) }],
    "MAPPING, WRITE | ADDRESS",
  );
  const eventMsi = m.irq.msis.slice(msisBefore).find((x) => x.message.data === msiData(1));
  assert.deepEqual(eventMsi?.message, { address: MSI_ADDRESS, data: msiData(1) }, "eventq vector 1");
  assert.equal(eventMsi?.requesterId, 1 << 3, "the virtio-iommu signals as itself");
});

test("VIRTIO 1.3 5.13.6.9: a fault with no eventq buffer waits in the device and is delivered when a buffer is posted", () => {
  const { m, rid, dma } = eduBehindIommu();
  m.mapDmaWindow(1, rid);
  dma(EDU_DMA_BUFFER_ADDRESS, DMA_IOVA_OFFSET, 64, 0x3);
  assert.equal(m.takeFaults().length, 0);
  m.postEventBuffers(1);
  const f = m.takeFaults();
  assert.equal(f.length, 1);
  assert.equal(f[0].address, BigInt(DMA_IOVA_OFFSET));
});

test("an unattached endpoint is blocked (no bypass by default): DOMAIN fault, nothing written", () => {
  const { m, rid, dma } = eduBehindIommu();
  m.postEventBuffers(1);
  m.memory.fill(0x5000, 64, 0);
  dma(EDU_DMA_BUFFER_ADDRESS, 0x5000, 64, 0x3);
  const [f] = m.takeFaults();
  assert.equal(f.reason, 1, "VIRTIO_IOMMU_FAULT_R_DOMAIN");
  assert.equal(f.endpoint, rid);
  assert.ok(m.memory.view(0x5000, 64).every((x) => x === 0));
});

test("virtio-rng behind the virtio-iommu (iommu=on): rings and buffers are IOVAs translated by the mappings", () => {
  const m = new IommuMachine();
  const rng = new VirtioRng({ queueSize: 16 });
  const t = new VirtioPciTransport(rng, { accessPlatform: true });
  const rid = m.addBehindIommu(t.pci, 4);
  m.mapDmaWindow(1, rid);
  const drv = new VirtioPciDriver(m, { bus: 0, device: 4, fn: 0 }, m.dmaAllocator, DMA_IOVA_OFFSET);
  drv.bringUp(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM, 1);
  const q = drv.queues[0];
  const buf = m.dmaAllocator.alloc(128);
  m.memory.fill(buf, 128, 0);
  q.add([{ gpa: buf, len: 128, writable: true }]);
  drv.kick(0);
  assert.deepEqual(q.takeUsed()[0].len, 128);
  assert.ok(m.memory.view(buf, 128).some((x) => x !== 0));
  // Unmapping the rings: the next notification cannot reach them: NEEDS_RESET, nothing written.
  assert.equal(m.unmap(1, (4 << 20) + DMA_IOVA_OFFSET, 8 << 20), 0);
  q.add([{ gpa: buf, len: 128, writable: true }]);
  m.memory.fill(buf, 128, 0);
  drv.kick(0);
  assert.ok(m.memory.view(buf, 128).every((x) => x === 0));
  assert.equal(drv.status & 0x40, 0x40);
});

test("fuzz: random virtio BAR and configuration traffic on an iommu=on device never throws and stays inside its mappings", () => {
  const seed = 0x71b0_5eed;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const r = prng(seed);
  const m = new IommuMachine();
  const rng = new VirtioRng({ queueSize: 16 });
  const t = new VirtioPciTransport(rng, { accessPlatform: true });
  const rid = m.addBehindIommu(t.pci, 4);
  m.mapDmaWindow(1, rid);
  const b = { bus: 0, device: 4, fn: 0 };
  const drv = new VirtioPciDriver(m, b, m.dmaAllocator, DMA_IOVA_OFFSET);
  const outside = () => checksum(m.memory.view(0, 1 << 20)) ^ checksum(m.memory.view(12 << 20, 4 << 20));
  const sum = outside();
  const sizes = [1, 2, 4, 8] as const;
  const regions = [
    [0, 0x40],
    [0x1000, 4],
    [0x2000, 0x10],
    [0x3000, 8],
    [0x4000, 0x20],
    [0x5000, 8],
  ];
  for (let epoch = 0; epoch < 20; epoch++) {
    drv.bringUp(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM, 1);
    const bar = drv.bars[0].address;
    const q = drv.queues[0];
    for (let i = 0; i < 1000; i++) {
      const size = sizes[Math.floor(r() * 4)];
      const value = r() < 0.5 ? Math.floor(r() * 256) : Math.floor(r() * 2 ** 53);
      const [start, len] = regions[Math.floor(r() * regions.length)];
      const offset = start + Math.floor(r() * len);
      const pick = r();
      if (pick < 0.3) m.mmio.write(bar + offset, size, value);
      else if (pick < 0.5) m.mmio.read(bar + offset, size);
      else if (pick < 0.6) {
        // Configuration space past the BARs (capabilities: MSI-X control, PCI_CFG window).
        m.driver.write(b, 0x34 + Math.floor(r() * 0xcc), ([1, 2, 4] as const)[Math.floor(r() * 3)], value);
      } else if (pick < 0.9 && q.size > 0) {
        // Buffers, valid or not, then a notification.
        const addr = r() < 0.7 ? q.iova(m.dmaAllocator.alloc(16)) : Math.floor(r() * 2 ** 30);
        try {
          q.addRaw([{ addr, len: 1 + Math.floor(r() * 64), flags: r() < 0.9 ? 2 : Math.floor(r() * 8) }]);
        } catch {
          q.takeUsed();
        }
        drv.kick(0);
      } else {
        m.driver.write(b, 4, 2, r() < 0.9 ? 0x6 : Math.floor(r() * 0x10000));
      }
    }
  }
  assert.equal(outside(), sum);
  const st = t.stats();
  console.log(
    `fuzz: notifications=${st.notifications} resets=${st.resets} needsReset=${st.needsReset} rng=${JSON.stringify(rng.stats())}`,
  );
  assert.ok(rng.stats().requests > 100, "the fuzz reaches the device");
});

test("VIRTIO 1.3 5.13.6.9: an eventq buffer shorter than a fault record is returned unused and the record waits", () => {
  const { m, rid, dma } = eduBehindIommu();
  m.mapDmaWindow(1, rid);
  const d = m.viommuDriver;
  const small = d.allocator.alloc(8);
  d.queues[1].add([{ gpa: small, len: 8, writable: true }]);
  d.kick(1);
  dma(EDU_DMA_BUFFER_ADDRESS, DMA_IOVA_OFFSET, 64, 0x3);
  assert.deepEqual(
    d.queues[1].takeUsed().map((u) => u.len),
    [0],
  );
  assert.equal(m.viommu.stats().eventBuffersTooSmall, 1);
  m.postEventBuffers(1);
  assert.equal(m.takeFaults().length, 1);
});

test("fuzz: random request chains on the virtio-iommu requestq never throw; used length never exceeds the writable area", () => {
  const seed = 0x10_a7_5e;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const r = prng(seed);
  const m = new IommuMachine();
  const edu = new EduDevice();
  const rid = m.addBehindIommu(edu.pci, 3);
  const d = m.viommuDriver;
  for (let i = 0; i < 2000; i++) {
    const q = d.queues[0];
    const reqLen = 1 + Math.floor(r() * 96);
    const req = d.allocator.alloc(reqLen);
    const bytes = m.memory.view(req, reqLen);
    for (let k = 0; k < reqLen; k++) bytes[k] = Math.floor(r() * 256);
    bytes[0] = 1 + Math.floor(r() * 6); // mostly known request types
    if (r() < 0.5 && reqLen >= 12) m.memory.writeU32(req + 8, r() < 0.5 ? rid : Math.floor(r() * 2 ** 32));
    const respLen = Math.floor(r() * 600);
    const bufs = [{ gpa: req, len: reqLen, writable: false }];
    if (respLen > 0) bufs.push({ gpa: d.allocator.alloc(respLen), len: respLen, writable: true });
    q.add(bufs);
    d.kick(0);
    for (const u of q.takeUsed()) assert.ok(u.len <= respLen, `used ${u.len} > writable ${respLen}`);
    if ((d.status & 0x40) !== 0)
      assert.fail(`virtio-iommu needs reset: ${m.viommu.transport.stats().lastError}`);
  }
  const s = m.viommu.engine.stats();
  assert.equal(s.internalErrors, 0);
  console.log(`fuzz: ${m.viommu.stats().requests} requests, ${s.requestsUnanswered} unanswered`);
});
