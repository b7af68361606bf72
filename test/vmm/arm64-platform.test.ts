import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import {
  EDU_REG_DMA_CMD,
  EDU_REG_DMA_COUNT,
  EDU_REG_DMA_DST,
  EDU_REG_DMA_SRC,
  EDU_REG_LIVENESS,
} from "../../src/devices/edu.ts";
import { NULL_SINK } from "../../src/devices/uart16550.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { EVT } from "../../src/smmuv3/events.ts";
import { REG } from "../../src/smmuv3/regs.ts";
import { buildDeviceTree } from "../../src/vmm/arm64/device-tree.ts";
import {
  PCIE_ECAM_GPA,
  PCIE_MMIO_GPA,
  RAM_GPA,
  SMMU_GPA,
  SMMU_GPAS,
  SMMU_SPI_BASES,
  SPI_UART,
} from "../../src/vmm/arm64/layout.ts";
import { kvmResetMpidr } from "../../src/vmm/arm64/machine.ts";
import { type Arm64IommuChoice, Arm64Platform } from "../../src/vmm/arm64/platform.ts";
import { cdWords, cmd, LinuxLikeDriver, PageAllocator, PageTables, writeWords } from "../smmuv3/harness.ts";

const MiB = 1 << 20;

function platform(iommu: Arm64IommuChoice, rngIommu = false) {
  const memory = GuestMemory.anonymous([{ gpa: RAM_GPA, sizeBytes: 16 * MiB }]);
  const spis: [number, boolean][] = [];
  const msis: { gpa: number; data: number; devid: number }[] = [];
  const p = new Arm64Platform({
    memory,
    serial: NULL_SINK,
    iommu,
    devices: [
      { kind: "edu", iommu: iommu.kind !== "none" },
      { kind: "rng", iommu: rngIommu },
    ],
    tracer: new Tracer(),
    irq: {
      setSpi: (spi, level) => spis.push([spi, level]),
      signalMsi: (gpa, data, devid) => {
        msis.push({ gpa, data, devid });
        return "delivered";
      },
    },
  });
  return { p, spis, msis };
}

const ecam = (p: Arm64Platform, slot: number, off: number) =>
  p.mmio.read(PCIE_ECAM_GPA + (slot << 15) + off, 4);

test("arm64 platform: ECAM at 0x3F000000 holds the devices from 00:02.0, the virtio-iommu at 00:01.0", () => {
  const { p } = platform({ kind: "virtio" });
  assert.equal(ecam(p, 1, 0), 0x1057_1af4, "virtio-iommu-pci (modern ID 0x1057)");
  assert.equal(ecam(p, 2, 0), 0x11e8_1234, "edu");
  assert.equal(ecam(p, 3, 0) & 0xffff, 0x1af4, "virtio-rng");
  assert.equal(ecam(p, 4, 0), 0xffff_ffff, "empty slot");
});

test("arm64 platform: PCI INTx uses the DT interrupt-map swizzle, SPI 3 + (slot + pin) % 4; shared lines OR", () => {
  const { p, spis } = platform({ kind: "none" });
  p.interrupts.setPin(2 << 3, 0, true); // 00:02.0 INTA -> SPI 5
  p.interrupts.setPin(6 << 3, 0, true); // 00:06.0 INTA -> SPI 5 too
  p.interrupts.setPin(2 << 3, 0, false);
  p.interrupts.setPin(6 << 3, 0, false);
  assert.deepEqual(spis, [
    [5, true],
    [5, false],
  ]);
});

test("arm64 platform: the PL011 drives SPI 1 (INTID 33) as a level", () => {
  const { p, spis } = platform({ kind: "none" });
  p.uart.write(0x38, 2, 1 << 5);
  p.uart.write(0x00, 2, 0x41);
  p.uart.write(0x44, 2, 1 << 5);
  assert.deepEqual(spis, [
    [SPI_UART, true],
    [SPI_UART, false],
  ]);
});

test("arm64 platform: MSIs carry DeviceID = RID; behind the SMMU they are DMA writes (bypass with SMMUEN=0, refused with GBPA.ABORT)", () => {
  const { p, msis } = platform({ kind: "smmuv3", stage: "1" });
  const edu = p.devices[0]!;
  const rng = p.devices[1]!;
  p.interrupts.signalMsi(edu.requesterId, { address: 0x0809_0040, data: 7 }, 0);
  p.interrupts.signalMsi(rng.requesterId, { address: 0x0809_0040, data: 8 }, 0);
  assert.deepEqual(msis, [
    { gpa: 0x0809_0040, data: 7, devid: 0x10 },
    { gpa: 0x0809_0040, data: 8, devid: 0x18 },
  ]);
  // GBPA.ABORT with Update (6.3.14): incoming traffic is aborted while SMMUEN = 0.
  p.smmu!.write(REG.GBPA, 4, (1 << 31) | (1 << 20));
  p.interrupts.signalMsi(edu.requesterId, { address: 0x0809_0040, data: 9 }, 0);
  p.interrupts.signalMsi(rng.requesterId, { address: 0x0809_0040, data: 10 }, 0);
  assert.equal(msis.length, 3, "the edu's MSI is refused; the rng bypasses the SMMU");
  assert.equal(p.interrupts.stats().msisBlockedByIommu, 1);
  assert.equal(p.mmio.read(SMMU_GPA + REG.IDR0, 4) & 3, 0b10, "stage=1: S1P only");
});

test("arm64 platform: --iommu smmuv3 stage options set IDR0.S1P/S2P", () => {
  const s2 = platform({ kind: "smmuv3", stage: "2" }).p;
  assert.equal(s2.mmio.read(SMMU_GPA + REG.IDR0, 4) & 3, 0b01);
  const both = platform({ kind: "smmuv3", stage: "nested" }).p;
  assert.equal(both.mmio.read(SMMU_GPA + REG.IDR0, 4) & 3, 0b11);
});

function dts(
  iommu: Parameters<typeof buildDeviceTree>[0]["iommu"],
  mpidrs: readonly bigint[] = [0x8000_0000n],
): string | null {
  const dtb = buildDeviceTree({
    mpidrs,
    ramGpa: RAM_GPA,
    ramBytes: 512 * MiB,
    cmdline: "console=ttyAMA0",
    initrd: null,
    iommu,
  });
  const r = spawnSync("dtc", ["-I", "dtb", "-O", "dts", "-"], { input: dtb, encoding: "utf8" });
  return r.error || r.status !== 0 ? null : r.stdout;
}

test("arm64 device tree: SMMUv3 node (arm,smmu-v3.yaml) and iommu-map RID -> StreamID identity (pci-iommu.txt)", (t) => {
  const s = dts({ kind: "smmuv3", instances: 1 });
  if (s === null) return t.skip("SKIPPED: dtc (device-tree-compiler) is not installed");
  assert.match(s, /iommu@9050000 \{\s+compatible = "arm,smmu-v3";\s+reg = <0x00 0x9050000 0x00 0x20000>;/);
  assert.match(s, /interrupt-names = "eventq\\0priq\\0cmdq-sync\\0gerror";/);
  assert.match(s, /#iommu-cells = <0x01>;/);
  assert.match(s, /iommu-map = <0x00 0x04 0x00 0x10000>;/);
  assert.match(s, /msi-map = <0x00 0x02 0x00 0x10000>;/);
});

test("arm64 vCPUs: the MPIDR KVM resets vCPU n to (Aff0 = n & 15, Aff1 = n >> 4, bit 31) names each cpu node", () => {
  assert.equal(kvmResetMpidr(0), 0x8000_0000n);
  assert.equal(kvmResetMpidr(1), 0x8000_0001n);
  assert.equal(kvmResetMpidr(17), 0x8000_0101n);
  assert.equal(kvmResetMpidr(0x1234), 0x8001_2304n);
});

test("arm64 device tree: two vCPUs are two cpu nodes started by PSCI (hvc), and the redistributors cover both", (t) => {
  const s = dts({ kind: "none" }, [kvmResetMpidr(0), kvmResetMpidr(1)]);
  if (s === null) return t.skip("SKIPPED: dtc (device-tree-compiler) is not installed");
  // cpus.yaml: reg = MPIDR affinity bits; psci.yaml: enable-method "psci" with the psci node's method.
  for (const n of [0, 1]) {
    assert.match(
      s,
      new RegExp(
        `cpu@${n} \\{\\s+device_type = "cpu";\\s+compatible = "arm,arm-v8";\\s+reg = <0x0${n}>;\\s+enable-method = "psci";`,
      ),
    );
  }
  assert.doesNotMatch(s, /cpu@2/);
  assert.match(s, /psci \{\s+compatible = "arm,psci-1.0\\0arm,psci-0.2\\0arm,psci";\s+method = "hvc";/);
  // arm,gic-v3.yaml: the distributor, then one redistributor region of 2 x 64 KiB per vCPU.
  assert.match(s, /reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;/);
});

test("arm64 device tree: virtio-iommu node under the host bridge (virtio,pci-iommu), its own RID not translated", (t) => {
  const s = dts({ kind: "virtio", slot: 1 });
  if (s === null) return t.skip("SKIPPED: dtc (device-tree-compiler) is not installed");
  assert.match(s, /iommu@1,0 \{\s+compatible = "virtio,pci-iommu";\s+reg = <0x800 0x00 0x00 0x00 0x00>;/);
  assert.match(s, /iommu-map = <0x00 0x04 0x00 0x08 0x09 0x04 0x09 0xfff7>;/);
  assert.doesNotMatch(s, /arm,smmu-v3/);
});

test("arm64 device tree: two SMMUv3 instances, each with its SPIs; iommu-map sends each slot to its instance", (t) => {
  const s = dts({ kind: "smmuv3", instances: 2 });
  if (s === null) return t.skip("SKIPPED: dtc (device-tree-compiler) is not installed");
  assert.match(
    s,
    /iommu@9050000 \{[^}]*interrupts = <0x00 0x4a 0x01 0x00 0x4b 0x01 0x00 0x4c 0x01 0x00 0x4d 0x01>;[^}]*phandle = <0x04>;/,
  );
  assert.match(
    s,
    /iommu@9100000 \{[^}]*interrupts = <0x00 0x4e 0x01 0x00 0x4f 0x01 0x00 0x50 0x01 0x00 0x51 0x01>;[^}]*phandle = <0x05>;/,
  );
  // slot 2 (RID 0x10) -> phandle 4, StreamID 0x10; slot 3 (RID 0x18) -> phandle 5, StreamID 0x18.
  assert.match(
    s,
    /iommu-map = <0x00 0x04 0x00 0x08 0x08 0x05 0x08 0x08 0x10 0x04 0x10 0x08 0x18 0x05 0x18 0x08 /,
  );
});

test("two SMMU instances (framework vSID -> pSID): each endpoint on one instance; a command naming a foreign stream is refused", () => {
  const { p } = platform({ kind: "smmuv3", stage: "1", instances: 2 }, true);
  assert.equal(p.smmus.length, 2);
  assert.deepEqual(p.smmuStreams, [
    { requesterId: 0x10, instance: 0, vSid: 0x10, pSid: 0x1010 },
    { requesterId: 0x18, instance: 1, vSid: 0x18, pSid: 0x2018 },
  ]);
  const views = p.smmuViews;
  assert.equal(views.length, 2);
  // The guest's IDs resolve only on the instance that owns them, to the host's pSID.
  assert.equal(views[0]!.endpoint(0x10)?.pId, 0x1010);
  assert.equal(views[0]!.endpoint(0x18), undefined);
  assert.equal(views[1]!.endpoint(0x18)?.pId, 0x2018);
  // The guest drives instance 1 and names instance 0's stream: C_BAD_STREAMID, reported to the host.
  const alloc = new PageAllocator(p.memory);
  const driver = new LinuxLikeDriver(p.mmio, SMMU_GPAS[1], p.memory, alloc);
  driver.probe();
  driver.submit([cmd.cfgiSte(0x10)]);
  const events = driver.drainEvents();
  assert.deepEqual(
    events.map((e) => [e.type, e.streamId]),
    [[EVT.C_BAD_STREAMID, 0x10]],
  );
  assert.equal(p.smmus[1]!.stats().ownershipViolations, 1);
  assert.equal(p.smmuBackends[1]!.violationCount, 1);
  assert.equal(p.smmuBackends[0]!.violationCount, 0);
  // Its own stream is fine.
  driver.submit([cmd.cfgiSte(0x18)]);
  assert.deepEqual(driver.drainEvents(), []);
});

test("a guest flooding the SMMU event queue: its stream stays within the per-stream budget, another stream's event still lands, the machine keeps answering", () => {
  const { p, spis } = platform({ kind: "smmuv3", stage: "1" }, true);
  const [edu, rng] = [p.devices[0]!, p.devices[1]!];
  // The edu's BAR0 at the bottom of the PCI MMIO window; memory decoding and bus mastering on.
  const cfg = (slot: number, off: number, v: number) =>
    p.mmio.write(PCIE_ECAM_GPA + (slot << 15) + off, 4, v);
  cfg(2, 0x10, PCIE_MMIO_GPA);
  cfg(2, 0x04, 0x6);
  cfg(3, 0x04, 0x6);
  // Linux's way: both streams get a stage-1 domain whose page tables map nothing.
  const alloc = new PageAllocator(p.memory);
  const driver = new LinuxLikeDriver(p.mmio, SMMU_GPA, p.memory, alloc);
  driver.probe({ eventqLog2: 8, msi: false }); // wired interrupts, as the DT gives Linux
  for (const sid of [edu.requesterId, rng.requesterId]) {
    const pt = new PageTables(alloc, 12, 48);
    const cd = alloc.alloc(64, 64);
    writeWords(p.memory, cd, cdWords({ t0sz: 16, tg0: 0, asid: sid, ttb0: pt.root }));
    driver.writeSte(sid, { config: 0b101, cdTable: cd });
    driver.submit([cmd.cfgiSte(sid)]);
  }
  // The guest starts 5000 edu DMAs from unmapped IOVAs and never consumes an event.
  const FLOOD = 5000;
  for (let i = 0; i < FLOOD; i++) {
    p.mmio.write(PCIE_MMIO_GPA + EDU_REG_DMA_SRC, 8, 0x10_0000 + i * 4096);
    p.mmio.write(PCIE_MMIO_GPA + EDU_REG_DMA_DST, 8, 0x4_0000);
    p.mmio.write(PCIE_MMIO_GPA + EDU_REG_DMA_COUNT, 8, 8);
    p.mmio.write(PCIE_MMIO_GPA + EDU_REG_DMA_CMD, 4, 1);
  }
  assert.equal((edu.stats() as { dmaFaults: number }).dmaFaults, FLOOD, "every DMA faulted, none moved data");
  // The budget: min(64 per stream, half the 256-entry queue) records held for the edu's stream.
  const BUDGET = 64;
  const q = p.smmu!.stats().eventQueue;
  assert.equal(q.written, BUDGET);
  assert.equal(q.lostRateLimited, FLOOD - BUDGET);
  assert.deepEqual(q.rateLimitedByStream, { [edu.requesterId]: FLOOD - BUDGET });
  assert.equal(q.lostOverflow, 0, "the queue never filled");
  assert.equal(p.mmio.read(SMMU_GPA + REG.EVENTQ_PROD, 4) >>> 31, 0, "EVENTQ_PROD.OVFLG clear (7.4)");
  // Another device's fault still gets a record, after the flood.
  assert.notEqual(rng.fn.dma.read(0x2000, new Uint8Array(4)), null);
  const events = driver.drainEvents();
  assert.equal(events.length, BUDGET + 1);
  assert.ok(
    events.slice(0, BUDGET).every((e) => e.type === EVT.F_TRANSLATION && e.streamId === edu.requesterId),
  );
  assert.deepEqual([events[BUDGET]!.type, events[BUDGET]!.streamId], [EVT.F_TRANSLATION, rng.requesterId]);
  assert.ok(
    spis.some(([spi, level]) => spi === SMMU_SPI_BASES[0] && level),
    "the eventq SPI was raised",
  );
  // The machine keeps answering: the edu's registers, and once consumed the stream records again.
  p.mmio.write(PCIE_MMIO_GPA + EDU_REG_LIVENESS, 4, 0x1234_5678);
  assert.equal(p.mmio.read(PCIE_MMIO_GPA + EDU_REG_LIVENESS, 4), ~0x1234_5678 >>> 0);
  p.mmio.write(PCIE_MMIO_GPA + EDU_REG_DMA_CMD, 4, 1);
  assert.equal(driver.drainEvents().length, 1);
  assert.equal(p.smmu!.stats().commandErrors, 0);
});
