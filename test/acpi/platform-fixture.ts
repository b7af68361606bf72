/**
 * One complete table set exercising every builder, shared by the ACPICA-based tests, plus the DMAR
 * that src/vtd/ builds, handed in as a finished table the way the VMM does.
 */

import { ioPortByte } from "../../src/acpi/gas.ts";
import { type AcpiTableSet, BIOS_RSDP_SCAN_END_GPA, layoutAcpiTables } from "../../src/acpi/layout.ts";
import { buildDmarTable, SCOPE } from "../../src/vtd/dmar.ts";

export function fullPlatformTables(): AcpiTableSet {
  return layoutAcpiTables(
    {
      apicIds: [0, 1, 2, 3],
      dual8259Present: false,
      pciRoot: {
        segment: 0,
        busStart: 0,
        busEnd: 0xff,
        mmio32: { min: 0xc000_0000, max: 0xdfff_ffff },
        mmio64: { min: 0x100_0000_0000, max: 0x1ff_ffff_ffff },
        ecamBaseGpa: 0xe000_0000,
        intxRoutes: [
          { device: 1, pin: 0, gsi: 16 },
          { device: 2, pin: 1, gsi: 17 },
          { device: 3, pin: 0, gsi: 23, link: "GSIH" },
        ],
      },
      com1: { ioPort: 0x3f8, irq: 4 },
      fadt: {
        reset: { register: ioPortByte(0x3c0), value: 1 },
        sleep: { control: ioPortByte(0x3c1), status: ioPortByte(0x3c2) },
      },
      s5SleepType: 5,
      interruptOverrides: [{ isaIrq: 9, gsi: 9, flags: 0b1111 }],
      extraTables: [
        buildDmarTable({
          hawBits: 39,
          interruptRemapping: true,
          units: [
            {
              registerBase: 0xfed9_0000,
              includePciAll: false, // explicit scopes, as the VMM emits: the iommu=on function 00:02.0
              scopes: [
                { type: SCOPE.PCI_ENDPOINT, startBus: 0, path: [{ device: 2, function: 0 }] },
                { type: SCOPE.IOAPIC, enumerationId: 0, startBus: 0xff, path: [{ device: 0, function: 0 }] },
              ],
            },
          ],
        }),
      ],
      viot: {
        iommus: [{ kind: "virtio-pci", segment: 0, bdf: 0x08 }],
        pciRanges: [
          { iommu: 0, endpointStart: 0x10, segmentStart: 0, segmentEnd: 0, bdfStart: 0x10, bdfEnd: 0xff },
        ],
      },
    },
    { rsdpGpa: 0xe0000, limitGpa: BIOS_RSDP_SCAN_END_GPA },
  );
}
