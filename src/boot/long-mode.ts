/**
 * The CPU and memory state for entering Linux at its 64-bit entry point (Documentation/arch/x86/
 * boot.rst "64-bit BOOT PROTOCOL"): long mode with paging on, an identity map covering the kernel,
 * the zero page and the command line; a GDT with __BOOT_CS = 0x10 (64-bit execute/read code) and
 * __BOOT_DS = 0x18 (read/write data), CS = __BOOT_CS and DS/ES/SS = __BOOT_DS; interrupts off;
 * RSI = the zero page; RIP = the protected-mode kernel's load address + 0x200.
 *
 * Described as data: the bytes to write to guest memory (page tables, GDT) and the register values
 * the VMM applies with KVM_SET_REGS / KVM_SET_SREGS.
 *
 * Page tables (Intel SDM Vol. 3A 4.5, 4-level paging): one PML4 entry -> one PDPT whose entries
 * point at page directories of 2 MiB pages (PS = 1), identity-mapping [0, identityMapBytes).
 */

import { ENTRY_64_OFFSET } from "./bzimage.ts";
import { GIB } from "./e820.ts";
import { type DescriptorTable, encodeGdt, GDT_ENTRY, type SegmentState, segmentFromGdt } from "./segments.ts";

export const PAGE_SIZE = 4096;
export const PTE_PRESENT = 1n << 0n;
export const PTE_WRITABLE = 1n << 1n;
export const PDE_PAGE_SIZE = 1n << 7n;
export const TWO_MIB = 2 * 1024 * 1024;
/** One PDPT of 512 entries covers 512 GiB. */
export const MAX_IDENTITY_MAP_BYTES = 512 * GIB;

export const CR0_PE = 1 << 0;
export const CR0_PG = 2 ** 31;
export const CR4_PAE = 1 << 5;
export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;
/** RFLAGS bit 1 is reserved and reads as 1; IF (bit 9) clear. */
export const RFLAGS_RESERVED = 0x2;

/** boot.rst: __BOOT_CS and __BOOT_DS. */
export const BOOT_CS_SELECTOR = 0x10;
export const BOOT_DS_SELECTOR = 0x18;
/** GDT indices 0 and 1 null, 2 = __BOOT_CS, 3 = __BOOT_DS. */
export const LINUX_BOOT_GDT: readonly bigint[] = [
  GDT_ENTRY.null,
  GDT_ENTRY.null,
  GDT_ENTRY.code64,
  GDT_ENTRY.data,
];

export interface MemoryWrite {
  readonly gpa: number;
  readonly bytes: Uint8Array;
  readonly what: string;
}

export interface SpecialRegisters {
  readonly cs: SegmentState;
  readonly ds: SegmentState;
  readonly es: SegmentState;
  readonly fs: SegmentState;
  readonly gs: SegmentState;
  readonly ss: SegmentState;
  /** Absent: leave the VMM's reset value (an unusable TR is fine in long mode for Linux). */
  readonly tr?: SegmentState;
  readonly gdt: DescriptorTable;
  readonly idt: DescriptorTable;
  readonly cr0: number;
  readonly cr3: number;
  readonly cr4: number;
  readonly efer: number;
}

export interface EntryState {
  readonly memoryWrites: readonly MemoryWrite[];
  readonly regs: {
    readonly rip: number;
    readonly rsi: number;
    readonly rbx: number;
    readonly rsp: number;
    readonly rflags: number;
  };
  readonly sregs: SpecialRegisters;
}

export interface IdentityPageTables {
  readonly pml4Gpa: number;
  /** PML4 page, PDPT page, then one page directory per GiB: contiguous from pml4Gpa. */
  readonly bytes: Uint8Array;
}

/** PML4 at `pml4Gpa`, PDPT at +4 KiB, page directories at +8 KiB..: 2 MiB identity pages. */
export function identityPageTables(pml4Gpa: number, identityMapBytes: number): IdentityPageTables {
  if (pml4Gpa % PAGE_SIZE !== 0) throw new RangeError("page tables must be 4 KiB aligned");
  if (identityMapBytes < GIB || identityMapBytes % GIB !== 0 || identityMapBytes > MAX_IDENTITY_MAP_BYTES) {
    throw new RangeError("identity map: a whole number of GiB, 1 to 512");
  }
  const directories = identityMapBytes / GIB;
  const bytes = new Uint8Array((2 + directories) * PAGE_SIZE);
  const v = new DataView(bytes.buffer);
  const pdptGpa = pml4Gpa + PAGE_SIZE;
  v.setBigUint64(0, BigInt(pdptGpa) | PTE_PRESENT | PTE_WRITABLE, true);
  for (let d = 0; d < directories; d++) {
    const pdGpa = pml4Gpa + (2 + d) * PAGE_SIZE;
    v.setBigUint64(PAGE_SIZE + d * 8, BigInt(pdGpa) | PTE_PRESENT | PTE_WRITABLE, true);
    for (let i = 0; i < 512; i++) {
      const pageGpa = BigInt(d * GIB + i * TWO_MIB);
      v.setBigUint64((2 + d) * PAGE_SIZE + i * 8, pageGpa | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE, true);
    }
  }
  return { pml4Gpa, bytes };
}

export interface LongModeEntryOptions {
  /** Where the protected-mode kernel was loaded (e.g. 0x100000). */
  readonly kernelLoadGpa: number;
  /** setup_header.init_size: boot.rst asks for [kernel start, + init_size) to be identity-mapped. */
  readonly kernelInitSizeBytes: number;
  readonly zeroPageGpa: number;
  /** The command line buffer, identity-mapped too. */
  readonly cmdline?: { readonly gpa: number; readonly sizeBytes: number };
  /** Guest-physical address of the GDT (32 bytes). */
  readonly gdtGpa: number;
  /** PML4 address; the PDPT and page directories follow it. */
  readonly pageTablesGpa: number;
  /** Bytes identity-mapped from 0, whole GiB (default 1 GiB; must cover kernel, zero page, cmdline). */
  readonly identityMapBytes?: number;
  /** Initial stack pointer (Linux sets its own; a valid one helps debugging). */
  readonly stackGpa?: number;
}

/** The complete 64-bit entry state for a bzImage loaded at `kernelLoadGpa`. */
export function linux64EntryState(options: LongModeEntryOptions): EntryState {
  const identityMapBytes = options.identityMapBytes ?? GIB;
  const tables = identityPageTables(options.pageTablesGpa, identityMapBytes);
  const gdtBytes = encodeGdt(LINUX_BOOT_GDT);
  const gdtEnd = options.gdtGpa + gdtBytes.length;
  const tablesEnd = tables.pml4Gpa + tables.bytes.length;
  if (options.gdtGpa < tablesEnd && tables.pml4Gpa < gdtEnd)
    throw new RangeError("GDT overlaps the page tables");
  const mustBeMapped: [string, number, number][] = [
    ["zero page", options.zeroPageGpa, PAGE_SIZE],
    ["kernel (init_size)", options.kernelLoadGpa, options.kernelInitSizeBytes],
    ["GDT", options.gdtGpa, gdtBytes.length],
  ];
  if (options.cmdline !== undefined)
    mustBeMapped.push(["command line", options.cmdline.gpa, options.cmdline.sizeBytes]);
  for (const [what, gpa, sizeBytes] of mustBeMapped) {
    if (gpa + sizeBytes > identityMapBytes) throw new RangeError(`${what} outside the identity map`);
  }
  const code = segmentFromGdt(LINUX_BOOT_GDT, BOOT_CS_SELECTOR / 8);
  const data = segmentFromGdt(LINUX_BOOT_GDT, BOOT_DS_SELECTOR / 8);
  return {
    memoryWrites: [
      { gpa: tables.pml4Gpa, bytes: tables.bytes, what: "identity page tables (PML4, PDPT, PDs)" },
      { gpa: options.gdtGpa, bytes: gdtBytes, what: "boot GDT" },
    ],
    regs: {
      rip: options.kernelLoadGpa + ENTRY_64_OFFSET,
      rsi: options.zeroPageGpa,
      rbx: 0,
      rsp: options.stackGpa ?? 0,
      rflags: RFLAGS_RESERVED,
    },
    sregs: {
      cs: code,
      ds: data,
      es: data,
      fs: data,
      gs: data,
      ss: data,
      gdt: { base: options.gdtGpa, limit: gdtBytes.length - 1 },
      idt: { base: 0, limit: 0 },
      cr0: CR0_PE + CR0_PG,
      cr3: tables.pml4Gpa,
      cr4: CR4_PAE,
      efer: EFER_LME | EFER_LMA,
    },
  };
}
