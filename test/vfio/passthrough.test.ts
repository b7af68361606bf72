/**
 * The guest's view of an assigned device (VfioPciFunction) over a stand-in for the VFIO device:
 * the header emulated as QEMU's vfio-pci does, BARs sized from the regions and trapped to region
 * reads/writes, config above the header passed to the device, the command register written
 * through, and the emulated MSI capability driving VFIO_DEVICE_SET_IRQS and the VMM's routes.
 * Also the VMM side of MSI delivery (DeviceMsiRoutes: one KVM GSI per vector, remapped routes).
 */
import assert from "node:assert/strict";
import { writeSync } from "node:fs";
import { test } from "node:test";
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { MsiRoute, Vm } from "../../src/kvm/vm.ts";
import type { MsiMessage } from "../../src/platform/interrupts.ts";
import { mappablePieces } from "../../src/vfio/bar-mmap.ts";
import { sparseMmapAreas, type VfioPciDevice, type VfioRegion } from "../../src/vfio/device.ts";
import { VfioPciFunction } from "../../src/vfio/pci-passthrough.ts";
import { DeviceMsiRoutes } from "../../src/vmm/x86/device-msi.ts";

type FakeOptions = {
  msiVectors?: number;
  /** The MSI capability's Message Control (64-bit by default; 0x100 adds per-vector masking). */
  msiControl?: number;
  /** MSI-X vectors: a capability at 0x50, table at BAR0 + 0x4000, PBA at BAR0 + 0x5000. */
  msixVectors?: number;
  /** BAR0 may be mmapped (VFIO_REGION_INFO_FLAG_MMAP). */
  mmap?: boolean;
  /** VFIO offers INTx on INTA#. */
  intx?: boolean;
};

/**
 * A device with edu's identity: BAR0 1 MiB mem32, a 256-byte config, the capability list MSI
 * (0x40) -> [MSI-X (0x50)] -> vendor-specific (0x60, passed through).
 */
function fakeDevice(opts: FakeOptions = {}) {
  const msiVectors = opts.msiVectors ?? 1;
  const msixVectors = opts.msixVectors ?? 0;
  const config = new Uint8Array(256);
  const cv = new DataView(config.buffer);
  cv.setUint16(0, 0x1234, true);
  cv.setUint16(2, 0x11e8, true);
  cv.setUint16(6, 0x0010, true); // Status: capability list
  config[8] = 0x10;
  cv.setUint16(0x0a, 0x00ff, true);
  config[9] = 0;
  cv.setUint32(0x10, 0, true); // mem32, not prefetchable
  cv.setUint16(0x2c, 0x1af4, true);
  cv.setUint16(0x2e, 0x1100, true);
  config[0x34] = 0x40;
  config[0x3d] = opts.intx ? 1 : 0;
  config[0x40] = 0x05; // the device's own MSI capability: ours is emulated in its place
  config[0x41] = msixVectors > 0 ? 0x50 : 0x60;
  cv.setUint16(0x42, opts.msiControl ?? 0x0080, true);
  if (msixVectors > 0) {
    config[0x50] = 0x11;
    config[0x51] = 0x60;
    cv.setUint16(0x52, msixVectors - 1, true);
    cv.setUint32(0x54, 0x4000, true); // table: BAR0 + 0x4000
    cv.setUint32(0x58, 0x5000, true); // PBA: BAR0 + 0x5000
  }
  config[0x60] = 0x09; // vendor-specific, passed through
  config[0x61] = 0;
  config[0x62] = 0x10;
  config[0x63] = 0xab;
  const regions: VfioRegion[] = [
    {
      index: 0,
      flags: 7,
      sizeBytes: 1 << 20,
      offset: 0,
      mmapAreas: opts.mmap ? [{ offset: 0, sizeBytes: 1 << 20 }] : [],
    },
    { index: 1, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 2, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 3, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 4, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 5, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 6, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 7, flags: 3, sizeBytes: 256, offset: 0 },
  ];
  const log: string[] = [];
  /** The eventfds each interrupt index was last armed with. */
  const armed = new Map<number, readonly number[]>();
  const device = {
    bdf: "0000:00:11.0",
    regions,
    readConfig: (off: number, size: number) =>
      size === 1 ? config[off] : size === 2 ? cv.getUint16(off, true) : cv.getUint32(off, true),
    writeConfig: (off: number, size: number, value: number) =>
      log.push(`cfg ${off.toString(16)}/${size}=${value.toString(16)}`),
    regionRead: (index: number, off: number, size: number) => {
      log.push(`read ${index} ${off.toString(16)}/${size}`);
      return 0xed;
    },
    regionWrite: (index: number, off: number, size: number, value: number) =>
      log.push(`write ${index} ${off.toString(16)}/${size}=${value.toString(16)}`),
    irqCount: (index: number) =>
      index === 0 ? (opts.intx ? 1 : 0) : index === 1 ? msiVectors : index === 2 ? msixVectors : 0,
    unmaskIrq: (index: number) => {
      log.push(`irqs ${index} unmask`);
      return true;
    },
    setIrqEventfds: (index: number, fds: readonly number[]) => {
      log.push(`irqs ${index} x${fds.length}`);
      armed.set(index, [...fds]);
      return null;
    },
    disableIrq: (index: number) => {
      log.push(`irqs ${index} off`);
      armed.delete(index);
    },
    reset: () => {
      log.push("reset");
      return false;
    },
    mmapRegion: (index: number, off: number, size: number) => {
      log.push(`mmap ${index} ${off.toString(16)}+${size.toString(16)}`);
      return 0x7f00_0000_0000n + BigInt(off);
    },
  };
  return { device: device as unknown as VfioPciDevice, log, config, armed };
}

/** The device signals vector `fd` (VFIO writes its eventfd). */
function signal(fd: number): void {
  const one = Buffer.alloc(8);
  one.writeBigUint64LE(1n);
  writeSync(fd, one);
}

/** `fn` on a bus: requester ID 0x10, its messages recorded, bus master on. */
function connected(fn: VfioPciFunction) {
  const sent: MsiMessage[] = [];
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 4096, name: "ram" }]);
  fn.connect({
    requesterId: 0x10,
    interrupts: { signalMsi: (_rid, m) => sent.push(m), setPin: () => {} },
    dma: new DmaAddressSpace(memory, IDENTITY, 0x10),
  });
  fn.writeConfig(4, 2, 0x0006);
  const routes = new Map<number, MsiMessage | null>();
  fn.msiWiring = { route: (fd, _rid, message) => routes.set(fd, message) };
  return { sent, routes };
}

test("identity comes from the device; its capability list is offered, MSI emulated in place", () => {
  const { device, log } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0, 4), 0x11e81234);
  assert.equal(fn.readConfig(8, 4), 0x00ff0010);
  assert.equal(fn.readConfig(0x2c, 4), 0x11001af4);
  assert.equal(fn.readConfig(6, 2) & 0x10, 0x10, "Status: capability list");
  assert.equal(fn.readConfig(0x34, 1), 0x40, "the device's first capability, where it has it");
  assert.equal(fn.readConfig(0x40, 2), 0x6005, "MSI, then the vendor capability");
  log.length = 0;
  assert.equal(fn.readConfig(0x40, 4) >>> 16, 0x0080, "our MSI: 64-bit, 1 vector, no mask bits");
  assert.deepEqual(log, [], "the emulated MSI never reads the device");
  assert.equal(fn.readConfig(0x60, 4), 0xab100009, "the vendor capability is the device's");
  assert.equal(fn.readConfig(0x3d, 1), 0, "no INTx pin offered (not wired)");
});

test("a capability we do not offer is left out of the list (MSI without VFIO vectors)", () => {
  const { device } = fakeDevice({ msiVectors: 0, msixVectors: 2 });
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0x34, 1), 0x50, "the list starts at MSI-X");
  assert.equal(fn.readConfig(0x50, 2), 0x6011);
  assert.equal(fn.readConfig(0x60, 2), 0x0009);
});

test("an MSI capability of the device too small for ours (32-bit, next one right after) is not offered", () => {
  const { device, config } = fakeDevice({ msiControl: 0 });
  config[0x41] = 0x4c; // a capability right after the 10-byte 32-bit MSI
  config[0x4c] = 0x09;
  config[0x4d] = 0x60;
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0x34, 1), 0x4c, "the list skips the MSI capability");
  assert.equal(fn.readConfig(0x4c, 2), 0x6009);
});

test("BARs are sized from the VFIO regions and trapped to region reads and writes", () => {
  const { device, log } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  fn.writeConfig(0x10, 4, 0xffffffff);
  assert.equal(fn.readConfig(0x10, 4) >>> 0, 0xfff00000, "1 MiB memory BAR");
  const bar = fn.bars[0]!;
  assert.equal(bar.sizeBytes, 1 << 20);
  assert.equal(bar.handler.read(0x80, 4), 0xed);
  bar.handler.write(0x98, 8, 0x1_0000_0003);
  assert.deepEqual(log.slice(-3), ["read 0 80/4", "write 0 98/4=3", "write 0 9c/4=1"]);
});

test("bus master and INTx disable are written through; decode stays on in the device, emulated for the guest", () => {
  const { device, log } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  log.length = 0;
  fn.writeConfig(4, 2, 0x0146);
  assert.deepEqual(
    log,
    ["cfg 4/2=6"],
    "memory decode (the BAR's) + bus master; parity and SERR stay virtual",
  );
  // BAR sizing: the guest turns its decode off and on; the device sees none of it.
  fn.writeConfig(4, 2, 0x0144);
  fn.writeConfig(4, 2, 0x0146);
  assert.deepEqual(log, ["cfg 4/2=6"]);
  assert.equal(fn.readConfig(4, 2), 0x0146, "the guest reads back what it wrote");
  fn.writeConfig(4, 2, 0x0002);
  assert.deepEqual(log, ["cfg 4/2=6", "cfg 4/2=2"], "bus master off reaches the device");
});

test("config beyond the header and our capability goes to the device (the kernel filters it)", () => {
  const { device, log } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  fn.writeConfig(0xa0, 4, 0x1234);
  assert.equal(log.at(-1), "cfg a0/4=1234");
  assert.equal(fn.readConfig(0xa0, 1), 0);
});

test("MSI: enabling arms VFIO with one eventfd per vector and routes each to the guest's message", () => {
  const { device, log } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  const routes: (MsiMessage | null)[] = [];
  const fds: number[] = [];
  fn.msiWiring = {
    route: (fd, _rid, message) => {
      fds.push(fd);
      routes.push(message);
    },
  };
  const cap = fn.readConfig(0x34, 1);
  fn.writeConfig(cap + 4, 4, 0xfee01000);
  fn.writeConfig(cap + 8, 4, 0);
  fn.writeConfig(cap + 0xc, 2, 0x4041);
  assert.equal(routes.length, 0, "nothing before Enable");
  fn.writeConfig(cap + 2, 2, 1);
  assert.ok(log.includes("irqs 1 x1"));
  assert.deepEqual(routes, [{ address: 0xfee01000, data: 0x4041 }]);
  assert.ok(fds[0] >= 0, "a real eventfd");
  fn.writeConfig(cap + 0xc, 2, 0x4051);
  assert.deepEqual(routes.at(-1), { address: 0xfee01000, data: 0x4051 }, "a new message is re-routed");
  fn.writeConfig(cap + 2, 2, 0);
  assert.equal(log.at(-1), "irqs 1 off");
  assert.equal(routes.at(-1), null);
  assert.equal(fn.msiStats().vectorsArmed, 0);
});

test("a new guest gets a quiet device: interrupts off in VFIO, decode and bus master off, then VFIO_DEVICE_RESET", () => {
  const { device, log, config } = fakeDevice();
  config[4] = 0x07; // the previous user left I/O, memory and bus master on
  config[5] = 0x05; // and SERR + INTx Disable
  const fn = new VfioPciFunction(device, "vfio0");
  assert.deepEqual(
    log,
    ["irqs 1 off", "cfg 4/2=100", "reset", "cfg 4/2=2"],
    "MSI off, Command cleared (SERR kept), reset, then the BAR's memory decode on",
  );
  assert.equal(fn.readConfig(4, 2), 0, "the guest's Command starts at 0");
});

test("VM reset: armed MSI vectors are disarmed in VFIO and unrouted before the device's reset", () => {
  const { device, log } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  const routes: (MsiMessage | null)[] = [];
  fn.msiWiring = { route: (_fd, _rid, message) => routes.push(message) };
  const cap = fn.readConfig(0x34, 1);
  fn.writeConfig(cap + 4, 4, 0xfee00000);
  fn.writeConfig(cap + 0xc, 2, 0x4041);
  fn.writeConfig(cap + 2, 2, 1);
  fn.writeConfig(4, 2, 0x0006);
  log.length = 0;
  fn.reset();
  assert.deepEqual(log, ["irqs 1 off", "cfg 4/2=0", "reset", "cfg 4/2=2"]);
  assert.equal(routes.at(-1), null, "the vector's route is gone");
  assert.equal(fn.msiStats().vectorsArmed, 0);
  assert.equal(fn.readConfig(cap + 2, 2) & 1, 0, "MSI Enable reads 0 after the reset");
});

test("DeviceMsiRoutes: one GSI per vector above the IOAPIC's, bound by KVM_IRQFD, routed after remapping", () => {
  const calls: string[] = [];
  const vm = {
    irqfd: (fd: number, gsi: number, deassign = false) =>
      calls.push(`${fd}->${gsi}${deassign ? " off" : ""}`),
  };
  let submitted = 0;
  const routes = new DeviceMsiRoutes(vm as unknown as Vm, 24, () => submitted++);
  routes.route(7, 0x10, { address: 0xfee00000, data: 0x31 });
  routes.route(8, 0x10, { address: 0xfee00000, data: 0x32 });
  assert.deepEqual(calls, ["7->24", "8->25"]);
  const table: MsiRoute[] = [];
  // A remapper that blocks data 0x32 and rewrites the other.
  routes.appendRoutes(table, {
    translate: (_sid, m) => (m.data === 0x32 ? null : { address: 0xfee01000, data: 0x41 }),
  });
  assert.deepEqual(table, [{ gsi: 24, address: 0xfee01000, data: 0x41 }]);
  assert.equal(routes.unroutable, 1);
  routes.route(7, 0x10, null);
  assert.equal(calls.at(-1), "7->24 off");
  assert.equal(routes.size, 1);
  assert.ok(submitted >= 3);
});

/** Writes MSI-X table entry `v` of `fn` (BAR0 + 0x4000) through the BAR, as a driver does. */
function writeEntry(fn: VfioPciFunction, v: number, address: number, data: number, control: number): void {
  const bar = fn.bars[0]!.handler;
  bar.write(0x4000 + 16 * v, 4, address);
  bar.write(0x4000 + 16 * v + 4, 4, 0);
  bar.write(0x4000 + 16 * v + 8, 4, data);
  bar.write(0x4000 + 16 * v + 12, 4, control);
}

test("MSI-X: the device's capability is emulated in place; table and PBA trapped, the rest of the BAR passed", () => {
  const { device, log } = fakeDevice({ msixVectors: 3 });
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0x50, 4), 0x00026011, "MSI-X, 3 vectors, off");
  assert.equal(fn.readConfig(0x54, 4), 0x4000, "table at BAR0 + 0x4000");
  assert.equal(fn.readConfig(0x58, 4), 0x5000, "PBA at BAR0 + 0x5000");
  const bar = fn.bars[0]!.handler;
  log.length = 0;
  assert.equal(bar.read(0x4000 + 12, 4), 1, "6.8.2.9: every vector starts masked");
  writeEntry(fn, 1, 0xfee00000, 0x41, 0);
  assert.equal(bar.read(0x4010, 4), 0xfee00000);
  assert.equal(bar.read(0x5000, 8), 0, "nothing pending");
  bar.write(0x5000, 4, 0xffffffff);
  assert.equal(bar.read(0x5000, 4), 0, "6.8.2.10: the PBA is read-only");
  assert.deepEqual(log, [], "neither table nor PBA reaches the device");
  assert.equal(bar.read(0x3000, 4), 0xed);
  bar.write(0x6000, 2, 0x77);
  assert.deepEqual(log, ["read 0 3000/4", "write 0 6000/2=77"], "the rest of the BAR is the device's");
  fn.writeConfig(0x50, 4, 0xffffffff);
  assert.equal(fn.readConfig(0x54, 4), 0x4000, "table offset / BIR are read-only");
});

test("MSI-X: enabling arms every vector in VFIO; unmasked vectors are routed to their entries, masked ones not", () => {
  const { device, log, armed } = fakeDevice({ msixVectors: 3 });
  const fn = new VfioPciFunction(device, "vfio0");
  const { routes } = connected(fn);
  fn.writeConfig(0x52, 2, 0xc000); // enable + function mask, as Linux does first
  assert.ok(log.includes("irqs 2 x3"));
  const fds = armed.get(2)!;
  assert.equal(routes.size, 0, "function masked: nothing routed");
  writeEntry(fn, 0, 0xfee00000, 0x31, 0);
  writeEntry(fn, 1, 0xfee01000, 0x32, 0);
  assert.equal(routes.size, 0, "still function masked");
  fn.writeConfig(0x52, 2, 0x8000);
  assert.deepEqual(routes.get(fds[0]), { address: 0xfee00000, data: 0x31 });
  assert.deepEqual(routes.get(fds[1]), { address: 0xfee01000, data: 0x32 });
  assert.equal(routes.get(fds[2]), undefined, "vector 2 stays masked");
  assert.deepEqual(fn.interruptStats().msix, {
    vectorsArmed: 3,
    vectorsRouted: 2,
    setupErrors: 0,
    unwired: 0,
    maskedSignals: 0,
  });
  fn.writeConfig(0x52, 2, 0xc000);
  assert.equal(routes.get(fds[0]), null, "function mask unroutes every vector");
  fn.writeConfig(0x52, 2, 0);
  assert.equal(log.at(-1), "irqs 2 off");
  assert.equal(routes.get(fds[1]), null);
  assert.equal(fn.interruptStats().msix?.vectorsArmed, 0);
});

test("MSI-X 6.8.2.9: a signal on a masked vector is held, shows in the PBA, and is delivered once on unmask", () => {
  const { device, armed } = fakeDevice({ msixVectors: 3 });
  const fn = new VfioPciFunction(device, "vfio0");
  const { sent, routes } = connected(fn);
  fn.writeConfig(0x52, 2, 0x8000);
  writeEntry(fn, 1, 0xfee00000, 0x45, 1); // programmed, masked
  const fd = armed.get(2)![1];
  signal(fd);
  assert.equal(sent.length, 0, "masked: nothing reaches the guest");
  const bar = fn.bars[0]!.handler;
  assert.equal(bar.read(0x5000, 4), 0b10, "the pending bit of vector 1");
  assert.equal(bar.read(0x5000, 4), 0b10, "and it stays until delivered");
  bar.write(0x401c, 4, 0); // unmask vector 1
  assert.deepEqual(sent, [{ address: 0xfee00000, data: 0x45 }], "delivered on unmask");
  assert.equal(bar.read(0x5000, 4), 0, "pending bit cleared");
  assert.deepEqual(routes.get(fd), { address: 0xfee00000, data: 0x45 }, "then routed in the kernel");
  // Masked again, signalled, unmasked without a PBA read in between: still delivered once.
  bar.write(0x401c, 4, 1);
  assert.equal(routes.get(fd), null);
  signal(fd);
  signal(fd);
  bar.write(0x401c, 4, 0);
  assert.equal(sent.length, 2, "the held signals are one message (6.8.2.9: one pending bit)");
  assert.equal(fn.interruptStats().msix?.maskedSignals, 2);
});

test("MSI-X: a function mask holds signals the same way", () => {
  const { device, armed } = fakeDevice({ msixVectors: 2 });
  const fn = new VfioPciFunction(device, "vfio0");
  const { sent } = connected(fn);
  fn.writeConfig(0x52, 2, 0x8000);
  writeEntry(fn, 0, 0xfee00000, 0x50, 0);
  fn.writeConfig(0x52, 2, 0xc000);
  signal(armed.get(2)![0]);
  assert.equal(fn.bars[0]!.handler.read(0x5000, 1), 1);
  assert.equal(sent.length, 0);
  fn.writeConfig(0x52, 2, 0x8000);
  assert.deepEqual(sent, [{ address: 0xfee00000, data: 0x50 }]);
});

test("MSI-X: junk from the guest (odd sizes, offsets past the table, NaN, reserved control bits) never throws", () => {
  const { device } = fakeDevice({ msixVectors: 2 });
  const fn = new VfioPciFunction(device, "vfio0");
  connected(fn);
  fn.writeConfig(0x52, 2, 0xffff);
  const bar = fn.bars[0]!.handler;
  for (const [offset, size, value] of [
    [0x4000, 8, 2 ** 52],
    [0x401f, 1, 0xff],
    [0x4020, 4, 1],
    [0x4001, 2, Number.NaN],
    [0x5000, 8, -1],
    [0x400c, 4, 0xfffffffe],
  ] as const) {
    bar.write(offset, size, value);
    bar.read(offset, size);
  }
  assert.equal(bar.read(0x400c, 4), 0, "vector control: only the Mask bit is writable");
  fn.writeConfig(0x50, 4, Number.POSITIVE_INFINITY);
  fn.reset();
  assert.equal(fn.interruptStats().msix?.vectorsArmed, 0);
});

test("MSI per-vector masking (6.8.1.7): masked vectors are unrouted; their signals set Pending Bits, delivered on unmask", () => {
  const { device, armed } = fakeDevice({ msiVectors: 2, msiControl: 0x0182 });
  const fn = new VfioPciFunction(device, "vfio0");
  const { sent, routes } = connected(fn);
  assert.equal(fn.readConfig(0x42, 2), 0x0182, "64-bit, per-vector masking, 2 vectors capable");
  fn.writeConfig(0x44, 4, 0xfee00000);
  fn.writeConfig(0x4c, 2, 0x60);
  fn.writeConfig(0x50, 4, 0b10); // vector 1 masked
  fn.writeConfig(0x42, 2, 0x0011); // enable, 2 vectors
  const fds = armed.get(1)!;
  assert.equal(fds.length, 2);
  assert.deepEqual(routes.get(fds[0]), { address: 0xfee00000, data: 0x60 });
  assert.equal(routes.get(fds[1]), undefined, "masked vector not routed");
  signal(fds[1]);
  assert.equal(fn.readConfig(0x54, 4), 0b10, "its pending bit");
  fn.writeConfig(0x50, 4, 0);
  assert.deepEqual(sent, [{ address: 0xfee00000, data: 0x61 }], "delivered on unmask");
  assert.equal(fn.readConfig(0x54, 4), 0);
  assert.deepEqual(routes.get(fds[1]), { address: 0xfee00000, data: 0x61 });
});

test("DeviceMsiRoutes: GSIs of removed vectors are reused (mask/unmask does not use them up)", () => {
  const calls: string[] = [];
  const vm = {
    irqfd: (fd: number, gsi: number, off = false) => calls.push(`${fd}->${gsi}${off ? " off" : ""}`),
  };
  const routes = new DeviceMsiRoutes(vm as unknown as Vm, 24, () => {});
  for (let i = 0; i < 1000; i++) {
    routes.route(7, 0x10, { address: 0xfee00000, data: 0x31 });
    routes.route(7, 0x10, null);
  }
  routes.route(8, 0x10, { address: 0xfee00000, data: 0x32 });
  assert.ok(
    calls.every((c) => c.includes("->24")),
    "one GSI throughout",
  );
});

/** A recording GuestMemoryMapper: slots by handle; `refuse` makes the next maps fail. */
function slots() {
  const live = new Map<number, string>();
  let next = 0;
  const state = { refuse: false };
  const mapper = {
    map: (gpa: number, size: number, host: bigint) => {
      if (state.refuse) return null;
      live.set(next, `${gpa.toString(16)}+${size.toString(16)}@${host.toString(16)}`);
      return next++;
    },
    unmap: (h: number) => {
      live.delete(h);
    },
  };
  return { mapper, live, state, list: () => [...live.values()].sort() };
}

test("mappablePieces: whole pages of the mmap areas, the trapped ranges cut out page-wide", () => {
  assert.deepEqual(
    mappablePieces([{ offset: 0, sizeBytes: 0x8000 }], 0x8000, [
      [0x4000, 0x4030],
      [0x5000, 0x5008],
    ]),
    [
      { offset: 0, sizeBytes: 0x4000 },
      { offset: 0x6000, sizeBytes: 0x2000 },
    ],
  );
  assert.deepEqual(
    mappablePieces([{ offset: 0x800, sizeBytes: 0x2000 }], 0x4000, []),
    [{ offset: 0x1000, sizeBytes: 0x1000 }],
    "partial pages stay trapped",
  );
  assert.deepEqual(
    mappablePieces([{ offset: 0, sizeBytes: 0x100 }], 0x100, []),
    [],
    "a BAR below a page is trapped",
  );
  assert.deepEqual(
    mappablePieces([{ offset: 0, sizeBytes: 1 << 30 }], 0x2000, []),
    [{ offset: 0, sizeBytes: 0x2000 }],
    "clipped to the BAR",
  );
});

test("BAR mmap: mapped while Memory decode is on at the BAR's address, moved with it, removed on decode off", () => {
  const { device, log } = fakeDevice({ mmap: true });
  const fn = new VfioPciFunction(device, "vfio0");
  const { mapper, list } = slots();
  fn.guestMemoryMapper = mapper;
  assert.deepEqual(list(), [], "no address yet");
  fn.writeConfig(0x10, 4, 0xfe000000);
  assert.deepEqual(list(), [], "decode off");
  fn.writeConfig(4, 2, 0x0002);
  assert.ok(log.includes("mmap 0 0+100000"), "the region mmapped once");
  assert.deepEqual(list(), ["fe000000+100000@7f0000000000"]);
  assert.equal(fn.barStats().bar0.mapping, "mmap");
  assert.equal(fn.barStats().bar0.mappedBytes, 1 << 20);
  fn.writeConfig(0x10, 4, 0xfd000000);
  assert.deepEqual(list(), ["fd000000+100000@7f0000000000"], "moved with the BAR");
  fn.writeConfig(0x10, 4, 0xffffffff);
  assert.deepEqual(
    list(),
    ["fff00000+100000@7f0000000000"],
    "sized with decode on: it decodes at the all-ones address, as the emulated decode does",
  );
  fn.writeConfig(0x10, 4, 0xfd000000);
  fn.writeConfig(4, 2, 0);
  assert.deepEqual(list(), [], "decode off unmaps");
  fn.writeConfig(4, 2, 0x0002);
  fn.reset();
  assert.deepEqual(list(), [], "reset: BAR unassigned, decode off");
  assert.equal(log.filter((l) => l.startsWith("mmap")).length, 1, "the host mapping is kept and reused");
  assert.equal(fn.barStats().bar0.traps, 0, "no access trapped");
  fn.bars[0]!.handler.read(0x10, 4);
  assert.equal(fn.barStats().bar0.traps, 1, "an access the VMM saw is counted");
});

test("BAR mmap: the MSI-X table and PBA pages stay trapped; a refused slot leaves the BAR trapped", () => {
  const { device } = fakeDevice({ mmap: true, msixVectors: 2 });
  const fn = new VfioPciFunction(device, "vfio0");
  const { mapper, list, state } = slots();
  fn.guestMemoryMapper = mapper;
  fn.writeConfig(0x10, 4, 0xfe000000);
  fn.writeConfig(4, 2, 0x0002);
  assert.deepEqual(list(), ["fe000000+4000@7f0000000000", "fe006000+fa000@7f0000006000"]);
  fn.writeConfig(4, 2, 0);
  state.refuse = true;
  fn.writeConfig(4, 2, 0x0002);
  assert.deepEqual(list(), []);
  assert.equal(fn.barStats().bar0.mapping, "trapped");
  assert.equal(fn.bars[0]!.handler.read(0x100, 4), 0xed, "still served by trapping");
});

test("INTx: the pin is offered and armed in VFIO after reset; a signal raises the line, the guest's EOI lowers it and unmasks", () => {
  const { device, log } = fakeDevice({ intx: true });
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0x3d, 1), 1, "INTA#");
  assert.ok(fn.intxEventfd >= 0);
  assert.ok(log.indexOf("irqs 0 x1") > log.indexOf("reset"), "INTx armed after the reset");
  const pins: boolean[] = [];
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 4096, name: "ram" }]);
  fn.connect({
    requesterId: 0x10,
    interrupts: { signalMsi: () => {}, setPin: (_rid, pin, level) => pins.push(pin === 0 && level) },
    dma: new DmaAddressSpace(memory, IDENTITY, 0x10),
  });
  fn.intxFired();
  assert.deepEqual(pins, [true], "the line is up");
  assert.equal(fn.readConfig(6, 2) & 0x08, 0x08, "Status.Interrupt follows it");
  log.length = 0;
  fn.intxEoi();
  assert.deepEqual(pins, [true, false]);
  assert.equal(fn.readConfig(6, 2) & 0x08, 0);
  assert.deepEqual(log, ["irqs 0 unmask"], "VFIO may fire again");
  fn.intxEoi();
  assert.deepEqual(log, ["irqs 0 unmask"], "an EOI of another source on the pin changes nothing");
  // The guest masks by INTx Disable (as Linux's vfio-pci does), then unmasks: a resample.
  fn.intxFired();
  fn.writeConfig(4, 2, 0x0400);
  assert.equal(pins.at(-1), false, "INTx Disable: the pin is not driven");
  assert.equal(fn.readConfig(6, 2) & 0x08, 0x08, "but Status.Interrupt still shows the line");
  fn.writeConfig(4, 2, 0);
  assert.equal(log.at(-1), "irqs 0 unmask", "clearing INTx Disable asks VFIO again");
  assert.deepEqual(fn.interruptStats().intx, { armed: true, signals: 2, unmasks: 2, setupErrors: 0 });
});

test("INTx and MSI: one VFIO index at a time, INTx off before MSI is armed and back after", () => {
  const { device, log } = fakeDevice({ intx: true });
  const fn = new VfioPciFunction(device, "vfio0");
  connected(fn);
  log.length = 0;
  fn.writeConfig(0x44, 4, 0xfee00000);
  fn.writeConfig(0x42, 2, 0x0001);
  assert.deepEqual(log, ["irqs 0 off", "irqs 1 x1"]);
  fn.intxFired();
  assert.equal(fn.interruptStats().intx?.signals, 0, "a late INTx signal is ignored");
  fn.writeConfig(0x42, 2, 0);
  assert.deepEqual(log.slice(2), ["irqs 1 off", "irqs 0 x1"]);
});

test("a device capability list that loops or points outside 0x40-0xFF ends there", () => {
  const { device, config } = fakeDevice({ msixVectors: 2 });
  config[0x61] = 0x40; // vendor -> back to MSI: a loop
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0x61, 1), 0, "the last capability ends the guest's list");
  const other = fakeDevice();
  other.config[0x41] = 0x20; // MSI -> into the header
  const fn2 = new VfioPciFunction(other.device, "vfio1");
  assert.equal(fn2.readConfig(0x40, 2), 0x0005, "MSI, and nothing after it");
});

test("hostile guest: random config, BAR, table and PBA traffic never throws, and VFIO never has two interrupt indexes armed", () => {
  const { device, armed } = fakeDevice({
    msixVectors: 3,
    msiVectors: 2,
    msiControl: 0x0182,
    intx: true,
    mmap: true,
  });
  const fn = new VfioPciFunction(device, "vfio0");
  const { routes } = connected(fn);
  const { mapper } = slots();
  fn.guestMemoryMapper = mapper;
  let seed = 0x2545f491;
  const rand = (n: number) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const values = [0, 1, 0xffffffff, 0x8000, 0xc000, 0x4000, 0xfee00000, 2 ** 52, -1, Number.NaN, 0.5];
  const sizes = [1, 2, 4, 8] as const;
  const bar = fn.bars[0]!.handler;
  for (let i = 0; i < 20_000; i++) {
    const value = rand(4) === 0 ? values[rand(values.length)] : rand(2 ** 31);
    const size = sizes[rand(4)];
    switch (rand(6)) {
      case 0:
        fn.writeConfig(rand(0x1004), size === 8 ? 4 : size, value);
        break;
      case 1:
        fn.writeConfig(0x40 + rand(0x30), size === 8 ? 2 : size, value);
        break;
      case 2:
        bar.write(0x4000 + rand(0x40), size, value);
        break;
      case 3:
        bar.read(0x5000 + rand(0x10), size);
        break;
      case 4:
        if (rand(2) === 0) fn.intxFired();
        else fn.intxEoi();
        break;
      default:
        if (rand(50) === 0) fn.reset();
        else fn.readConfig(rand(0x1000), size === 8 ? 4 : size);
    }
    assert.ok(armed.size <= 1, `step ${i}: indexes armed ${[...armed.keys()]}`);
  }
  // Whatever state it ended in, a reset leaves nothing routed and only INTx armed.
  fn.reset();
  assert.ok([...routes.values()].every((m) => m === null));
  assert.deepEqual([...armed.keys()], [0]);
});

/** A vfio_region_info of `totalBytes` whose capability chain starts at 32 with `caps`. */
function regionInfo(
  totalBytes: number,
  caps: { at: number; id: number; next: number; areas?: [number, number][] }[],
) {
  const info = new Uint8Array(totalBytes);
  const v = new DataView(info.buffer);
  v.setUint32(0, totalBytes, true);
  v.setUint32(12, caps[0]?.at ?? 0, true);
  for (const c of caps) {
    v.setUint16(c.at, c.id, true);
    v.setUint16(c.at + 2, 1, true);
    v.setUint32(c.at + 4, c.next, true);
    if (c.areas === undefined) continue;
    v.setUint32(c.at + 8, c.areas.length, true);
    c.areas.forEach(([offset, size], i) => {
      v.setBigUint64(c.at + 16 + 16 * i, BigInt(offset), true);
      v.setBigUint64(c.at + 24 + 16 * i, BigInt(size), true);
    });
  }
  return info;
}

test("VFIO_REGION_INFO_CAP_SPARSE_MMAP: its areas are what may be mmapped; a broken chain gives none", () => {
  // MSIX_MAPPABLE (id 3) first, then the sparse areas around a table page.
  const good = regionInfo(32 + 8 + 48, [
    { at: 32, id: 3, next: 40 },
    {
      at: 40,
      id: 1,
      next: 0,
      areas: [
        [0, 0x3000],
        [0x4000, 0x4000],
      ],
    },
  ]);
  assert.deepEqual(sparseMmapAreas(good), [
    { offset: 0, sizeBytes: 0x3000 },
    { offset: 0x4000, sizeBytes: 0x4000 },
  ]);
  assert.equal(sparseMmapAreas(regionInfo(48, [{ at: 32, id: 3, next: 0 }])), null, "no sparse capability");
  assert.equal(sparseMmapAreas(regionInfo(48, [{ at: 32, id: 3, next: 32 }])), null, "a looping chain ends");
  const truncated = regionInfo(32 + 16 + 16, [{ at: 32, id: 1, next: 0, areas: [[0, 0x1000]] }]);
  new DataView(truncated.buffer).setUint32(40, 1000, true); // claims 1000 areas in 16 bytes
  assert.deepEqual(sparseMmapAreas(truncated), [{ offset: 0, sizeBytes: 0x1000 }], "only the areas that fit");
});
