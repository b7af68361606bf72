import assert from "node:assert/strict";
import { test } from "node:test";
import { byteSum } from "../../src/acpi/bytes.ts";
import { buildDsdt, interruptLinkDevice, intxLinks, PCI_PIN, pciRoutingTable } from "../../src/acpi/dsdt.ts";
import { buildFadt, FADT_OFFSET, FADT_SIZE } from "../../src/acpi/fadt.ts";
import { ioPortByte } from "../../src/acpi/gas.ts";
import { buildMadt } from "../../src/acpi/madt.ts";
import { buildMcfg } from "../../src/acpi/mcfg.ts";
import { buildRsdp } from "../../src/acpi/rsdp.ts";
import { VIOMMU_SDT_IDENTITY as ID } from "../../src/acpi/sdt.ts";
import { buildXsdt } from "../../src/acpi/xsdt.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
/** Compares with a golden hex string written in groups separated by spaces. */
const assertHex = (actual: Uint8Array, golden: string) =>
  assert.equal(hex(actual), golden.replace(/\s+/g, ""));
const z = (n: number) => "00".repeat(n);
/** The 36-byte SDT header after Signature/Length/Revision/Checksum: OEM "VIOMMU" "VIOMMUVM" 1 "VIOM" 1. */
const IDENTITY_HEX = "56494f4d4d55" + "56494f4d4d55564d" + "01000000" + "56494f4d" + "01000000";

function assertSumsToZero(table: Uint8Array): void {
  assert.equal(byteSum(table), 0, "table bytes sum to zero mod 256");
  assert.equal(new DataView(table.buffer).getUint32(4, true), table.length, "Length covers the table");
}

test("5.2.5.3 RSDP: 36 bytes, revision 2, both checksums, XSDT address", () => {
  const rsdp = buildRsdp(0xe0028, "VIOMMU");
  assertHex(
    rsdp,
    "5253442050545220" + // "RSD PTR "
      "02" + // Checksum over bytes 0..19
      "56494f4d4d55" + // OEMID "VIOMMU"
      "02" + // Revision 2 (ACPI 2.0+)
      "00000000" + // RsdtAddress: none
      "24000000" + // Length 36
      "28000e0000000000" + // XsdtAddress 0xE0028
      "a6" + // Extended Checksum over bytes 0..35
      "000000",
  );
  assert.equal(byteSum(rsdp, 0, 20), 0);
  assert.equal(byteSum(rsdp), 0);
});

test("5.2.8 XSDT: header then u64 table pointers", () => {
  const xsdt = buildXsdt([0xe0070, 0x1_0000_0000], ID);
  assertHex(
    xsdt,
    "58534454" + // "XSDT"
      "34000000" + // Length 52
      "01" + // Revision 1
      "6f" + // Checksum
      IDENTITY_HEX +
      "70000e0000000000" + // Entry 0: 0xE0070
      "0000000001000000", // Entry 1: 4 GiB (above 32 bits: why XSDT, not RSDT)
  );
  assertSumsToZero(xsdt);
});

test("5.2.9 FADT: hardware-reduced, revision 6.5, X_DSDT, reset and sleep registers, vendor ID", () => {
  const fadt = buildFadt(
    {
      dsdtGpa: 0xe0188,
      reset: { register: ioPortByte(0x3c0), value: 1 },
      sleep: { control: ioPortByte(0x3c1), status: ioPortByte(0x3c2) },
    },
    ID,
  );
  assert.equal(fadt.length, FADT_SIZE);
  const gasIoByte = (port: string) => `01080001${port}000000000000`; // SystemIO, 8 bits, byte access
  assertHex(
    fadt,
    "46414350" + // "FACP"
      "14010000" + // Length 276
      "06" + // Revision 6
      "42" + // Checksum
      IDENTITY_HEX +
      z(9) + // 36 FIRMWARE_CTRL, 40 DSDT (32-bit: unused), 44 reserved
      "00" + // 45 Preferred_PM_Profile: unspecified
      "0000" + // 46 SCI_INT: none (hardware-reduced)
      z(109 - 48) + // 48..108: SMI_CMD, PM1/PM2/PM timer/GPE blocks, lengths, C-states: all absent
      "2400" + // 109 IAPC_BOOT_ARCH: VGA_NOT_PRESENT | CMOS_RTC_NOT_PRESENT (no 8042, MSI allowed)
      "00" + // 111 reserved
      "30041000" + // 112 Flags: PWR_BUTTON | SLP_BUTTON | RESET_REG_SUP | HW_REDUCED_ACPI
      gasIoByte("c003") + // 116 RESET_REG: I/O port 0x3C0
      "01" + // 128 RESET_VALUE
      "0000" + // 129 ARM_BOOT_ARCH
      "05" + // 131 FADT minor version 5
      z(8) + // 132 X_FIRMWARE_CTRL: no FACS
      "88010e0000000000" + // 140 X_DSDT 0xE0188
      z(244 - 148) + // 148..243 X_PM1a_EVT_BLK .. X_GPE1_BLK: absent
      gasIoByte("c103") + // 244 SLEEP_CONTROL_REG: I/O port 0x3C1
      gasIoByte("c203") + // 256 SLEEP_STATUS_REG: I/O port 0x3C2
      "56494f4d4d55564d", // 268 Hypervisor Vendor Identity "VIOMMUVM"
  );
  assertSumsToZero(fadt);
});

test("5.2.9.3 FADT: the 8042 and CMOS RTC flags follow the platform; MSI_NOT_SUPPORTED never set", () => {
  const fadt = buildFadt({ dsdtGpa: 0x1000, i8042Present: true, cmosRtcPresent: true }, ID);
  const view = new DataView(fadt.buffer);
  assert.equal(view.getUint16(FADT_OFFSET.iapcBootArch, true), 0b000110); // 8042 | VGA_NOT_PRESENT
  assert.equal(view.getUint32(FADT_OFFSET.flags, true), (1 << 20) | (1 << 5) | (1 << 4)); // no RESET_REG_SUP
  assert.equal(view.getBigUint64(FADT_OFFSET.xDsdt, true), 0x1000n);
  assertSumsToZero(fadt);
});

test("5.2.12 MADT: LAPIC per CPU, x2APIC above 254, IOAPIC, override, NMIs, PCAT_COMPAT", () => {
  const madt = buildMadt(
    { apicIds: [0, 1, 300], dual8259Present: true, overrides: [{ isaIrq: 0, gsi: 2, flags: 0 }] },
    ID,
  );
  assertHex(
    madt,
    "41504943" + // "APIC"
      "74000000" + // Length 116
      "05" + // Revision 5
      "9e" + // Checksum
      IDENTITY_HEX +
      "0000e0fe" + // 36 Local APIC address 0xFEE00000
      "01000000" + // 40 Flags: PCAT_COMPAT (a dual 8259 is present)
      "00 08 00 00 01000000" + // Local APIC: UID 0, APIC ID 0, enabled
      "00 08 01 01 01000000" + // Local APIC: UID 1, APIC ID 1, enabled
      "09 10 0000 2c010000 01000000 02000000" + // x2APIC: ID 300, enabled, UID 2
      "01 0c 00 00 0000c0fe 00000000" + // IOAPIC: ID 0, 0xFEC00000, GSI base 0
      "02 0a 00 00 02000000 0000" + // ISO: ISA IRQ 0 -> GSI 2, conforming
      "04 06 ff 0000 01" + // LAPIC NMI: all processors, LINT1
      "0a 0c 0000 ffffffff 01 000000", // x2APIC NMI: all processors, LINT1
  );
  assertSumsToZero(madt);
});

test("5.2.12 MADT: no PCAT_COMPAT without a dual 8259; xAPIC only for IDs below 255", () => {
  const madt = buildMadt({ apicIds: [0, 254], dual8259Present: false, lint1Nmi: false }, ID);
  const view = new DataView(madt.buffer);
  assert.equal(view.getUint32(40, true), 0);
  assert.equal(madt.length, 44 + 8 + 8 + 12);
  assert.deepEqual([madt[44], madt[52], madt[60]], [0, 0, 1]);
  assert.equal(madt[55], 254);
  assertSumsToZero(madt);
});

test("PCI Firmware 3.3 4.1.2 MCFG: reserved 8 bytes then {base, segment, start bus, end bus}", () => {
  const mcfg = buildMcfg([{ baseGpa: 0xe000_0000, segment: 0, startBus: 0, endBus: 0xff }], ID);
  assertHex(
    mcfg,
    "4d434647" + // "MCFG"
      "3c000000" + // Length 60
      "01" + // Revision 1
      "2d" + // Checksum
      IDENTITY_HEX +
      z(8) + // 36 reserved
      "000000e000000000" + // 44 ECAM base 0xE0000000
      "0000" + // segment 0
      "00" + // start bus 0
      "ff" + // end bus 255
      "00000000",
  );
  assertSumsToZero(mcfg);
  assert.throws(() => buildMcfg([{ baseGpa: 0, segment: 0, startBus: 2, endBus: 1 }], ID));
});

test("5.2.11.1 DSDT: golden bytes of a root bridge and one CPU", () => {
  // Scope (\_SB) {
  //   Device (PC00) { Name (_HID, EisaId ("PNP0A08"))  Name (_CID, EisaId ("PNP0A03"))
  //     Name (_SEG, 0)  Name (_UID, 0)  Name (_BBN, 0)
  //     Name (_CRS, ResourceTemplate () { WordBusNumber (0-0)  IO (0xCF8, len 8)
  //       DWordIO (0-0xCF7)  DWordIO (0xD00-0xFFFF)  DWordMemory (0xC0000000-0xDFFFFFFF) }) }
  //   Device (C000) { Name (_HID, "ACPI0007")  Name (_UID, 0) } }
  const dsdt = buildDsdt(
    {
      pciRoot: { segment: 0, busStart: 0, busEnd: 0, mmio32: { min: 0xc000_0000, max: 0xdfff_ffff } },
      cpuCount: 1,
    },
    ID,
  );
  assertHex(
    dsdt,
    "44534454 e8000000 02 e2" +
      IDENTITY_HEX + // "DSDT", 232 bytes, revision 2
      "10 430c 5c5f53425f" + // Scope, PkgLength 0xC3 (2 bytes), \_SB_
      "5b82 4e09 50433030" + // Device, PkgLength 0x9E, PC00
      "085f484944 0c41d00a08" + // Name(_HID, EisaId("PNP0A08"))
      "085f434944 0c41d00a03" + // Name(_CID, EisaId("PNP0A03"))
      "085f534547 00" + // Name(_SEG, Zero)
      "085f554944 00" + // Name(_UID, Zero)
      "085f42424e 00" + // Name(_BBN, Zero)
      "085f435253 114c06 0a68" + // Name(_CRS, Buffer(0x68) {
      "880d00020c00 0000 0000 0000 0000 0100" + // WordBusNumber 0-0, length 1
      "4701f80cf80c0108" + // IO(Decode16, 0xCF8, 0xCF8, 1, 8)
      "871700010c03 00000000 00000000 f70c0000 00000000 f80c0000" + // DWordIO 0-0xCF7
      "871700010c03 00000000 000d0000 ffff0000 00000000 00f30000" + // DWordIO 0xD00-0xFFFF
      "871700000c01 00000000 000000c0 ffffffdf 00000000 00000020" + // DWordMemory
      "7900" + // End Tag })
      "5b82 1a 43303030" + // Device, PkgLength 0x1A, C000
      "085f484944 0d4143504930303037 00" + // Name(_HID, "ACPI0007")
      "085f554944 00", // Name(_UID, Zero)
  );
  assertSumsToZero(dsdt);
});

test("6.2.13 _PRT: Package of {(device << 16) | 0xFFFF, pin, Source 0, GSI}", () => {
  // Package () { Package () { 0x0001FFFF, 0, Zero, 21 }, Package () { 0x001FFFFF, 3, Zero, 23 } }
  assertHex(
    pciRoutingTable([
      { device: 1, pin: PCI_PIN.INTA, gsi: 21 },
      { device: 31, pin: PCI_PIN.INTD, gsi: 23 },
    ]),
    "12 1b 02" + // PackageOp, PkgLength 27, 2 elements
      "12 0b 04 0cffff0100 00 00 0a15" + // PkgLength 11: { 0x0001FFFF, Zero, Zero, 21 }
      "12 0c 04 0cffff1f00 0a03 00 0a17", // PkgLength 12: { 0x001FFFFF, 3, Zero, 23 }
  );
  assert.throws(() => pciRoutingTable([{ device: 32, pin: 0, gsi: 16 }]));
  assert.throws(() => pciRoutingTable([{ device: 1, pin: 4, gsi: 16 }]));
});

test("6.2.13 _PRT: a route through a link device names it as Source with Source Index 0", () => {
  // Package () { Package () { 0x0003FFFF, 0, GSIH, 0 } }
  assertHex(
    pciRoutingTable([{ device: 3, pin: PCI_PIN.INTA, gsi: 23, link: "GSIH" }]),
    "12 10 01" + "12 0d 04 0cffff0300 00 47534948 00",
  );
  assert.deepEqual(
    intxLinks([
      { device: 1, pin: 0, gsi: 20, link: "GSIE" },
      { device: 2, pin: 3, gsi: 20, link: "GSIE" },
      { device: 2, pin: 0, gsi: 18 },
    ]),
    [{ name: "GSIE", gsi: 20 }],
  );
  assert.throws(() =>
    intxLinks([
      { device: 1, pin: 0, gsi: 20, link: "GSIE" },
      { device: 2, pin: 0, gsi: 21, link: "GSIE" },
    ]),
  );
});

test("6.2.13 PCI interrupt link (PNP0C0F): _PRS = _CRS = Interrupt (Level, ActiveHigh, Shared) {gsi}, empty _SRS", () => {
  const irq = "11 0e 0a 0b" + "89 0600 09 01 17000000" + "79 00"; // Buffer(11) { Interrupt {23}, EndTag }
  assertHex(
    interruptLinkDevice({ name: "GSIH", gsi: 23 }, 0),
    "5b82 4504 47534948" + // Device (GSIH), PkgLength 69
      "085f484944 0c41d00c0f" + // Name (_HID, EisaId ("PNP0C0F"))
      "085f554944 00" + // Name (_UID, Zero)
      `085f505253 ${irq}` + // Name (_PRS, ...)
      `085f435253 ${irq}` + // Name (_CRS, ...)
      "14 06 5f535253 01", // Method (_SRS, 1, NotSerialized) {}
  );
});
