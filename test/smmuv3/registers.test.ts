import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { Translation } from "../../src/engine/translation.ts";
import { decodeQueueBase, ptrIncrement, queueEmpty, queueFull, queueUsed } from "../../src/smmuv3/queue.ts";
import { REG } from "../../src/smmuv3/regs.ts";
import { makeFixture } from "./harness.ts";

test("IDR0 (6.3.1): S1P, S2P, AArch64 tables, 2-level stream table, LE, ASID16, VMID16, MSI, no stall", () => {
  const { smmu } = makeFixture();
  const idr0 = smmu.read(REG.IDR0, 4);
  assert.equal(idr0 & 3, 3);
  assert.equal((idr0 >>> 2) & 3, 2);
  assert.equal((idr0 >>> 27) & 3, 1);
  assert.equal((idr0 >>> 21) & 3, 2);
  assert.equal((idr0 >>> 12) & 1, 1);
  assert.equal((idr0 >>> 18) & 1, 1);
  assert.equal((idr0 >>> 13) & 1, 1);
  assert.equal((idr0 >>> 24) & 3, 1);
  assert.equal((idr0 >>> 9) & 1, 0, "no Hyp");
  assert.equal((idr0 >>> 10) & 1, 0, "no ATS");
  assert.equal((idr0 >>> 16) & 1, 0, "no PRI");
});

test("IDR1/IDR5 (6.3.2, 6.3.6): SIDSIZE, SSIDSIZE, queue sizes, OAS 48, three granules", () => {
  const { smmu } = makeFixture({ features: { sidBits: 12, ssidBits: 8 } });
  const idr1 = smmu.read(REG.IDR1, 4);
  assert.equal(idr1 & 0x3f, 12);
  assert.equal((idr1 >>> 6) & 0x1f, 8);
  assert.equal((idr1 >>> 16) & 0x1f, 19);
  assert.equal((idr1 >>> 21) & 0x1f, 19);
  assert.equal((idr1 >>> 29) & 3, 0, "no preset tables or queues");
  assert.equal((idr1 >>> 26) & 3, 1, "ATTR_PERMS_OVR: STE.PRIVCFG/INSTCFG honoured; ATTR_TYPES_OVR 0");
  const idr5 = smmu.read(REG.IDR5, 4);
  assert.equal(idr5 & 7, 0b101);
  assert.equal((idr5 >>> 4) & 7, 7);
  assert.equal(smmu.read(REG.AIDR, 4), 2);
  assert.equal(smmu.read(REG.IDR3, 4) & (1 << 10), 1 << 10, "RIL");
});

test("ID registers are read-only; CIDR reads 0xB105F00D", () => {
  const { smmu } = makeFixture();
  const before = smmu.read(REG.IDR0, 4);
  smmu.write(REG.IDR0, 4, 0);
  assert.equal(smmu.read(REG.IDR0, 4), before);
  const cidr = [0, 1, 2, 3].map((i) => smmu.read(REG.CIDR0 + 4 * i, 4));
  assert.deepEqual(cidr, [0x0d, 0xf0, 0x05, 0xb1]);
});

test("GBPA (6.3.14): a write without Update is ignored; with Update it applies and Update reads 0", () => {
  const { smmu } = makeFixture();
  assert.equal(smmu.read(REG.GBPA, 4), 0x1000);
  smmu.write(REG.GBPA, 4, 1 << 20);
  assert.equal(smmu.read(REG.GBPA, 4), 0x1000);
  smmu.write(REG.GBPA, 4, (1 << 31) | (1 << 20) | 0x1000);
  assert.equal(smmu.read(REG.GBPA, 4), (1 << 20) | 0x1000);
});

test("GBPA.ABORT governs traffic while SMMUEN=0: abort, then bypass after an Update", () => {
  const fx = makeFixture();
  const t = new Translation();
  assert.equal(fx.smmu.translate(8, 0x1234, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x1234 - t.iovaBase), 0x1234);
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
  assert.equal(dma.readUint(0x1000, 4), 0);
  fx.smmu.write(REG.GBPA, 4, (1 << 31) | (1 << 20));
  // The address space's one-entry cache must not outlive the GBPA change.
  assert.equal(dma.readUint(0x1000, 4), -1);
  assert.equal(dma.lastFault?.reason, "blocked");
  assert.equal(fx.smmu.stats().eventQueue.written, 0, "no events while SMMUEN=0");
});

test("STRTAB_BASE and STRTAB_BASE_CFG writes are ignored while SMMUEN=1 (6.3.23)", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const base = fx.smmu.readWide(REG.STRTAB_BASE);
  const cfg = fx.smmu.read(REG.STRTAB_BASE_CFG, 4);
  fx.smmu.writeWide(REG.STRTAB_BASE, 0x123440n);
  fx.smmu.write(REG.STRTAB_BASE_CFG, 4, 3);
  assert.equal(fx.smmu.readWide(REG.STRTAB_BASE), base);
  assert.equal(fx.smmu.read(REG.STRTAB_BASE_CFG, 4), cfg);
  assert.ok(fx.smmu.stats().ignoredRegisterWrites >= 2);
});

test("queue base registers are ignored while their queue is enabled; CMDQ_CONS is RO while CMDQEN", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const cb = fx.smmu.readWide(REG.CMDQ_BASE);
  const eb = fx.smmu.readWide(REG.EVENTQ_BASE);
  fx.smmu.writeWide(REG.CMDQ_BASE, 0x5000n);
  fx.smmu.writeWide(REG.EVENTQ_BASE, 0x6000n);
  assert.equal(fx.smmu.readWide(REG.CMDQ_BASE), cb);
  assert.equal(fx.smmu.readWide(REG.EVENTQ_BASE), eb);
  const cons = fx.smmu.read(REG.CMDQ_CONS, 4);
  fx.smmu.write(REG.CMDQ_CONS, 4, 0);
  assert.equal(fx.smmu.read(REG.CMDQ_CONS, 4), cons);
  const prod = fx.smmu.read(REG.EVENTQ_PROD, 4);
  fx.smmu.write(REG.EVENTQ_PROD, 4, 5);
  assert.equal(fx.smmu.read(REG.EVENTQ_PROD, 4), prod, "EVENTQ_PROD is the SMMU's while EVENTQEN");
});

test("page 0 offsets 0xA8/0xAC alias the page-1 EVENTQ_PROD/CONS", () => {
  const fx = makeFixture();
  fx.smmu.write(REG.EVENTQ_BASE, 4, 0x10_0000 | 4);
  fx.smmu.write(REG.CR0, 4, 1 << 2);
  fx.smmu.write(REG.EVENTQ_CONS_P0, 4, 3);
  assert.equal(fx.smmu.read(REG.EVENTQ_CONS, 4), 3);
  assert.equal(fx.smmu.read(REG.EVENTQ_PROD_P0, 4), fx.smmu.read(REG.EVENTQ_PROD, 4));
});

test("access sizes: 64-bit access to a 32-bit register and 1/2-byte accesses are RAZ/WI", () => {
  const { smmu } = makeFixture();
  smmu.write(REG.CR2, 4, 2);
  assert.equal(smmu.read(REG.CR0, 8), 0);
  smmu.write(REG.CR0, 8, 1);
  assert.equal(smmu.read(REG.CR0, 4), 0);
  assert.equal(smmu.read(REG.CR2, 1), 0);
  smmu.write(REG.CR2, 2, 0);
  assert.equal(smmu.read(REG.CR2, 4), 2);
  assert.equal(smmu.read(REG.CR2 + 1, 4), 0, "misaligned");
  assert.ok(smmu.stats().badRegisterAccesses >= 5);
});

test("64-bit registers take 64-bit or two 32-bit accesses; RES0 bits read as zero", () => {
  const { smmu } = makeFixture();
  smmu.write(REG.STRTAB_BASE, 8, 0x1_2345_67ff);
  assert.equal(smmu.read(REG.STRTAB_BASE, 4), 0x234567c0);
  assert.equal(smmu.read(REG.STRTAB_BASE + 4, 4), 1);
  smmu.write(REG.STRTAB_BASE + 4, 4, 0xffff_ffff);
  assert.equal(smmu.readWide(REG.STRTAB_BASE), (((1n << 30n) | 0xfffffn) << 32n) | 0x234567c0n);
  smmu.write(REG.GERROR_IRQ_CFG0, 8, 0x0808_0043);
  assert.equal(smmu.read(REG.GERROR_IRQ_CFG0, 8), 0x0808_0040);
});

test("CR1 may change only while the SMMU and both queues are disabled (6.3.11)", () => {
  const fx = makeFixture();
  fx.smmu.write(REG.CR1, 4, 0x5);
  assert.equal(fx.smmu.read(REG.CR1, 4), 5);
  fx.smmu.write(REG.CR0, 4, 1 << 3);
  fx.smmu.write(REG.CR1, 4, 0xfff);
  assert.equal(fx.smmu.read(REG.CR1, 4), 5);
});

test("IRQ configuration registers are ignored while their interrupt is enabled", () => {
  const { smmu } = makeFixture();
  smmu.write(REG.EVENTQ_IRQ_CFG1, 4, 11);
  smmu.write(REG.IRQ_CTRL, 4, 0b101);
  assert.equal(smmu.read(REG.IRQ_CTRLACK, 4), 0b101);
  smmu.write(REG.EVENTQ_IRQ_CFG1, 4, 22);
  smmu.write(REG.GERROR_IRQ_CFG1, 4, 22);
  assert.equal(smmu.read(REG.EVENTQ_IRQ_CFG1, 4), 11);
  assert.equal(smmu.read(REG.GERROR_IRQ_CFG1, 4), 0);
  smmu.write(REG.IRQ_CTRL, 4, 0xffff);
  assert.equal(smmu.read(REG.IRQ_CTRL, 4), 0b101, "PRIQ_IRQEN is RES0 without PRI");
});

test("GERROR is read-only; an error is active while GERROR ^ GERRORN", () => {
  const fx = makeFixture();
  fx.smmu.write(REG.GERROR, 4, 0xff);
  assert.equal(fx.smmu.read(REG.GERROR, 4), 0);
  fx.smmu.write(REG.GERRORN, 4, 0xffff_ffff);
  assert.equal(fx.smmu.read(REG.GERRORN, 4), 0x1fd, "reserved GERRORN bits read as zero");
});

test("queue pointers (3.5.1): wrap bit toggles at the end; full = same index, different wrap", () => {
  const log2 = 2;
  let p = 0;
  for (let i = 0; i < 4; i++) p = ptrIncrement(p, log2);
  assert.equal(p, 0b100, "index 0 with the wrap bit set");
  assert.ok(queueFull(p, 0, log2));
  assert.ok(!queueEmpty(p, 0, log2));
  assert.equal(queueUsed(p, 0, log2), 4);
  for (let i = 0; i < 4; i++) p = ptrIncrement(p, log2);
  assert.equal(p, 0);
  assert.ok(queueEmpty(p, 0, log2));
  assert.equal(queueUsed(0b110, 0b101, log2), 1);
  assert.equal(queueUsed(0b001, 0b111, log2), 2, "prod wrapped past the end");
});

test("queue base (6.3.25): LOG2SIZE above the maximum behaves as the maximum; base aligned to size", () => {
  const g = decodeQueueBase(0x12345 | 31, 0, 19, 16);
  assert.equal(g.log2size, 19);
  assert.equal(g.baseGpa % (2 ** 19 * 16), 0);
  const h = decodeQueueBase(0x10_0000 | 8, 0, 19, 16);
  assert.deepEqual(h, { baseGpa: 0x10_0000, log2size: 8, entryBytes: 16 });
});

test("GERROR/EVENTQ_IRQ_CFG0-2 (6.3.19-6.3.21, 6.3.31-6.3.33): fields masked, writable only while the IRQ is disabled", () => {
  const { smmu } = makeFixture();
  for (const [cfg0, cfg1, cfg2, enable] of [
    [REG.GERROR_IRQ_CFG0, REG.GERROR_IRQ_CFG1, REG.GERROR_IRQ_CFG2, 1 << 0],
    [REG.EVENTQ_IRQ_CFG0, REG.EVENTQ_IRQ_CFG1, REG.EVENTQ_IRQ_CFG2, 1 << 2],
  ]) {
    smmu.write(cfg0, 4, 0xffff_ffff);
    smmu.write(cfg0 + 4, 4, 0xffff_ffff);
    smmu.write(cfg1, 4, 0xffff_ffff);
    smmu.write(cfg2, 4, 0xffff_ffff);
    assert.equal(smmu.read(cfg0, 4), 0xffff_fffc, "ADDR[31:2]");
    assert.equal(smmu.read(cfg0 + 4, 4), 0xfffff, "ADDR[51:32]");
    assert.equal(smmu.read(cfg1, 4), 0xffff_ffff, "DATA");
    assert.equal(smmu.read(cfg2, 4), 0x3f, "MemAttr, SH");
    smmu.write(REG.IRQ_CTRL, 4, enable);
    const ignoredBefore = smmu.stats().ignoredRegisterWrites;
    for (const off of [cfg0, cfg0 + 4, cfg1, cfg2]) smmu.write(off, 4, 0);
    assert.equal(smmu.stats().ignoredRegisterWrites, ignoredBefore + 4);
    assert.equal(smmu.read(cfg1, 4), 0xffff_ffff, "unchanged while enabled");
    smmu.write(REG.IRQ_CTRL, 4, 0);
    smmu.write(cfg1, 4, 7);
    assert.equal(smmu.read(cfg1, 4), 7);
  }
});
