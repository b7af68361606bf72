/**
 * The Xen PVH boot ABI as Linux implements it for direct kernel boot of a vmlinux (Xen
 * docs/misc/pvh.pandoc and xen/include/public/arch-x86/hvm/start_info.h; Linux
 * arch/x86/platform/pvh/).
 *
 * The entry point is the XEN_ELFNOTE_PHYS32_ENTRY note (type 18, owner "Xen", xen/include/public/
 * elfnote.h): a 32-bit physical address. Entry state: 32-bit protected mode, paging off
 * (CR0.PE = 1, other writable CR0 bits and all of CR4 clear), CS a flat 32-bit execute/read code
 * segment and DS/ES/SS flat 32-bit read/write data (base 0, limit 4 GiB), TR a 32-bit TSS with
 * base 0 and limit 0x67, EFLAGS.IF/TF/VM clear, EBX = physical address of hvm_start_info.
 *
 * struct hvm_start_info (version 1, 56 bytes):
 *   0 magic u32 = 0x336ec578   4 version u32   8 flags u32   12 nr_modules u32
 *   16 modlist_paddr u64   24 cmdline_paddr u64   32 rsdp_paddr u64
 *   40 memmap_paddr u64   48 memmap_entries u32   52 reserved u32
 * struct hvm_modlist_entry (32 bytes): paddr u64, size u64, cmdline_paddr u64, reserved u64
 * struct hvm_memmap_table_entry (24 bytes): addr u64, size u64, type u32 (E820 types), reserved u32
 */

import type { E820Entry } from "./e820.ts";
import { type Elf64, ElfError, elfNotes } from "./elf.ts";
import { CR0_PE, type EntryState, RFLAGS_RESERVED } from "./long-mode.ts";
import { encodeGdt, GDT_ENTRY, segmentFromGdt } from "./segments.ts";

export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
export const HVM_START_MAGIC = 0x336e_c578;
export const HVM_START_INFO_VERSION = 1;
export const HVM_START_INFO_SIZE = 56;
export const HVM_MODLIST_ENTRY_SIZE = 32;
export const HVM_MEMMAP_ENTRY_SIZE = 24;

/** The PHYS32 entry address from the vmlinux notes, or undefined when the kernel lacks PVH. */
export function findPvhEntry(elf: Elf64): number | undefined {
  for (const note of elfNotes(elf)) {
    if (note.name !== "Xen" || note.type !== XEN_ELFNOTE_PHYS32_ENTRY) continue;
    const v = new DataView(note.desc.buffer, note.desc.byteOffset, note.desc.byteLength);
    // Linux emits the value with _ASM_PTR (8 bytes on x86-64); the ABI defines a 32-bit address.
    if (note.desc.length === 4) return v.getUint32(0, true);
    if (note.desc.length === 8) {
      const value = v.getBigUint64(0, true);
      if (value >= 1n << 32n) throw new ElfError(`PVH entry 0x${value.toString(16)} is not a 32-bit address`);
      return Number(value);
    }
    throw new ElfError(`PVH entry note of ${note.desc.length} bytes`);
  }
  return undefined;
}

export interface PvhModule {
  readonly gpa: number;
  readonly sizeBytes: number;
  /** Address of the module's NUL-terminated command line, 0 for none. */
  readonly cmdlineGpa?: number;
}

export interface StartInfoOptions {
  /** Where hvm_start_info goes; the module list and memory map follow it, 8-byte aligned. */
  readonly startInfoGpa: number;
  readonly cmdlineGpa: number;
  readonly rsdpGpa: number;
  readonly memoryMap: readonly E820Entry[];
  /** Modules; Linux takes the first as its initramfs. */
  readonly modules?: readonly PvhModule[];
}

export interface StartInfoBlock {
  readonly gpa: number;
  /** hvm_start_info, then the module list, then the memory map. */
  readonly bytes: Uint8Array;
  readonly modlistGpa: number;
  readonly memmapGpa: number;
}

export function buildStartInfo(options: StartInfoOptions): StartInfoBlock {
  if (options.startInfoGpa % 8 !== 0) throw new RangeError("hvm_start_info must be 8-byte aligned");
  const modules = options.modules ?? [];
  const modlistGpa = options.startInfoGpa + HVM_START_INFO_SIZE;
  const memmapGpa = modlistGpa + modules.length * HVM_MODLIST_ENTRY_SIZE;
  const bytes = new Uint8Array(
    HVM_START_INFO_SIZE +
      modules.length * HVM_MODLIST_ENTRY_SIZE +
      options.memoryMap.length * HVM_MEMMAP_ENTRY_SIZE,
  );
  const v = new DataView(bytes.buffer);
  const u64 = (at: number, value: number) => v.setBigUint64(at, BigInt(value), true);
  v.setUint32(0, HVM_START_MAGIC, true);
  v.setUint32(4, HVM_START_INFO_VERSION, true);
  v.setUint32(8, 0, true); // flags
  v.setUint32(12, modules.length, true);
  u64(16, modules.length > 0 ? modlistGpa : 0);
  u64(24, options.cmdlineGpa);
  u64(32, options.rsdpGpa);
  u64(40, memmapGpa);
  v.setUint32(48, options.memoryMap.length, true);
  modules.forEach((m, i) => {
    const at = HVM_START_INFO_SIZE + i * HVM_MODLIST_ENTRY_SIZE;
    u64(at, m.gpa);
    u64(at + 8, m.sizeBytes);
    u64(at + 16, m.cmdlineGpa ?? 0);
  });
  const mapAt = memmapGpa - options.startInfoGpa;
  options.memoryMap.forEach((e, i) => {
    const at = mapAt + i * HVM_MEMMAP_ENTRY_SIZE;
    u64(at, e.gpa);
    u64(at + 8, e.sizeBytes);
    v.setUint32(at + 16, e.type, true);
  });
  return { gpa: options.startInfoGpa, bytes, modlistGpa, memmapGpa };
}

/** GDT: null, 0x08 flat 32-bit code, 0x10 flat data, 0x18 32-bit TSS (for TR). */
export const PVH_GDT: readonly bigint[] = [
  GDT_ENTRY.null,
  GDT_ENTRY.code32,
  GDT_ENTRY.data,
  GDT_ENTRY.tss32Busy,
];

export interface PvhEntryOptions {
  readonly entryGpa: number;
  readonly startInfoGpa: number;
  readonly gdtGpa: number;
}

/** The 32-bit protected-mode entry state of the PVH ABI. */
export function pvhEntryState(options: PvhEntryOptions): EntryState {
  if (options.entryGpa >= 2 ** 32 || options.startInfoGpa >= 2 ** 32) {
    throw new RangeError("PVH entry and start_info must be below 4 GiB");
  }
  const gdtBytes = encodeGdt(PVH_GDT);
  const code = segmentFromGdt(PVH_GDT, 1);
  const data = segmentFromGdt(PVH_GDT, 2);
  return {
    memoryWrites: [{ gpa: options.gdtGpa, bytes: gdtBytes, what: "PVH GDT" }],
    regs: { rip: options.entryGpa, rsi: 0, rbx: options.startInfoGpa, rsp: 0, rflags: RFLAGS_RESERVED },
    sregs: {
      cs: code,
      ds: data,
      es: data,
      fs: data,
      gs: data,
      ss: data,
      tr: segmentFromGdt(PVH_GDT, 3),
      gdt: { base: options.gdtGpa, limit: gdtBytes.length - 1 },
      idt: { base: 0, limit: 0 },
      cr0: CR0_PE,
      cr3: 0,
      cr4: 0,
      efer: 0,
    },
  };
}
