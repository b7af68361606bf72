import assert from "node:assert/strict";
import { test } from "node:test";
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { BarRegions } from "../../src/pci/bar-regions.ts";
import { BAR_UNMAPPED, PciFunction } from "../../src/pci/function.ts";
import { MsiCapability } from "../../src/pci/msi.ts";
import { MsixCapability } from "../../src/pci/msix.ts";
import { checksum, prng, TestMachine } from "../support/machine.ts";

/** A register file BAR: 4-byte registers stored in an array. */
function regs(sizeBytes: number) {
  const store = new Uint32Array(sizeBytes / 4);
  return {
    store,
    handler: {
      read: (offset: number) => store[offset >> 2] ?? 0xffffffff,
      write: (offset: number, _size: number, value: number) => {
        if (offset >> 2 < store.length) store[offset >> 2] = value;
      },
    },
  };
}

function build() {
  const m = new TestMachine();
  const fn = new PciFunction({
    name: "test",
    vendorId: 0x1b36,
    deviceId: 0x0005,
    classCode: 0x00ff00,
    revisionId: 0x01,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    interruptPin: 1,
  });
  const r0 = regs(4096);
  fn.addBar(0, { kind: "mem32", sizeBytes: 4096, handler: r0.handler });
  const bar2 = new BarRegions(0x4000);
  fn.addBar(2, { kind: "mem64", sizeBytes: 0x4000, prefetchable: true, handler: bar2 });
  const r4 = regs(32);
  fn.addBar(4, { kind: "io", sizeBytes: 32, handler: r4.handler });
  const msi = new MsiCapability(fn, { vectors: 4, perVectorMask: true });
  const msix = new MsixCapability(fn, {
    vectors: 8,
    tableBar: 2,
    tableOffset: 0,
    pbaBar: 2,
    pbaOffset: 0x2000,
  });
  bar2.add(0, msix.tableSizeBytes, msix.tableHandler);
  bar2.add(0x2000, msix.pbaSizeBytes, msix.pbaHandler);
  const rid = m.add(fn, 3);
  const b = { bus: 0, device: 3, fn: 0 };
  return { m, fn, r0, r4, msi, msix, rid, b, d: m.driver };
}

test("PCI 3.0 6.1: reads of an absent function return all-ones through both mechanisms", () => {
  const { d } = build();
  for (const mech of ["legacy", "ecam"] as const) {
    d.mechanism = mech;
    assert.equal(d.read({ bus: 0, device: 7, fn: 0 }, 0, 4), 0xffffffff, mech);
    assert.equal(d.read({ bus: 0, device: 3, fn: 5 }, 0, 2), 0xffff, mech);
    assert.equal(d.read({ bus: 1, device: 0, fn: 0 }, 0, 1), 0xff, mech);
  }
});

test("PCI 3.0 3.2.2.3.2: CONFIG_ADDRESS is a 32-bit register that reads back enable, bus, device, function, register", () => {
  const { m } = build();
  m.io.write(0xcf8, 4, 0x8001_1a7f);
  assert.equal(m.io.read(0xcf8, 4), 0x8001_1a7c);
  m.io.write(0xcf8, 2, 0x1234); // not a 32-bit access: not a CONFIG_ADDRESS write
  assert.equal(m.io.read(0xcf8, 4), 0x8001_1a7c);
});

test("QEMU pci_host.c: a CONFIG_DATA access decodes register CONFIG_ADDRESS[7:0] | port bits 1:0", () => {
  const { m } = build();
  const addr = 0x8000_0000 | (3 << 11);
  m.io.write(0xcf8, 4, addr | 2); // register 2 with bits 1:0 set
  assert.equal(m.io.read(0xcfc, 2), 0x0005, "a word at 0xCFC reads the device ID, not the vendor ID");
  assert.equal(m.io.read(0xcfd, 1), 0x00, "0xCFD: register 2 | 1 = 3 (device ID high byte)");
  assert.equal(m.io.read(0xcfe, 2), 0x0005, "0xCFE: register 2 | 2 = 2 (OR, not add)");
  m.io.write(0xcf8, 4, addr | 0x3d);
  assert.equal(m.io.read(0xcfc, 1), 1, "register 0x3D: interrupt pin");
  m.io.write(0xcf8, 4, addr | 0x3c);
  m.io.write(0xcfc, 1, 0x2a);
  m.io.write(0xcf8, 4, addr | 0x3c);
  assert.equal(m.io.read(0xcfc, 1), 0x2a, "interrupt line written and read back through bits 1:0 = 0");
});

test("QEMU pci_host.c: a legacy access that runs past offset 0xFF touches only the bytes below 0x100", () => {
  const { m, fn } = build();
  fn.config.setU32(0xfc, 0x44332211);
  fn.config.setU32(0x100, 0x88776655);
  const addr = 0x8000_0000 | (3 << 11);
  m.io.write(0xcf8, 4, addr | 0xfe);
  assert.equal(m.io.read(0xcfc, 4), 0x4433, "two bytes below 0x100, zero-extended");
  m.io.write(0xcfc, 4, 0xdeadbeef);
  assert.equal(fn.config.read(0x100, 4), 0x88776655, "extended space untouched by the legacy mechanism");
});

test("enumeration finds the host bridge and the function with the same IDs through 0xCF8/0xCFC and ECAM", () => {
  const { d, rid } = build();
  assert.equal(rid, 3 << 3);
  for (const mech of ["legacy", "ecam"] as const) {
    d.mechanism = mech;
    const found = d.enumerate();
    assert.deepEqual(
      found.map((f) => [f.device, f.fn, f.vendorId, f.deviceId, f.classCode]),
      [
        [0, 0, 0x1b36, 0x0008, 0x060000],
        [3, 0, 0x1b36, 0x0005, 0x00ff00],
      ],
    );
  }
});

test("PCI 3.0 6.1: identification registers are read-only", () => {
  const { d, b } = build();
  for (const o of [0, 2, 8, 0x2c, 0x2e, 0x3d]) d.write(b, o, 2, 0);
  d.write(b, 0, 4, 0x12345678);
  assert.equal(d.read(b, 0, 4), 0x0005_1b36);
  assert.equal(d.read(b, 8, 4), 0x00ff0001);
  assert.equal(d.read(b, 0x2c, 4), 0x1100_1af4);
  assert.equal(d.read(b, 0x3d, 1), 1);
});

test("PCI 3.0 6.2.5.1: BAR sizing returns ~(size-1) with the read-only type bits", () => {
  const { d, b } = build();
  d.write(b, 0x10, 4, 0xffffffff);
  assert.equal(d.read(b, 0x10, 4), 0xfffff000);
  d.write(b, 0x18, 4, 0xffffffff);
  d.write(b, 0x1c, 4, 0xffffffff);
  assert.equal(
    d.read(b, 0x18, 4),
    (0xffffc000 | 0x8 | 0x4) >>> 0,
    "64-bit prefetchable: bits 2:1 = 10, bit 3 = 1",
  );
  assert.equal(d.read(b, 0x1c, 4), 0xffffffff);
  d.write(b, 0x20, 4, 0xffffffff);
  assert.equal(d.read(b, 0x20, 4), 0xffffffe1, "I/O BAR: bit 0 = 1");
  const bars = d.sizeBars(b);
  assert.deepEqual(
    bars.map((x) => [x.index, x.kind, x.sizeBytes, x.prefetchable]),
    [
      [0, "mem32", 4096, false],
      [2, "mem64", 0x4000, true],
      [4, "io", 32, false],
    ],
  );
  assert.equal(d.read(b, 0x14, 4), 0, "an unimplemented BAR reads zero");
  d.write(b, 0x30, 4, 0xffffffff);
  assert.equal(d.read(b, 0x30, 4), 0, "no expansion ROM");
});

test("PCI 3.0 6.2.2: Memory/IO Space enable decode BARs at the programmed addresses; clearing stops decode", () => {
  const { m, d, b, fn, r0, r4 } = build();
  const bars = d.assignBars(b, 0x3);
  const b0 = bars[0].address;
  const io = bars[2].address;
  assert.equal(fn.bars[0]?.address, b0);
  r0.store[1] = 0xabcd;
  assert.equal(m.mmio.read(b0 + 4, 4), 0xabcd);
  m.io.write(io + 8, 4, 0x55);
  assert.equal(r4.store[2], 0x55);
  d.write(b, 4, 2, 0x1); // memory decode off
  assert.equal(m.mmio.read(b0 + 4, 4), 0xffffffff);
  assert.equal(m.pci.mappedAddress(fn.bars[0]!), BAR_UNMAPPED);
  assert.equal(m.io.read(io + 8, 4), 0x55);
  d.write(b, 4, 2, 0x3);
  // Moving the BAR moves the decode.
  d.write(b, 0x10, 4, b0 + 0x10000);
  assert.equal(m.mmio.read(b0 + 4, 4), 0xffffffff);
  assert.equal(m.mmio.read(b0 + 0x10004, 4), 0xabcd);
});

test("a guest that programs two BARs at the same address gets no decode for the second, and no crash", () => {
  const { m, d, b } = build();
  const bars = d.assignBars(b, 0x3);
  d.write(b, 0x18, 4, bars[0].address);
  d.write(b, 0x1c, 4, 0);
  assert.ok(m.pci.stats().barConflicts >= 1);
  assert.equal(m.mmio.read(bars[0].address, 4), 0);
});

test("PCI 3.0 6.2.3: Status error bits are RW1C; Interrupt Status and Capabilities List are read-only", () => {
  const { d, b, fn } = build();
  fn.config.setU16(6, fn.config.u16(6) | 0xf900);
  d.write(b, 6, 2, 0x0100);
  assert.equal(d.read(b, 6, 2) & 0xf900, 0xf800);
  d.write(b, 6, 2, 0xffff);
  assert.equal(d.read(b, 6, 2), 0x0010);
});

test("PCI 3.0 6.2.2: with Bus Master Enable clear the function performs no DMA", () => {
  const { m, d, b, fn } = build();
  m.memory.fill(0x1000, 16, 0xaa);
  const sum = checksum(m.memory.view(0, 0x10000));
  assert.equal(fn.dma.write(0x1000, new Uint8Array(16))?.reason, "blocked");
  assert.equal(checksum(m.memory.view(0, 0x10000)), sum);
  d.write(b, 4, 2, 0x4);
  assert.equal(fn.dma.write(0x1000, new Uint8Array(16)), null);
  assert.equal(m.memory.readU8(0x1000), 0);
  d.write(b, 4, 2, 0x0);
  // The one-entry translation cache must not outlive the gate closing.
  assert.equal(fn.dma.write(0x1000, new Uint8Array([1]))?.reason, "blocked");
  assert.equal(m.memory.readU8(0x1000), 0);
  assert.equal(fn.stats().dmaRefusedBusMasterOff, 2);
});

test("PCI 3.0 6.2.3: Interrupt Status follows INTx; Interrupt Disable stops the pin but not the status bit", () => {
  const { m, d, b, fn, rid } = build();
  fn.setIntx(true);
  assert.equal(d.read(b, 6, 2) & 0x8, 0x8);
  assert.ok(m.irq.pinAsserted(rid, 0));
  d.write(b, 4, 2, 0x400);
  assert.ok(!m.irq.pinAsserted(rid, 0));
  assert.equal(d.read(b, 6, 2) & 0x8, 0x8);
  d.write(b, 4, 2, 0x0);
  assert.ok(m.irq.pinAsserted(rid, 0), "re-enabling INTx re-drives the still-asserted line");
  fn.setIntx(false);
  assert.equal(d.read(b, 6, 2) & 0x8, 0);
  assert.ok(!m.irq.pinAsserted(rid, 0));
});

test("PCI 3.0 6.8.1: MSI sends the programmed 64-bit address and data; INTx is not used while MSI is enabled", () => {
  const { m, d, b, fn, rid } = build();
  d.write(b, 4, 2, 0x4);
  const [cap] = d.findCapabilities(b, 0x05);
  assert.equal(d.read(b, cap + 2, 2) & 0x18e, 0x184, "64-bit, per-vector mask, MMC = 4 vectors");
  fn.setIntx(true);
  assert.ok(m.irq.pinAsserted(rid, 0));
  d.enableMsi(b, cap, 0x1_fee0_1000, 0x4440, 2);
  assert.ok(!m.irq.pinAsserted(rid, 0));
  assert.equal(fn.notifyVector(3), true);
  assert.deepEqual(m.irq.msis.at(-1), {
    requesterId: rid,
    message: { address: 0x1_fee0_1000, data: 0x4443 },
    vector: 3,
  });
});

test("PCI 3.0 6.8.1.6: with fewer vectors allocated than requested the data's low bits stay within the allocation", () => {
  const { m, d, b, fn } = build();
  d.write(b, 4, 2, 0x4);
  const [cap] = d.findCapabilities(b, 0x05);
  d.enableMsi(b, cap, 0xfee00000, 0x40, 0);
  fn.notifyVector(3);
  assert.equal(m.irq.msis.at(-1)?.message.data, 0x40);
});

test("PCI 3.0 6.8.1.7: a masked MSI vector sets its pending bit and is sent when unmasked", () => {
  const { m, d, b, fn } = build();
  d.write(b, 4, 2, 0x4);
  const [cap] = d.findCapabilities(b, 0x05);
  d.enableMsi(b, cap, 0xfee00000, 0x20, 2);
  d.write(b, cap + 0x10, 4, 0b0010);
  fn.notifyVector(1);
  assert.equal(m.irq.msis.length, 0);
  assert.equal(d.read(b, cap + 0x14, 4), 0b0010);
  d.write(b, cap + 0x14, 4, 0); // pending bits are read-only
  assert.equal(d.read(b, cap + 0x14, 4), 0b0010);
  d.write(b, cap + 0x10, 4, 0);
  assert.equal(m.irq.msis.length, 1);
  assert.equal(m.irq.msis[0].message.data, 0x21);
  assert.equal(d.read(b, cap + 0x14, 4), 0);
});

test("PCI 3.0 6.8.2.9: MSI-X vectors reset masked; a masked vector pends in the PBA and is delivered on unmask", () => {
  const { m, d, b, fn, rid } = build();
  const bars = d.assignBars(b);
  const [cap] = d.findCapabilities(b, 0x11);
  const { tableAddress, pbaAddress, vectors } = d.msixLayout(b, cap, bars);
  assert.equal(vectors, 8);
  assert.equal(m.mmio.read(tableAddress + 16 * 5 + 12, 4), 1, "vector control resets with Mask set");
  d.enableMsix(b, cap);
  fn.notifyVector(5);
  assert.equal(m.irq.msis.length, 0);
  assert.equal(m.mmio.read(pbaAddress, 4), 1 << 5);
  m.mmio.write(pbaAddress, 4, 0); // read-only
  assert.equal(m.mmio.read(pbaAddress, 4), 1 << 5);
  d.setMsixVector(tableAddress, 5, 0xfee0_0000, 0x31);
  assert.deepEqual(m.irq.msis, [
    { requesterId: rid, message: { address: 0xfee00000, data: 0x31 }, vector: 5 },
  ]);
  assert.equal(m.mmio.read(pbaAddress, 4), 0);
});

test("PCI 3.0 6.8.2.3: Function Mask pends every vector; clearing it delivers the pending ones", () => {
  const { m, d, b, fn } = build();
  const bars = d.assignBars(b);
  const [cap] = d.findCapabilities(b, 0x11);
  const { tableAddress } = d.msixLayout(b, cap, bars);
  d.setMsixVector(tableAddress, 0, 0xfee0_0000, 0x50);
  d.setMsixVector(tableAddress, 7, 0xfee0_0000, 0x57);
  d.enableMsix(b, cap, true);
  fn.notifyVector(0);
  fn.notifyVector(7);
  assert.equal(m.irq.msis.length, 0);
  d.enableMsix(b, cap, false);
  assert.deepEqual(
    m.irq.msis.map((x) => x.message.data),
    [0x50, 0x57],
  );
  assert.equal(fn.notifyVector(8), true, "a vector outside the table is dropped, not thrown");
  assert.equal(m.irq.msis.length, 2);
});

test("PCI 3.0 6.8.1.3: interrupt messages are memory writes: none with Bus Master Enable clear", () => {
  const { m, d, b, fn } = build();
  const [cap] = d.findCapabilities(b, 0x05);
  d.enableMsi(b, cap, 0xfee00000, 0x20);
  fn.notifyVector(0);
  assert.equal(m.irq.msis.length, 0);
  assert.equal(fn.stats().messagesDroppedBusMasterOff, 1);
});

test("PCI Express 7.2.2: ECAM reaches extended configuration space; the legacy mechanism cannot", () => {
  const { d, b, fn } = build();
  fn.config.setU32(0x100, 0x12345678);
  d.mechanism = "ecam";
  assert.equal(d.read(b, 0x100, 4), 0x12345678);
  d.mechanism = "legacy";
  assert.equal(d.read(b, 0x0, 4), 0x0005_1b36);
});

test("PCI 3.0 6.2.1: a device with several functions sets the multi-function bit in function 0", () => {
  const m = new TestMachine();
  const mk = (name: string) =>
    new PciFunction({ name, vendorId: 0x1234, deviceId: 1, classCode: 0xff0000, revisionId: 0 });
  m.add(mk("f0"), 4);
  m.pci.addFunction(mk("f2"), {
    device: 4,
    function: 2,
    interrupts: m.irq,
    dma: (rid) => new DmaAddressSpace(m.memory, IDENTITY, rid),
  });
  const found = m.driver.enumerate();
  assert.deepEqual(
    found.filter((f) => f.device === 4).map((f) => [f.fn, f.headerType & 0x80]),
    [
      [0, 0x80],
      [2, 0],
    ],
  );
});

test("function reset clears command, BARs and MSI/MSI-X state", () => {
  const { d, b, fn } = build();
  d.assignBars(b);
  const [cap] = d.findCapabilities(b, 0x11);
  d.enableMsix(b, cap);
  fn.reset();
  assert.equal(d.read(b, 4, 2), 0);
  assert.equal(d.read(b, 0x10, 4), 0);
  assert.equal(d.read(b, 0x18, 4), 0xc);
  assert.equal(d.read(b, cap + 2, 2), 7);
});

test("fuzz: random configuration and BAR accesses never throw and never change identity registers", () => {
  const seed = 0x5eed_0001;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const { m, d, b } = build();
  const ram = m.memory.view(0, 1 << 20);
  const sum = checksum(ram);
  const sizes = [1, 2, 4] as const;
  for (let i = 0; i < 20000; i++) {
    const size = sizes[Math.floor(rnd() * 3)];
    const offset = Math.floor(rnd() * 0x1004) - 2;
    const value = Math.floor(rnd() * 2 ** 32);
    const where = rnd();
    if (where < 0.4) m.mmio.write(0xb000_0000 + (3 << 15) + offset, size, value);
    else if (where < 0.6) m.io.write(0xcf8 + Math.floor(rnd() * 9), size, value);
    else if (where < 0.8) m.mmio.read(0xb000_0000 + (3 << 15) + offset, size);
    else {
      // Random BAR-space traffic wherever the BARs currently are.
      const base = 0xc000_0000 + Math.floor(rnd() * 0x40000);
      if (rnd() < 0.5) m.mmio.write(base, size, value);
      else m.mmio.read(base, size);
    }
  }
  d.mechanism = "ecam";
  assert.equal(d.read(b, 0, 4), 0x0005_1b36);
  assert.equal(d.read(b, 8, 4), 0x00ff0001);
  assert.equal(checksum(ram), sum, "guest RAM untouched: the function has no DMA engine here");
});

test("PCI 3.0 6.8.2.6: a rewritten MSI-X table entry takes effect for the next message", () => {
  const { m, d, b, fn } = build();
  const bars = d.assignBars(b);
  const [cap] = d.findCapabilities(b, 0x11);
  const { tableAddress } = d.msixLayout(b, cap, bars);
  d.setMsixVector(tableAddress, 2, 0xfee0_0000, 0x41);
  d.enableMsix(b, cap);
  fn.notifyVector(2);
  m.mmio.write(tableAddress + 16 * 2 + 8, 4, 0x42);
  m.mmio.write(tableAddress + 16 * 2, 8, 0x1_fee0_1000); // a QWORD write of the address
  fn.notifyVector(2);
  assert.deepEqual(
    m.irq.msis.map((x) => [x.message.address, x.message.data]),
    [
      [0xfee0_0000, 0x41],
      [0x1_fee0_1000, 0x42],
    ],
  );
});

test("PCIe 7.6.3: extended capabilities are linked from 0x100 and reachable through ECAM", () => {
  const { d, b, fn } = build();
  const ats = fn.config.addExtendedCapability(0x000f, 1, 8);
  const pasid = fn.config.addExtendedCapability(0x001b, 1, 8);
  assert.equal(ats, 0x100);
  d.mechanism = "ecam";
  const found: number[] = [];
  for (let at = 0x100, guard = 0; at !== 0 && guard < 8; guard++) {
    const header = d.read(b, at, 4);
    found.push(header & 0xffff);
    at = header >>> 20;
  }
  assert.deepEqual(found, [0x000f, 0x001b]);
  assert.equal(fn.config.findExtendedCapabilities(0x1b)[0], pasid);
});

test("hot-unplug: a removed function stops decoding, releases INTx and reads all-ones", () => {
  const { m, d, b, fn, rid } = build();
  const bars = d.assignBars(b);
  fn.setIntx(true);
  assert.ok(m.irq.pinAsserted(rid, 0));
  assert.equal(m.pci.removeFunction(3), fn);
  assert.ok(!m.irq.pinAsserted(rid, 0));
  assert.equal(d.read(b, 0, 4), 0xffffffff);
  assert.equal(m.mmio.read(bars[0].address, 4), 0xffffffff);
  assert.equal(m.pci.removeFunction(3), undefined);
  // The slot can be reused.
  const again = new PciFunction({
    name: "again",
    vendorId: 0x1234,
    deviceId: 9,
    classCode: 0xff0000,
    revisionId: 0,
  });
  m.add(again, 3);
  assert.equal(d.read(b, 0, 4), 0x0009_1234);
});

test("PCI 3.0 6.8.2.4-6.8.2.6: MSI-X Table Size, Table Offset/BIR and PBA Offset/BIR are read-only", () => {
  const { d, b } = build();
  const [cap] = d.findCapabilities(b, 0x11);
  const before = [d.read(b, cap + 2, 2) & 0x7ff, d.read(b, cap + 4, 4), d.read(b, cap + 8, 4)];
  d.write(b, cap + 2, 2, 0x3fff);
  d.write(b, cap + 4, 4, 0xffffffff);
  d.write(b, cap + 8, 4, 0xffffffff);
  assert.deepEqual([d.read(b, cap + 2, 2) & 0x7ff, d.read(b, cap + 4, 4), d.read(b, cap + 8, 4)], before);
  assert.deepEqual(before, [7, 0x0000_0002, 0x0000_2002]);
});

test("observability: BAR maps, unmaps and conflicts are trace events", () => {
  const tracer = new Tracer();
  const names: string[] = [];
  tracer.listen((e) => names.push(e.name), ["config"]);
  const m = new TestMachine({ tracer });
  const fn = new PciFunction({
    name: "t",
    vendorId: 0x1234,
    deviceId: 1,
    classCode: 0xff0000,
    revisionId: 0,
  });
  fn.addBar(0, { kind: "mem32", sizeBytes: 4096, handler: { read: () => 0, write: () => {} } });
  fn.addBar(1, { kind: "mem32", sizeBytes: 4096, handler: { read: () => 0, write: () => {} } });
  m.add(fn, 3);
  const b = { bus: 0, device: 3, fn: 0 };
  const bars = m.driver.assignBars(b, 0x2);
  m.driver.write(b, 0x14, 4, bars[0].address);
  m.driver.write(b, 4, 2, 0);
  assert.ok(names.includes("bar-map"));
  assert.ok(names.includes("bar-conflict"));
  assert.ok(names.includes("bar-unmap"));
});
