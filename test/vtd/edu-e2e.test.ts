/**
 * End to end: QEMU's edu device on the PCI bus does DMA through the VT-d unit, which the guest
 * programs only through MMIO on the machine's bus at 0xFED90000.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  EDU_DMA_BUFFER_ADDRESS,
  EDU_DMA_DIR_TO_RAM,
  EDU_DMA_START,
  EDU_REG_DMA_CMD,
  EDU_REG_DMA_COUNT,
  EDU_REG_DMA_DST,
  EDU_REG_DMA_SRC,
  EduDevice,
} from "../../src/devices/edu.ts";
import { FR } from "../../src/vtd/fault-reasons.ts";
import { GCMD, REG, REGISTER_FILE_BYTES } from "../../src/vtd/registers.ts";
import { VtdUnit } from "../../src/vtd/vtd.ts";
import { TestMachine } from "../support/machine.ts";
import { decodeFrcd, frcd } from "./guest.ts";

const VTD_BASE = 0xfed90000;
const B = { bus: 0, device: 4, fn: 0 };
const RID = 4 << 3;

test("edu DMA through VT-d: mapped pages move data, an unmapped IOVA faults with an FRCD record", () => {
  const m = new TestMachine();
  const unit = new VtdUnit(m.memory, { config: "aw-bits=39" });
  m.mmio.register(VTD_BASE, REGISTER_FILE_BYTES, unit, "vtd");
  const edu = new EduDevice();
  m.add(edu.pci, 4, (rid) => unit.addEndpoint(rid));
  const bars = m.driver.assignBars(B);
  const eduBase = bars[0].address;
  const vw = (off: number, size: 4 | 8, v: number) => m.mmio.write(VTD_BASE + off, size, v);
  const vr = (off: number) => m.mmio.read(VTD_BASE + off, 4);

  // Guest tables at 8 MiB: root, context, 3-level second stage (39-bit).
  const mem = m.memory;
  let next = 8 << 20;
  const page = () => {
    const p = next;
    next += 4096;
    mem.fill(p, 4096, 0);
    return p;
  };
  const root = page();
  const ctx = page();
  const l3 = page();
  const l2 = page();
  const l1 = page();
  const queue = page();
  const status = page();
  mem.writeU64(root, BigInt(ctx) | 1n);
  mem.writeU64(ctx + (RID & 0xff) * 16, BigInt(l3) | 1n);
  mem.writeU64(ctx + (RID & 0xff) * 16 + 8, 1n | (3n << 8n)); // AW 39-bit, domain 3
  mem.writeU64(l3, BigInt(l2) | 3n);
  mem.writeU64(l2, BigInt(l1) | 3n);
  mem.writeU64(l1 + 0x10 * 8, 0x200000n | 3n); // iova 0x10000 -> gpa 0x200000

  // Linux order: QI, root table, global invalidations (then TE).
  vw(REG.IQT, 8, 0);
  vw(REG.IQA, 8, queue);
  vw(REG.GCMD, 4, GCMD.QIE);
  assert.ok(vr(REG.GSTS) & GCMD.QIE);
  vw(REG.RTADDR, 8, root);
  vw(REG.GCMD, 4, GCMD.QIE | GCMD.SRTP);
  assert.ok(vr(REG.GSTS) & GCMD.SRTP);
  mem.writeU64(queue, 0x11n); // context-cache global
  mem.writeU64(queue + 16, 0x12n); // IOTLB global
  mem.writeU64(queue + 32, 0x25n | (1n << 32n)); // wait, status write 1
  mem.writeU64(queue + 40, BigInt(status));
  vw(REG.IQT, 8, 48);
  assert.equal(mem.readU32(status), 1);
  vw(REG.GCMD, 4, GCMD.QIE | GCMD.TE);

  const dma = (src: number, dst: number, count: number, cmd: number) => {
    m.mmio.write(eduBase + EDU_REG_DMA_SRC, 8, src);
    m.mmio.write(eduBase + EDU_REG_DMA_DST, 8, dst);
    m.mmio.write(eduBase + EDU_REG_DMA_COUNT, 8, count);
    m.mmio.write(eduBase + EDU_REG_DMA_CMD, 4, cmd);
  };
  mem.view(0x200000, 16).set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
  dma(0x10000, EDU_DMA_BUFFER_ADDRESS, 16, EDU_DMA_START);
  assert.deepEqual([...edu.buffer.subarray(0, 16)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
  dma(EDU_DMA_BUFFER_ADDRESS, 0x10000 + 0x100, 16, EDU_DMA_START | EDU_DMA_DIR_TO_RAM);
  assert.equal(mem.readU8(0x200100 + 15), 16);

  // The physical address itself is not reachable: iova 0x200000 is unmapped.
  mem.fill(0x300000, 16, 0);
  dma(EDU_DMA_BUFFER_ADDRESS, 0x300000, 16, EDU_DMA_START | EDU_DMA_DIR_TO_RAM);
  assert.equal(mem.readU32(0x300000), 0, "nothing written");
  assert.equal(edu.stats().dmaFaults, 1);
  const rec = decodeFrcd(frcd(unit, 0));
  assert.equal(rec.reason, FR.WRITE_DENIED);
  assert.equal(rec.sid, RID);
  assert.equal(rec.address, 0x300000n);
  assert.equal(rec.read, false);
});
