/**
 * Lays out a whole ACPI table set in guest-physical memory: the RSDP, the XSDT, the FADT (with
 * X_DSDT), the DSDT, the MADT, the MCFG when the PCI root has an ECAM, the VIOT when there is a
 * virtio-iommu, and any finished tables handed in (a DMAR from src/vtd/, an SSDT...).
 *
 * The RSDP goes where the guest will look: in the BIOS area 0xE0000-0xFFFFF, which Linux scans on
 * 16-byte boundaries (ACPI 6.5 5.2.5.1), or anywhere when its address is passed through
 * boot_params.acpi_rsdp_addr or PVH hvm_start_info.rsdp_paddr. The other tables follow it, each
 * 8-byte aligned. The memory holding them must be reported as reserved (or ACPI) in the e820 map.
 */

import { byteSum } from "./bytes.ts";
import { buildDsdt, type PciRootBridge, type SerialPort } from "./dsdt.ts";
import { buildFadt, FADT_SIZE, type FadtOptions } from "./fadt.ts";
import { buildMadt, type InterruptSourceOverride, type IoApicEntry } from "./madt.ts";
import { buildMcfg } from "./mcfg.ts";
import { buildRsdp, RSDP_ALIGNMENT, RSDP_SIZE } from "./rsdp.ts";
import { SDT_HEADER_SIZE, type SdtIdentity, sdtSignature, VIOMMU_SDT_IDENTITY } from "./sdt.ts";
import { buildViot, type ViotDescription } from "./viot.ts";
import { buildXsdt, XSDT_ENTRY_SIZE } from "./xsdt.ts";

/** Where legacy OSes (and Linux without an explicit RSDP address) search for the RSDP. */
export const BIOS_RSDP_SCAN_START_GPA = 0xe0000;
export const BIOS_RSDP_SCAN_END_GPA = 0x100000;
export const TABLE_ALIGNMENT = 8;

export interface AcpiPlatform {
  readonly identity?: SdtIdentity;
  /** APIC ID per CPU (ACPI processor UID = index). */
  readonly apicIds: readonly number[];
  /** The guest has a PC-AT dual 8259 (KVM full in-kernel irqchip): MADT PCAT_COMPAT. */
  readonly dual8259Present: boolean;
  readonly ioApics?: readonly IoApicEntry[];
  readonly interruptOverrides?: readonly InterruptSourceOverride[];
  /** Describe every CPU with an x2APIC entry, not only APIC IDs >= 255. */
  readonly forceX2apic?: boolean;
  /** The PCI root bridge; with `ecamBaseGpa` an MCFG and a PNP0C02 reservation are added. */
  readonly pciRoot?: PciRootBridge;
  readonly com1?: SerialPort;
  readonly fadt?: Omit<FadtOptions, "dsdtGpa">;
  /** SLP_TYP of S5, required with `fadt.sleep` (the DSDT's _S5_). */
  readonly s5SleepType?: number;
  readonly viot?: ViotDescription;
  /** Finished tables (header and checksum already valid), e.g. the DMAR built by src/vtd/. */
  readonly extraTables?: readonly Uint8Array[];
}

export interface AcpiPlacement {
  /** 16-byte aligned. */
  readonly rsdpGpa: number;
  /** Where the XSDT and the rest start; default: right after the RSDP. */
  readonly tablesGpa?: number;
  /** Exclusive upper bound the whole set must fit below (e.g. BIOS_RSDP_SCAN_END_GPA). */
  readonly limitGpa?: number;
}

export interface PlacedTable {
  /** "RSD PTR " for the RSDP, else the SDT signature. */
  readonly signature: string;
  readonly gpa: number;
  readonly bytes: Uint8Array;
}

export interface AcpiTableSet {
  readonly rsdpGpa: number;
  /** RSDP first, then the tables in address order. */
  readonly tables: readonly PlacedTable[];
  /** First byte after the last table. */
  readonly endGpa: number;
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function checkFinishedTable(table: Uint8Array): void {
  const declared = new DataView(table.buffer, table.byteOffset, table.byteLength).getUint32(4, true);
  if (table.length < SDT_HEADER_SIZE || declared !== table.length) {
    throw new Error(`ACPI table ${sdtSignature(table)}: header length ${declared} != ${table.length} bytes`);
  }
  if (byteSum(table) !== 0)
    throw new Error(`ACPI table ${sdtSignature(table)}: checksum does not sum to zero`);
}

export function layoutAcpiTables(platform: AcpiPlatform, placement: AcpiPlacement): AcpiTableSet {
  const identity = platform.identity ?? VIOMMU_SDT_IDENTITY;
  if (placement.rsdpGpa % RSDP_ALIGNMENT !== 0) throw new RangeError("the RSDP must be 16-byte aligned");
  if (platform.fadt?.sleep !== undefined && platform.s5SleepType === undefined) {
    throw new Error("FADT sleep registers need s5SleepType for the DSDT's _S5_");
  }

  // Tables without pointers to other tables are built first; their sizes fix the layout.
  const dsdt = buildDsdt(
    {
      pciRoot: platform.pciRoot,
      com1: platform.com1,
      cpuCount: platform.apicIds.length,
      s5SleepType: platform.s5SleepType,
    },
    identity,
  );
  const xsdtListed: Uint8Array[] = [
    buildMadt(
      {
        apicIds: platform.apicIds,
        dual8259Present: platform.dual8259Present,
        ioApics: platform.ioApics,
        overrides: platform.interruptOverrides,
        forceX2apic: platform.forceX2apic,
      },
      identity,
    ),
  ];
  const root = platform.pciRoot;
  if (root?.ecamBaseGpa !== undefined) {
    xsdtListed.push(
      buildMcfg(
        [{ baseGpa: root.ecamBaseGpa, segment: root.segment, startBus: root.busStart, endBus: root.busEnd }],
        identity,
      ),
    );
  }
  if (platform.viot !== undefined) xsdtListed.push(buildViot(platform.viot, identity));
  for (const extra of platform.extraTables ?? []) {
    checkFinishedTable(extra);
    xsdtListed.push(extra);
  }

  const xsdtGpa = alignUp(placement.tablesGpa ?? placement.rsdpGpa + RSDP_SIZE, TABLE_ALIGNMENT);
  const xsdtSize = SDT_HEADER_SIZE + XSDT_ENTRY_SIZE * (1 + xsdtListed.length);
  const fadtGpa = alignUp(xsdtGpa + xsdtSize, TABLE_ALIGNMENT);
  const dsdtGpa = alignUp(fadtGpa + FADT_SIZE, TABLE_ALIGNMENT);
  let next = alignUp(dsdtGpa + dsdt.length, TABLE_ALIGNMENT);
  const listedGpas: number[] = [];
  for (const table of xsdtListed) {
    listedGpas.push(next);
    next = alignUp(next + table.length, TABLE_ALIGNMENT);
  }

  const tables: PlacedTable[] = [
    { signature: "RSD PTR ", gpa: placement.rsdpGpa, bytes: buildRsdp(xsdtGpa, identity.oemId) },
    { signature: "XSDT", gpa: xsdtGpa, bytes: buildXsdt([fadtGpa, ...listedGpas], identity) },
    { signature: "FACP", gpa: fadtGpa, bytes: buildFadt({ ...platform.fadt, dsdtGpa }, identity) },
    { signature: "DSDT", gpa: dsdtGpa, bytes: dsdt },
    ...xsdtListed.map((bytes, i) => ({ signature: sdtSignature(bytes), gpa: listedGpas[i], bytes })),
  ];
  const endGpa = Math.max(...tables.map((t) => t.gpa + t.bytes.length));
  for (const a of tables) {
    for (const b of tables) {
      if (a !== b && a.gpa < b.gpa + b.bytes.length && b.gpa < a.gpa + a.bytes.length) {
        throw new RangeError(`ACPI ${a.signature} at 0x${a.gpa.toString(16)} overlaps ${b.signature}`);
      }
    }
  }
  if (placement.limitGpa !== undefined && endGpa > placement.limitGpa) {
    throw new RangeError(
      `ACPI tables end at 0x${endGpa.toString(16)}, past 0x${placement.limitGpa.toString(16)}`,
    );
  }
  return { rsdpGpa: placement.rsdpGpa, tables, endGpa };
}
