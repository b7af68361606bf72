import assert from "node:assert/strict";
import { test } from "node:test";
import {
  buffer,
  concat,
  device,
  eisaId,
  eisaIdValue,
  integer,
  name,
  nameSeg,
  nameString,
  pkg,
  pkgLength,
  scope,
  string,
} from "../../src/acpi/aml.ts";
import {
  dwordIo,
  dwordMemory,
  extendedInterrupt,
  ioPort,
  MEMORY_CACHING,
  memory32Fixed,
  qwordMemory,
  resourceTemplate,
  wordBusNumber,
} from "../../src/acpi/aml-resources.ts";
import { COM1, serialPortDevice } from "../../src/acpi/dsdt.ts";
import { decodeAml } from "./aml-decoder.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const bytes = (h: string) => Uint8Array.from(Buffer.from(h.replace(/\s+/g, ""), "hex"));

test("20.2.4 PkgLength: one byte holds totals up to 63, counting itself", () => {
  assert.equal(hex(pkgLength(0)), "01");
  assert.equal(hex(pkgLength(62)), "3f"); // 62 + 1 = 63
});

test("20.2.4 PkgLength: a total of 64 needs two bytes (lead bits 7:6 = 1, low nibble, then bits 11:4)", () => {
  assert.equal(hex(pkgLength(63)), "4104"); // 63 + 2 = 65 = 0x041
  assert.equal(hex(pkgLength(62 + 1)), "4104");
});

test("20.2.4 PkgLength: two bytes hold up to 4095; 4096 needs three", () => {
  assert.equal(hex(pkgLength(4093)), "4fff"); // 4093 + 2 = 0xFFF
  assert.equal(hex(pkgLength(4094)), "810001"); // 4094 + 3 = 4097 = 0x1001
  assert.equal(hex(pkgLength(0xfffff - 3)), "8fffff"); // 20-bit maximum with 3 bytes
  assert.equal(hex(pkgLength(0xfffff - 2)), "c1000001"); // 0xfffff - 2 + 4 = 0x100001: nibble 1, bits 27:20 = 1
  assert.throws(() => pkgLength(0xfffffff));
});

test("20.2.4 PkgLength round-trips through an independent decoder at every size boundary", () => {
  for (const contentLength of [0, 61, 62, 63, 64, 4092, 4093, 4094, 4095, 70000]) {
    const data = new Uint8Array(contentLength).fill(0x41);
    const term = scope("\\XXXX", [name("BUF0", buffer(data.subarray(0, Math.max(0, contentLength - 20))))]);
    const [node] = decodeAml(term);
    assert.equal(node.kind, "scope");
  }
});

test("20.2.2 NameSeg pads short names with '_' and rejects bad characters", () => {
  assert.equal(hex(nameSeg("_SB")), hex(Uint8Array.from("_SB_", (c) => c.charCodeAt(0))));
  assert.throws(() => nameSeg("1ABC"));
  assert.throws(() => nameSeg("abcd"));
  assert.throws(() => nameSeg("ABCDE"));
});

test("20.2.2 NameString: root prefix, dual and multi name paths", () => {
  assert.equal(hex(nameString("\\_SB")), "5c5f53425f");
  assert.equal(hex(nameString("_SB.COM1")), "2e5f53425f434f4d31");
  assert.equal(hex(nameString("\\_SB.PC00.FOO")), "5c2f035f53425f50433030464f4f5f");
  assert.equal(hex(nameString("^^ABCD")), "5e5e41424344");
});

test("20.2.3 integers use ZeroOp/OneOp/OnesOp or the smallest prefix", () => {
  assert.equal(hex(integer(0)), "00");
  assert.equal(hex(integer(1)), "01");
  assert.equal(hex(integer(2)), "0a02");
  assert.equal(hex(integer(0xff)), "0aff");
  assert.equal(hex(integer(0x100)), "0b0001");
  assert.equal(hex(integer(0x10000)), "0c00000100");
  assert.equal(hex(integer(0x1_0000_0000)), "0e0000000001000000");
  assert.equal(hex(integer(0xffff_ffff_ffff_ffffn)), "ff");
});

test("20.2.3 strings are StringPrefix, ASCII, NUL", () => {
  assert.equal(hex(string("ACPI0007")), "0d4143504930303037" + "00");
  assert.throws(() => string("é"));
});

test("EISAID compresses PNP0A08 to 41 D0 0A 08 and PNP0501 to 41 D0 05 01", () => {
  assert.equal(hex(eisaId("PNP0A08")), "0c41d00a08");
  assert.equal(hex(eisaId("PNP0A03")), "0c41d00a03");
  assert.equal(hex(eisaId("PNP0501")), "0c41d00501");
  assert.equal(eisaIdValue("PNP0C02"), 0x020cd041);
  assert.throws(() => eisaId("pnp0a08"));
});

test("20.2.5.4 Package: count byte then elements (Name(_S5_, Package(){5,5,0,0}))", () => {
  const s5 = name("_S5", pkg([integer(5), integer(5), integer(0), integer(0)]));
  // NameOp "_S5_" PackageOp PkgLength(8) NumElements(4) 0A05 0A05 00 00
  assert.equal(hex(s5), "085f53355f" + "12" + "08" + "04" + "0a05" + "0a05" + "00" + "00");
});

test("6.4 resource descriptors: golden encodings", () => {
  // IO(Decode16, 0xCF8, 0xCF8, 1, 8): 47 info=01 min max align len
  assert.equal(hex(ioPort(0xcf8, 0xcf8, 1, 8)), "4701f80cf80c0108");
  // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {4}: 89 len=6 flags=03 count=1 irq
  assert.equal(hex(extendedInterrupt({ edge: true, activeLow: false }, [4])), "890600030104000000");
  // Interrupt(ResourceConsumer, Level, ActiveLow, Shared) {10, 11}
  assert.equal(
    hex(extendedInterrupt({ edge: false, activeLow: true, shared: true }, [10, 11])),
    "890a000d020a0000000b000000",
  );
  // Memory32Fixed(ReadWrite, 0xE0000000, 0x10000000): 86 len=9 rw=1 base len
  assert.equal(hex(memory32Fixed(true, 0xe000_0000, 0x1000_0000)), "860900010000" + "00e0" + "00000010");
  // WordBusNumber(Producer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100):
  // 88 len=13 type=2 gflags=0C tflags=0 gra min max tra len
  assert.equal(
    hex(wordBusNumber({ min: 0, max: 0xff })),
    "880d00020c00" + "0000" + "0000" + "ff00" + "0000" + "0001",
  );
  // DWordIO(..., EntireRange, 0, 0xD00, 0xFFFF, 0, 0xF300): 87 len=23 type=1 gflags=0C tflags=03
  assert.equal(
    hex(dwordIo({ min: 0xd00, max: 0xffff })),
    "871700010c03" + "00000000" + "000d0000" + "ffff0000" + "00000000" + "00f30000",
  );
  // DWordMemory(..., NonCacheable, ReadWrite, 0, 0xC0000000, 0xDFFFFFFF, 0, 0x20000000): tflags=01
  assert.equal(
    hex(dwordMemory({ min: 0xc000_0000, max: 0xdfff_ffff }, MEMORY_CACHING.nonCacheable)),
    "871700000c01" + "00000000" + "000000c0" + "ffffffdf" + "00000000" + "00000020",
  );
  // QWordMemory(..., Cacheable, ReadWrite, 0, 1 TiB, 2 TiB - 1, 0, 1 TiB): 8A len=43 tflags=03
  assert.equal(
    hex(qwordMemory({ min: 0x100_0000_0000, max: 0x1ff_ffff_ffff }, MEMORY_CACHING.cacheable)),
    "8a2b00000c03" +
      "0000000000000000" +
      "0000000000010000" +
      "ffffffffff010000" +
      "0000000000000000" +
      "0000000000010000",
  );
  assert.throws(() => dwordIo({ min: 0x10, max: 0x0f }));
  assert.throws(() => dwordMemory({ min: 0, max: 0x1_0000_0000 }, MEMORY_CACHING.nonCacheable));
});

test("ResourceTemplate is a Buffer ending in End Tag 79 00", () => {
  assert.equal(hex(resourceTemplate([ioPort(0x3f8, 0x3f8, 0, 8)])), "110d0a0a" + "4701f803f8030008" + "7900");
});

test("COM1 device matches the known encoding of Device(_SB.COM1){_HID PNP0501, _CRS{Interrupt 4, IO 0x3F8}}", () => {
  // Device(_SB.COM1) { Name(_HID, EISAID("PNP0501"))
  //   Name(_CRS, ResourceTemplate() { Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {4}
  //                                   IO(Decode16, 0x3F8, 0x3F8, 0, 8) }) }
  const expected = bytes(`
    5B 82 30 2E 5F 53 42 5F 43 4F 4D 31
    08 5F 48 49 44 0C 41 D0 05 01
    08 5F 43 52 53 11 16 0A 13
    89 06 00 03 01 04 00 00 00
    47 01 F8 03 F8 03 00 08
    79 00`);
  const built = device("_SB.COM1", [
    name("_HID", eisaId("PNP0501")),
    name(
      "_CRS",
      resourceTemplate([
        extendedInterrupt({ edge: true, activeLow: false }, [4]),
        ioPort(0x3f8, 0x3f8, 0, 8),
      ]),
    ),
  ]);
  assert.equal(hex(built), hex(expected));
  // serialPortDevice adds only the _UID (08 _UID_ 01) after the _HID.
  const withUid = serialPortDevice("_SB.COM1", 1, COM1);
  assert.equal(withUid.length, expected.length + 6);
  assert.equal(hex(withUid.subarray(22, 28)), "085f55494401");
});

test("a device tree decodes back to the same structure", () => {
  const aml = concat([
    scope("\\_SB", [
      device("PC00", [name("_HID", eisaId("PNP0A08")), name("_UID", integer(0))]),
      device("C001", [name("_HID", string("ACPI0007")), name("_UID", integer(1))]),
    ]),
  ]);
  const tree = decodeAml(aml);
  assert.deepEqual(JSON.parse(JSON.stringify(tree, (_, v) => (typeof v === "bigint" ? Number(v) : v))), [
    {
      kind: "scope",
      path: "\\_SB_",
      children: [
        {
          kind: "device",
          path: "PC00",
          children: [
            { kind: "name", path: "_HID", value: { kind: "integer", value: 0x080ad041 } },
            { kind: "name", path: "_UID", value: { kind: "integer", value: 0 } },
          ],
        },
        {
          kind: "device",
          path: "C001",
          children: [
            { kind: "name", path: "_HID", value: { kind: "string", value: "ACPI0007" } },
            { kind: "name", path: "_UID", value: { kind: "integer", value: 1 } },
          ],
        },
      ],
    },
  ]);
});
