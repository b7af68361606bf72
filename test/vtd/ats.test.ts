/** Device-TLB support: ATS translation requests (VT-d 4.2.3) and their completions. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FR } from "../../src/vtd/fault-reasons.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { decodeFrcd, frcd, PageTable, rig } from "./guest.ts";

const SID = 0x0300;
const noopTlb = { invalidate: () => {} };

function legacyAts(tt: number) {
  const r = rig({ config: "device-iotlb=on" });
  r.driver.setRootTable(false);
  const pt = new PageTable(r.memory, r.alloc, 4);
  r.driver.setLegacyContext(SID, { did: 1, tt, slptptr: pt.root });
  r.unit.addEndpoint(SID, { ats: noopTlb });
  r.driver.setPersistent(GCMD.TE, true);
  return { ...r, pt };
}

test("translation request with TT=01 returns the translation and its permissions", () => {
  const { unit, pt } = legacyAts(1);
  pt.map(0x8000, 0x108000, 1, 1n);
  const c = unit.translationRequest(SID, 0x8123, false);
  assert.deepEqual(c, { status: "success", iovaBase: 0x8000, gpaBase: 0x108000, sizeBytes: 4096, perms: 1 });
  // A write request to a read-only page is still a successful completion (W=0), not a fault.
  const w = unit.translationRequest(SID, 0x8123, true);
  assert.equal(w.status, "success");
  assert.equal(unit.read(REG.FSTS, 4), 0);
});

test("translation request for a not-present page completes with R=W=0 and records no fault", () => {
  const { unit } = legacyAts(1);
  const c = unit.translationRequest(SID, 0x9000, false);
  assert.equal(c.status, "success");
  assert.equal(c.status === "success" && c.perms, 0);
  assert.equal(unit.read(REG.FSTS, 4), 0);
});

test("translation request with TT=00 is blocked: fault 0xD with AT=translation request, UR", () => {
  const { unit } = legacyAts(0);
  const c = unit.translationRequest(SID, 0x9000, false);
  assert.deepEqual(c, { status: "unsupported-request", reason: FR.TRANSLATION_BLOCKED });
  const rec = decodeFrcd(frcd(unit, 0));
  assert.equal(rec.reason, FR.TRANSLATION_BLOCKED);
  assert.equal(rec.at, 1);
});

test("translation request hitting reserved bits records the fault and completes with CA", () => {
  const { unit, pt } = legacyAts(1);
  pt.map(0x8000, 0x108000, 1, 3n | (1n << 62n));
  const c = unit.translationRequest(SID, 0x8000, false);
  assert.deepEqual(c, { status: "completer-abort", reason: FR.PAGING_ENTRY_RESERVED });
});

test("scalable mode: translation request while the context's DTE is clear faults 0x44", () => {
  const r = rig({ config: "device-iotlb=on,scalable-mode=on" });
  r.driver.setRootTable(true);
  const pt = new PageTable(r.memory, r.alloc, 4);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 2, did: 1, slptptr: pt.root });
  r.unit.addEndpoint(SID, { ats: noopTlb });
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(r.unit.translationRequest(SID, 0, false).status, "unsupported-request");
  assert.equal(decodeFrcd(frcd(r.unit, 0)).reason, FR.SM_CONTEXT_DTE_CLEAR);
});

test("an endpoint without a device-TLB gets Unsupported Request", () => {
  const r = rig({ config: "device-iotlb=on" });
  r.unit.addEndpoint(SID);
  assert.equal(r.unit.translationRequest(SID, 0, false).status, "unsupported-request");
});

test("an ATS endpoint needs device-iotlb=on", () => {
  assert.throws(() => rig().unit.addEndpoint(SID, { ats: noopTlb }), /device-iotlb=on/);
});

test("translated requests pass unchanged when the context allows device-TLBs (TT=01)", () => {
  const { unit, pt, memory } = legacyAts(1);
  pt.map(0x8000, 0x108000, 1, 3n);
  const c = unit.translationRequest(SID, 0x8000, true);
  assert.equal(c.status, "success");
  const translated = unit.translatedAddressSpace(SID);
  memory.writeU32(0x108000, 0x77);
  assert.equal(c.status === "success" && translated.readUint(c.gpaBase, 4), 0x77);
});

test("translated requests are blocked with TT=00 (fault 0xD, AT=translated)", () => {
  const r = rig({ config: "device-iotlb=on" });
  r.driver.setRootTable(false);
  const pt = new PageTable(r.memory, r.alloc, 4);
  r.driver.setLegacyContext(SID, { did: 1, tt: 0, slptptr: pt.root });
  r.unit.addEndpoint(SID, { ats: noopTlb });
  r.driver.setPersistent(GCMD.TE, true);
  const translated = r.unit.translatedAddressSpace(SID);
  assert.equal(translated.readUint(0x108000, 4), -1);
  const rec = decodeFrcd(frcd(r.unit, 0));
  assert.equal(rec.reason, FR.TRANSLATION_BLOCKED);
  assert.equal(rec.at, 2);
});

test("a write-only page is reported as W=1, R=0 (no fault)", () => {
  const { unit, pt } = legacyAts(1);
  pt.map(0x8000, 0x108000, 1, 2n);
  const c = unit.translationRequest(SID, 0x8000, false);
  assert.deepEqual(c, { status: "success", iovaBase: 0x8000, gpaBase: 0x108000, sizeBytes: 4096, perms: 2 });
  assert.equal(unit.read(REG.FSTS, 4), 0);
});

test("a translation request with a PASID outside 20 bits is Unsupported Request", () => {
  const { unit } = legacyAts(1);
  assert.equal(unit.translationRequest(SID, 0, false, 2 ** 20).status, "unsupported-request");
  assert.equal(unit.translationRequest(SID, 0, false, -5).status, "unsupported-request");
  assert.equal(unit.translationRequest(SID, 0, false, 1.5).status, "unsupported-request");
});
