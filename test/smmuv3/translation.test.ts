import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE, PERM_RW } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { VfioType1Container } from "../../src/engine/host-iommu.ts";
import { Translation } from "../../src/engine/translation.ts";
import { HostStage2 } from "../../src/framework/host-stage2.ts";
import { EVT } from "../../src/smmuv3/events.ts";
import { stage2LevelConsistent, stage2StartLevel } from "../../src/smmuv3/pagetable.ts";
import {
  attachS1,
  cdWords,
  cmd,
  type Fixture,
  makeFixture,
  PageTables,
  RAM_BYTES,
  ready,
  s1Attrs,
  s2Attrs,
  writeWords,
} from "./harness.ts";

function pa(fx: Fixture, sid: number, iova: number, write = false): number {
  const t = new Translation();
  const f = fx.smmu.translate(sid, iova, write ? ACCESS_WRITE : ACCESS_READ, t);
  if (f !== null) return -f.code;
  return t.gpaBase + (iova - t.iovaBase);
}

const GRANULES: [number, number, number][] = [
  // granule shift, page level, block level
  [12, 3, 2],
  [14, 3, 2],
  [16, 3, 2],
];

for (const [g, pageLevel, blockLevel] of GRANULES) {
  test(`stage 1 with a ${2 ** (g - 10)} KiB granule: pages and level-${blockLevel} blocks`, () => {
    const fx = ready();
    const pt = attachS1(fx, 8, { granuleShift: g as 12 | 14 | 16, inputBits: 48 });
    const page = 2 ** g;
    const block = 2 ** (g + (g - 3));
    pt.map(3 * page, 0x40_0000, pageLevel, s1Attrs());
    assert.equal(pa(fx, 8, 3 * page + 0x10), 0x40_0010);
    assert.equal(pa(fx, 8, 4 * page), -EVT.F_TRANSLATION);
    const blockVa = 7 * block;
    const blockPa = block >= RAM_BYTES ? 0 : block;
    pt.map(blockVa, blockPa, blockLevel, s1Attrs());
    assert.equal(pa(fx, 8, blockVa + block - 8), blockPa + block - 8);
  });
}

test("4 KiB granule: 1 GiB blocks at level 1, tables at every level", () => {
  const fx = ready();
  const pt = attachS1(fx, 8);
  pt.map(2 ** 39 + 2 ** 30, 0, 1, s1Attrs());
  assert.equal(pa(fx, 8, 2 ** 39 + 2 ** 30 + 0x1234), 0x1234);
  assert.equal(fx.smmu.stats().iotlb.entries, 1, "cached as one 1 GiB entry");
});

test("TTB1: addresses with VA[55]=1 walk TTB1 (T1SZ), tagged by TBI1", () => {
  const fx = ready();
  const lo = new PageTables(fx.alloc, 12, 48);
  const hi = new PageTables(fx.alloc, 12, 39);
  lo.map(0x1000, 0x20_0000, 3, s1Attrs());
  // Top of a 39-bit TTB1 region: VA 0xFFFF_FF80_0000_1000 is offset 0x1000 in it.
  hi.map(0x1000, 0x30_0000, 3, s1Attrs());
  const cd = fx.alloc.alloc(64, 64);
  writeWords(
    fx.memory,
    cd,
    cdWords({ asid: 4, ttb0: lo.root, t1sz: 25, tg1: 2, epd1: false, ttb1: hi.root, tbi1: true }),
  );
  fx.driver.writeSte(8, { config: 0b101, cdTable: cd });
  fx.driver.submit([cmd.cfgiSte(8)]);
  const v = (x: bigint): number => {
    const r = fx.smmu.translateVa64(8, -1, x, ACCESS_READ);
    return typeof r === "number" ? r : -r.code;
  };
  assert.equal(v(0x1000n), 0x20_0000);
  assert.equal(v(0xffff_ff80_0000_1008n), 0x30_0008);
  assert.equal(v(0x00ff_ff80_0000_1008n), 0x30_0008, "TBI1 ignores the top byte");
  assert.equal(v(0xffff_ff00_0000_1000n), -EVT.F_TRANSLATION, "below the 39-bit TTB1 region");
  assert.equal(v(0x0100_0000_0000_1000n), -EVT.F_TRANSLATION, "TBI0 off: top byte must be zero");
  // TTB0 and TTB1 entries of the same ASID live apart in the IOTLB.
  fx.driver.submit([cmd.tlbiNhVa(0, 4, 0x1000)]);
  assert.equal(v(0xffff_ff80_0000_1008n), 0x30_0008);
  fx.driver.drainEvents();
});

test("8-bit ASIDs (IDR0.ASID16=0): CD.ASID[15:8] != 0 is ILLEGAL (5.4.2)", () => {
  const fx = ready({ features: { asid16: false } });
  const bad = attachS1(fx, 9, { asid: 0x1203 });
  bad.map(0x1000, 0x20_0000, 3, s1Attrs());
  assert.equal(pa(fx, 9, 0x1000), -EVT.C_BAD_CD);
  const pt = attachS1(fx, 8, { asid: 0x03 });
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  assert.equal(pa(fx, 8, 0x1000), 0x20_0000);
  pt.unmap(0x1000, 3);
  // TLBI ASID[15:8] is RES0 with 8-bit ASIDs; this model matches on ASID[7:0] (4.4).
  fx.driver.submit([cmd.tlbiNhAsid(0, 0x03)]);
  assert.equal(pa(fx, 8, 0x1000), -EVT.F_TRANSLATION);
  fx.driver.drainEvents();
});

test("stage-2 start levels (S2SL0) and concatenated first-level tables", () => {
  assert.equal(stage2StartLevel(12, 0), 2);
  assert.equal(stage2StartLevel(12, 2), 0);
  assert.equal(stage2StartLevel(16, 0), 3);
  assert.equal(stage2StartLevel(12, 3), -1);
  // 4K, 40-bit IPA starting at level 1: 1 concatenated-ready table of 2 pages (10 bits).
  assert.ok(stage2LevelConsistent(12, 40, 1));
  // 4K, 34-bit IPA starting at level 2 would need 16 concatenated tables: allowed.
  assert.ok(stage2LevelConsistent(12, 34, 2));
  assert.ok(!stage2LevelConsistent(12, 35, 2));
  const fx = ready();
  const pt = new PageTables(fx.alloc, 12, 34, 2); // 16 concatenated level-2 tables
  pt.map(0x3_0000_0000 + 0x5000, 0x20_0000, 3, s2Attrs());
  fx.driver.writeSte(16, { config: 0b110, vmid: 2, s2t0sz: 30, s2sl0: 0, s2ttb: pt.root });
  fx.driver.submit([cmd.cfgiSte(16)]);
  assert.equal(pa(fx, 16, 0x3_0000_5010), 0x20_0010);
});

test("stage-2 only with a 64 KiB granule and S2AP permissions", () => {
  const fx = ready();
  const pt = new PageTables(fx.alloc, 16, 42, 2);
  pt.map(0x3_0000, 0x20_0000, 3, s2Attrs({ s2ap: 0b01 }));
  fx.driver.writeSte(16, { config: 0b110, vmid: 2, s2t0sz: 22, s2sl0: 1, s2tg: 1, s2ttb: pt.root });
  fx.driver.submit([cmd.cfgiSte(16)]);
  assert.equal(pa(fx, 16, 0x3_fff0), 0x20_fff0);
  assert.equal(pa(fx, 16, 0x3_0000, true), -EVT.F_PERMISSION);
  fx.driver.drainEvents();
});

test("nested: stage-1 output and every stage-1 table address go through stage 2", () => {
  const fx = ready();
  // The guest's IPA space sits 1 GiB above PA: stage 2 maps IPA [1G, 2G) -> PA [0, 1G).
  const G = 2 ** 30;
  const s2 = new PageTables(fx.alloc, 12, 40, 1);
  s2.map(G, 0, 1, s2Attrs());
  const s1 = new PageTables(fx.alloc, 12, 48);
  s1.map(0x7000, G + 0x10_0000, 3, s1Attrs()); // output IPA 1G + 1M -> PA 1M
  // Table descriptors hold IPAs: add 1 GiB to each next-level pointer (collect slots first).
  const slots = [0, 1, 2].map((level) => s1.slot(0x7000, level));
  for (const slot of slots) {
    const lo = fx.memory.readU32(slot);
    const hi = fx.memory.readU32(slot + 4);
    const next = hi * 2 ** 32 + lo + G;
    fx.memory.writeU32(slot, next % 2 ** 32);
    fx.memory.writeU32(slot + 4, Math.floor(next / 2 ** 32));
  }
  const cd = fx.alloc.alloc(64, 64);
  writeWords(fx.memory, cd, cdWords({ asid: 6, ttb0: s1.root + G }));
  fx.driver.writeSte(8, { config: 0b111, cdTable: cd + G, vmid: 7, s2t0sz: 24, s2sl0: 1, s2ttb: s2.root });
  fx.driver.submit([cmd.cfgiSte(8)]);
  assert.equal(pa(fx, 8, 0x7040), 0x10_0040);
  // A stage-2 change reaches combined entries after TLBI_S2_IPA + TLBI_NH_ALL (4.4.3.1).
  s2.map(G, 0, 1, s2Attrs({ s2ap: 0b01 }));
  assert.equal(pa(fx, 8, 0x7040, true), 0x10_0040, "cached until invalidated");
  fx.driver.submit([cmd.tlbiS2Ipa(7, G + 0x10_0000), cmd.tlbiNhAll(7)]);
  assert.equal(pa(fx, 8, 0x7040, true), -EVT.F_PERMISSION);
  const [e] = fx.driver.drainEvents();
  assert.equal(e.s2, true);
  assert.equal(e.ipa, G + 0x10_0000);
});

test("host stage 2: output goes through the host's IPA -> PA map; its faults go to the host only", () => {
  let hs2: HostStage2 | undefined;
  const fx = ready({
    sids: [8],
    assigned: [8],
    hostStage2: () => {
      hs2 = new HostStage2(new VfioType1Container());
      hs2.map(0, 0, 16 << 20, PERM_RW); // guest RAM [0, 16M) identity
      return hs2;
    },
  });
  const pt = attachS1(fx, 8);
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  pt.map(0x2000, 20 << 20, 3, s1Attrs()); // IPA outside the host map
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
  assert.equal(dma.writeUint(0x1000, 4, 5), null);
  assert.notEqual(dma.readUint(0x2000, 4), 0);
  assert.equal(dma.lastFault?.reason, "unmapped");
  assert.equal(fx.driver.drainEvents().length, 0, "the guest sees no event for a host stage-2 fault");
  assert.equal(fx.backend.hostFaultCount, 1);
  assert.equal(fx.viommu.stats().hostFaults, 1);
  // The host unmapping memory drops cached translations at once.
  assert.equal(dma.readUint(0x1000, 4), 5);
  hs2?.unmap(0, 16 << 20);
  assert.equal(dma.readUint(0x1000, 4), -1);
});

test("DMA through the model: a 3-page write crossing pages lands in three different frames", () => {
  const fx = ready();
  const pt = attachS1(fx, 8);
  const frames = [0x60_0000, 0x20_3000, 0x41_1000];
  for (const [i, f] of frames.entries()) pt.map(0x10_0000 + i * 4096, f, 3, s1Attrs());
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
  const buf = new Uint8Array(3 * 4096 - 100).map((_, i) => i & 0xff);
  assert.equal(dma.write(0x10_0000 + 50, buf), null);
  assert.equal(fx.memory.readU8(frames[0] + 50), 0);
  assert.equal(fx.memory.readU8(frames[1]), (4096 - 50) & 0xff);
  assert.equal(fx.memory.readU8(frames[2]), (2 * 4096 - 50) & 0xff);
});

test("STE.Config bypass: output = input for the whole 48-bit range", () => {
  const fx = ready();
  fx.driver.writeSte(8, { config: 0b100 });
  fx.driver.submit([cmd.cfgiSte(8)]);
  assert.equal(pa(fx, 8, 0x1234_5678), 0x1234_5678);
  assert.equal(pa(fx, 8, 2 ** 48 - 8), 2 ** 48 - 8);
});

test("2-level CD table with 64 KiB leaves (S1Fmt 0b10): SSID[9:0] indexes the leaf", () => {
  const fx = ready();
  const l1 = fx.alloc.alloc(64 * 8, 512);
  const leaf = fx.alloc.alloc(64 * 1024, 64 * 1024);
  const pt = new PageTables(fx.alloc, 12, 48);
  pt.map(0x9000, 0x20_0000, 3, s1Attrs());
  // SSID 1500 = L1 index 1, leaf index 476.
  fx.memory.writeU32(l1 + 8, leaf | 1);
  writeWords(fx.memory, leaf + 476 * 64, cdWords({ asid: 9, ttb0: pt.root }));
  fx.driver.writeSte(8, { config: 0b101, cdTable: l1, s1CdMax: 12, s1Fmt: 2 });
  fx.driver.submit([cmd.cfgiSte(8)]);
  const t = new Translation();
  assert.equal(fx.smmu.substream(1500).translate(8, 0x9010, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x9010 - t.iovaBase), 0x20_0010);
});

test("2-level CD table above 2 GiB (5.4.1): L1CD.L2Ptr bit 31 is an address bit", () => {
  const fx = ready({ ramGpa: 0x8000_0000 });
  const l1 = fx.alloc.alloc(64 * 8, 512);
  const leaf = fx.alloc.alloc(4096, 4096);
  const pt = new PageTables(fx.alloc, 12, 48);
  const page = fx.alloc.alloc(4096);
  pt.map(0x9000, page, 3, s1Attrs());
  // S1Fmt 0b01 (4 KiB leaves of 64 CDs): SSID 70 = L1 index 1, leaf index 6.
  fx.memory.writeU32(l1 + 8, (leaf | 1) >>> 0);
  writeWords(fx.memory, leaf + 6 * 64, cdWords({ asid: 9, ttb0: pt.root }));
  fx.driver.writeSte(8, { config: 0b101, cdTable: l1, s1CdMax: 12, s1Fmt: 1 });
  fx.driver.submit([cmd.cfgiSte(8)]);
  const t = new Translation();
  assert.equal(fx.smmu.substream(70).translate(8, 0x9010, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x9010 - t.iovaBase), page + 0x10);
});

for (const split of [6, 10]) {
  test(`2-level stream table with SPLIT=${split}`, () => {
    const fx = makeFixture();
    fx.driver.split = split;
    fx.driver.probe({ twoLevel: true });
    const pt = attachS1(fx, 300);
    pt.map(0x1000, 0x20_0000, 3, s1Attrs());
    assert.equal(pa(fx, 300, 0x1010), 0x20_0010);
  });
}
