import assert from "node:assert/strict";
import { test } from "node:test";
import { DebugExit } from "../../src/devices/debug-exit.ts";
import { FW_CFG_FILE_DIR, FwCfg } from "../../src/devices/fw-cfg.ts";
import { Ioapic } from "../../src/devices/ioapic.ts";
import { CapturingSink, Uart16550 } from "../../src/devices/uart16550.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { MsiMessage } from "../../src/platform/interrupts.ts";

function uart() {
  const sink = new CapturingSink();
  const levels: boolean[] = [];
  const u = new Uart16550(sink, (l) => levels.push(l));
  return { u, sink, levels };
}

test("16550: THR writes reach the sink; LSR reports THRE|TEMT", () => {
  const { u, sink } = uart();
  for (const c of "hi\n") u.write(0, 1, c.charCodeAt(0));
  assert.equal(sink.text(), "hi\n");
  assert.equal(u.read(5, 1) & 0x60, 0x60);
});

test("16550: DLAB switches offsets 0 and 1 to the divisor latch", () => {
  const { u, sink } = uart();
  u.write(3, 1, 0x83);
  u.write(0, 1, 0x01);
  u.write(1, 1, 0x02);
  assert.equal(u.read(0, 1), 0x01);
  assert.equal(u.read(1, 1), 0x02);
  u.write(3, 1, 0x03);
  assert.equal(sink.text(), "", "divisor writes are not transmitted");
  assert.equal(u.read(1, 1), 0, "IER still zero");
});

test("16550: loopback (Linux probe MCR=LOOP|OUT2|RTS) reads MSR & 0xF0 = 0x90 and echoes THR to RBR", () => {
  const { u, sink } = uart();
  u.write(4, 1, 0x1a);
  assert.equal(u.read(6, 1) & 0xf0, 0x90);
  u.write(0, 1, 0x41);
  assert.equal(sink.text(), "", "loopback does not transmit");
  assert.equal(u.read(5, 1) & 1, 1, "LSR.DR");
  assert.equal(u.read(0, 1), 0x41);
  assert.equal(u.read(5, 1) & 1, 0);
});

test("16550: IIR priority; reading IIR clears THRI; interrupt line gated by OUT2", () => {
  const { u, levels } = uart();
  assert.equal(u.read(2, 1), 0x01, "no interrupt pending");
  u.write(4, 1, 0x08); // OUT2
  u.write(1, 1, 0x02); // enable THRI: holding register empty -> pending
  assert.deepEqual(levels, [true]);
  u.write(1, 1, 0x03); // also RDI
  u.receive(new Uint8Array([0x31]));
  assert.equal(u.read(2, 1), 0x04, "received data outranks THRE");
  assert.equal(u.read(0, 1), 0x31);
  assert.equal(u.read(2, 1), 0x02, "then THRE");
  assert.equal(u.read(2, 1), 0x01, "IIR read cleared THRI");
  assert.equal(levels.at(-1), false);
  u.write(2, 1, 0x01);
  assert.equal(u.read(2, 1) & 0xc0, 0xc0, "FIFO enabled bits");
});

test("16550: receive FIFO overflow sets LSR.OE, which clears on read; scratch register holds", () => {
  const { u } = uart();
  u.receive(new Uint8Array(17));
  assert.equal(u.read(5, 1) & 0x02, 0x02);
  assert.equal(u.read(5, 1) & 0x02, 0);
  u.write(7, 1, 0x5a);
  assert.equal(u.read(7, 1), 0x5a);
  assert.equal(u.read(0, 4), 0xffffffff, "wide accesses are not decoded");
});

test("16550: a host source refills the FIFO (never past 16 bytes) when the guest reads LSR or RBR", () => {
  const { u } = uart();
  const pending = [...new TextEncoder().encode("0123456789abcdefXYZ")];
  u.setSource({ take: (max) => Uint8Array.from(pending.splice(0, max)) });
  assert.equal(u.read(5, 1) & 1, 1, "LSR read pulled input");
  let text = "";
  while (u.read(5, 1) & 1) text += String.fromCharCode(u.read(0, 1));
  assert.equal(text, "0123456789abcdefXYZ");
  assert.equal(u.stats().rxOverruns, 0);
});

test("isa-debug-exit: a write of v ends with status (v << 1) | 1", () => {
  const statuses: number[] = [];
  const d = new DebugExit((s) => statuses.push(s));
  assert.equal(d.iobase, 0x501);
  assert.equal(d.iosize, 2);
  d.write(0, 1, 0);
  d.write(0, 2, 0x10);
  d.write(0, 4, 0x21);
  assert.deepEqual(statuses, [1, 0x21, 0x43]);
});

function readItem(f: FwCfg, key: number, n: number): Uint8Array {
  f.write(0, 2, key);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = f.read(1, 1);
  return out;
}

test("fw_cfg: signature QEMU, ID traditional interface, NB_CPUS, MAX_CPUS, RAM_SIZE little-endian", () => {
  const f = new FwCfg({ ramSizeBytes: 0x1_2000_0000, cpus: 1, maxCpus: 4 });
  assert.equal(new TextDecoder().decode(readItem(f, 0x00, 4)), "QEMU");
  assert.deepEqual([...readItem(f, 0x01, 4)], [1, 0, 0, 0]);
  assert.deepEqual([...readItem(f, 0x05, 2)], [1, 0]);
  assert.deepEqual([...readItem(f, 0x0f, 2)], [4, 0]);
  assert.equal(new DataView(readItem(f, 0x03, 8).buffer).getBigUint64(0, true), 0x1_2000_0000n);
});

test("fw_cfg: unknown keys and reads past the end of an item return zero", () => {
  const f = new FwCfg({ ramSizeBytes: 1 << 24, cpus: 1, maxCpus: 1 });
  assert.deepEqual([...readItem(f, 0x11, 4)], [0, 0, 0, 0]);
  assert.deepEqual([...readItem(f, 0x00, 6)], [0x51, 0x45, 0x4d, 0x55, 0, 0]);
  assert.equal(f.read(0, 2), 0xffff, "only byte reads are valid");
});

test("fw_cfg: file directory (0x19) is big-endian count + 64-byte entries; files start at 0x20", () => {
  const f = new FwCfg({ ramSizeBytes: 1 << 24, cpus: 1, maxCpus: 1 });
  const key = f.addFile("etc/test", new Uint8Array([9, 8, 7]));
  assert.equal(key, 0x20);
  const dir = readItem(f, FW_CFG_FILE_DIR, 4 + 64);
  const v = new DataView(dir.buffer);
  assert.equal(v.getUint32(0, false), 1);
  assert.equal(v.getUint32(4, false), 3);
  assert.equal(v.getUint16(8, false), 0x20);
  assert.equal(new TextDecoder().decode(dir.subarray(12, 20)), "etc/test");
  assert.equal(dir[20], 0);
  assert.deepEqual([...readItem(f, 0x20, 3)], [9, 8, 7]);
});

function be32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

/** Writes an FWCfgDmaAccess at `at` (big-endian fields) and starts it through the port. */
function fwCfgDma(
  f: FwCfg,
  mem: GuestMemory,
  at: number,
  control: number,
  length: number,
  buffer: number,
): number {
  mem.writeU32(at, be32(control));
  mem.writeU32(at + 4, be32(length));
  mem.writeU32(at + 8, 0);
  mem.writeU32(at + 12, be32(buffer));
  f.dmaHandler.write(0, 4, be32(0));
  f.dmaHandler.write(4, 4, be32(at));
  return be32(mem.readU32(at));
}

test("fw_cfg DMA: the ID advertises it, the register reads 'QEMU CFG', select+read copies the item", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const f = new FwCfg({ ramSizeBytes: 1 << 20, cpus: 2, maxCpus: 2, memory: mem });
  assert.deepEqual([...readItem(f, 0x01, 4)], [3, 0, 0, 0]);
  const sig = new Uint8Array(8);
  new DataView(sig.buffer).setUint32(0, f.dmaHandler.read(0, 4), true);
  new DataView(sig.buffer).setUint32(4, f.dmaHandler.read(4, 4), true);
  assert.equal(new TextDecoder().decode(sig), "QEMU CFG");
  // select key 0x05 (NB_CPUS) and read 2 bytes to 0x2000
  assert.equal(fwCfgDma(f, mem, 0x1000, (0x05 << 16) | 0x08 | 0x02, 2, 0x2000), 0, "control cleared: done");
  assert.equal(mem.readU16(0x2000), 2);
  // skip 2 bytes of the signature, then read the rest
  fwCfgDma(f, mem, 0x1000, (0x00 << 16) | 0x08 | 0x04, 2, 0);
  fwCfgDma(f, mem, 0x1000, 0x02, 2, 0x2000);
  assert.equal(new TextDecoder().decode(mem.view(0x2000, 2)), "MU");
});

test("fw_cfg DMA: a skip of 4 GiB - 1 bytes ends at the item's end at once; reads past the end are zeros", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const f = new FwCfg({ ramSizeBytes: 1 << 20, cpus: 1, maxCpus: 1, memory: mem });
  const t0 = performance.now();
  assert.equal(fwCfgDma(f, mem, 0x1000, 0x08 | 0x04, 0xffffffff, 0), 0);
  assert.ok(performance.now() - t0 < 100);
  mem.fill(0x3000, 16, 0xee);
  assert.equal(fwCfgDma(f, mem, 0x1000, 0x08 | 0x02, 16, 0x3000), 0);
  assert.deepEqual([...mem.view(0x3000, 6)], [0x51, 0x45, 0x4d, 0x55, 0, 0]);
});

test("fw_cfg DMA: a buffer outside RAM or a write sets the error bit and moves nothing", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const f = new FwCfg({ ramSizeBytes: 1 << 20, cpus: 1, maxCpus: 1, memory: mem });
  assert.equal(fwCfgDma(f, mem, 0x1000, (0x00 << 16) | 0x08 | 0x02, 4, 0xfff00000), 1);
  assert.equal(fwCfgDma(f, mem, 0x1000, 0x10, 4, 0x2000), 1);
  // A descriptor outside RAM: nothing to report to, nothing thrown.
  f.dmaHandler.write(0, 4, be32(0));
  f.dmaHandler.write(4, 4, be32(0x7ffff000));
  assert.equal(f.stats().dmaErrors, 3);
  const noDma = new FwCfg({ ramSizeBytes: 1 << 20, cpus: 1, maxCpus: 1 });
  assert.deepEqual([...readItem(noDma, 0x01, 4)], [1, 0, 0, 0], "no memory: traditional interface only");
});

function ioapic() {
  const sent: { m: MsiMessage; pin: number }[] = [];
  let routeChanges = 0;
  const io = new Ioapic(
    (m, pin) => sent.push({ m, pin }),
    () => routeChanges++,
  );
  const rte = (pin: number, low: number, high = 0) => {
    io.write(0, 4, 0x11 + pin * 2);
    io.write(0x10, 4, high);
    io.write(0, 4, 0x10 + pin * 2);
    io.write(0x10, 4, low);
  };
  return { io, sent, rte, routes: () => routeChanges };
}

test("IOAPIC: version register reports version 0x20 and 24 entries; entries reset masked", () => {
  const { io } = ioapic();
  io.write(0, 4, 1);
  assert.equal(io.read(0x10, 4), 0x170020);
  io.write(0, 4, 0x10);
  assert.equal(io.read(0x10, 4) & 0x10000, 0x10000);
});

test("IOAPIC: an edge entry sends its compatibility-format message once per rising edge", () => {
  const { io, sent, rte, routes } = ioapic();
  rte(4, 0x31, 0x01 << 24); // vector 0x31, fixed, physical, edge, dest APIC 1
  assert.ok(routes() > 0);
  io.setPin(4, true);
  io.setPin(4, true);
  io.setPin(4, false);
  io.setPin(4, true);
  assert.equal(sent.length, 2);
  assert.deepEqual(sent[0].m, { address: 0xfee01000, data: 0x31 });
});

test("IOAPIC: a masked entry sends nothing", () => {
  const { io, sent, rte } = ioapic();
  rte(5, 0x10032);
  io.setPin(5, true);
  assert.equal(sent.length, 0);
  assert.equal(io.stats().maskedWhileAsserted, 1);
});

test("IOAPIC: level entry sets remote IRR, and EOI re-sends while the line stays asserted", () => {
  const { io, sent, rte } = ioapic();
  rte(9, 0x8041);
  io.setPin(9, true);
  io.setPin(9, true);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].m.data, 0x8041, "trigger mode bit 15 in the message data");
  io.write(0, 4, 0x10 + 9 * 2);
  assert.equal(io.read(0x10, 4) & 0x4000, 0x4000, "remote IRR");
  io.eoi(0x41);
  assert.equal(sent.length, 2, "still asserted: delivered again");
  io.setPin(9, false);
  io.write(0x40, 4, 0x41); // the EOI register
  io.write(0, 4, 0x10 + 9 * 2);
  assert.equal(io.read(0x10, 4) & 0x4000, 0);
  assert.equal(sent.length, 2);
});

test("IOAPIC 82093AA bit 13: polarity is applied to the line's level when the entry is (re)programmed", () => {
  const { io, sent, rte } = ioapic();
  rte(20, 0x18042); // level, active-high, masked; the line is low (idle)
  rte(20, 0x8042); // unmasked: an idle active-high line sends nothing
  assert.equal(sent.length, 0);
  rte(20, 0x2000 | 0x8042); // active-low while the line stays low: asserted now
  assert.equal(sent.length, 1, "reprogramming the polarity re-evaluates the steady line");
  io.eoi(0x42);
  assert.equal(sent.length, 2, "still asserted under active-low: re-sent on EOI");
  rte(20, 0x8042); // back to active-high (remote IRR still set from the last send)
  io.eoi(0x42);
  assert.equal(sent.length, 2, "idle under active-high: nothing more");
  io.setPin(20, true);
  assert.equal(sent.length, 3, "a high level asserts the active-high entry");
});

test("IOAPIC: a remappable-format entry (VT-d 5.1.5.1) yields handle bits in address 19:5 and 2", () => {
  const { io, sent, rte } = ioapic();
  // handle 0x8005: handle[14:0]=5 in bits 63:49, format bit 48, handle[15] in bit 11
  rte(3, 0x0800 | 0x55, (5 << 17) | (1 << 16));
  io.setPin(3, true);
  assert.equal(sent[0].m.address, (0xfee00000 | (5 << 5) | (1 << 4) | (1 << 2)) >>> 0);
});

test("IOAPIC: delivery status and remote IRR are read-only; bad sizes are ignored", () => {
  const { io, sent, rte } = ioapic();
  rte(2, 0x5000 | 0x20);
  io.write(0, 4, 0x10 + 4);
  assert.equal(io.read(0x10, 4) & 0x5000, 0);
  io.write(0x10, 2, 0xffff);
  assert.equal(io.read(0x10, 1), 0xff);
  assert.equal(sent.length, 0);
});

test("IOAPIC: an EOI listener runs after remote IRR clears and before the level is looked at again", () => {
  const { io, sent, rte } = ioapic();
  rte(17, 0x8000 | 0x51); // level, vector 0x51
  let level = true;
  const order: string[] = [];
  io.addEoiListener(17, () => {
    order.push("listener");
    level = false;
    io.setPin(17, false); // the source learns the interrupt ended and drops its line
  });
  io.setPin(17, level);
  assert.equal(sent.length, 1);
  io.eoi(0x51);
  assert.deepEqual(order, ["listener"]);
  assert.equal(sent.length, 1, "the line dropped in the listener: no second delivery");
  io.eoi(0x51);
  assert.deepEqual(order, ["listener"], "remote IRR clear: no EOI of this pin, no call");
  io.addEoiListener(17, () => order.push("second"));
  io.setPin(17, true);
  io.eoi(0x51);
  assert.deepEqual(order, ["listener", "listener", "second"]);
});
