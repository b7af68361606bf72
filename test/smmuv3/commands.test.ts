import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { Translation } from "../../src/engine/translation.ts";
import { EVT } from "../../src/smmuv3/events.ts";
import { CERROR_ABT, CERROR_ILL, GERROR_CMDQ_ERR, REG } from "../../src/smmuv3/regs.ts";
import {
  attachS1,
  attachS2,
  type Cmd,
  cdWords,
  cmd,
  type Fixture,
  ITS_DOORBELL,
  makeFixture,
  PageTables,
  ready,
  s1Attrs,
  s2Attrs,
  writeWords,
} from "./harness.ts";

function reads(fx: Fixture, sid: number, iova: number): boolean {
  return fx.smmu.translate(sid, iova, ACCESS_READ, new Translation()) === null;
}

test("PREFETCH_CONFIG and PREFETCH_ADDR are accepted and complete as no-ops (4.2)", () => {
  const fx = ready();
  const r = fx.driver.submit([
    [0x01, 8, 0, 0],
    [0x02, 8, 0x1000, 0],
  ]);
  assert.equal(r.consErr, 0);
  assert.equal(fx.smmu.stats().commands.PREFETCH_CONFIG, 1);
  assert.equal(fx.smmu.stats().commands.PREFETCH_ADDR, 1);
});

test("CFGI_STE (4.3.1): a changed STE is used only after CFGI_STE + CMD_SYNC", () => {
  const fx = ready();
  const pt = attachS1(fx, 8);
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  assert.ok(reads(fx, 8, 0x1000));
  fx.driver.writeSte(8, { config: 0 }); // abort
  assert.ok(reads(fx, 8, 0x1000), "cached STE still in use before CFGI_STE");
  fx.driver.submit([cmd.cfgiSte(8)]);
  assert.ok(!reads(fx, 8, 0x1000));
});

test("CFGI_STE_RANGE (4.3.2): invalidates 2^(Range+1) StreamIDs from SID aligned down", () => {
  const fx = ready();
  for (const sid of [8, 9, 16]) attachS1(fx, sid).map(0, 0x20_0000, 3, s1Attrs());
  for (const sid of [8, 9, 16]) {
    assert.ok(reads(fx, sid, 0));
    fx.driver.writeSte(sid, { config: 0 });
  }
  fx.driver.submit([[0x04, 9, 0, 0]]); // Range 0: SIDs 8 and 9
  assert.ok(!reads(fx, 8, 0));
  assert.ok(!reads(fx, 9, 0));
  assert.ok(reads(fx, 16, 0), "SID 16 is outside the range");
  fx.driver.submit([cmd.cfgiAll()]);
  assert.ok(!reads(fx, 16, 0), "CFGI_ALL (Range 31) reaches every stream");
});

test("CFGI_CD (4.3.3) drops one context descriptor; CFGI_CD_ALL (4.3.4) all of a stream", () => {
  const fx = ready();
  const pt = attachS1(fx, 8);
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  // Give stream 8 a 4-entry linear CD table with substreams 1 and 2.
  const cds = fx.alloc.alloc(4 * 64, 256);
  for (const ssid of [0, 1, 2])
    writeWords(fx.memory, cds + ssid * 64, cdWords({ asid: 10 + ssid, ttb0: pt.root }));
  fx.driver.writeSte(8, { config: 0b101, cdTable: cds, s1CdMax: 2, s1Dss: 0b10 });
  fx.driver.submit([cmd.cfgiSte(8)]);
  const t = new Translation();
  const ok = (ssid: number): boolean => fx.smmu.substream(ssid).translate(8, 0x1000, ACCESS_READ, t) === null;
  assert.ok(ok(1) && ok(2));
  writeWords(fx.memory, cds + 64, cdWords({ valid: false }));
  writeWords(fx.memory, cds + 128, cdWords({ valid: false }));
  assert.ok(ok(1), "cached CD in use until CFGI_CD");
  fx.driver.submit([cmd.cfgiCd(8, 1)]);
  assert.ok(!ok(1));
  assert.ok(ok(2));
  fx.driver.submit([cmd.cfgiCdAll(8)]);
  assert.ok(!ok(2));
  fx.driver.drainEvents();
});

test("TLBI_NH_ASID (4.4.3) drops exactly one ASID's translations", () => {
  const fx = ready();
  const a = attachS1(fx, 8, { asid: 1 });
  const b = attachS1(fx, 9, { asid: 2 });
  a.map(0x1000, 0x20_0000, 3, s1Attrs());
  b.map(0x1000, 0x21_0000, 3, s1Attrs());
  assert.ok(reads(fx, 8, 0x1000) && reads(fx, 9, 0x1000));
  a.unmap(0x1000, 3);
  b.unmap(0x1000, 3);
  assert.ok(reads(fx, 8, 0x1000), "stale until invalidated (the guest's duty)");
  fx.driver.submit([cmd.tlbiNhAsid(0, 1)]);
  assert.ok(!reads(fx, 8, 0x1000));
  assert.ok(reads(fx, 9, 0x1000), "ASID 2 untouched");
  fx.driver.submit([cmd.tlbiNhAll(0)]);
  assert.ok(!reads(fx, 9, 0x1000), "TLBI_NH_ALL (4.4.2) drops every ASID of the VMID");
});

test("TLBI_NH_ALL (4.4.2) leaves other VMIDs alone", () => {
  const fx = ready();
  attachS1(fx, 8, { vmid: 1 }).map(0, 0x20_0000, 3, s1Attrs());
  const b = attachS1(fx, 9, { vmid: 2 });
  b.map(0, 0x20_0000, 3, s1Attrs());
  assert.ok(reads(fx, 9, 0));
  b.unmap(0, 3);
  fx.driver.submit([cmd.tlbiNhAll(1)]);
  assert.ok(reads(fx, 9, 0));
  fx.driver.submit([cmd.tlbiNhAll(2)]);
  assert.ok(!reads(fx, 9, 0));
});

test("TLBI_NH_VA (4.4.4): one TLBI anywhere in a block drops every cached piece of it", () => {
  const fx = ready();
  // 16 KiB granule, 32 MiB block at level 2: cached as 2 MiB IOTLB pieces.
  const pt = attachS1(fx, 8, { granuleShift: 14, inputBits: 36, asid: 5 });
  pt.map(0x200_0000, 0x0, 2, s1Attrs());
  for (const off of [0, 0x20_0000, 0x1e0_0000]) assert.ok(reads(fx, 8, 0x200_0000 + off));
  assert.ok(fx.smmu.stats().iotlb.splitLeaves >= 1);
  pt.unmap(0x200_0000, 2);
  fx.driver.submit([cmd.tlbiNhVa(0, 5, 0x200_0000 + 0x100_0000)]);
  for (const off of [0, 0x20_0000, 0x1e0_0000]) assert.ok(!reads(fx, 8, 0x200_0000 + off), `offset ${off}`);
});

test("TLBI_NH_VA range form (4.4.1.1, RIL): (NUM+1) * 2^SCALE granules from Address", () => {
  const fx = ready();
  const pt = attachS1(fx, 8, { asid: 4 });
  for (let i = 0; i < 8; i++) pt.map(0x10_0000 + i * 4096, 0x20_0000 + i * 4096, 3, s1Attrs());
  for (let i = 0; i < 8; i++) assert.ok(reads(fx, 8, 0x10_0000 + i * 4096));
  for (let i = 0; i < 8; i++) pt.unmap(0x10_0000 + i * 4096, 3);
  // NUM=1, SCALE=1, TG=4K: 4 pages from 0x101000.
  const c: Cmd = [0x12 | (1 << 12) | (1 << 20), 4 << 16, 0x10_1000 | (1 << 10) | 1, 0];
  fx.driver.submit([c]);
  const still = [...Array(8).keys()].map((i) => reads(fx, 8, 0x10_0000 + i * 4096));
  assert.deepEqual(still, [true, false, false, false, false, true, true, true]);
});

test("TLBI_NH_VAA (4.4.5) drops the address in every ASID", () => {
  const fx = ready();
  const a = attachS1(fx, 8, { asid: 1 });
  const b = attachS1(fx, 9, { asid: 2 });
  a.map(0x3000, 0x20_0000, 3, s1Attrs());
  b.map(0x3000, 0x20_0000, 3, s1Attrs());
  b.map(0x4000, 0x20_0000, 3, s1Attrs());
  assert.ok(reads(fx, 8, 0x3000) && reads(fx, 9, 0x3000) && reads(fx, 9, 0x4000));
  a.unmap(0x3000, 3);
  b.unmap(0x3000, 3);
  fx.driver.submit([cmd.tlbiNhVaa(0, 0x3000)]);
  assert.ok(!reads(fx, 8, 0x3000) && !reads(fx, 9, 0x3000));
  assert.ok(reads(fx, 9, 0x4000));
});

test("TLBI_S2_IPA (4.4.7) and TLBI_S12_VMALL (4.4.6) drop stage-2 translations of the VMID", () => {
  const fx = ready();
  const pt = attachS2(fx, 16, 9);
  pt.map(0x5000, 0x22_0000, 3, s2Attrs());
  pt.map(0x6000, 0x23_0000, 3, s2Attrs());
  assert.ok(reads(fx, 16, 0x5000) && reads(fx, 16, 0x6000));
  pt.unmap(0x5000, 3);
  pt.unmap(0x6000, 3);
  fx.driver.submit([cmd.tlbiS2Ipa(9, 0x5000)]);
  assert.ok(!reads(fx, 16, 0x5000));
  assert.ok(reads(fx, 16, 0x6000));
  fx.driver.submit([cmd.tlbiS12Vmall(9)]);
  assert.ok(!reads(fx, 16, 0x6000));
});

test("TLBI_NH_VA / TLBI_NH_VAA / TLBI_S2_IPA (4.4.4, 4.4.5, 4.4.7): Address bit 31 is an address bit like the others", () => {
  const fx = ready();
  const s1 = attachS1(fx, 8, { asid: 6 });
  const s2 = attachS2(fx, 16, 9);
  for (const va of [0x8000_0000, 0xffff_f000, 0x1_8000_0000]) {
    s1.map(va, 0x20_0000, 3, s1Attrs());
    assert.ok(reads(fx, 8, va), `0x${va.toString(16)} mapped`);
    s1.unmap(va, 3);
    fx.driver.submit([cmd.tlbiNhVa(0, 6, va)]);
    assert.ok(!reads(fx, 8, va), `TLBI_NH_VA 0x${va.toString(16)}`);
    s1.map(va, 0x20_0000, 3, s1Attrs());
    assert.ok(reads(fx, 8, va));
    s1.unmap(va, 3);
    fx.driver.submit([cmd.tlbiNhVaa(0, va)]);
    assert.ok(!reads(fx, 8, va), `TLBI_NH_VAA 0x${va.toString(16)}`);
  }
  s2.map(0x8000_1000, 0x22_0000, 3, s2Attrs());
  assert.ok(reads(fx, 16, 0x8000_1000));
  s2.unmap(0x8000_1000, 3);
  fx.driver.submit([cmd.tlbiS2Ipa(9, 0x8000_1000)]);
  assert.ok(!reads(fx, 16, 0x8000_1000), "TLBI_S2_IPA 0x80001000");
});

test("TLBI_NSNH_ALL (4.4.8) drops every translation", () => {
  const fx = ready();
  const pt = attachS1(fx, 8);
  pt.map(0, 0x20_0000, 3, s1Attrs());
  assert.ok(reads(fx, 8, 0));
  pt.unmap(0, 3);
  fx.driver.submit([cmd.tlbiNsnhAll()]);
  assert.ok(!reads(fx, 8, 0));
  assert.equal(fx.smmu.stats().iotlb.entries, 0);
});

test("TLBI_NH_VA (4.4.2.4) also removes global (nG=0) entries cached under another ASID", () => {
  const fx = ready();
  const pt = attachS1(fx, 8, { asid: 1 });
  pt.map(0x6000, 0x20_0000, 3, s1Attrs({ global: true }));
  pt.map(0x7000, 0x21_0000, 3, s1Attrs());
  assert.ok(reads(fx, 8, 0x6000) && reads(fx, 8, 0x7000));
  pt.unmap(0x6000, 3);
  pt.unmap(0x7000, 3);
  fx.driver.submit([cmd.tlbiNhVa(0, 99, 0x6000)]);
  assert.ok(!reads(fx, 8, 0x6000), "global entry invalidated by a TLBI with another ASID");
  // Non-global entries of ASID 1 are outside ASID 99's required scope (over-invalidation of an
  // ASID that holds global entries is permitted, 4.4); ASID 1's own TLBI always reaches them.
  fx.driver.submit([cmd.tlbiNhVa(0, 1, 0x7000)]);
  assert.ok(!reads(fx, 8, 0x7000));
  fx.driver.drainEvents();
});

test("CFGI_CD with an out-of-range SubstreamID has no effect and is not an error (4.1.7)", () => {
  const fx = ready({ features: { ssidBits: 4 } });
  const r = fx.driver.submit([cmd.cfgiCd(8, 100)]);
  assert.equal(r.consErr, 0);
  assert.equal(fx.smmu.stats().commandErrors, 0);
});

const ILLEGAL: [string, Cmd][] = [
  ["opcode 0x00", [0x00, 0, 0, 0]],
  ["opcode 0x7f", [0x7f, 0, 0, 0]],
  ["TLBI_EL3_ALL (Non-secure queue)", [0x18, 0, 0, 0]],
  ["TLBI_EL3_VA", [0x1a, 0, 0, 0]],
  ["TLBI_EL2_ALL without Hyp", [0x20, 0, 0, 0]],
  ["TLBI_EL2_ASID without Hyp", [0x21, 0, 0, 0]],
  ["TLBI_EL2_VA without Hyp", [0x22, 0, 0, 0]],
  ["TLBI_EL2_VAA without Hyp", [0x23, 0, 0, 0]],
  ["ATC_INV without ATS", [0x40, 8, 0, 0]],
  ["PRI_RESP without PRI", [0x41, 8, 0, 0]],
  ["RESUME without stalls", [0x44, 8, 0, 0]],
  ["STALL_TERM without stalls", [0x45, 8, 0, 0]],
  ["CMD_SYNC with CS=0b11", [0x46 | (3 << 12), 0, 0, 0]],
  ["CFGI_STE with SSec=1", [0x03 | (1 << 10), 8, 0, 0]],
  ["TLBI_NH_VA with TG set and NUM=SCALE=TTL=0 (4.4.1.1)", [0x12, 1 << 16, (1 << 10) | 0x1000, 0]],
  ["TLBI_S2_IPA with TG=16K and TTL=0b01 without DS", [0x2a, 1, (2 << 10) | (1 << 8) | 0x4000, 0]],
  ["CFGI_VMS_PIDM without MPAM", [0x07, 0, 0, 0]],
  ["CMD_DPTI_ALL without DPT", [0x70, 0, 0, 0]],
];

for (const [what, bad] of ILLEGAL) {
  test(`illegal command (${what}): CERROR_ILL, GERROR.CMDQ_ERR, queue stops at it until GERRORN ack`, () => {
    const fx = ready();
    const before = fx.smmu.read(REG.CMDQ_CONS, 4) & 0xfffff;
    fx.driver.submit([cmd.tlbiNhAll(0), bad, cmd.tlbiNhAll(0)], "sev");
    const cons = fx.smmu.read(REG.CMDQ_CONS, 4);
    assert.equal((cons >>> 24) & 0x7f, CERROR_ILL);
    assert.equal(cons & 0xfffff, before + 1, "CONS points at the illegal command");
    const gerror = fx.smmu.read(REG.GERROR, 4);
    assert.equal((gerror ^ fx.smmu.read(REG.GERRORN, 4)) & GERROR_CMDQ_ERR, GERROR_CMDQ_ERR);
    // An interrupt went to the GERROR doorbell.
    assert.ok(fx.sink.msis.some((m) => m.vector === 1 && m.message.address === ITS_DOORBELL));
    // Nothing moves until the error is acknowledged.
    fx.smmu.pump();
    assert.equal(fx.smmu.read(REG.CMDQ_CONS, 4) & 0xfffff, before + 1);
    // Linux: replace the faulting command by a CMD_SYNC, then acknowledge in GERRORN.
    writeWords(fx.memory, fx.driver.cmdq + (before + 1) * 16, cmd.sync(0));
    fx.smmu.write(REG.GERRORN, 4, gerror);
    assert.equal(fx.smmu.read(REG.CMDQ_CONS, 4) & 0xfffff, fx.smmu.read(REG.CMDQ_PROD, 4));
    assert.equal(fx.smmu.stats().commands.TLBI_NH_ALL, 2, "the command after the bad one ran");
  });
}

test("CERROR_ABT (4.1.3) when a command cannot be fetched", () => {
  const fx = makeFixture();
  fx.smmu.writeWide(REG.CMDQ_BASE, BigInt(0x4000_0000 + 4)); // beyond RAM
  fx.smmu.write(REG.CR0, 4, 1 << 3);
  fx.smmu.write(REG.CMDQ_PROD, 4, 1);
  const cons = fx.smmu.read(REG.CMDQ_CONS, 4);
  assert.equal((cons >>> 24) & 0x7f, CERROR_ABT);
  assert.equal(cons & 0xfffff, 0);
});

test("commands beyond the per-access budget run on the next CONS poll or pump()", () => {
  const fx = makeFixture({ smmu: { commandBudget: 4 } });
  fx.driver.probe();
  const cmds = Array.from({ length: 10 }, () => cmd.tlbiNhAll(0));
  fx.driver.submit(cmds, "msi");
  assert.ok(fx.smmu.hasPendingCommands || fx.smmu.stats().commands.TLBI_NH_ALL === 10);
  while (fx.smmu.hasPendingCommands) fx.smmu.pump();
  assert.equal(fx.smmu.stats().commands.TLBI_NH_ALL, 10);
});

test("configuring a StreamID the guest does not own: C_BAD_STREAMID event and a host report", () => {
  const fx = ready();
  fx.driver.submit([cmd.cfgiSte(77), cmd.cfgiCd(78, 0)]);
  const events = fx.driver.drainEvents();
  assert.deepEqual(
    events.map((e) => [e.type, e.streamId]),
    [
      [EVT.C_BAD_STREAMID, 77],
      [EVT.C_BAD_STREAMID, 78],
    ],
  );
  assert.equal(fx.backend.violationCount, 2);
  assert.deepEqual(fx.backend.violations[0], {
    guestId: "guest0",
    physicalIommu: "psmmu0",
    vId: 77,
    action: "CFGI_STE",
  });
  assert.equal(fx.viommu.stats().violations, 2);
});

test("stage-1 invalidations are forwarded to the physical backend with pSIDs and counted", () => {
  const fx = ready({ assigned: [9] });
  const n0 = fx.backend.invalidationCount;
  fx.driver.submit([cmd.cfgiSte(9), cmd.cfgiSte(8), cmd.tlbiNhAsid(0, 3), cmd.tlbiNhVa(0, 3, 0x5000)]);
  const fwd = fx.backend.invalidations.slice(-3).map((x) => x.inv);
  assert.deepEqual(fwd, [
    { scope: "config", pId: 0x1009 },
    { scope: "asid", asid: 3 },
    { scope: "va", asid: 3, iova: 0x5000, sizeBytes: 0, leaf: true },
  ]);
  assert.equal(fx.backend.invalidationCount - n0, 3, "emulated SID 8 has nothing to forward");
  assert.equal(fx.backend.invalidations.at(-1)?.hostVmid, fx.viommu.hostVmid);
  assert.equal(fx.viommu.stats().forwardedInvalidations.asid, 1);
});

test("a DMA address space never keeps a translation past TLBI + CMD_SYNC (epoch)", () => {
  const fx = ready();
  const pt = attachS1(fx, 8);
  pt.map(0x7000, 0x20_0000, 3, s1Attrs());
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
  assert.equal(dma.readUint(0x7000, 4), 0);
  pt.map(0x7000, 0x30_0000, 3, s1Attrs());
  fx.memory.writeU32(0x30_0000, 0xaa);
  fx.driver.submit([cmd.tlbiNhVa(0, 1, 0x7000)]);
  assert.equal(dma.readUint(0x7000, 4), 0xaa);
});

test("CMD_SYNC SIG_IRQ (4.7.3): wired completion pulse always, MSI only for a non-zero MSIAddress", () => {
  const fx = ready();
  const edges = fx.sink.pinEdges.length;
  const msis = fx.sink.msis.length;
  fx.driver.submit([cmd.sync(1, 0, 0x77)], "sev");
  assert.equal(fx.sink.msis.length, msis, "MSIAddress 0: no MSI");
  assert.deepEqual(fx.sink.pinEdges.slice(edges).slice(0, 2), [
    { requesterId: 0xff, pin: 2, asserted: true },
    { requesterId: 0xff, pin: 2, asserted: false },
  ]);
  fx.driver.submit([cmd.sync(1, ITS_DOORBELL, 0x77)], "sev");
  assert.deepEqual(fx.sink.msis.at(-1), {
    requesterId: 0xff,
    message: { address: ITS_DOORBELL, data: 0x77 },
    vector: 2,
  });
});

test("TLB bookkeeping stays bounded as the guest cycles ASIDs with global leaves (4.4.2.4): TLBI cost does not grow", () => {
  const fx = ready({ smmu: { iotlbCapacity: 64 } });
  const pt = new PageTables(fx.alloc, 12, 48);
  pt.map(0x9000, 0x20_0000, 3, s1Attrs({ global: true }));
  const cd = fx.alloc.alloc(64, 64);
  writeWords(fx.memory, cd, cdWords({ asid: 0, ttb0: pt.root }));
  fx.driver.writeSte(8, { config: 0b101, cdTable: cd });
  fx.driver.submit([cmd.cfgiSte(8)]);
  for (let asid = 1; asid <= 1000; asid++) {
    writeWords(fx.memory, cd, cdWords({ asid, ttb0: pt.root }));
    fx.driver.submit([cmd.cfgiCd(8, 0)]);
    assert.ok(reads(fx, 8, 0x9000), `ASID ${asid}`);
  }
  const s = fx.smmu.stats().iotlb;
  assert.ok(s.entries <= 64);
  // Pruned to the tags with entries once past twice the capacity; a translation adds a few.
  assert.ok(s.liveTags <= 2 * 64 + 4, `liveTags ${s.liveTags}`);
  assert.ok(s.globalTags <= 2 * 64 + 4, `globalTags ${s.globalTags}`);
  // The cached global entry of the current ASID is still found by a TLBI_NH_VA of another ASID.
  pt.unmap(0x9000, 3);
  fx.driver.submit([cmd.tlbiNhVa(0, 7, 0x9000)]);
  assert.ok(!reads(fx, 8, 0x9000));
});
