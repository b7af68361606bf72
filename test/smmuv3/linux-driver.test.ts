import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { EVT } from "../../src/smmuv3/events.ts";
import { REG } from "../../src/smmuv3/regs.ts";
import { attachS1, cmd, ITS_DOORBELL, makeFixture, s1Attrs } from "./harness.ts";

test("Linux probe sequence: IDRs read first, CR0 cleared and acknowledged, queues then SMMUEN", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const log = fx.driver.log;
  assert.deepEqual(log.slice(0, 5), ["r 0x0", "r 0x4", "r 0xc", "r 0x14", "r 0x18"]);
  const order = (s: string): number => log.indexOf(s);
  assert.ok(order("w 0x20") < order("w64 0x80"), "CR0 cleared before the stream table is set");
  assert.ok(order("w64 0x80") < order("w 0x88"), "STRTAB_BASE then STRTAB_BASE_CFG");
  assert.ok(order("w64 0x90") < order("w 0x98"));
  assert.ok(order("w 0x98") < order("w64 0xa0"), "command queue before event queue");
  assert.ok(order("w64 0xa0") < order("w 0x100a8"));
  const cr0 = fx.smmu.read(REG.CR0, 4);
  assert.equal(cr0, 0b1101);
  assert.equal(fx.smmu.read(REG.CR0ACK, 4), cr0);
  assert.equal(fx.smmu.read(REG.IRQ_CTRLACK, 4), 0b101);
  // CFGI_ALL, TLBI_NSNH_ALL and two CMD_SYNCs were consumed; no command error.
  const s = fx.smmu.stats();
  assert.equal(s.commands.CFGI_STE_RANGE, 1);
  assert.equal(s.commands.TLBI_NSNH_ALL, 1);
  assert.equal(s.commands.CMD_SYNC, 2);
  assert.equal(s.commandErrors, 0);
  assert.equal(fx.smmu.read(REG.GERROR, 4) ^ fx.smmu.read(REG.GERRORN, 4), 0);
});

test("Linux probe with a 2-level stream table", () => {
  const fx = makeFixture();
  fx.driver.probe({ twoLevel: true });
  const pt = attachS1(fx, 300, { asid: 7 });
  pt.map(0x4000_0000, 0x20_0000, 3, s1Attrs());
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 300);
  fx.memory.writeU32(0x20_0010, 0xfeedf00d);
  assert.equal(dma.readUint(0x4000_0010, 4), 0xfeedf00d);
});

test("map, DMA, unmap + TLBI_NH_VA + CMD_SYNC: no stale translation survives", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const pt = attachS1(fx, 8, { asid: 3 });
  pt.map(0x1000_0000, 0x30_0000, 3, s1Attrs());
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
  assert.equal(dma.writeUint(0x1000_0008, 4, 0x12345678), null);
  assert.equal(fx.memory.readU32(0x30_0008), 0x12345678);
  assert.equal(dma.readUint(0x1000_0008, 4), 0x12345678);
  assert.ok(fx.smmu.stats().iotlb.entries >= 1);
  // Unmap: clear the PTE, then invalidate by VA and sync (arm_smmu_tlb_inv_range_asid).
  pt.unmap(0x1000_0000, 3);
  fx.driver.submit([cmd.tlbiNhVa(0, 3, 0x1000_0000)]);
  assert.equal(dma.readUint(0x1000_0008, 4), -1);
  assert.equal(dma.lastFault?.code, EVT.F_TRANSLATION);
  const events = fx.driver.drainEvents();
  assert.equal(events.length, 1);
  assert.equal(events[0].type, EVT.F_TRANSLATION);
  assert.equal(events[0].streamId, 8);
  assert.equal(events[0].inputAddr, 0x1000_0008n);
  assert.equal(events[0].rnw, true);
  // The event interrupt went to the ITS doorbell with the programmed data.
  const msi = fx.sink.msis.at(-1);
  assert.deepEqual(msi?.message, { address: ITS_DOORBELL, data: 0x20 });
});

test("CMD_SYNC with CS=SEV completes by CONS polling", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const r = fx.driver.submit([cmd.tlbiNhAll(0)], "sev");
  assert.equal(r.consErr, 0);
  assert.equal(fx.smmu.read(REG.CMDQ_CONS, 4) & 0xfffff, fx.smmu.read(REG.CMDQ_PROD, 4));
});

test("CMD_SYNC with CS=IRQ writes MSIData to MSIAddr in guest memory", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const target = fx.alloc.alloc(4096);
  fx.memory.writeU32(target, 0xffffffff);
  fx.driver.submit([cmd.sync(1, target + 8, 0xabcd1234)], "sev");
  assert.equal(fx.memory.readU32(target + 8), 0xabcd1234);
});

test("write then read through a read-only mapping: write faults F_PERMISSION, nothing written", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const pt = attachS1(fx, 9, { asid: 1 });
  pt.map(0x8000, 0x40_0000, 3, s1Attrs({ ap: 0b11 }));
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 9);
  fx.memory.writeU32(0x40_0000, 7);
  assert.equal(dma.readUint(0x8000, 4), 7);
  assert.equal(dma.writeUint(0x8000, 4, 9)?.code, EVT.F_PERMISSION);
  assert.equal(fx.memory.readU32(0x40_0000), 7);
  const [e] = fx.driver.drainEvents();
  assert.equal(e.type, EVT.F_PERMISSION);
  assert.equal(e.rnw, false);
  assert.equal(ACCESS_READ + ACCESS_WRITE, 3);
});

test("RAM above 2 GiB (6.3.23, 5.1.2, 6.3.25): stream table, L2 STEs, queues and MSI addresses with bit 31 set", () => {
  for (const twoLevel of [false, true]) {
    const fx = makeFixture({ ramGpa: 0x8000_0000 });
    fx.driver.probe({ twoLevel });
    assert.ok(fx.driver.strtab >= 0x8000_0000);
    // The base registers read back what was written, as unsigned values.
    assert.equal(fx.smmu.read(REG.STRTAB_BASE, 4), fx.driver.strtab);
    assert.equal(fx.smmu.readWide(REG.STRTAB_BASE), BigInt(fx.driver.strtab));
    assert.equal(fx.smmu.read(REG.STRTAB_BASE, 8), fx.driver.strtab);
    fx.driver.w32(REG.IRQ_CTRL, 0); // IRQ configuration is writable only while disabled (6.3.19)
    fx.driver.w64(REG.GERROR_IRQ_CFG0, 0x8000_0040);
    assert.equal(fx.smmu.read(REG.GERROR_IRQ_CFG0, 4), 0x8000_0040);
    assert.equal(fx.smmu.stats().commandErrors, 0);
    const pt = attachS1(fx, 300, { asid: 2 });
    const page = fx.alloc.alloc(4096);
    pt.map(0x4000_0000, page, 3, s1Attrs());
    const dma = new DmaAddressSpace(fx.memory, fx.smmu, 300);
    fx.memory.writeU32(page + 0x10, 0xfeedf00d);
    assert.equal(dma.readUint(0x4000_0010, 4), 0xfeedf00d, `twoLevel=${twoLevel}`);
    assert.equal(fx.smmu.stats().faults.F_STE_FETCH, undefined);
  }
});
