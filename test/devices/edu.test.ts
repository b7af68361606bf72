import assert from "node:assert/strict";
import { test } from "node:test";
import {
  EDU_DMA_BUFFER_ADDRESS,
  EDU_REG_DMA_CMD,
  EDU_REG_DMA_COUNT,
  EDU_REG_DMA_DST,
  EDU_REG_DMA_SRC,
  EduDevice,
  factorialMod32,
} from "../../src/devices/edu.ts";
import { VirtioIommu } from "../../src/virtio-iommu/device.ts";
import { checksum, prng, TestMachine } from "../support/machine.ts";
import type { SizedBar } from "../support/pci-driver.ts";
import { attachRequest, decodeFault, mapRequest, unmapRequest } from "../support/viommu-requests.ts";

const B = { bus: 0, device: 4, fn: 0 };

function setup(withIommu = false) {
  const m = new TestMachine();
  const edu = new EduDevice();
  let viommu: VirtioIommu | undefined;
  if (withIommu) {
    viommu = new VirtioIommu(m.memory);
    viommu.negotiate(viommu.deviceFeatures);
    const v = viommu;
    m.add(edu.pci, 4, (rid) => v.addEndpoint(rid));
  } else {
    m.add(edu.pci, 4);
  }
  const bars: SizedBar[] = m.driver.assignBars(B);
  const base = bars[0].address;
  const r = (off: number, size: 4 | 8 = 4) => m.mmio.read(base + off, size);
  const w = (off: number, value: number, size: 4 | 8 = 4) => m.mmio.write(base + off, size, value);
  const dma = (src: number, dst: number, count: number, cmd: number) => {
    w(EDU_REG_DMA_SRC, src, 8);
    w(EDU_REG_DMA_DST, dst, 8);
    w(EDU_REG_DMA_COUNT, count, 8);
    w(EDU_REG_DMA_CMD, cmd);
  };
  return { m, edu, viommu, base, r, w, dma, rid: 4 << 3 };
}

function viommuOk(v: VirtioIommu, req: Uint8Array): number {
  const resp = new Uint8Array(4);
  v.handleRequest(req, resp);
  return resp[0];
}

test("edu.rst: PCI identity 1234:11e8 revision 0x10, BAR0 1 MiB memory, MSI capability", () => {
  const { m } = setup();
  const d = m.driver;
  assert.equal(d.read(B, 0, 4), 0x11e8_1234);
  assert.equal(d.read(B, 8, 1), 0x10);
  assert.equal(d.read(B, 0x3d, 1), 1, "INTA#");
  assert.deepEqual(
    d.sizeBars(B).map((b) => [b.index, b.kind, b.sizeBytes]),
    [[0, "mem32", 1 << 20]],
  );
  assert.equal(d.findCapabilities(B, 0x05).length, 1);
});

test("edu.rst 0x00/0x04: identification 0x010000ed and liveness returns the bitwise NOT", () => {
  const { r, w } = setup();
  assert.equal(r(0x00), 0x010000ed);
  w(0x04, 0x12345678);
  assert.equal(r(0x04), 0xedcba987);
});

test("edu.rst: registers below 0x80 accept only 4-byte accesses", () => {
  const { m, base, r, w } = setup();
  assert.equal(m.mmio.read(base, 2), 0xffff);
  w(0x04, 0);
  m.mmio.write(base + 4, 2, 0x1);
  assert.equal(r(0x04), 0xffffffff, "the 2-byte write was ignored");
});

test("edu.rst 0x08/0x20: factorial completes before the starting write returns and raises 0x01 when asked", () => {
  const { m, r, w, rid } = setup();
  w(0x20, 0x80);
  w(0x08, 10);
  assert.equal(r(0x20) & 1, 0, "not computing");
  assert.equal(r(0x08), 3628800);
  assert.equal(r(0x24), 0x1);
  assert.ok(m.irq.pinAsserted(rid, 0));
  w(0x64, 0x1);
  assert.equal(r(0x24), 0);
  assert.ok(!m.irq.pinAsserted(rid, 0));
  assert.equal(factorialMod32(13), Number(6227020800n % 2n ** 32n));
  assert.equal(
    factorialMod32(33),
    Number(BigInt([...Array(33)].reduce((a, _, i) => a * BigInt(i + 1), 1n)) % 2n ** 32n),
  );
  w(0x08, 0xffffffff);
  assert.equal(r(0x08), 0, "n >= 34: n! is 0 mod 2^32, no hang");
});

test("edu.rst 0x60/0x64: raise ORs into interrupt status and asserts INTx; acknowledge clears it", () => {
  const { m, r, w, rid } = setup();
  w(0x60, 0x30);
  w(0x60, 0x01);
  assert.equal(r(0x24), 0x31);
  assert.ok(m.irq.pinAsserted(rid, 0));
  w(0x64, 0x30);
  assert.ok(m.irq.pinAsserted(rid, 0), "still pending 0x01");
  w(0x64, 0x01);
  assert.ok(!m.irq.pinAsserted(rid, 0));
});

test("edu.rst: with MSI enabled a raise sends the programmed message and INTx stays low", () => {
  const { m, w, rid } = setup();
  const [cap] = m.driver.findCapabilities(B, 0x05);
  m.driver.enableMsi(B, cap, 0xfee0_0000, 0x41);
  w(0x60, 0x100);
  assert.ok(!m.irq.pinAsserted(rid, 0));
  assert.deepEqual(m.irq.msis, [
    { requesterId: rid, message: { address: 0xfee00000, data: 0x41 }, vector: 0 },
  ]);
});

test("edu.rst DMA: direction 0 copies RAM into the buffer, direction 1 the buffer into RAM, 0x100 raised when asked", () => {
  const { m, edu, r, dma, rid } = setup();
  const pattern = Uint8Array.from({ length: 100 }, (_, i) => (i * 7 + 3) & 0xff);
  m.memory.write(0x10000, pattern);
  dma(0x10000, EDU_DMA_BUFFER_ADDRESS + 0x100, 100, 0x1);
  assert.equal(r(EDU_REG_DMA_CMD) & 1, 0, "complete when the write returns");
  assert.deepEqual(edu.buffer.subarray(0x100, 0x164), pattern);
  dma(EDU_DMA_BUFFER_ADDRESS + 0x100, 0x20000, 100, 0x1 | 0x2 | 0x4);
  assert.deepEqual(m.memory.view(0x20000, 100), pattern);
  assert.equal(r(0x24), 0x100);
  assert.ok(m.irq.pinAsserted(rid, 0));
  assert.equal(edu.stats().dmaTransfers, 2);
});

test("edu.rst DMA: a 4096-byte transfer ending exactly at the buffer end is allowed (QEMU 7.2 off-by-one fixed)", () => {
  const { m, edu, dma } = setup();
  m.memory.fill(0x30000, 4096, 0x5a);
  dma(0x30000, EDU_DMA_BUFFER_ADDRESS, 4096, 0x1);
  assert.equal(edu.stats().dmaRangeErrors, 0);
  assert.equal(edu.buffer[4095], 0x5a);
});

test("edu DMA: a device-buffer range outside [0x40000, 0x41000) moves no data and still completes", () => {
  const { m, edu, r, dma } = setup();
  const sum = checksum(m.memory.view(0, 1 << 20));
  dma(EDU_DMA_BUFFER_ADDRESS + 4000, 0x1000, 200, 0x1 | 0x2 | 0x4);
  dma(0x1000, EDU_DMA_BUFFER_ADDRESS - 1, 16, 0x1);
  dma(0x1000, 2 ** 52, 16, 0x1);
  assert.equal(edu.stats().dmaRangeErrors, 3);
  assert.equal(checksum(m.memory.view(0, 1 << 20)), sum);
  assert.equal(r(EDU_REG_DMA_CMD) & 1, 0);
  assert.equal(r(0x24), 0x100);
});

test("edu DMA: RAM-side addresses are masked to 28 bits (QEMU's default dma_mask)", () => {
  const { m, edu, dma } = setup();
  m.memory.fill(0x5000, 8, 0x77);
  dma(0x1_0000_5000, EDU_DMA_BUFFER_ADDRESS, 8, 0x1);
  assert.equal(edu.buffer[0], 0x77);
  assert.equal(edu.stats().dmaAddressesClamped, 1);
});

test("edu DMA with Bus Master Enable clear moves nothing", () => {
  const { m, edu, dma } = setup();
  m.driver.write(B, 4, 2, 0x2);
  dma(EDU_DMA_BUFFER_ADDRESS, 0x1000, 16, 0x3);
  assert.equal(edu.stats().dmaFaults, 1);
  assert.equal(edu.pci.stats().dmaRefusedBusMasterOff, 1);
});

test("edu DMA through virtio-iommu: both directions translate by the mapping", () => {
  const { m, edu, viommu, dma, rid } = setup(true);
  const v = viommu!;
  assert.equal(viommuOk(v, attachRequest(1, rid)), 0);
  assert.equal(viommuOk(v, mapRequest(1, 0x100_0000, 0x100_0fff, 0x8000, 3)), 0);
  const pattern = Uint8Array.from({ length: 256 }, (_, i) => 255 - i);
  m.memory.write(0x8000, pattern);
  dma(0x100_0000, EDU_DMA_BUFFER_ADDRESS, 256, 0x1);
  assert.deepEqual(edu.buffer.subarray(0, 256), pattern);
  m.memory.fill(0x8000, 256, 0);
  dma(EDU_DMA_BUFFER_ADDRESS, 0x100_0080, 256, 0x3);
  assert.deepEqual(m.memory.view(0x8080, 256), pattern);
  assert.equal(edu.stats().dmaFaults, 0);
});

test("edu DMA to an IOVA unmapped by the virtio-iommu faults, writes nothing and is reported as a fault record", () => {
  const { m, edu, viommu, dma, rid } = setup(true);
  const v = viommu!;
  viommuOk(v, attachRequest(1, rid));
  viommuOk(v, mapRequest(1, 0x200000, 0x200fff, 0x9000, 3));
  edu.buffer.fill(0xee, 0, 64);
  dma(EDU_DMA_BUFFER_ADDRESS, 0x200000, 64, 0x3); // warms the translation cache
  assert.equal(m.memory.readU8(0x9000), 0xee);
  m.memory.fill(0x9000, 64, 0);
  assert.equal(viommuOk(v, unmapRequest(1, 0x200000, 0x200fff)), 0);
  const sum = checksum(m.memory.view(0, 1 << 20));
  dma(EDU_DMA_BUFFER_ADDRESS, 0x200000, 64, 0x3);
  assert.equal(checksum(m.memory.view(0, 1 << 20)), sum, "no stale translation survives the unmap");
  assert.equal(edu.stats().dmaFaults, 1);
  const rec = v.takeEvent();
  assert.ok(rec !== undefined);
  const f = decodeFault(rec);
  assert.equal(f.reason, 2, "VIRTIO_IOMMU_FAULT_R_MAPPING");
  assert.equal(f.endpoint, rid);
  assert.equal(f.address, 0x200000n);
  assert.equal(f.flags & 2, 2, "write");
});

test("fuzz: random edu register traffic never throws and never writes outside the mapped window", () => {
  const seed = 0xed0_5eed;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const { m, viommu, base, rid } = setup(true);
  const v = viommu!;
  viommuOk(v, attachRequest(1, rid));
  viommuOk(v, mapRequest(1, 0x0, 0xfff, 0x4000, 3)); // the only RAM the device may reach
  const outside = () =>
    checksum(m.memory.view(0, 0x4000)) ^ checksum(m.memory.view(0x5000, (16 << 20) - 0x5000));
  m.memory.fill(0x100000, 0x1000, 0x3c);
  const sum = outside();
  const regs = [0, 4, 8, 0x20, 0x24, 0x60, 0x64, 0x80, 0x84, 0x88, 0x90, 0x98, 0x9c, 0x100, 0x40000];
  for (let i = 0; i < 5000; i++) {
    const off = regs[Math.floor(rnd() * regs.length)];
    const size = ([1, 2, 4, 8] as const)[Math.floor(rnd() * 4)];
    const value = rnd() < 0.5 ? Math.floor(rnd() * 0x2000) : Math.floor(rnd() * 2 ** 53);
    if (rnd() < 0.7) m.mmio.write(base + off, size, value);
    else m.mmio.read(base + off, size);
  }
  assert.equal(outside(), sum);
  while (v.takeEvent() !== undefined) {}
});
