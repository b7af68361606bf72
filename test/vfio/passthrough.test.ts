/**
 * The guest's view of an assigned device (VfioPciFunction) over a stand-in for the VFIO device:
 * the header emulated as QEMU's vfio-pci does, BARs sized from the regions and trapped to region
 * reads/writes, config above the header passed to the device, the command register written
 * through, and the emulated MSI capability driving VFIO_DEVICE_SET_IRQS and the VMM's routes.
 * Also the VMM side of MSI delivery (DeviceMsiRoutes: one KVM GSI per vector, remapped routes).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { MsiRoute, Vm } from "../../src/kvm/vm.ts";
import type { MsiMessage } from "../../src/platform/interrupts.ts";
import type { VfioPciDevice, VfioRegion } from "../../src/vfio/device.ts";
import { VfioPciFunction } from "../../src/vfio/pci-passthrough.ts";
import { DeviceMsiRoutes } from "../../src/vmm/device-msi.ts";

/** A device with edu's identity: BAR0 1 MiB mem32, MSI with one vector, a 256-byte config. */
function fakeDevice(msiVectors = 1) {
  const config = new Uint8Array(256);
  const cv = new DataView(config.buffer);
  cv.setUint16(0, 0x1234, true);
  cv.setUint16(2, 0x11e8, true);
  config[8] = 0x10;
  cv.setUint16(0x0a, 0x00ff, true);
  config[9] = 0;
  cv.setUint32(0x10, 0, true); // mem32, not prefetchable
  cv.setUint16(0x2c, 0x1af4, true);
  cv.setUint16(0x2e, 0x1100, true);
  config[0x40] = 0x05; // the device's own MSI capability (must stay hidden behind ours)
  const regions: VfioRegion[] = [
    { index: 0, flags: 7, sizeBytes: 1 << 20, offset: 0 },
    { index: 1, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 2, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 3, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 4, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 5, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 6, flags: 0, sizeBytes: 0, offset: 0 },
    { index: 7, flags: 3, sizeBytes: 256, offset: 0 },
  ];
  const log: string[] = [];
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
    irqCount: (index: number) => (index === 1 ? msiVectors : 0),
    setIrqEventfds: (index: number, fds: readonly number[]) => {
      log.push(`irqs ${index} x${fds.length}`);
      return null;
    },
    disableIrq: (index: number) => log.push(`irqs ${index} off`),
    reset: () => {
      log.push("reset");
      return false;
    },
  };
  return { device: device as unknown as VfioPciDevice, log, config };
}

test("identity comes from the device; the capability list is ours (MSI only), not the device's", () => {
  const { device } = fakeDevice();
  const fn = new VfioPciFunction(device, "vfio0");
  assert.equal(fn.readConfig(0, 4), 0x11e81234);
  assert.equal(fn.readConfig(8, 4), 0x00ff0010);
  assert.equal(fn.readConfig(0x2c, 4), 0x11001af4);
  const cap = fn.readConfig(0x34, 1);
  assert.equal(fn.readConfig(cap, 1), 0x05, "an MSI capability");
  assert.equal(fn.readConfig(cap + 1, 1), 0, "and no other");
  assert.equal(fn.readConfig(0x3d, 1), 0, "no INTx pin offered (not wired)");
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
