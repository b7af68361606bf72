import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE, type Access } from "../../src/engine/access.ts";
import { Translation } from "../../src/engine/translation.ts";
import { CLASS_CD, CLASS_IN, CLASS_TT, EVT, type EventRecord } from "../../src/smmuv3/events.ts";
import { GERROR_EVENTQ_ABT, REG } from "../../src/smmuv3/regs.ts";
import {
  attachS1,
  attachS2,
  type CdFields,
  cdWords,
  cmd,
  type Fixture,
  makeFixture,
  PageTables,
  ready,
  type SteFields,
  s1Attrs,
  s2Attrs,
  writeWords,
} from "./harness.ts";

/** Performs one access; returns the fault code (0 on success) and the events it produced. */
function access(
  fx: Fixture,
  sid: number,
  iova: number,
  kind: Access = ACCESS_READ,
  ssid = -1,
): { code: number; events: EventRecord[] } {
  const t = new Translation();
  const tr = ssid >= 0 ? fx.smmu.substream(ssid) : fx.smmu;
  const f = tr.translate(sid, iova, kind, t);
  return { code: f === null ? 0 : f.code, events: fx.driver.drainEvents() };
}

function expectEvent(
  fx: Fixture,
  sid: number,
  iova: number,
  type: number,
  kind: Access = ACCESS_READ,
  ssid = -1,
): EventRecord {
  const { code, events } = access(fx, sid, iova, kind, ssid);
  assert.equal(code, type, `fault code 0x${code.toString(16)}`);
  assert.equal(events.length, 1, `one event, got ${events.map((e) => e.type)}`);
  assert.equal(events[0].type, type);
  assert.equal(events[0].streamId, sid);
  return events[0];
}

/** Writes a raw STE for `sid` and invalidates it. */
function ste(fx: Fixture, sid: number, f: SteFields): void {
  fx.driver.writeSte(sid, f);
  fx.driver.submit([cmd.cfgiSte(sid)]);
}

/** A stage-1 stream whose CD is `cd` (merged over a valid 4K/48-bit CD). */
function withCd(
  fx: Fixture,
  sid: number,
  cd: Partial<CdFields>,
  steExtra: Partial<SteFields> = {},
): PageTables {
  const pt = new PageTables(fx.alloc, 12, 48);
  const cdGpa = fx.alloc.alloc(64, 64);
  writeWords(fx.memory, cdGpa, cdWords({ asid: 1, ttb0: pt.root, ...cd }));
  ste(fx, sid, { config: 0b101, cdTable: cdGpa, ...steExtra });
  return pt;
}

test("C_BAD_STREAMID: StreamID beyond STRTAB_BASE_CFG.LOG2SIZE", () => {
  const fx = ready({}, { sidBits: 8, twoLevel: false });
  expectEvent(fx, 300, 0, EVT.C_BAD_STREAMID);
});

test("C_BAD_STREAMID: 2-level table with an invalid L1 descriptor (Span 0)", () => {
  const fx = ready({}, { twoLevel: true });
  expectEvent(fx, 300, 0, EVT.C_BAD_STREAMID);
});

test("C_BAD_STREAMID: a StreamID outside the guest's vSID table", () => {
  const fx = ready();
  expectEvent(fx, 1234, 0, EVT.C_BAD_STREAMID);
});

test("F_STE_FETCH: the STE cannot be fetched; FetchAddr is the STE address", () => {
  const fx = makeFixture();
  const { smmu } = fx;
  const evq = fx.alloc.alloc(32 * 16, 512);
  smmu.writeWide(REG.STRTAB_BASE, 0x100_0000_0000n);
  smmu.write(REG.STRTAB_BASE_CFG, 4, 10);
  smmu.writeWide(REG.EVENTQ_BASE, BigInt(evq + 4));
  smmu.write(REG.CR0, 4, (1 << 2) | 1);
  fx.driver.eventq = evq;
  fx.driver.eventqLog2 = 4;
  const e = expectEvent(fx, 9, 0, EVT.F_STE_FETCH);
  assert.equal(e.fetchAddr, 0x100_0000_0000 + 9 * 64);
});

const BAD_STES: [string, SteFields][] = [
  ["V=0", { config: 0b101, valid: false }],
  ["reserved Config 0b001", { config: 0b001 }],
  ["reserved Config 0b011", { config: 0b011 }],
  ["S2AA64=0", { config: 0b110, s2aa64: false, s2t0sz: 24, s2sl0: 1 }],
  ["S2ENDI=1", { config: 0b110, s2endi: true, s2t0sz: 24, s2sl0: 1 }],
  ["S2S=1 without stall support", { config: 0b110, s2s: true, s2t0sz: 24, s2sl0: 1 }],
  ["S2TG reserved", { config: 0b110, s2tg: 3, s2t0sz: 24, s2sl0: 1 }],
  ["S2T0SZ below 16", { config: 0b110, s2t0sz: 8, s2sl0: 2 }],
  ["S2T0SZ above 39", { config: 0b110, s2t0sz: 40, s2sl0: 0 }],
  ["S2SL0 inconsistent with S2T0SZ", { config: 0b110, s2t0sz: 34, s2sl0: 2 }],
  ["S2SL0 reserved for 4K", { config: 0b110, s2t0sz: 24, s2sl0: 3 }],
  ["S1CDMax above SSIDSIZE", { config: 0b101, s1CdMax: 21 }],
  ["S1Fmt reserved", { config: 0b101, s1CdMax: 2, s1Fmt: 3 }],
  ["S1DSS reserved", { config: 0b101, s1CdMax: 2, s1Dss: 3 }],
  ["STRW EL2 without Hyp", { config: 0b101, strw: 2 }],
  ["S1STALLD=1 without stall support", { config: 0b101, s1stalld: true }],
  ["S2HA=1 without HTTU", { config: 0b110, s2t0sz: 24, s2sl0: 1, s2ha: true }],
  ["S2TTB misaligned to the first-level table", { config: 0b110, s2t0sz: 24, s2sl0: 1, s2ttb: 0x10_1000 }],
  ["S2TTB beyond S2PS (7.3.14)", { config: 0b110, s2t0sz: 24, s2sl0: 1, s2ps: 0, s2ttb: 2 ** 33 }],
];

for (const [why, f] of BAD_STES) {
  test(`C_BAD_STE: ${why}`, () => {
    const fx = ready();
    ste(fx, 8, f);
    expectEvent(fx, 8, 0x1000, EVT.C_BAD_STE);
  });
}

test("STE.Config abort terminates traffic without an event", () => {
  const fx = ready();
  ste(fx, 8, { config: 0 });
  const { code, events } = access(fx, 8, 0x1000);
  assert.equal(code, 0);
  assert.equal(events.length, 0);
  assert.notEqual(fx.smmu.translate(8, 0x1000, ACCESS_READ, new Translation()), null);
});

test("C_BAD_SUBSTREAMID: SubstreamID on a stream with S1CDMax=0", () => {
  const fx = ready();
  attachS1(fx, 8).map(0, 0x20_0000, 3, s1Attrs());
  const e = expectEvent(fx, 8, 0, EVT.C_BAD_SUBSTREAMID, ACCESS_READ, 3);
  assert.equal(e.ssv, false, "C_BAD_SUBSTREAMID has no SSV bit (7.3.9)");
  assert.equal(e.substreamId, 3);
});

test("C_BAD_SUBSTREAMID: SubstreamID >= 2^S1CDMax", () => {
  const fx = ready();
  withCd(fx, 8, {}, { s1CdMax: 2, s1Dss: 0b10 });
  expectEvent(fx, 8, 0, EVT.C_BAD_SUBSTREAMID, ACCESS_READ, 4);
});

test("F_STREAM_DISABLED: SubstreamID 0 while S1DSS reserves CD 0 for non-substream traffic (7.3.7)", () => {
  const fx = ready();
  withCd(fx, 8, {}, { s1CdMax: 2, s1Dss: 0b10 });
  const e = expectEvent(fx, 8, 0, EVT.F_STREAM_DISABLED, ACCESS_READ, 0);
  assert.equal(e.ssv, true);
});

test("C_BAD_SUBSTREAMID: an L1CD whose L2Ptr is beyond the address size (7.3.9)", () => {
  const fx = ready();
  const l1 = fx.alloc.alloc(64 * 8, 512);
  fx.memory.writeU32(l1 + 8, 1);
  fx.memory.writeU32(l1 + 12, 0x1_0000); // L2Ptr bit 48
  ste(fx, 8, { config: 0b101, cdTable: l1, s1CdMax: 12, s1Fmt: 1 });
  expectEvent(fx, 8, 0, EVT.C_BAD_SUBSTREAMID, ACCESS_READ, 100);
});

test("C_BAD_STREAMID is recorded only while CR2.RECINVSID == 1 (7.3.3)", () => {
  const fx = ready();
  fx.smmu.write(REG.CR0, 4, 0);
  fx.smmu.write(REG.CR2, 4, 0);
  fx.smmu.write(REG.CR0, 4, 0b1101);
  const { code, events } = access(fx, 1234, 0);
  assert.equal(code, EVT.C_BAD_STREAMID);
  assert.equal(events.length, 0);
});

test("C_BAD_SUBSTREAMID: SubstreamID on a bypass stream", () => {
  const fx = ready();
  ste(fx, 8, { config: 0b100 });
  expectEvent(fx, 8, 0, EVT.C_BAD_SUBSTREAMID, ACCESS_READ, 1);
});

test("C_BAD_SUBSTREAMID: 2-level CD table with an invalid L1CD", () => {
  const fx = ready();
  const l1 = fx.alloc.alloc(64 * 8, 512);
  ste(fx, 8, { config: 0b101, cdTable: l1, s1CdMax: 12, s1Fmt: 1 });
  expectEvent(fx, 8, 0, EVT.C_BAD_SUBSTREAMID, ACCESS_READ, 100);
});

test("2-level CD table (S1Fmt 4K leaves): the SubstreamID selects L1CD then the CD", () => {
  const fx = ready();
  const l1 = fx.alloc.alloc(64 * 8, 512);
  const leaf = fx.alloc.alloc(4096);
  const pt = new PageTables(fx.alloc, 12, 48);
  pt.map(0x9000, 0x20_0000, 3, s1Attrs());
  // SSID 100 = L1 index 1, leaf index 36.
  fx.memory.writeU32(l1 + 8, leaf | 1);
  writeWords(fx.memory, leaf + 36 * 64, cdWords({ asid: 9, ttb0: pt.root }));
  ste(fx, 8, { config: 0b101, cdTable: l1, s1CdMax: 12, s1Fmt: 1 });
  assert.equal(access(fx, 8, 0x9000, ACCESS_READ, 100).code, 0);
});

test("F_STREAM_DISABLED: no SubstreamID while S1DSS terminates", () => {
  const fx = ready();
  withCd(fx, 8, {}, { s1CdMax: 2, s1Dss: 0b00 });
  expectEvent(fx, 8, 0, EVT.F_STREAM_DISABLED);
});

test("S1DSS bypass: a transaction without SubstreamID skips stage 1", () => {
  const fx = ready();
  withCd(fx, 8, {}, { s1CdMax: 2, s1Dss: 0b01 });
  const t = new Translation();
  assert.equal(fx.smmu.translate(8, 0x1234, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x1234 - t.iovaBase), 0x1234);
});

test("F_CD_FETCH: the CD cannot be fetched; FetchAddr is the CD address", () => {
  const fx = ready();
  ste(fx, 8, { config: 0b101, cdTable: 0x10_0000_0000 });
  const e = expectEvent(fx, 8, 0, EVT.F_CD_FETCH);
  assert.equal(e.fetchAddr, 0x10_0000_0000);
});

const BAD_CDS: [string, Partial<CdFields>][] = [
  ["V=0", { valid: false }],
  ["AA64=0", { aa64: false }],
  ["ENDI=1", { endi: true }],
  ["TG0 reserved", { tg0: 3 }],
  ["T0SZ above 39", { t0sz: 40 }],
  ["T0SZ below 16", { t0sz: 15 }],
  ["TG1 reserved with EPD1=0", { epd1: false, tg1: 0 }],
  ["TTB0 beyond IPS (7.3.14)", { ips: 0, ttb0: 2 ** 33 }],
  ["A=0 with TERM_MODEL=1", { abort: false }],
  ["S=1 without stall support", { stall: true }],
  ["HA=1 without HTTU", { ha: true }],
];

for (const [why, f] of BAD_CDS) {
  test(`C_BAD_CD: ${why}`, () => {
    const fx = ready();
    withCd(fx, 8, f);
    expectEvent(fx, 8, 0x1000, EVT.C_BAD_CD);
  });
}

test("F_WALK_EABT: a table descriptor fetch aborts; FetchAddr is the descriptor address", () => {
  const fx = ready();
  withCd(fx, 8, { ttb0: 0x100_0000 * 16 }); // 256 MiB: beyond the 32 MiB of RAM
  const e = expectEvent(fx, 8, 0x1000, EVT.F_WALK_EABT);
  assert.equal(e.fetchAddr, 0x1000_0000);
  assert.equal(e.s2, false);
  assert.equal(e.cls, CLASS_TT, "a stage-1 descriptor abort is CLASS TT (7.3.12)");
});

test("F_TRANSLATION: invalid descriptor, VA beyond T0SZ, EPD0, reserved level-3 encoding, level-0 block", () => {
  const fx = ready();
  const small = new PageTables(fx.alloc, 12, 39);
  withCd(fx, 8, { t0sz: 25, ttb0: small.root });
  const e = expectEvent(fx, 8, 0x2000, EVT.F_TRANSLATION);
  assert.equal(e.inputAddr, 0x2000n);
  expectEvent(fx, 8, 2 ** 39, EVT.F_TRANSLATION);
  small.setRaw(0x3000, 3, 0x20_0000 | (1 << 10) | 1, 0); // bit 1 clear at level 3
  expectEvent(fx, 8, 0x3000, EVT.F_TRANSLATION);
  withCd(fx, 9, { epd0: true });
  expectEvent(fx, 9, 0x1000, EVT.F_TRANSLATION);
  const big = new PageTables(fx.alloc, 12, 48);
  big.setRaw(0, 0, (1 << 10) | 1, 0); // block at level 0
  withCd(fx, 16, { ttb0: big.root });
  expectEvent(fx, 16, 0x1000, EVT.F_TRANSLATION);
});

test("F_ADDR_SIZE: output beyond CD.IPS, descriptor OA[51:48] set, bypass input beyond OAS", () => {
  const fx = ready();
  const pt = new PageTables(fx.alloc, 12, 48);
  pt.map(0x1000, 2 ** 33, 3, s1Attrs());
  pt.setRaw(0x2000, 3, 0x20_0000 | s1Attrs().lo | 3, 1 << 16);
  withCd(fx, 8, { ips: 0, ttb0: pt.root });
  expectEvent(fx, 8, 0x1000, EVT.F_ADDR_SIZE);
  withCd(fx, 9, { ips: 5, ttb0: pt.root });
  expectEvent(fx, 9, 0x2000, EVT.F_ADDR_SIZE);
  ste(fx, 16, { config: 0b100 });
  const f = fx.smmu.translateVa64(16, -1, 1n << 50n, ACCESS_READ);
  assert.equal(typeof f === "number" ? 0 : f.code, EVT.F_ADDR_SIZE);
  assert.equal(fx.driver.drainEvents()[0].type, EVT.F_ADDR_SIZE);
});

test("F_ACCESS: AF=0 faults unless CD.AFFD", () => {
  const fx = ready();
  const pt = withCd(fx, 8, {});
  pt.map(0x1000, 0x20_0000, 3, s1Attrs({ af: false }));
  expectEvent(fx, 8, 0x1000, EVT.F_ACCESS);
  withCd(fx, 9, { affd: true, ttb0: pt.root });
  assert.equal(access(fx, 9, 0x1000).code, 0);
});

test("F_PERMISSION: AP read-only write, AP without EL0 access for an unprivileged stream", () => {
  const fx = ready();
  const pt = withCd(fx, 8, {});
  pt.map(0x1000, 0x20_0000, 3, s1Attrs({ ap: 0b11 }));
  pt.map(0x2000, 0x20_0000, 3, s1Attrs({ ap: 0b00 }));
  const e = expectEvent(fx, 8, 0x1000, EVT.F_PERMISSION, ACCESS_WRITE);
  assert.equal(e.rnw, false);
  assert.equal(e.s2, false);
  expectEvent(fx, 8, 0x2000, EVT.F_PERMISSION);
  // STE.PRIVCFG=privileged: AP=00 (EL1 read/write) now allows it, and the record says PnU.
  withCd(fx, 9, { ttb0: pt.root }, { privcfg: 0b11 });
  assert.equal(access(fx, 9, 0x2000, ACCESS_WRITE).code, 0);
  const p = expectEvent(fx, 9, 0x1000, EVT.F_PERMISSION, ACCESS_WRITE);
  assert.equal(p.pnu, true);
});

test("F_PERMISSION: APTable[1] forbids writes below it", () => {
  const fx = ready();
  const pt = withCd(fx, 8, {});
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  const l2 = pt.slot(0x1000, 2);
  fx.memory.writeU32(l2 + 4, fx.memory.readU32(l2 + 4) | (1 << 30));
  assert.equal(access(fx, 8, 0x1000).code, 0);
  expectEvent(fx, 8, 0x1000, EVT.F_PERMISSION, ACCESS_WRITE);
});

test("F_PERMISSION: instruction streams (INSTCFG) honour UXN, PXN and WXN; InD is recorded", () => {
  const fx = ready();
  const pt = withCd(fx, 8, {}, { instcfg: 0b11 });
  pt.map(0x1000, 0x20_0000, 3, s1Attrs({ uxn: true }));
  pt.map(0x2000, 0x20_0000, 3, s1Attrs({ ap: 0b11 }));
  const e = expectEvent(fx, 8, 0x1000, EVT.F_PERMISSION);
  assert.equal(e.ind, true);
  assert.equal(access(fx, 8, 0x2000).code, 0);
  withCd(fx, 9, { ttb0: pt.root }, { instcfg: 0b11, privcfg: 0b11 });
  pt.map(0x3000, 0x20_0000, 3, s1Attrs({ pxn: true }));
  expectEvent(fx, 9, 0x3000, EVT.F_PERMISSION);
  assert.equal(access(fx, 9, 0x2000).code, 0);
  pt.map(0x4000, 0x20_0000, 3, s1Attrs({ ap: 0b01 }));
  expectEvent(fx, 9, 0x4000, EVT.F_PERMISSION); // EL0-writable is never EL1-executable
  withCd(fx, 16, { ttb0: pt.root, wxn: true }, { instcfg: 0b11 });
  expectEvent(fx, 16, 0x4000, EVT.F_PERMISSION); // WXN: writable means execute-never
});

test("CD.R=0: stage-1 faults abort the access but record nothing", () => {
  const fx = ready();
  withCd(fx, 8, { record: false });
  const { code, events } = access(fx, 8, 0x5000);
  assert.equal(code, EVT.F_TRANSLATION);
  assert.equal(events.length, 0);
  assert.equal(fx.smmu.stats().unrecordedFaults, 1);
});

test("stage-2 faults carry S2=1, the IPA and CLASS=IN; STE.S2R=0 suppresses them", () => {
  const fx = ready();
  const pt = attachS2(fx, 16, 5);
  pt.map(0x8000, 0x20_0000, 3, s2Attrs({ s2ap: 0b01 }));
  const e = expectEvent(fx, 16, 0x9123, EVT.F_TRANSLATION);
  assert.equal(e.s2, true);
  assert.equal(e.cls, CLASS_IN);
  assert.equal(e.ipa, 0x9000);
  const p = expectEvent(fx, 16, 0x8010, EVT.F_PERMISSION, ACCESS_WRITE);
  assert.equal(p.s2, true);
  assert.equal(p.ipa, 0x8000);
  const beyond = expectEvent(fx, 16, 2 ** 40, EVT.F_TRANSLATION); // beyond S2T0SZ
  assert.equal(beyond.ipa, 2 ** 40);
  attachS2(fx, 9, 6, { s2r: false });
  const { code, events } = access(fx, 9, 0x1000);
  assert.equal(code, EVT.F_TRANSLATION);
  assert.equal(events.length, 0);
});

test("nested: a stage-1 table walk faulting at stage 2 reports S2=1, CLASS=TT and the table IPA", () => {
  const fx = ready();
  const s2 = new PageTables(fx.alloc, 12, 40, 1);
  const s1 = new PageTables(fx.alloc, 12, 48);
  const cd = fx.alloc.alloc(64, 64);
  writeWords(fx.memory, cd, cdWords({ asid: 2, ttb0: s1.root }));
  // Stage 2 maps the CD page (identity) but not the stage-1 root table.
  s2.map(cd - (cd % 4096), cd - (cd % 4096), 3, s2Attrs());
  fx.driver.writeSte(8, {
    config: 0b111,
    cdTable: cd,
    vmid: 3,
    s2t0sz: 24,
    s2sl0: 1,
    s2ttb: s2.root,
  });
  fx.driver.submit([cmd.cfgiSte(8)]);
  const e = expectEvent(fx, 8, 0x1000, EVT.F_TRANSLATION);
  assert.equal(e.s2, true);
  assert.equal(e.cls, CLASS_TT);
  assert.equal(e.ipa, s1.root);
  assert.equal(e.inputAddr, 0x1000n);
});

test("nested: a stage-2 Permission fault on a stage-1 table read reports CLASS=TT and TTRnW", () => {
  const fx = ready();
  const s2 = new PageTables(fx.alloc, 12, 40, 1);
  const s1 = new PageTables(fx.alloc, 12, 48);
  const cd = fx.alloc.alloc(64, 64);
  writeWords(fx.memory, cd, cdWords({ asid: 2, ttb0: s1.root }));
  s2.map(cd - (cd % 4096), cd - (cd % 4096), 3, s2Attrs());
  s2.map(s1.root, s1.root, 3, s2Attrs({ s2ap: 0b10 })); // write-only: table reads fault
  ste(fx, 8, { config: 0b111, cdTable: cd, vmid: 3, s2t0sz: 24, s2sl0: 1, s2ttb: s2.root });
  const e = expectEvent(fx, 8, 0x1000, EVT.F_PERMISSION);
  assert.equal(e.s2, true);
  assert.equal(e.cls, CLASS_TT);
  assert.equal(e.ttRead, true);
  assert.equal(e.ipa, s1.root);
});

test("stage 1 bypassed on a stage-2 stream: an input beyond the address size is F_ADDR_SIZE, S2=0", () => {
  const fx = ready();
  attachS2(fx, 16, 5);
  const f = fx.smmu.translateVa64(16, -1, 1n << 50n, ACCESS_READ);
  assert.equal(typeof f === "number" ? 0 : f.code, EVT.F_ADDR_SIZE);
  const [e] = fx.driver.drainEvents();
  assert.equal(e.s2, false);
  assert.equal(e.cls, CLASS_IN);
});

test("nested: a CD fetch faulting at stage 2 reports CLASS=CD", () => {
  const fx = ready();
  const s2 = new PageTables(fx.alloc, 12, 40, 1);
  ste(fx, 8, { config: 0b111, cdTable: 0x50_0000, vmid: 3, s2t0sz: 24, s2sl0: 1, s2ttb: s2.root });
  const e = expectEvent(fx, 8, 0x1000, EVT.F_TRANSLATION);
  assert.equal(e.s2, true);
  assert.equal(e.cls, CLASS_CD);
  assert.equal(e.ipa, 0x50_0000);
});

test("F_UUT: a device address that is not a 64-bit address", () => {
  const fx = ready();
  attachS1(fx, 8);
  const f = fx.smmu.translateVa64(8, -1, 1n << 64n, ACCESS_READ);
  assert.equal(typeof f === "number" ? 0 : f.code, EVT.F_UUT);
  assert.equal(fx.driver.drainEvents()[0].type, EVT.F_UUT);
  assert.equal(fx.smmu.translate(8, -4096, ACCESS_READ, new Translation())?.code, EVT.F_UUT);
});

test("event queue overflow (7.4): OVFLG toggles once per acknowledged overflow", () => {
  // A 4-entry queue (per-stream budget 2): three streams with two faults each overflow it by 2.
  const fx = ready({}, { eventqLog2: 2 });
  const sids = [8, 9, 16];
  for (const sid of sids) withCd(fx, sid, {});
  const flood = (): void => {
    for (const sid of sids)
      for (let i = 0; i < 2; i++) fx.smmu.translate(sid, 0x1000 * (i + 1), ACCESS_READ, new Translation());
  };
  flood();
  assert.equal(fx.smmu.read(REG.EVENTQ_PROD, 4) >>> 31, 1, "OVFLG set");
  assert.equal(fx.smmu.stats().eventQueue.lostOverflow, 2);
  assert.equal(fx.smmu.stats().eventQueue.lostRateLimited, 0);
  const events = fx.driver.drainEvents(); // copies OVFLG to OVACKFLG
  assert.equal(events.length, 4);
  assert.equal(fx.smmu.read(REG.EVENTQ_CONS, 4) >>> 31, 1);
  flood();
  assert.equal(fx.smmu.read(REG.EVENTQ_PROD, 4) >>> 31, 0, "a new overflow toggles OVFLG again");
  flood();
  assert.equal(fx.smmu.read(REG.EVENTQ_PROD, 4) >>> 31, 0, "no toggle before the guest acknowledges");
});

test("per-stream event budget: a flooding stream cannot starve another stream's events", () => {
  const fx = ready({ smmu: { eventsPerStream: 4 } }, { eventqLog2: 5 });
  withCd(fx, 8, {});
  withCd(fx, 9, {});
  for (let i = 0; i < 1000; i++) fx.smmu.translate(8, 0x1000 + i * 4096, ACCESS_READ, new Translation());
  fx.smmu.translate(9, 0x1000, ACCESS_READ, new Translation());
  const s = fx.smmu.stats().eventQueue;
  assert.equal(s.lostRateLimited, 996);
  assert.equal(s.rateLimitedByStream[8], 996);
  const events = fx.driver.drainEvents();
  assert.deepEqual(
    events.map((e) => e.streamId),
    [8, 8, 8, 8, 9],
  );
  assert.equal(fx.smmu.read(REG.EVENTQ_PROD, 4) >>> 31, 0, "no OVFLG: the queue was never full (7.4)");
  // Once consumed, the stream's budget is back.
  fx.smmu.translate(8, 0x1000, ACCESS_READ, new Translation());
  assert.equal(fx.driver.drainEvents().length, 1);
});

test("event merging (7.3.1): identical pending records of a STE.MEV=1 stream merge; MEV=0 never", () => {
  const fx = ready();
  withCd(fx, 8, {}, { mev: true });
  withCd(fx, 9, {});
  for (let i = 0; i < 5; i++) fx.smmu.translate(8, 0x7000 + i * 8, ACCESS_READ, new Translation());
  fx.smmu.translate(8, 0x8000, ACCESS_READ, new Translation()); // another page: not identical
  for (let i = 0; i < 3; i++) fx.smmu.translate(9, 0x7000, ACCESS_READ, new Translation());
  const events = fx.driver.drainEvents();
  assert.deepEqual(
    events.map((e) => [e.streamId, Number(e.inputAddr)]),
    [
      [8, 0x7000],
      [8, 0x8000],
      [9, 0x7000],
      [9, 0x7000],
      [9, 0x7000],
    ],
  );
  assert.equal(fx.smmu.stats().eventQueue.merged, 4);
  // Once the record is consumed, the next identical fault is recorded again.
  fx.smmu.translate(8, 0x7000, ACCESS_READ, new Translation());
  assert.equal(fx.driver.drainEvents().length, 1);
});

test("EVENTQ_ABT (7.2): an unwritable event queue raises GERROR.EVENTQ_ABT", () => {
  const fx = makeFixture();
  fx.driver.probe();
  withCd(fx, 8, {});
  fx.smmu.write(REG.CR0, 4, 0b1001);
  fx.smmu.writeWide(REG.EVENTQ_BASE, 0x4000_0000n | 4n);
  fx.smmu.write(REG.CR0, 4, 0b1101);
  fx.smmu.translate(8, 0x1000, ACCESS_READ, new Translation());
  assert.equal(
    (fx.smmu.read(REG.GERROR, 4) ^ fx.smmu.read(REG.GERRORN, 4)) & GERROR_EVENTQ_ABT,
    GERROR_EVENTQ_ABT,
  );
  assert.equal(fx.smmu.stats().eventQueue.lostAbort, 1);
});

test("events are discarded while EVENTQEN=0", () => {
  const fx = ready();
  withCd(fx, 8, {});
  fx.smmu.write(REG.CR0, 4, 0b1001);
  fx.smmu.translate(8, 0x1000, ACCESS_READ, new Translation());
  assert.equal(fx.smmu.stats().eventQueue.lostDisabled, 1);
});

test("event interrupt: wired pin when EVENTQ_IRQ_CFG0 is 0, memory write when it is RAM", () => {
  const fx = ready({}, { msi: false });
  withCd(fx, 8, {});
  fx.smmu.translate(8, 0x1000, ACCESS_READ, new Translation());
  assert.deepEqual(fx.sink.pinEdges.slice(-2), [
    { requesterId: 0xff, pin: 0, asserted: true },
    { requesterId: 0xff, pin: 0, asserted: false },
  ]);
  const cell = fx.alloc.alloc(4096);
  fx.smmu.write(REG.IRQ_CTRL, 4, 0);
  fx.smmu.writeWide(REG.EVENTQ_IRQ_CFG0, BigInt(cell));
  fx.smmu.write(REG.EVENTQ_IRQ_CFG1, 4, 0x5a5a);
  fx.smmu.write(REG.IRQ_CTRL, 4, 0b101);
  fx.smmu.translate(8, 0x2000, ACCESS_READ, new Translation());
  assert.equal(fx.memory.readU32(cell), 0x5a5a);
});

test("C_BAD_STREAMID for ever-new StreamIDs (7.3.3, 7.3.1): per-stream queue state is dropped once consumed", () => {
  const fx = ready({}, { eventqLog2: 4 });
  // CR2.RECINVSID is set by the driver: every refused CFGI_STE is recorded, then consumed.
  for (let batch = 0; batch < 40; batch++) {
    const cmds = [];
    for (let i = 0; i < 50; i++) cmds.push(cmd.cfgiSte(0x10_0000 + batch * 50 + i));
    fx.driver.submit(cmds);
    assert.ok(fx.driver.drainEvents().every((e) => e.type === EVT.C_BAD_STREAMID));
  }
  const s = fx.smmu.stats().eventQueue;
  assert.equal(s.written + s.lostOverflow, 2000);
  assert.ok(s.written >= 16 * 40);
  assert.equal(s.streamsTracked, 0, "nothing pending: no stream keeps merge state");
  // A stream with a pending record still merges an identical one (7.3.1).
  fx.driver.submit([cmd.cfgiSte(0x20_0000), cmd.cfgiSte(0x20_0000)]);
  assert.equal(fx.smmu.stats().eventQueue.streamsTracked, 1);
  assert.equal(fx.smmu.stats().eventQueue.merged, s.merged + 1);
  assert.equal(fx.driver.drainEvents().length, 1);
  assert.equal(fx.smmu.stats().eventQueue.streamsTracked, 0);
});

test("C_BAD_STE: a stage the SMMU does not implement (IDR0.S1P/S2P = 0, 5.2 STE.Config)", () => {
  const s2only = ready({ features: { stage1: false } });
  assert.equal(s2only.smmu.read(REG.IDR0, 4) & 3, 0b01, "S2P only");
  ste(s2only, 8, { config: 0b101 });
  expectEvent(s2only, 8, 0x1000, EVT.C_BAD_STE);
  const s1only = ready({ features: { stage2: false } });
  assert.equal(s1only.smmu.read(REG.IDR0, 4) & 3, 0b10, "S1P only");
  ste(s1only, 9, { config: 0b110, s2t0sz: 24, s2sl0: 1 });
  expectEvent(s1only, 9, 0x1000, EVT.C_BAD_STE);
  ste(s1only, 16, { config: 0b111, s2t0sz: 24, s2sl0: 1 });
  expectEvent(s1only, 16, 0x1000, EVT.C_BAD_STE);
});
