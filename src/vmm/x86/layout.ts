/**
 * The guest-physical address map of the machine, close to QEMU's PC layout so bare-metal test
 * kernels written for QEMU find what they expect:
 *
 *   [0, lowRamEnd)                RAM (at most 3 GiB below 4 GiB)
 *   [0xA0000, 0x100000)           legacy VGA/BIOS window: RAM-backed, reported reserved
 *   [0xC0000000, 0xE0000000)      32-bit PCI memory window (BARs)
 *   [0xE0000000, 0xF0000000)      PCI ECAM (buses 0-255)
 *   0xFEC00000                    IOAPIC
 *   0xFED90000                    VT-d remapping unit (with --iommu intel)
 *   0xFEE00000                    local APICs (in KVM)
 *   0xFFFBC000 / 0xFFFBD000       KVM identity-map page / TSS pages (not RAM, not MMIO)
 *   [4 GiB, ...)                  the rest of RAM
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export const LOW_RAM_MAX_END = 0xc0000000;
export const HIGH_RAM_BASE = 0x1_0000_0000;
export const LEGACY_HOLE_START = 0xa0000;
export const LEGACY_HOLE_END = 0x100000;
export const EBDA_START = 0x9fc00;
export const PCI_MMIO32_BASE = 0xc0000000;
export const PCI_MMIO32_END = 0xe0000000;
export const PCI_ECAM_BASE = 0xe0000000;
export const PCI_ECAM_SIZE = 0x10000000;
export const IOAPIC_GPA = 0xfec00000;
export const VTD_GPA = 0xfed90000;
export const LAPIC_GPA = 0xfee00000;
export const KVM_IDENTITY_MAP_GPA = 0xfffbc000;
export const KVM_TSS_GPA = 0xfffbd000;

/**
 * The port ranges the platform decodes itself (the summary's "unclaimed" list is everything
 * else), for options that place a device in port space: isa-debug-exit may sit at any other
 * iobase, as on QEMU, but not on top of these. The PCI I/O window is where firmware puts I/O BARs.
 */
export const PLATFORM_PORTS: readonly {
  readonly name: string;
  readonly base: number;
  readonly sizeBytes: number;
}[] = [
  { name: "COM1", base: 0x3f8, sizeBytes: 8 },
  { name: "fw_cfg", base: 0x510, sizeBytes: 2 },
  { name: "fw_cfg DMA", base: 0x514, sizeBytes: 8 },
  { name: "ACPI sleep/reset", base: 0x600, sizeBytes: 3 },
  { name: "PCI configuration", base: 0xcf8, sizeBytes: 8 },
  { name: "the PCI I/O BAR window", base: 0xc000, sizeBytes: 0x4000 },
];

/** The platform port range that [base, base + sizeBytes) overlaps, if any. */
export function platformPortOverlap(base: number, sizeBytes: number): string | undefined {
  for (const r of PLATFORM_PORTS) {
    if (base < r.base + r.sizeBytes && r.base < base + sizeBytes) {
      return `${r.name} (0x${r.base.toString(16)}-0x${(r.base + r.sizeBytes - 1).toString(16)})`;
    }
  }
  return undefined;
}

export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;

export interface E820Entry {
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly type: number;
}

export interface RamLayout {
  readonly totalBytes: number;
  /** RAM regions: [0, lowEnd) and, above 3 GiB of RAM, [4 GiB, 4 GiB + rest). */
  readonly regions: readonly { gpa: number; sizeBytes: number; hostOffset: number }[];
  readonly lowRamEnd: number;
}

export function ramLayout(totalBytes: number): RamLayout {
  const low = Math.min(totalBytes, LOW_RAM_MAX_END);
  const regions = [{ gpa: 0, sizeBytes: low, hostOffset: 0 }];
  if (totalBytes > low) regions.push({ gpa: HIGH_RAM_BASE, sizeBytes: totalBytes - low, hostOffset: low });
  return { totalBytes, regions, lowRamEnd: low };
}

/** The memory map reported to the guest (multiboot mmap, e820, fw_cfg etc/e820). */
export function e820Map(layout: RamLayout, extraReserved: readonly E820Entry[] = []): E820Entry[] {
  const map: E820Entry[] = [
    { gpa: 0, sizeBytes: EBDA_START, type: E820_RAM },
    { gpa: EBDA_START, sizeBytes: LEGACY_HOLE_START - EBDA_START, type: E820_RESERVED },
    { gpa: 0xf0000, sizeBytes: LEGACY_HOLE_END - 0xf0000, type: E820_RESERVED },
  ];
  if (layout.lowRamEnd > LEGACY_HOLE_END) {
    map.push({ gpa: LEGACY_HOLE_END, sizeBytes: layout.lowRamEnd - LEGACY_HOLE_END, type: E820_RAM });
  }
  for (const r of layout.regions)
    if (r.gpa >= HIGH_RAM_BASE) map.push({ gpa: r.gpa, sizeBytes: r.sizeBytes, type: E820_RAM });
  map.push(...extraReserved);
  return map.sort((a, b) => a.gpa - b.gpa);
}

/** QEMU's "etc/e820" fw_cfg file: packed { u64 address, u64 length, u32 type } entries. */
export function e820Bytes(map: readonly E820Entry[]): Uint8Array {
  const out = new Uint8Array(map.length * 20);
  const v = new DataView(out.buffer);
  map.forEach((e, i) => {
    v.setBigUint64(i * 20, BigInt(e.gpa), true);
    v.setBigUint64(i * 20 + 8, BigInt(e.sizeBytes), true);
    v.setUint32(i * 20 + 16, e.type, true);
  });
  return out;
}
