/**
 * The zero page (struct boot_params, 4096 bytes) a 64-bit boot loader hands Linux in RSI
 * (Documentation/arch/x86/zero-page.rst and boot.rst "64-bit BOOT PROTOCOL").
 *
 * Fields written here (everything else stays zero, as boot.rst asks: "the boot loader should
 * zero boot_params, then copy the setup header"):
 *   0x070 acpi_rsdp_addr u64   0x0C0 ext_ramdisk_image u32   0x0C4 ext_ramdisk_size u32
 *   0x0C8 ext_cmd_line_ptr u32   0x1E8 e820_entries u8   0x1F1.. the setup header copied from the
 *   image, then in it: 0x210 type_of_loader = 0xFF (undefined loader), 0x218 ramdisk_image,
 *   0x21C ramdisk_size, 0x228 cmd_line_ptr   0x2D0 e820_table[128] of {addr u64, size u64, type u32}
 */

import {
  type BzImage,
  HEADER_OFFSET,
  kernelRuntimeStartGpa,
  SETUP_HEADER_GPA_OFFSET,
  XLOADFLAGS,
} from "./bzimage.ts";
import { type E820Entry, highestRamFit } from "./e820.ts";

export const ZERO_PAGE_SIZE = 4096;
export const ZERO_PAGE_OFFSET = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  sentinel: 0x1ef,
  e820Table: 0x2d0,
} as const;
export const E820_ENTRY_SIZE = 20;
/** E820_MAX_ENTRIES_ZEROPAGE. */
export const E820_MAX_ENTRIES = 128;
/** boot.rst: "Boot loader ID ... 0xFF means undefined". */
export const TYPE_OF_LOADER_UNDEFINED = 0xff;

export interface ZeroPageOptions {
  readonly kernel: BzImage;
  /** Guest-physical address of the NUL-terminated command line. */
  readonly cmdlineGpa: number;
  /** Length of the command line without its NUL (checked against cmdline_size). */
  readonly cmdlineLengthBytes: number;
  readonly initrd?: { readonly gpa: number; readonly sizeBytes: number };
  readonly e820: readonly E820Entry[];
  /** RSDP address for Linux to use instead of scanning the BIOS area (0 or absent: scan). */
  readonly acpiRsdpGpa?: number;
}

function splitU64(value: number): [low: number, high: number] {
  if (!Number.isSafeInteger(value) || value < 0)
    throw new RangeError(`address ${value} is not a safe integer`);
  return [value % 2 ** 32, Math.floor(value / 2 ** 32)];
}

export function buildZeroPage(options: ZeroPageOptions): Uint8Array {
  const { kernel } = options;
  const header = kernel.header;
  const page = new Uint8Array(ZERO_PAGE_SIZE);
  const v = new DataView(page.buffer);
  // boot.rst: copy the setup header, from 0x1F1 to its end (0x202 + byte[0x201]).
  page.set(kernel.image.subarray(SETUP_HEADER_GPA_OFFSET, header.headerEnd), SETUP_HEADER_GPA_OFFSET);
  page[HEADER_OFFSET.typeOfLoader] = TYPE_OF_LOADER_UNDEFINED;

  if (options.cmdlineLengthBytes > header.cmdlineSize) {
    throw new RangeError(
      `command line of ${options.cmdlineLengthBytes} bytes exceeds cmdline_size ${header.cmdlineSize}`,
    );
  }
  const [cmdLow, cmdHigh] = splitU64(options.cmdlineGpa);
  v.setUint32(HEADER_OFFSET.cmdLinePtr, cmdLow, true);
  v.setUint32(ZERO_PAGE_OFFSET.extCmdLinePtr, cmdHigh, true);

  if (options.initrd !== undefined) {
    const { gpa, sizeBytes } = options.initrd;
    // boot.rst: XLF_CAN_BE_LOADED_ABOVE_4G lets kernel, boot_params, cmdline and ramdisk sit above 4G.
    const above4g = (header.xloadflags & XLOADFLAGS.CAN_BE_LOADED_ABOVE_4G) !== 0;
    if (gpa + sizeBytes - 1 > header.initrdAddrMax && !above4g) {
      throw new RangeError(`initrd ends above initrd_addr_max 0x${header.initrdAddrMax.toString(16)}`);
    }
    const [imageLow, imageHigh] = splitU64(gpa);
    const [sizeLow, sizeHigh] = splitU64(sizeBytes);
    v.setUint32(HEADER_OFFSET.ramdiskImage, imageLow, true);
    v.setUint32(HEADER_OFFSET.ramdiskSize, sizeLow, true);
    v.setUint32(ZERO_PAGE_OFFSET.extRamdiskImage, imageHigh, true);
    v.setUint32(ZERO_PAGE_OFFSET.extRamdiskSize, sizeHigh, true);
  }

  if (options.e820.length > E820_MAX_ENTRIES)
    throw new RangeError(`${options.e820.length} e820 entries > 128`);
  page[ZERO_PAGE_OFFSET.e820Entries] = options.e820.length;
  options.e820.forEach((entry, i) => {
    const at = ZERO_PAGE_OFFSET.e820Table + i * E820_ENTRY_SIZE;
    v.setBigUint64(at, BigInt(entry.gpa), true);
    v.setBigUint64(at + 8, BigInt(entry.sizeBytes), true);
    v.setUint32(at + 16, entry.type, true);
  });

  if (options.acpiRsdpGpa !== undefined)
    v.setBigUint64(ZERO_PAGE_OFFSET.acpiRsdpAddr, BigInt(options.acpiRsdpGpa), true);
  return page;
}

/**
 * The highest page-aligned place for an initrd of `sizeBytes`: inside RAM, at or below
 * initrd_addr_max (boot.rst: "the highest address that may be occupied by the initial ramdisk"),
 * above the kernel's runtime footprint (start + init_size) and below `belowGpa` if given.
 */
export function chooseInitrdGpa(
  kernel: BzImage,
  kernelLoadGpa: number,
  sizeBytes: number,
  e820: readonly E820Entry[],
  belowGpa = Number.MAX_SAFE_INTEGER,
): number {
  const runtimeEnd = kernelRuntimeStartGpa(kernel.header, kernelLoadGpa) + kernel.header.initSizeBytes;
  const footprintEnd = Math.max(runtimeEnd, kernelLoadGpa + kernel.protectedModeKernel.length);
  const limit = Math.min(kernel.header.initrdAddrMax + 1, belowGpa);
  const gpa = highestRamFit(e820, sizeBytes, limit, footprintEnd);
  if (gpa !== undefined) return gpa;
  throw new RangeError(`no RAM for an initrd of ${sizeBytes} bytes below 0x${limit.toString(16)}`);
}
