/**
 * The guest's physical memory map, in the E820 form both boot paths hand to Linux: boot_params
 * e820_table (Linux boot protocol, Documentation/arch/x86/zero-page.rst) and PVH
 * hvm_memmap_table_entry (Xen start_info.h), whose type values are the E820 ones (ACPI 6.5 15.1,
 * Table 15.1 Address Range Types).
 *
 * Layout for `ramSizeBytes` of guest RAM (the convention of QEMU, Firecracker, Cloud Hypervisor):
 *   [0, 0x9FC00)            RAM (conventional memory below the EBDA)
 *   [0x9FC00, 0x100000)     reserved: EBDA, VGA hole, option ROMs, BIOS area (ACPI tables live here)
 *   [0x100000, lowRamEnd)   RAM, up to the start of the 32-bit MMIO hole
 *   [mmioHoleStart, 4 GiB)  not RAM: PCI MMIO window, ECAM, IOAPIC 0xFEC00000, VT-d, LAPIC 0xFEE00000
 *   [4 GiB, ...)            the rest of RAM, when there is more than fits below the hole
 * The PCI windows themselves are not listed: Linux clips host bridge windows that overlap E820
 * reserved ranges. Callers add reserved ranges for what must be kept away from the OS (ECAM, the
 * IOAPIC/LAPIC pages) and they are cut out of RAM where they overlap it.
 */

export const E820_TYPE = {
  ram: 1,
  reserved: 2,
  acpi: 3,
  nvs: 4,
  unusable: 5,
} as const;
export type E820Type = (typeof E820_TYPE)[keyof typeof E820_TYPE];

export interface E820Entry {
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly type: E820Type;
}

export const MIB = 1 << 20;
export const GIB = 1024 * MIB;
export const FOUR_GIB = 4 * GIB;

/** Start of the Extended BIOS Data Area: the top of conventional RAM. */
export const EBDA_GPA = 0x9fc00;
export const HIGH_MEMORY_GPA = 0x100000;
/** Default start of the 32-bit MMIO hole (Firecracker and Cloud Hypervisor use 3 GiB). */
export const DEFAULT_MMIO_HOLE_GPA = 0xc000_0000;
/** IOAPIC (0xFEC00000), VT-d/HPET area and LAPIC (0xFEE00000) pages: [0xFEC00000, 0xFEF00000). */
export const APIC_AREA = { gpa: 0xfec0_0000, sizeBytes: 0x30_0000 } as const;

export interface MemoryRange {
  readonly gpa: number;
  readonly sizeBytes: number;
}

export interface MemoryMapOptions {
  readonly ramSizeBytes: number;
  /** Where low RAM stops and the 32-bit MMIO hole begins; at most 4 GiB. */
  readonly mmioHoleGpa?: number;
  /** Ranges to report as reserved (ECAM, APIC_AREA, ...); RAM under them is cut out. */
  readonly reserved?: readonly MemoryRange[];
}

export interface MemoryMap {
  /** Sorted, non-overlapping, adjacent entries of one type merged. */
  readonly entries: readonly E820Entry[];
  /** Where the VMM backs guest RAM: [0, lowRamEnd) and [4 GiB, ...). */
  readonly ramRegions: readonly MemoryRange[];
}

function checkRange(r: MemoryRange, what: string): void {
  if (!Number.isSafeInteger(r.gpa) || !Number.isSafeInteger(r.sizeBytes) || r.gpa < 0 || r.sizeBytes <= 0) {
    throw new RangeError(
      `${what}: [0x${r.gpa.toString(16)}, +0x${r.sizeBytes.toString(16)}) is not a valid range`,
    );
  }
}

/** `entries` minus [gpa, gpa + sizeBytes). */
function subtract(entries: readonly E820Entry[], cut: MemoryRange): E820Entry[] {
  const cutEnd = cut.gpa + cut.sizeBytes;
  const out: E820Entry[] = [];
  for (const e of entries) {
    const end = e.gpa + e.sizeBytes;
    if (end <= cut.gpa || e.gpa >= cutEnd) {
      out.push(e);
      continue;
    }
    if (e.gpa < cut.gpa) out.push({ gpa: e.gpa, sizeBytes: cut.gpa - e.gpa, type: e.type });
    if (end > cutEnd) out.push({ gpa: cutEnd, sizeBytes: end - cutEnd, type: e.type });
  }
  return out;
}

/** Sorts and merges adjacent or overlapping entries of the same type. */
export function normalizeE820(entries: readonly E820Entry[]): E820Entry[] {
  const sorted = [...entries].sort((a, b) => a.gpa - b.gpa || a.type - b.type);
  const out: E820Entry[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last.type === e.type && last.gpa + last.sizeBytes >= e.gpa) {
      const end = Math.max(last.gpa + last.sizeBytes, e.gpa + e.sizeBytes);
      out[out.length - 1] = { gpa: last.gpa, sizeBytes: end - last.gpa, type: last.type };
    } else {
      if (last !== undefined && last.gpa + last.sizeBytes > e.gpa) {
        throw new RangeError(`E820 entries of different types overlap at 0x${e.gpa.toString(16)}`);
      }
      out.push(e);
    }
  }
  return out;
}

export function buildMemoryMap(options: MemoryMapOptions): MemoryMap {
  const ramSizeBytes = options.ramSizeBytes;
  const holeGpa = options.mmioHoleGpa ?? DEFAULT_MMIO_HOLE_GPA;
  if (!Number.isSafeInteger(ramSizeBytes) || ramSizeBytes < 2 * MIB) {
    throw new RangeError(`guest RAM of ${ramSizeBytes} bytes: at least 2 MiB`);
  }
  if (holeGpa <= HIGH_MEMORY_GPA || holeGpa > FOUR_GIB)
    throw new RangeError("MMIO hole must start in (1 MiB, 4 GiB]");
  const lowRamEnd = Math.min(ramSizeBytes, holeGpa);
  const highRamBytes = ramSizeBytes - lowRamEnd;
  const ramRegions: MemoryRange[] = [{ gpa: 0, sizeBytes: lowRamEnd }];
  let entries: E820Entry[] = [
    { gpa: 0, sizeBytes: EBDA_GPA, type: E820_TYPE.ram },
    { gpa: EBDA_GPA, sizeBytes: HIGH_MEMORY_GPA - EBDA_GPA, type: E820_TYPE.reserved },
    { gpa: HIGH_MEMORY_GPA, sizeBytes: lowRamEnd - HIGH_MEMORY_GPA, type: E820_TYPE.ram },
  ];
  if (highRamBytes > 0) {
    ramRegions.push({ gpa: FOUR_GIB, sizeBytes: highRamBytes });
    entries.push({ gpa: FOUR_GIB, sizeBytes: highRamBytes, type: E820_TYPE.ram });
  }
  for (const r of options.reserved ?? []) {
    checkRange(r, "reserved range");
    entries = subtract(entries, r);
    entries.push({ gpa: r.gpa, sizeBytes: r.sizeBytes, type: E820_TYPE.reserved });
  }
  return { entries: normalizeE820(entries), ramRegions };
}

/** True when [gpa, gpa + sizeBytes) lies inside one RAM entry. */
export function isUsableRam(entries: readonly E820Entry[], gpa: number, sizeBytes: number): boolean {
  return entries.some(
    (e) => e.type === E820_TYPE.ram && gpa >= e.gpa && gpa + sizeBytes <= e.gpa + e.sizeBytes,
  );
}

/**
 * The highest `alignBytes`-aligned address where `sizeBytes` fit inside one RAM entry, at or above
 * `aboveGpa` and ending at or below `belowGpa`; undefined when nothing fits (initrd placement).
 */
export function highestRamFit(
  entries: readonly E820Entry[],
  sizeBytes: number,
  belowGpa: number,
  aboveGpa: number,
  alignBytes = 4096,
): number | undefined {
  let best: number | undefined;
  for (const e of entries) {
    if (e.type !== E820_TYPE.ram) continue;
    const top = Math.min(e.gpa + e.sizeBytes, belowGpa);
    const gpa = Math.floor((top - sizeBytes) / alignBytes) * alignBytes;
    if (gpa >= Math.max(e.gpa, aboveGpa) && (best === undefined || gpa > best)) best = gpa;
  }
  return best;
}
