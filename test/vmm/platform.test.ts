import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { NULL_SINK } from "../../src/devices/uart16550.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { UNCLAIMED_ADDRESSES_KEPT } from "../../src/platform/bus.ts";
import { InterruptFabric, intxIoapicPin } from "../../src/vmm/x86/interrupts.ts";
import { PLATFORM_PORTS, ramLayout } from "../../src/vmm/x86/layout.ts";
import { PCI_IO_BASE, PCI_IO_END, Platform } from "../../src/vmm/x86/platform.ts";

const MiB = 1 << 20;

function platform(iommu: "none" | "virtio") {
  const layout = ramLayout(32 * MiB);
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 32 * MiB }]);
  const msis: { address: number; data: number }[] = [];
  const exits: number[] = [];
  const p = new Platform({
    memory,
    ramLayout: layout,
    cpus: 1,
    serial: NULL_SINK,
    iommu: { kind: iommu },
    devices: [
      { kind: "edu", iommu: iommu !== "none" },
      { kind: "edu", iommu: false },
    ],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
    msiTarget: {
      signalMsi: (address, data) => {
        msis.push({ address, data });
        return true;
      },
    },
    onDebugExit: (s) => exits.push(s),
  });
  return { p, memory, msis, exits };
}

/** Enables bus mastering on edu `index` and DMAs 64 bytes of its buffer to RAM at `addr`. */
function eduToRam(p: Platform, index: number, addr: number): void {
  const d = p.devices[index];
  const dev = (d.requesterId >> 3) & 0x1f;
  const cmd = p.pci.readConfig(0, dev, 0, 4, 2);
  p.pci.writeConfig(0, dev, 0, 4, 2, cmd | 4);
  const bar = p.bars.find((b) => b.requesterId === d.requesterId && b.bar === 0);
  assert.ok(bar, "firmware assigned BAR0");
  const base = bar.address;
  p.mmio.write(base + 0x80, 4, 0x40000);
  p.mmio.write(base + 0x88, 4, addr);
  p.mmio.write(base + 0x90, 4, 64);
  p.mmio.write(base + 0x98, 4, 3);
}

test("firmware assigns BARs in the 32-bit window and enables memory decoding", () => {
  const { p } = platform("virtio");
  assert.ok(p.bars.length >= 3);
  for (const b of p.bars) assert.ok(b.address >= 0xc0000000 && b.address + b.sizeBytes <= 0xe0000000);
  const edu = p.bars.find((b) => b.requesterId === p.devices[0].requesterId);
  assert.ok(edu);
  assert.equal(p.mmio.read(edu.address, 4), 0x010000ed, "edu identification through the decoded BAR");
});

test("a device without iommu=on bypasses the IOMMU (identity DMA)", () => {
  const { p, memory } = platform("virtio");
  memory.fill(0x200000, 64, 0xa5);
  eduToRam(p, 1, 0x200000);
  assert.equal(memory.readU8(0x200000), 0, "the device buffer (zeros) landed at the guest-physical address");
});

test("a device with iommu=on cannot DMA outside its mappings (unattached: blocked, nothing written)", () => {
  const { p, memory } = platform("virtio");
  memory.fill(0x200000, 64, 0xa5);
  eduToRam(p, 0, 0x200000);
  assert.equal(memory.readU8(0x200000), 0xa5);
  assert.ok((p.devices[0].stats() as { dmaFaults: number }).dmaFaults >= 1);
  assert.equal(p.viommu?.engine.stats().faultCauses.blocked, 1);
});

test("debug-exit and COM1 sit at their ports on the platform's port bus", () => {
  const { p, exits } = platform("none");
  p.pio.write(0x501, 1, 0x7);
  assert.deepEqual(exits, [15]);
  assert.equal(p.pio.read(0x3f8 + 5, 1) & 0x60, 0x60);
  p.pio.write(0x510, 2, 0);
  assert.equal(p.pio.read(0x511, 1), 0x51, "fw_cfg 'Q'");
});

test("8-byte MMIO accesses reach a device as one 8-byte access (edu DMA registers)", () => {
  const { p } = platform("none");
  const bar = p.bars.find((b) => b.requesterId === p.devices[0].requesterId);
  assert.ok(bar);
  const buf = new DataView(new ArrayBuffer(8));
  buf.setBigUint64(0, 0x1_2345_6789n, true);
  p.mmioWrite(bar.address + 0x80, 8, buf, 0);
  const out = new DataView(new ArrayBuffer(8));
  p.mmioRead(bar.address + 0x80, 8, out, 0);
  assert.equal(out.getBigUint64(0, true), 0x1_2345_6789n);
});

test("interrupt fabric: remapping blocks a message (no delivery) and non-interrupt addresses are dropped", () => {
  const delivered: number[] = [];
  const fabric = new InterruptFabric({
    signalMsi: (_a, d) => {
      delivered.push(d);
      return true;
    },
  });
  fabric.signalMsi(0x10, { address: 0xfee00000, data: 0x41 }, 0);
  fabric.signalMsi(0x10, { address: 0x1000, data: 0x42 }, 0);
  fabric.setRemapper({
    remap: (sid, address, data) =>
      sid === 0x10
        ? { ok: true, message: { address, data: data + 1 } }
        : { ok: false, reason: 0x26, detail: "source" },
  });
  fabric.signalMsi(0x10, { address: 0xfee00000, data: 0x41 }, 0);
  fabric.signalMsi(0x18, { address: 0xfee00000, data: 0x41 }, 0);
  assert.deepEqual(delivered, [0x41, 0x42]);
  const s = fabric.stats();
  assert.equal(s.msisNotInterruptAddress, 1);
  assert.equal(s.msisBlockedByRemapping, 1);
});

test("interrupt fabric: messages from sources outside the unit's device scopes do not pass the remapper", () => {
  const delivered: number[] = [];
  const fabric = new InterruptFabric({
    signalMsi: (_a, d) => {
      delivered.push(d);
      return true;
    },
  });
  const block = () => ({ ok: false as const, reason: 0x25, detail: "compatibility format blocked" });
  fabric.setRemapper({ remap: block }, (sid) => sid === 0x10 || sid === 0xff00);
  fabric.signalMsi(0x10, { address: 0xfee00000, data: 0x41 }, 0); // in scope: blocked
  fabric.signalMsi(0x18, { address: 0xfee00000, data: 0x42 }, 0); // outside: straight to the LAPIC
  assert.deepEqual(delivered, [0x42]);
  assert.equal(fabric.stats().msisBlockedByRemapping, 1);
});

test("the remapping unit's own event messages bypass interrupt remapping (VT-d 5.1.6)", () => {
  const delivered: number[] = [];
  const fabric = new InterruptFabric({
    signalMsi: (_a, d) => {
      delivered.push(d);
      return true;
    },
  });
  fabric.setRemapper({ remap: () => ({ ok: false, reason: 0x20, detail: "blocked" }) });
  fabric.unremapped.signalMsi(0, { address: 0xfee00000, data: 0x50 }, 0);
  fabric.signalMsi(0, { address: 0xfee00000, data: 0x51 }, 0);
  assert.deepEqual(delivered, [0x50]);
});

test("--disk: virtio-blk-pci (1af4:1042) offers ACCESS_PLATFORM only when iommu=on", () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-disk-"));
  const img = join(dir, "d.img");
  writeFileSync(img, new Uint8Array(1 << 20));
  const p = new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: 32 * MiB }]),
    ramLayout: ramLayout(32 * MiB),
    cpus: 1,
    serial: NULL_SINK,
    iommu: { kind: "virtio" },
    devices: [
      { kind: "disk", path: img, iommu: true, readOnly: false },
      { kind: "disk", path: img, iommu: false, readOnly: true },
    ],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
    msiTarget: { signalMsi: () => true },
    onDebugExit: () => {},
  });
  const accessPlatform = (index: number): boolean => {
    const d = p.devices[index];
    const dev = (d.requesterId >> 3) & 0x1f;
    assert.equal(p.pci.readConfig(0, dev, 0, 0, 4), 0x10421af4);
    const bar = p.bars.find((b) => b.requesterId === d.requesterId && b.bar === 0);
    assert.ok(bar);
    p.mmio.write(bar.address, 4, 1); // device_feature_select = 1 (bits 63:32)
    return (p.mmio.read(bar.address + 4, 4) & 2) !== 0; // VIRTIO_F_ACCESS_PLATFORM = bit 33
  };
  assert.equal(accessPlatform(0), true);
  assert.equal(accessPlatform(1), false);
  p.close();
});

test("an MSI that KVM rejects (ioctl error) is dropped and counted, not thrown into the device", () => {
  const fabric = new InterruptFabric({
    signalMsi: () => {
      throw new Error("KVM_SIGNAL_MSI failed: EINVAL (22)");
    },
  });
  fabric.signalMsi(0x10, { address: 0x1_fee0_0000, data: 0x41 }, 0);
  assert.equal(fabric.stats().msisRejectedByKvm, 1);
  assert.equal(fabric.stats().lastBlockReason, "KVM_SIGNAL_MSI failed: EINVAL (22)");
});

test("PCI INTx wiring is q35's: slots 0-24 rotate onto PIRQ E-H (GSI 20-23), 25-31 use the ICH9 defaults", () => {
  assert.equal(intxIoapicPin(2 << 3, 0), 22, "slot 2 INTA -> PIRQG");
  assert.equal(intxIoapicPin(2 << 3, 3), 21, "slot 2 INTD -> PIRQF");
  assert.equal(intxIoapicPin(24 << 3, 1), 21, "slot 24 INTB -> PIRQF");
  assert.equal(intxIoapicPin(25 << 3, 0), 16, "slot 25 INTA -> PIRQA (D25IR default)");
  assert.equal(intxIoapicPin(31 << 3, 3), 19, "slot 31 INTD -> PIRQD");
  assert.equal(intxIoapicPin(30 << 3, 1), 21, "slot 30 INTB -> PIRQF (DMI-to-PCI bridge)");
  assert.equal(intxIoapicPin((3 << 3) | 5, 0), 23, "the function number does not matter");
});

test("firmware writes Interrupt Line (PCI 3.0 6.2.4) with the IOAPIC input each function's INTx pin reaches", () => {
  const { p } = platform("virtio");
  for (const { requesterId, fn } of p.pci.functions()) {
    const dev = (requesterId >> 3) & 0x1f;
    const pin = p.pci.readConfig(0, dev, 0, 0x3d, 1);
    const line = p.pci.readConfig(0, dev, 0, 0x3c, 1);
    if (pin === 0) assert.equal(line, 0, `${fn.name}: no INTx pin, line left alone`);
    else assert.equal(line, intxIoapicPin(requesterId, pin - 1), `${fn.name}: line = IOAPIC input`);
  }
  const edu = p.devices[0];
  assert.equal(
    p.pci.readConfig(0, (edu.requesterId >> 3) & 0x1f, 0, 0x3c, 1),
    22,
    "edu at 00:02.0 INTA -> 22",
  );
});

test("a guest that programs the IOAPIC entry named by Interrupt Line receives edu's INTx (level, active-high)", () => {
  const { p, msis } = platform("none");
  const edu = p.devices[0];
  const dev = (edu.requesterId >> 3) & 0x1f;
  const line = p.pci.readConfig(0, dev, 0, 0x3c, 1);
  // RTE: vector 0x42, fixed, physical, active-high (as q35's GSI links declare), level, unmasked
  p.mmio.write(0xfec00000, 4, 0x11 + 2 * line);
  p.mmio.write(0xfec00010, 4, 0);
  p.mmio.write(0xfec00000, 4, 0x10 + 2 * line);
  p.mmio.write(0xfec00010, 4, 0x8042);
  const bar = p.bars.find((b) => b.requesterId === edu.requesterId && b.bar === 0);
  assert.ok(bar);
  p.mmio.write(bar.address + 0x60, 4, 1); // raise: INTA# asserts (MSI is off)
  assert.deepEqual(msis, [{ address: 0xfee00000, data: 0x8042 }]);
});

test("unclaimed accesses are named by address (bounded) and traced under VIOMMU_TRACE=unclaimed", () => {
  const tracer = new Tracer();
  const events: string[] = [];
  tracer.listen(
    (e) => events.push(`${e.name} 0x${(e.fields.address as number).toString(16)}`),
    ["unclaimed"],
  );
  const layout = ramLayout(32 * MiB);
  const p = new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: 32 * MiB }]),
    ramLayout: layout,
    cpus: 1,
    serial: NULL_SINK,
    iommu: { kind: "none" },
    devices: [],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer,
    msiTarget: { signalMsi: () => true },
    onDebugExit: () => {},
  });
  p.pio.write(0x80, 1, 0x12);
  p.pio.write(0x80, 1, 0x13);
  assert.equal(p.pio.read(0x2f9, 1), 0xff, "an unclaimed port reads all-ones");
  p.mmio.write(0xfed00000, 4, 1);
  assert.deepEqual(p.pio.unclaimedAddresses(), [
    { address: 0x80, reads: 0, writes: 2 },
    { address: 0x2f9, reads: 1, writes: 0 },
  ]);
  assert.deepEqual(events, ["pio-write 0x80", "pio-write 0x80", "pio-read 0x2f9", "mmio-write 0xfed00000"]);
  for (let port = 0x1000; port < 0x1100; port++) p.pio.read(port, 1);
  assert.equal(p.pio.unclaimedAddresses().length, UNCLAIMED_ADDRESSES_KEPT, "a scan does not grow the table");
  assert.equal(p.pio.unclaimedReads, 1 + 0x100, "but every access is counted");
});

test("PLATFORM_PORTS lists exactly the fixed port ranges the platform registers", () => {
  const { p } = platform("virtio");
  const fixed = p.pio
    .describe()
    .map((line) => /\[0x([0-9a-f]+), 0x([0-9a-f]+)\) (.*)$/.exec(line))
    .filter((m) => m !== null && m[3] !== "isa-debug-exit" && !m[3].includes("bar"))
    .map((m) => [Number.parseInt(m?.[1] ?? "", 16), Number.parseInt(m?.[2] ?? "", 16)]);
  const listed = PLATFORM_PORTS.filter((r) => r.base !== PCI_IO_BASE).map((r) => [
    r.base,
    r.base + r.sizeBytes,
  ]);
  assert.deepEqual(fixed, listed);
  const window = PLATFORM_PORTS.find((r) => r.base === PCI_IO_BASE);
  assert.equal(window?.sizeBytes, PCI_IO_END - PCI_IO_BASE);
});

test("isa-debug-exit at QEMU's common iobase 0xf4 (iosize 4): any write size, exit status (v << 1) | 1", () => {
  const exits: number[] = [];
  const p = new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: 32 * MiB }]),
    ramLayout: ramLayout(32 * MiB),
    cpus: 1,
    serial: NULL_SINK,
    iommu: { kind: "none" },
    devices: [],
    debugExit: { iobase: 0xf4, iosize: 4 },
    tracer: new Tracer(),
    msiTarget: { signalMsi: () => true },
    onDebugExit: (s) => exits.push(s),
  });
  p.pio.write(0xf4, 4, 0x10);
  p.pio.write(0xf5, 1, 0x21);
  p.pio.write(0xf6, 2, 0);
  assert.deepEqual(exits, [0x21, 0x43, 1]);
});
