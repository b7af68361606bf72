import assert from "node:assert/strict";
import { test } from "node:test";
import { byteSum } from "../../src/acpi/bytes.ts";
import { BIOS_RSDP_SCAN_END_GPA, BIOS_RSDP_SCAN_START_GPA, layoutAcpiTables } from "../../src/acpi/layout.ts";
import { beginSdt, finishSdt, VIOMMU_SDT_IDENTITY } from "../../src/acpi/sdt.ts";
import { describeVirtioPciIommu } from "../../src/acpi/viot.ts";

const platform = {
  apicIds: [0, 1],
  dual8259Present: true,
  pciRoot: {
    segment: 0,
    busStart: 0,
    busEnd: 0,
    mmio32: { min: 0xc000_0000, max: 0xdfff_ffff },
    ecamBaseGpa: 0xe000_0000,
  },
  com1: { ioPort: 0x3f8, irq: 4 },
  viot: describeVirtioPciIommu({ iommuBdf: 0x08, endpointBdfs: [0x10] }),
};

/** What Linux does from the RSDP: follow XsdtAddress, then each entry, then FADT.X_DSDT. */
function walkFromRsdp(memory: Map<number, Uint8Array>, rsdpGpa: number): string[] {
  const rsdp = memory.get(rsdpGpa)!;
  assert.equal(Buffer.from(rsdp.subarray(0, 8)).toString("latin1"), "RSD PTR ");
  assert.equal(byteSum(rsdp, 0, 20), 0);
  assert.equal(byteSum(rsdp), 0);
  const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
  const xsdt = memory.get(Number(view(rsdp).getBigUint64(24, true)))!;
  assert.equal(byteSum(xsdt), 0);
  const found: string[] = [];
  for (let at = 36; at < xsdt.length; at += 8) {
    const table = memory.get(Number(view(xsdt).getBigUint64(at, true)));
    assert.ok(table !== undefined, "XSDT entry points at a table");
    assert.equal(byteSum(table), 0);
    const sig = Buffer.from(table.subarray(0, 4)).toString("latin1");
    found.push(sig);
    if (sig === "FACP") {
      const dsdt = memory.get(Number(view(table).getBigUint64(140, true)));
      assert.ok(dsdt !== undefined && byteSum(dsdt) === 0, "X_DSDT points at the DSDT");
      found.push(Buffer.from(dsdt.subarray(0, 4)).toString("latin1"));
    }
  }
  return found;
}

test("layout: RSDP in the BIOS scan area, every table reachable from it with valid checksums", () => {
  const set = layoutAcpiTables(platform, {
    rsdpGpa: BIOS_RSDP_SCAN_START_GPA,
    limitGpa: BIOS_RSDP_SCAN_END_GPA,
  });
  assert.equal(set.tables[0].signature, "RSD PTR ");
  assert.equal(set.tables[0].gpa, 0xe0000);
  const memory = new Map(set.tables.map((t) => [t.gpa, t.bytes]));
  assert.deepEqual(walkFromRsdp(memory, set.rsdpGpa), ["FACP", "DSDT", "APIC", "MCFG", "VIOT"]);
  for (const t of set.tables.slice(1)) assert.equal(t.gpa % 8, 0, `${t.signature} 8-byte aligned`);
  assert.ok(set.endGpa <= BIOS_RSDP_SCAN_END_GPA);
});

test("layout: tables may live elsewhere (RSDP passed via boot params), extra tables such as a DMAR are listed", () => {
  const w = beginSdt("DMAR", 1, VIOMMU_SDT_IDENTITY).u8(38).u8(1).zeros(10);
  const dmar = finishSdt(w);
  const set = layoutAcpiTables(
    { ...platform, extraTables: [dmar] },
    { rsdpGpa: 0x9f000, tablesGpa: 0x7fe0_0000 },
  );
  const memory = new Map(set.tables.map((t) => [t.gpa, t.bytes]));
  assert.deepEqual(walkFromRsdp(memory, 0x9f000), ["FACP", "DSDT", "APIC", "MCFG", "VIOT", "DMAR"]);
  assert.equal(set.tables[1].gpa, 0x7fe0_0000);
});

test("layout: refuses a misaligned RSDP, an overflowing area, a bad extra table, sleep without _S5_", () => {
  assert.throws(() => layoutAcpiTables(platform, { rsdpGpa: 0xe0008 }), /16-byte/);
  assert.throws(
    () => layoutAcpiTables(platform, { rsdpGpa: 0xfff00, limitGpa: BIOS_RSDP_SCAN_END_GPA }),
    /past/,
  );
  const broken = finishSdt(beginSdt("DMAR", 1, VIOMMU_SDT_IDENTITY).zeros(12));
  broken[20] ^= 1;
  assert.throws(
    () => layoutAcpiTables({ ...platform, extraTables: [broken] }, { rsdpGpa: 0xe0000 }),
    /checksum/,
  );
  assert.throws(
    () =>
      layoutAcpiTables(
        {
          ...platform,
          fadt: {
            sleep: {
              control: { space: 1, bitWidth: 8, bitOffset: 0, accessSize: 1, address: 0x3c1 },
              status: { space: 1, bitWidth: 8, bitOffset: 0, accessSize: 1, address: 0x3c2 },
            },
          },
        },
        { rsdpGpa: 0xe0000 },
      ),
    /_S5_/,
  );
  assert.throws(() => layoutAcpiTables(platform, { rsdpGpa: 0xe0000, tablesGpa: 0xe0010 }), /overlaps/);
});
