/**
 * Multiboot (version 0.6.96) kernel loading, as QEMU's -kernel does it for ELF32 test kernels:
 * find the header in the first 8 KiB, load by the a.out-kludge address fields (flags bit 16) or
 * by the ELF program headers, place modules after the kernel, and build the boot information
 * (mem_lower/mem_upper, memory map, command line, modules, boot loader name).
 * Machine state at entry (spec 3.2): EAX = 0x2BADB002, EBX = info address, 32-bit protected
 * mode with flat segments, paging off, interrupts off.
 */
import type { GuestMemory } from "../../engine/guest-memory.ts";
import { ImageError, isElf, PT_LOAD, parseElf } from "../elf.ts";
import { E820_RAM, type E820Entry, LEGACY_HOLE_END } from "./layout.ts";

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
export const MULTIBOOT_SEARCH_BYTES = 8192;

/** Header flags (spec 3.1.2). Bits 0-15 are requirements, 16-31 optional features. */
export const MB_HEADER_PAGE_ALIGN = 1 << 0;
export const MB_HEADER_MEMORY_INFO = 1 << 1;
export const MB_HEADER_VIDEO_MODE = 1 << 2;
export const MB_HEADER_AOUT_KLUDGE = 1 << 16;
const MB_HEADER_KNOWN_REQUIREMENTS = MB_HEADER_PAGE_ALIGN | MB_HEADER_MEMORY_INFO | MB_HEADER_VIDEO_MODE;

/** Info flags (spec 3.3). */
export const MB_INFO_MEMORY = 1 << 0;
export const MB_INFO_CMDLINE = 1 << 2;
export const MB_INFO_MODS = 1 << 3;
export const MB_INFO_MEM_MAP = 1 << 6;
export const MB_INFO_BOOT_LOADER_NAME = 1 << 9;

/** Where the loader puts its structures: below the 1 MiB kernels load at, above the GDT. */
export const BOOT_AREA_START = 0x8000;
export const BOOT_AREA_END = 0x10000;
export const MB_INFO_GPA = 0x9000;
export const MB_INFO_SIZE = 120;
export const MB_MMAP_GPA = 0x9100;
export const MB_MODS_GPA = 0x9400;
export const MB_STRINGS_GPA = 0x9800;
const MB_MAX_MODULES = 32;
const MB_MAX_MMAP_ENTRIES = 32;

export interface MultibootHeader {
  readonly fileOffset: number;
  readonly flags: number;
  readonly headerAddr: number;
  readonly loadAddr: number;
  readonly loadEndAddr: number;
  readonly bssEndAddr: number;
  readonly entryAddr: number;
}

export interface MultibootModule {
  readonly data: Uint8Array;
  readonly cmdline: string;
}

export interface MultibootBoot {
  readonly entry: number;
  readonly infoGpa: number;
  /** [start, end) of the loaded kernel image including bss. */
  readonly kernelStart: number;
  readonly kernelEnd: number;
  readonly modules: readonly { start: number; end: number; cmdline: string }[];
  readonly loadedBy: "aout-kludge" | "elf";
  readonly warnings: readonly string[];
}

/** Finds and validates the Multiboot header; null when the image has none. */
export function findMultibootHeader(image: Uint8Array): MultibootHeader | null {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const limit = Math.min(image.length, MULTIBOOT_SEARCH_BYTES) - 12;
  for (let off = 0; off <= limit; off += 4) {
    if (v.getUint32(off, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = v.getUint32(off + 4, true);
    const checksum = v.getUint32(off + 8, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + checksum) & 0xffffffff) >>> 0 !== 0) continue;
    const kludge = (flags & MB_HEADER_AOUT_KLUDGE) !== 0;
    if (kludge && off + 32 > image.length) throw new ImageError("multiboot header address fields truncated");
    return {
      fileOffset: off,
      flags,
      headerAddr: kludge ? v.getUint32(off + 12, true) : 0,
      loadAddr: kludge ? v.getUint32(off + 16, true) : 0,
      loadEndAddr: kludge ? v.getUint32(off + 20, true) : 0,
      bssEndAddr: kludge ? v.getUint32(off + 24, true) : 0,
      entryAddr: kludge ? v.getUint32(off + 28, true) : 0,
    };
  }
  return null;
}

function checkLoadRange(memory: GuestMemory, gpa: number, sizeBytes: number, what: string): void {
  if (sizeBytes === 0) return;
  if (!memory.isRam(gpa, sizeBytes)) {
    throw new ImageError(
      `${what} [0x${gpa.toString(16)}, 0x${(gpa + sizeBytes).toString(16)}) is not inside guest RAM`,
    );
  }
  if (gpa < BOOT_AREA_END && gpa + sizeBytes > BOOT_AREA_START) {
    throw new ImageError(`${what} at 0x${gpa.toString(16)} overlaps the boot information area`);
  }
}

/** Loads a Multiboot kernel and its modules into `memory` and writes the boot information. */
export function loadMultiboot(
  memory: GuestMemory,
  image: Uint8Array,
  options: { cmdline: string; modules: readonly MultibootModule[]; memoryMap: readonly E820Entry[] },
): MultibootBoot {
  const header = findMultibootHeader(image);
  if (header === null) throw new ImageError("no multiboot header in the first 8 KiB");
  const warnings: string[] = [];
  const unknown = header.flags & 0xffff & ~MB_HEADER_KNOWN_REQUIREMENTS;
  if (unknown !== 0)
    throw new ImageError(`multiboot header requires unsupported features 0x${unknown.toString(16)}`);
  if (header.flags & MB_HEADER_VIDEO_MODE)
    warnings.push("kernel asks for a video mode; there is no framebuffer (as in QEMU)");

  const { entry, kernelStart, kernelEnd, loadedBy } =
    header.flags & MB_HEADER_AOUT_KLUDGE
      ? loadByHeaderAddresses(memory, image, header)
      : loadElfKernel(memory, image);
  if (!memory.isRam(entry, 1)) throw new ImageError(`kernel entry 0x${entry.toString(16)} is not in RAM`);

  // Modules go after the kernel, each page-aligned (header flag 0 asks for it; we always do).
  if (options.modules.length > MB_MAX_MODULES) throw new ImageError(`at most ${MB_MAX_MODULES} modules`);
  const modules: { start: number; end: number; cmdline: string }[] = [];
  let next = Math.ceil(Math.max(kernelEnd, LEGACY_HOLE_END) / 4096) * 4096;
  for (const m of options.modules) {
    checkLoadRange(memory, next, m.data.length, "module");
    memory.write(next, m.data);
    modules.push({ start: next, end: next + m.data.length, cmdline: m.cmdline });
    next = Math.ceil((next + m.data.length) / 4096) * 4096;
  }

  const infoGpa = MB_INFO_GPA;
  memory.fill(BOOT_AREA_START, BOOT_AREA_END - BOOT_AREA_START, 0);
  let strings = MB_STRINGS_GPA;
  const putString = (s: string): number => {
    const bytes = new TextEncoder().encode(s);
    if (strings + bytes.length + 1 > BOOT_AREA_END)
      throw new ImageError("command lines too long for the boot area");
    const at = strings;
    memory.write(at, bytes);
    memory.writeU8(at + bytes.length, 0);
    strings += bytes.length + 1;
    return at;
  };

  // mem_lower: KiB of RAM from 0 (at most 640); mem_upper: KiB from 1 MiB to the first hole.
  const lowRam = options.memoryMap.find((e) => e.type === E820_RAM && e.gpa === 0);
  const upperRam = options.memoryMap.find((e) => e.type === E820_RAM && e.gpa === LEGACY_HOLE_END);
  const memLowerKiB = Math.min(640, Math.floor((lowRam?.sizeBytes ?? 0) / 1024));
  const memUpperKiB = Math.floor((upperRam?.sizeBytes ?? 0) / 1024);

  if (options.memoryMap.length > MB_MAX_MMAP_ENTRIES) throw new ImageError("memory map too long");
  // Spec 3.3: each entry is { u32 size (of the rest, 20), u64 base_addr, u64 length, u32 type }.
  options.memoryMap.forEach((e, i) => {
    const o = MB_MMAP_GPA + i * 24;
    memory.writeU32(o, 20);
    memory.writeU64(o + 4, BigInt(e.gpa));
    memory.writeU64(o + 12, BigInt(e.sizeBytes));
    memory.writeU32(o + 20, e.type);
  });
  modules.forEach((m, i) => {
    const o = MB_MODS_GPA + i * 16;
    memory.writeU32(o, m.start);
    memory.writeU32(o + 4, m.end);
    memory.writeU32(o + 8, putString(m.cmdline));
  });

  const flags = MB_INFO_MEMORY | MB_INFO_CMDLINE | MB_INFO_MODS | MB_INFO_MEM_MAP | MB_INFO_BOOT_LOADER_NAME;
  memory.writeU32(infoGpa + 0, flags);
  memory.writeU32(infoGpa + 4, memLowerKiB);
  memory.writeU32(infoGpa + 8, memUpperKiB);
  memory.writeU32(infoGpa + 16, putString(options.cmdline));
  memory.writeU32(infoGpa + 20, modules.length);
  memory.writeU32(infoGpa + 24, MB_MODS_GPA);
  memory.writeU32(infoGpa + 44, options.memoryMap.length * 24);
  memory.writeU32(infoGpa + 48, MB_MMAP_GPA);
  memory.writeU32(infoGpa + 64, putString("viommu"));

  return { entry, infoGpa, kernelStart, kernelEnd, modules, loadedBy, warnings };
}

/** Where a Multiboot kernel was placed and where it starts. */
interface LoadedKernel {
  readonly entry: number;
  readonly kernelStart: number;
  readonly kernelEnd: number;
  readonly loadedBy: MultibootBoot["loadedBy"];
}

/** Loads the kernel by the header's address fields (flag 16, the "a.out kludge"). */
function loadByHeaderAddresses(memory: GuestMemory, image: Uint8Array, h: MultibootHeader): LoadedKernel {
  // Spec 3.1.3: the file offset of load_addr is header offset - (header_addr - load_addr).
  if (h.headerAddr < h.loadAddr) throw new ImageError("multiboot header_addr below load_addr");
  const fileStart = h.fileOffset - (h.headerAddr - h.loadAddr);
  if (fileStart < 0) throw new ImageError("multiboot load_addr lies before the start of the file");
  const loadBytes = h.loadEndAddr === 0 ? image.length - fileStart : h.loadEndAddr - h.loadAddr;
  if (loadBytes < 0 || fileStart + loadBytes > image.length) {
    throw new ImageError("multiboot load_end_addr beyond the image");
  }
  const end = h.bssEndAddr === 0 ? h.loadAddr + loadBytes : h.bssEndAddr;
  if (end < h.loadAddr + loadBytes) throw new ImageError("multiboot bss_end_addr below load_end_addr");
  checkLoadRange(memory, h.loadAddr, end - h.loadAddr, "kernel image");
  memory.write(h.loadAddr, image.subarray(fileStart, fileStart + loadBytes));
  memory.fill(h.loadAddr + loadBytes, end - h.loadAddr - loadBytes, 0);
  return { entry: h.entryAddr, kernelStart: h.loadAddr, kernelEnd: end, loadedBy: "aout-kludge" };
}

/** Loads an ELF32 kernel's PT_LOAD segments at their physical addresses. */
function loadElfKernel(memory: GuestMemory, image: Uint8Array): LoadedKernel {
  if (!isElf(image)) throw new ImageError("multiboot kernel without address fields must be ELF");
  const elf = parseElf(image);
  if (elf.is64) throw new ImageError("multiboot kernels are ELF32 (this one is ELF64)");
  let kernelStart = Number.MAX_SAFE_INTEGER;
  let kernelEnd = 0;
  let entry = elf.entry;
  let entryTranslated = false;
  for (const seg of elf.segments) {
    if (seg.type !== PT_LOAD || seg.memSizeBytes === 0) continue;
    checkLoadRange(memory, seg.paddr, seg.memSizeBytes, "ELF segment");
    memory.write(seg.paddr, image.subarray(seg.fileOffset, seg.fileOffset + seg.fileSizeBytes));
    memory.fill(seg.paddr + seg.fileSizeBytes, seg.memSizeBytes - seg.fileSizeBytes, 0);
    kernelStart = Math.min(kernelStart, seg.paddr);
    kernelEnd = Math.max(kernelEnd, seg.paddr + seg.memSizeBytes);
    // A higher-half kernel links its entry at a virtual address: run it at the physical one.
    if (
      !entryTranslated &&
      elf.entry >= seg.vaddr &&
      elf.entry < seg.vaddr + seg.memSizeBytes &&
      seg.vaddr !== seg.paddr
    ) {
      entry = elf.entry - seg.vaddr + seg.paddr;
      entryTranslated = true;
    }
  }
  if (kernelEnd === 0) throw new ImageError("ELF kernel has no loadable segment");
  return { entry, kernelStart, kernelEnd, loadedBy: "elf" };
}
