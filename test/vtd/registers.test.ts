/** Conformance of the register file (VT-d 11.4): offsets, widths, RO / RW / W1C / reserved bits. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import { capRegister, ecapRegister, parseVtdConfig } from "../../src/vtd/config.ts";
import { ECTL, FSTS, GCMD, REG } from "../../src/vtd/registers.ts";
import { VtdUnit } from "../../src/vtd/vtd.ts";
import { rig } from "./guest.ts";

function unit(config = "intremap=on,eim=on,caching-mode=on,device-iotlb=on,scalable-mode=on,pasid=on") {
  return new VtdUnit(GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]), { config });
}

test("VER_REG reports 1.0 for legacy units and 3.0 with scalable mode (11.4.1)", () => {
  assert.equal(unit("").read(REG.VER, 4), 0x10);
  assert.equal(unit().read(REG.VER, 4), 0x30);
});

test("CAP_REG fields: ND, CM, SAGAW, MGAW, FRO, SLLPS, PSI, NFR, MAMV, FL5LP (11.4.2)", () => {
  const u = unit("caching-mode=on,aw-bits=57,scalable-mode=on");
  const cap = u.readWide(REG.CAP);
  assert.equal(cap, capRegister(parseVtdConfig("caching-mode=on,aw-bits=57,scalable-mode=on")));
  assert.equal(cap & 7n, 6n); // ND: 16-bit domain ids
  assert.equal((cap >> 7n) & 1n, 1n); // CM
  assert.equal((cap >> 8n) & 0x1fn, 0b1110n); // SAGAW 39/48/57
  assert.equal((cap >> 16n) & 0x3fn, 56n); // MGAW = 57 - 1
  assert.equal(((cap >> 24n) & 0x3ffn) * 16n, BigInt(REG.FRCD)); // FRO
  assert.equal((cap >> 34n) & 0xfn, 0b11n); // SLLPS 2M + 1G
  assert.equal((cap >> 39n) & 1n, 1n); // PSI
  assert.equal((cap >> 40n) & 0xffn, 3n); // NFR = 4 records
  assert.equal((cap >> 48n) & 0x3fn, 18n); // MAMV
  assert.equal((cap >> 60n) & 1n, 1n); // FL5LP
  assert.equal(cap >> 62n, 0n); // ESRTPS/ESIRTPS clear: the guest invalidates after SRTP/SIRTP
  assert.equal((cap >> 4n) & 1n, 0n); // RWBF absent: no write-buffer flushing needed
  assert.equal((cap >> 5n) & 3n, 0n); // no PLMR/PHMR
});

test("ECAP_REG fields follow the configuration (11.4.3)", () => {
  const e = unit().readWide(REG.ECAP);
  assert.equal(
    e,
    ecapRegister(
      parseVtdConfig("intremap=on,eim=on,caching-mode=on,device-iotlb=on,scalable-mode=on,pasid=on"),
    ),
  );
  assert.equal(e & 1n, 0n); // C: not coherent, the guest flushes
  assert.equal((e >> 1n) & 1n, 1n); // QI
  assert.equal((e >> 2n) & 1n, 1n); // DT
  assert.equal((e >> 3n) & 1n, 1n); // IR
  assert.equal((e >> 4n) & 1n, 1n); // EIM
  assert.equal(((e >> 8n) & 0x3ffn) * 16n, BigInt(REG.IVA)); // IRO
  assert.equal((e >> 40n) & 1n, 1n); // PASID
  assert.equal((e >> 43n) & 1n, 1n); // SMTS
  const plain = unit("").readWide(REG.ECAP);
  assert.equal((plain >> 3n) & 1n, 0n);
  assert.equal((plain >> 43n) & 1n, 0n);
});

test("CAP, ECAP, VER and GSTS are read-only", () => {
  const u = unit();
  const before = [u.readWide(REG.CAP), u.readWide(REG.ECAP), u.read(REG.VER, 4), u.read(REG.GSTS, 4)];
  u.writeWide(REG.CAP, 0n);
  u.writeWide(REG.ECAP, ~0n);
  u.write(REG.VER, 4, 0xffffffff);
  u.write(REG.GSTS, 4, 0xffffffff);
  assert.deepEqual(
    [u.readWide(REG.CAP), u.readWide(REG.ECAP), u.read(REG.VER, 4), u.read(REG.GSTS, 4)],
    before,
  );
});

test("GCMD_REG is write-only: it reads as zero (11.4.4)", () => {
  const { driver: d } = rig({ config: "intremap=on" });
  d.enableQueuedInvalidation();
  assert.equal(d.r32(REG.GCMD), 0);
  assert.ok((d.r32(REG.GSTS) & GCMD.QIE) !== 0);
});

test("GSTS one-shot status: SRTP sets RTPS, SIRTP sets IRTPS; persistent TE/QIE/IRE/CFI follow GCMD", () => {
  const { driver: d } = rig({ config: "intremap=on" });
  d.setRootTable(false);
  assert.ok(d.r32(REG.GSTS) & GCMD.SRTP);
  d.oneShot(GCMD.SIRTP);
  d.setPersistent(GCMD.TE, true);
  d.setPersistent(GCMD.IRE, true);
  d.setPersistent(GCMD.CFI, true);
  d.setPersistent(GCMD.CFI, false);
  d.setPersistent(GCMD.TE, false);
  assert.equal(d.r32(REG.GSTS) & (GCMD.TE | GCMD.CFI), 0);
});

test("GCMD.WBF is ignored without CAP.RWBF (11.4.4)", () => {
  const { driver: d } = rig();
  d.w32(REG.GCMD, GCMD.WBF);
  assert.equal(d.r32(REG.GSTS) & GCMD.WBF, 0);
});

test("RTADDR TTM bits are reserved without scalable-mode support (11.4.6)", () => {
  const { driver: d } = rig();
  d.w64(REG.RTADDR, 0x1000n | 0xc00n | 0x3ffn);
  assert.equal(d.r64(REG.RTADDR), 0x1000n);
  const s = rig({ config: "scalable-mode=on" }).driver;
  s.w64(REG.RTADDR, 0x1000n | 0x400n);
  assert.equal(s.r64(REG.RTADDR), 0x1400n);
});

test("RTADDR address bits above the host address width are reserved", () => {
  const { driver: d } = rig({ config: "aw-bits=39" });
  d.w64(REG.RTADDR, (1n << 45n) | 0x2000n);
  assert.equal(d.r64(REG.RTADDR), 0x2000n);
});

test("FSTS PFO/IQE/ICE/ITE are write-1-to-clear and PPF/FRI are read-only (11.4.7)", () => {
  const { unit: u, driver: d } = rig();
  u.faults.setStatus(FSTS.IQE);
  u.faults.setStatus(FSTS.PFO);
  d.w32(REG.FSTS, FSTS.PPF | 0xff00);
  assert.equal(d.r32(REG.FSTS) & (FSTS.IQE | FSTS.PFO), FSTS.IQE | FSTS.PFO);
  d.w32(REG.FSTS, FSTS.IQE);
  assert.equal(d.r32(REG.FSTS) & (FSTS.IQE | FSTS.PFO), FSTS.PFO);
  d.w32(REG.FSTS, FSTS.PFO);
  assert.equal(d.r32(REG.FSTS), 0);
});

test("FECTL and IECTL reset with IM set: no event interrupt before the guest programs them (11.4.7)", () => {
  const d = rig().driver;
  assert.equal(d.r32(REG.FECTL) >>> 0, ECTL.IM);
  assert.equal(d.r32(REG.IECTL) >>> 0, ECTL.IM);
});

test("FECTL: IM is read-write, IP is read-only, reserved bits read zero (11.4.8)", () => {
  const { driver: d } = rig();
  d.w32(REG.FECTL, 0xffffffff);
  assert.equal(d.r32(REG.FECTL) >>> 0, ECTL.IM);
  d.w32(REG.FECTL, 0);
  assert.equal(d.r32(REG.FECTL), 0);
});

test("FEDATA keeps bits 15:0, FEADDR bits 31:2, FEUADDR all 32 bits", () => {
  const { driver: d } = rig();
  d.w32(REG.FEDATA, 0xffffffff);
  d.w32(REG.FEADDR, 0xffffffff);
  d.w32(REG.FEUADDR, 0xffffffff);
  assert.equal(d.r32(REG.FEDATA), 0xffff);
  assert.equal(d.r32(REG.FEADDR), 0xfffffffc);
  assert.equal(d.r32(REG.FEUADDR), 0xffffffff);
});

test("IQT keeps bits 18:4 only; IQH is read-only (11.4.9)", () => {
  const { driver: d } = rig();
  d.w64(REG.IQT, 0xffffffffffffffffn);
  assert.equal(d.r64(REG.IQT), 0x7fff0n);
  d.w64(REG.IQH, 0x100n);
  assert.equal(d.r64(REG.IQH), 0n);
});

test("IQA.DW is reserved without scalable-mode support", () => {
  const { driver: d } = rig();
  d.w64(REG.IQA, 0x5000n | 0x800n | 0x7n | 0x7f8n);
  assert.equal(d.r64(REG.IQA), 0x5007n);
});

test("ICS.IWC is write-1-to-clear", () => {
  const { unit: u, driver: d } = rig();
  u.regs.set32(REG.ICS, 1);
  d.w32(REG.ICS, 0);
  assert.equal(d.r32(REG.ICS), 1);
  d.w32(REG.ICS, 1);
  assert.equal(d.r32(REG.ICS), 0);
});

test("IRTA: EIME writable only with ECAP.EIM, the whole register reserved without IR (11.4.20)", () => {
  const eim = rig({ config: "intremap=on,eim=on" }).driver;
  eim.w64(REG.IRTA, 0x3000n | 0x800n | 0xfn);
  assert.equal(eim.r64(REG.IRTA), 0x380fn);
  const xapic = rig({ config: "intremap=on" }).driver;
  xapic.w64(REG.IRTA, 0x3000n | 0x800n | 0xfn);
  assert.equal(xapic.r64(REG.IRTA), 0x300fn);
  const none = rig().driver;
  none.w64(REG.IRTA, 0x3000n);
  assert.equal(none.r64(REG.IRTA), 0n);
});

test("FRCD: F is write-1-to-clear, the rest of the record is read-only (11.4.14)", () => {
  const { unit: u, driver: d } = rig();
  u.faults.record({
    sourceId: 0x10,
    reason: 5,
    address: 0x1000n,
    write: true,
    pasid: -1,
    privileged: false,
    addressType: 0,
  });
  const hi = d.r64(REG.FRCD + 8);
  assert.equal(hi >> 63n, 1n);
  d.w64(REG.FRCD, 0n);
  d.w64(REG.FRCD + 8, hi & ~(1n << 63n));
  assert.equal(d.r64(REG.FRCD + 8), hi);
  d.w32(REG.FRCD + 12, 0x80000000);
  assert.equal(d.r64(REG.FRCD + 8) >> 63n, 0n);
  assert.equal(d.r32(REG.FSTS) & FSTS.PPF, 0);
});

test("PMEN: EPM is read-write and PRS follows it; no protected regions are reported", () => {
  const { driver: d } = rig();
  d.w32(REG.PMEN, 0x80000000);
  assert.equal(d.r32(REG.PMEN) >>> 0, 0x80000001);
  d.w32(REG.PMEN, 0);
  assert.equal(d.r32(REG.PMEN), 0);
  d.w32(REG.PLMBASE, 0xffffffff);
  assert.equal(d.r32(REG.PLMBASE), 0);
});

test("unimplemented offsets read zero and ignore writes; bad sizes and alignment are harmless", () => {
  const u = unit();
  for (const off of [0x4, 0x30, 0x50, 0xc0, 0x300, 0xffc]) {
    u.write(off, 4, 0xffffffff);
    assert.equal(u.read(off, 4), 0);
  }
  assert.equal(u.read(0x1002, 4), 0);
  assert.equal(u.read(-4, 4), 0);
  assert.equal(u.read(0xffe, 4), 0);
  u.write(0x3, 4, 1);
  u.write(Number.NaN, 4, 1);
  u.write(REG.FEDATA, 4, Number.NaN);
  assert.equal(u.read(REG.CAP, 1), Number(u.readWide(REG.CAP) & 0xffn));
});

test("64-bit register written as two dwords (low then high) acts once the trigger half lands", () => {
  const { unit: u, driver: d } = rig();
  d.setRootTable(false);
  // CCMD global invalidation written as two 32-bit halves, as a 32-bit kernel does.
  d.w32(REG.CCMD, 0);
  assert.equal(u.stats().registerInvalidations, 0);
  d.w32(REG.CCMD + 4, 0x80000000 | (1 << 29));
  assert.equal(u.stats().registerInvalidations, 1);
  const hi = d.r32(REG.CCMD + 4);
  assert.equal(hi >>> 31, 0); // ICC cleared
  assert.equal((hi >>> 27) & 3, 1); // CAIG = global
});

test("fault event MSI is built from FEDATA/FEADDR/FEUADDR", () => {
  const sink = new RecordingInterruptSink();
  const { unit: u, driver: d } = rig({ interrupts: sink });
  d.w32(REG.FEDATA, 0x4055);
  d.w32(REG.FEADDR, 0xfee0100c);
  d.w32(REG.FEUADDR, 0x1);
  d.w32(REG.FECTL, 0);
  u.faults.setStatus(FSTS.IQE);
  assert.equal(sink.msis.length, 1);
  assert.equal(sink.msis[0].message.address, 0x1_fee0100c);
  assert.equal(sink.msis[0].message.data, 0x4055);
});

test("without scalable mode CAP and ECAP fit below 2^53, so 8-byte reads as numbers are exact", () => {
  const u = unit("intremap=on,eim=on,caching-mode=on,device-iotlb=on,aw-bits=57");
  assert.equal(BigInt(u.read(REG.CAP, 8)), u.readWide(REG.CAP));
  assert.equal(BigInt(u.read(REG.ECAP, 8)), u.readWide(REG.ECAP));
});

test("reset returns registers to power-on values and DMA to untranslated", () => {
  const { unit: u, driver: d, memory } = rig({ config: "intremap=on" });
  d.enableQueuedInvalidation();
  d.setRootTable(false);
  d.setPersistent(GCMD.TE, true);
  const dma = u.addEndpoint(0x10);
  assert.equal(dma.readUint(0x1000, 4), -1);
  const cap = u.readWide(REG.CAP);
  u.reset();
  assert.equal(d.r32(REG.GSTS), 0);
  assert.equal(d.r64(REG.RTADDR), 0n);
  assert.equal(d.r32(REG.FSTS), 0);
  assert.equal(u.readWide(REG.CAP), cap);
  memory.writeU32(0x1000, 4);
  assert.equal(dma.readUint(0x1000, 4), 4);
});

test("dma-translation=off: an interrupt-remapping-only unit (SAGAW=0) ignores TE and SRTP", () => {
  const { unit: u, driver: d, memory } = rig({ config: "dma-translation=off,intremap=on" });
  assert.equal((u.readWide(REG.CAP) >> 8n) & 0x1fn, 0n);
  d.w32(REG.GCMD, GCMD.TE | GCMD.SRTP);
  assert.equal(d.r32(REG.GSTS) & (GCMD.TE | GCMD.SRTP), 0);
  const dma = u.addEndpoint(0x10);
  memory.writeU32(0x2000, 6);
  assert.equal(dma.readUint(0x2000, 4), 6);
});

test("an 8-byte read at a 4-byte boundary returns the two dwords there (GSTS + RTADDR low)", () => {
  const { unit: u, driver: d } = rig();
  d.setRootTable(false);
  const v = u.readWide(REG.GSTS);
  assert.equal(Number(v & 0xffffffffn), d.r32(REG.GSTS));
  assert.equal(Number(v >> 32n), d.r32(REG.RTADDR));
  assert.equal(u.read(REG.GSTS, 8), d.r32(REG.RTADDR) * 2 ** 32 + d.r32(REG.GSTS));
});

/** Registers without write side effects: all-ones reads back as the architected RW bits. */
const PLAIN: readonly [string, number, bigint][] = [
  ["RTADDR", REG.RTADDR, 0x0000_ffff_ffff_fc00n], // scalable config: TTM writable; HAW 48
  ["FEDATA", REG.FEDATA, 0xffffn],
  ["FEADDR", REG.FEADDR, 0xffff_fffcn],
  ["FEUADDR", REG.FEUADDR, 0xffff_ffffn],
  ["AFLOG", REG.AFLOG, 0n],
  ["PLMBASE", REG.PLMBASE, 0n],
  ["PLMLIMIT", REG.PLMLIMIT, 0n],
  ["PHMBASE", REG.PHMBASE, 0n],
  ["PHMLIMIT", REG.PHMLIMIT, 0n],
  ["IQA", REG.IQA, 0x0000_ffff_ffff_f807n],
  ["IEDATA", REG.IEDATA, 0xffffn],
  ["IEADDR", REG.IEADDR, 0xffff_fffcn],
  ["IEUADDR", REG.IEUADDR, 0xffff_ffffn],
  ["IQERCD", REG.IQERCD, 0n],
  ["IRTA", REG.IRTA, 0x0000_ffff_ffff_f80fn],
  ["IVA", REG.IVA, 0xffff_ffff_ffff_f07fn],
];

for (const [name, offset, rw] of PLAIN) {
  test(`${name} (0x${offset.toString(16)}): writable bits are exactly the architected ones`, () => {
    const u = unit();
    const wide =
      offset === REG.RTADDR ||
      offset === REG.IQA ||
      offset === REG.IRTA ||
      offset === REG.IVA ||
      offset === REG.AFLOG ||
      offset === REG.PHMBASE ||
      offset === REG.PHMLIMIT ||
      offset === REG.IQERCD;
    if (wide) {
      u.writeWide(offset, ~0n);
      assert.equal(u.readWide(offset), rw);
      u.writeWide(offset, 0n);
      assert.equal(u.readWide(offset), 0n);
    } else {
      u.write(offset, 4, 0xffffffff);
      assert.equal(BigInt(u.read(offset, 4)), rw);
      u.write(offset, 4, 0);
      assert.equal(u.read(offset, 4), 0);
    }
  });
}

test("describe() names the enabled units, tables and queue state", () => {
  const { unit: u, driver: d } = rig({ config: "intremap=on" });
  d.enableQueuedInvalidation();
  d.setRootTable(false);
  d.setPersistent(GCMD.TE, true);
  const text = u.describe().join("\n");
  assert.match(text, /TE QIE -ire -cfi/);
  assert.match(text, new RegExp(`root table 0x${d.rootTable.toString(16)} \\(legacy\\)`));
  assert.match(text, /invalidation queue 0x[0-9a-f]+ head 0x0 tail 0x0/);
  assert.match(text, /interrupt remapping table/);
});
