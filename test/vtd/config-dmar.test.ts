/** Configuration parsing (QEMU property names) and the ACPI DMAR table bytes (VT-d 8). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { capRegister, ecapRegister, parseVtdConfig } from "../../src/vtd/config.ts";
import { buildDmarTable, dmarForConfig, SCOPE } from "../../src/vtd/dmar.ts";
import { GCMD } from "../../src/vtd/registers.ts";
import { rig } from "./guest.ts";

test("config: defaults and QEMU property names", () => {
  const c = parseVtdConfig(
    "intremap=on,eim=on,caching-mode=on,device-iotlb=on,pt=off,aw-bits=39,snoop-control=on",
  );
  assert.equal(c.intremap && c.eim && c.cachingMode && c.deviceIotlb && c.snoopControl, true);
  assert.equal(c.passThrough, false);
  assert.equal(c.awBits, 39);
  assert.equal(parseVtdConfig("x-scalable-mode=on,x-pasid-mode=on").pasid, true);
});

test("config: invalid combinations and values are refused with clear messages", () => {
  assert.throws(() => parseVtdConfig("eim=on"), /eim=on requires intremap=on/);
  assert.throws(() => parseVtdConfig("aw-bits=52"), /aw-bits=52: supported values are 39, 48 and 57/);
  assert.throws(() => parseVtdConfig("pasid=on"), /pasid=on requires scalable-mode=on/);
  assert.throws(() => parseVtdConfig("intremap=maybe"), /intremap=maybe: expected on or off/);
  assert.throws(() => parseVtdConfig("bogus=on"), /unknown property "bogus"/);
  assert.throws(() => parseVtdConfig("intremap"), /expected key=value/);
  assert.throws(() => parseVtdConfig("intremap=on,intremap=off"), /given twice/);
  assert.throws(
    () => parseVtdConfig("dma-translation=off,scalable-mode=on,intremap=on"),
    /interrupt-remapping-only/,
  );
  assert.throws(() => parseVtdConfig("dma-translation=off"), /nothing to do/);
  assert.equal(parseVtdConfig("dma-translation=off,intremap=on").dmaTranslation, false);
});

function checksum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return s;
}

test("DMAR header: signature, length, revision, checksum, HAW - 1, flags", () => {
  const t = dmarForConfig(parseVtdConfig("intremap=on,aw-bits=48"), { registerBase: 0xfed90000 });
  const v = new DataView(t.buffer);
  assert.equal(String.fromCharCode(...t.subarray(0, 4)), "DMAR");
  assert.equal(v.getUint32(4, true), t.length);
  assert.equal(t[8], 1);
  assert.equal(checksum(t), 0);
  assert.equal(t[36], 47);
  assert.equal(t[37], 0b11, "INTR_REMAP and X2APIC_OPT_OUT (no EIM)");
  assert.equal(parseVtdConfig("intremap=on,eim=on").eim, true);
  const eim = dmarForConfig(parseVtdConfig("intremap=on,eim=on"), { registerBase: 0xfed90000 });
  assert.equal(eim[37], 0b01);
});

test("DRHD with INCLUDE_PCI_ALL and the IOAPIC device scope (bus 0xFF, devfn 0)", () => {
  const t = dmarForConfig(parseVtdConfig("intremap=on"), { registerBase: 0xfed90000, ioapicId: 2 });
  // Golden bytes after the 48-byte header:
  //   DRHD type 0, length 24, flags INCLUDE_PCI_ALL, size 0, segment 0, base 0xfed90000,
  //   scope: type 3 (IOAPIC), length 8, reserved, enumeration id 2, start bus 0xff, path 00.0
  assert.deepEqual(
    [...t.subarray(48)],
    [0, 0, 24, 0, 1, 0, 0, 0, 0x00, 0x00, 0xd9, 0xfe, 0, 0, 0, 0, 3, 8, 0, 0, 2, 0xff, 0, 0],
  );
  assert.equal(t.length, 72);
});

test("DRHD with explicit endpoint scopes and an ATSR (ALL_PORTS) with device-iotlb", () => {
  const t = dmarForConfig(parseVtdConfig("device-iotlb=on"), {
    registerBase: 0xfed90000,
    endpoints: [0x0010],
  });
  assert.equal(t[37], 0);
  // DRHD: flags 0 (explicit scopes), one PCI endpoint scope: bus 0, path 02.0.
  assert.deepEqual(
    [...t.subarray(48, 72)],
    [0, 0, 24, 0, 0, 0, 0, 0, 0x00, 0x00, 0xd9, 0xfe, 0, 0, 0, 0, 1, 8, 0, 0, 0, 0, 2, 0],
  );
  // ATSR: type 2, length 8, flags ALL_PORTS, reserved, segment 0.
  assert.deepEqual([...t.subarray(72)], [2, 0, 8, 0, 1, 0, 0, 0]);
  assert.equal(checksum(t), 0);
});

test("DMAR builder: INCLUDE_PCI_ALL must be the last DRHD; scopes need a path", () => {
  assert.throws(
    () =>
      buildDmarTable({
        hawBits: 48,
        interruptRemapping: false,
        units: [
          { registerBase: 0x1000, includePciAll: true, scopes: [] },
          { registerBase: 0x2000, includePciAll: false, scopes: [] },
        ],
      }),
    /must be the last/,
  );
  assert.throws(
    () =>
      buildDmarTable({
        hawBits: 48,
        interruptRemapping: false,
        units: [
          {
            registerBase: 0x1000,
            includePciAll: false,
            scopes: [{ type: SCOPE.PCI_ENDPOINT, startBus: 0, path: [] }],
          },
        ],
      }),
    /path/,
  );
});

test("RMRR: type 1, base and limit, endpoint scope (VT-d 8.4)", () => {
  const t = buildDmarTable({
    hawBits: 39,
    interruptRemapping: false,
    units: [{ registerBase: 0xfed90000, includePciAll: true, scopes: [] }],
    rmrr: [
      {
        baseAddress: 0x000e0000,
        limitAddress: 0x000fffff,
        scopes: [{ type: SCOPE.PCI_ENDPOINT, startBus: 0, path: [{ device: 0x1d, function: 0 }] }],
      },
    ],
  });
  assert.equal(checksum(t), 0);
  // DRHD (16 bytes, no scopes) then the RMRR.
  assert.deepEqual(
    [...t.subarray(64)],
    [
      1, 0, 32, 0, 0, 0, 0, 0, 0x00, 0x00, 0x0e, 0, 0, 0, 0, 0, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0, 1, 8, 0, 0,
      0, 0, 0x1d, 0,
    ],
  );
  assert.throws(
    () =>
      buildDmarTable({
        hawBits: 39,
        interruptRemapping: false,
        units: [],
        rmrr: [{ baseAddress: 0x100, limitAddress: 0xfff, scopes: [] }],
      }),
    /whole 4 KiB pages/,
  );
});

test("x-flts=off: no first-stage support reported, and a first-stage PASID entry is invalid (0x5B)", () => {
  const off = parseVtdConfig("scalable-mode=on,x-flts=off");
  assert.equal(off.firstStage, false);
  assert.equal((ecapRegister(off) >> 47n) & 1n, 0n);
  assert.equal((capRegister(off) >> 56n) & 1n, 0n);
  assert.equal((ecapRegister(parseVtdConfig("scalable-mode=on")) >> 47n) & 1n, 1n);
  assert.throws(() => parseVtdConfig("scalable-mode=on,nested=on,x-flts=off"), /requires first-stage/);
  const r = rig({ config: "scalable-mode=on,x-flts=off" });
  r.driver.setRootTable(true);
  const dir = r.driver.setScalableContext(0x10);
  r.driver.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: r.alloc.page() });
  const dma = r.unit.addEndpoint(0x10);
  r.driver.setPersistent(GCMD.TE, true);
  dma.readUint(0, 4);
  assert.equal(dma.lastFault?.code, 0x5b);
});
