/**
 * A complete, pure plan for booting a Linux x86-64 kernel directly (no firmware): which bytes go
 * to which guest-physical addresses and the vCPU state to start from. Two entry protocols:
 *   - "bzimage-64": a bzImage entered at its 64-bit entry (boot.rst "64-bit BOOT PROTOCOL"),
 *     boot_params in RSI;
 *   - "pvh": a vmlinux ELF entered at XEN_ELFNOTE_PHYS32_ENTRY in 32-bit protected mode,
 *     hvm_start_info in EBX.
 * The ACPI tables (from src/acpi/layout.ts) are written as they were laid out and their RSDP
 * address is passed explicitly (boot_params.acpi_rsdp_addr / start_info.rsdp_paddr).
 *
 * Default low-memory layout (Firecracker / Cloud Hypervisor convention):
 *   0x500 GDT   0x6000 hvm_start_info (PVH)   0x7000 zero page   0x8FF0 initial stack
 *   0x9000 PML4, 0xA000 PDPT, 0xB000.. page directories   0x20000 command line
 *   0x100000 bzImage protected-mode kernel   initrd: top of RAM below initrd_addr_max / 4 GiB
 */

import type { AcpiTableSet } from "../acpi/layout.ts";
import { type BzImage, kernelRuntimeStartGpa, parseBzImage } from "./bzimage.ts";
import { type E820Entry, FOUR_GIB, GIB, highestRamFit, isUsableRam, type MemoryRange } from "./e820.ts";
import { elfLoadPlan, parseElf64 } from "./elf.ts";
import { type EntryState, linux64EntryState, type MemoryWrite } from "./long-mode.ts";
import { buildStartInfo, findPvhEntry, type PvhModule, pvhEntryState } from "./pvh.ts";
import { buildZeroPage, chooseInitrdGpa } from "./zero-page.ts";

export interface BootAddresses {
  readonly gdtGpa: number;
  readonly startInfoGpa: number;
  readonly zeroPageGpa: number;
  readonly stackGpa: number;
  readonly pageTablesGpa: number;
  readonly cmdlineGpa: number;
  readonly kernelLoadGpa: number;
}

export const DEFAULT_BOOT_ADDRESSES: BootAddresses = {
  gdtGpa: 0x500,
  startInfoGpa: 0x6000,
  zeroPageGpa: 0x7000,
  stackGpa: 0x8ff0,
  pageTablesGpa: 0x9000,
  cmdlineGpa: 0x20000,
  kernelLoadGpa: 0x100000,
};

export type LinuxBootProtocol = "bzimage-64" | "pvh";

export interface LinuxBootOptions {
  /** A bzImage or an uncompressed vmlinux (ELF64 with the PVH note). */
  readonly kernel: Uint8Array;
  /** Default: PVH for an ELF, the 64-bit protocol for a bzImage. */
  readonly protocol?: LinuxBootProtocol;
  readonly cmdline: string;
  readonly initrd?: Uint8Array;
  /** The memory map reported to the guest (e.g. buildMemoryMap(...).entries). */
  readonly e820: readonly E820Entry[];
  /** Guest-physical ranges backed by memory the VMM can write (RAM, including reserved parts). */
  readonly backedRanges: readonly MemoryRange[];
  readonly acpi: AcpiTableSet;
  readonly addresses?: Partial<BootAddresses>;
}

export interface ZeroFill {
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly what: string;
}

export interface LinuxBootPlan {
  readonly protocol: LinuxBootProtocol;
  /** Every write; the bytes of the kernel and initrd are views of the inputs, not copies. */
  readonly memoryWrites: readonly MemoryWrite[];
  /** Ranges to clear after the writes (ELF bss beyond p_filesz). */
  readonly zeroFills: readonly ZeroFill[];
  readonly entry: EntryState;
  readonly initrdGpa?: number;
}

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];

function isElf(bytes: Uint8Array): boolean {
  return ELF_MAGIC.every((b, i) => bytes[i] === b);
}

function cmdlineBytes(cmdline: string): Uint8Array {
  const bytes = new Uint8Array(cmdline.length + 1); // NUL-terminated
  for (let i = 0; i < cmdline.length; i++) {
    const c = cmdline.charCodeAt(i);
    if (c === 0 || c > 0x7e) throw new RangeError("the command line must be printable ASCII");
    bytes[i] = c;
  }
  return bytes;
}

/** Refuses plans whose writes overlap each other or leave the backed memory. */
function checkPlacement(
  ranges: readonly { gpa: number; sizeBytes: number; what: string }[],
  backed: readonly MemoryRange[],
) {
  for (const r of ranges) {
    const inside = backed.some((b) => r.gpa >= b.gpa && r.gpa + r.sizeBytes <= b.gpa + b.sizeBytes);
    if (!inside) throw new RangeError(`${r.what} at 0x${r.gpa.toString(16)} is outside guest memory`);
  }
  const sorted = [...ranges].filter((r) => r.sizeBytes > 0).sort((a, b) => a.gpa - b.gpa);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (prev.gpa + prev.sizeBytes > sorted[i].gpa)
      throw new RangeError(`${prev.what} overlaps ${sorted[i].what}`);
  }
}

function identityMapBytesFor(endGpa: number): number {
  return Math.max(GIB, Math.ceil(endGpa / GIB) * GIB);
}

export function planLinuxBoot(options: LinuxBootOptions): LinuxBootPlan {
  const at = { ...DEFAULT_BOOT_ADDRESSES, ...options.addresses };
  const protocol = options.protocol ?? (isElf(options.kernel) ? "pvh" : "bzimage-64");
  const cmdline = cmdlineBytes(options.cmdline);
  const acpiWrites: MemoryWrite[] = options.acpi.tables.map((t) => ({
    gpa: t.gpa,
    bytes: t.bytes,
    what: `ACPI ${t.signature.trim()}`,
  }));
  const writes: MemoryWrite[] = [...acpiWrites, { gpa: at.cmdlineGpa, bytes: cmdline, what: "command line" }];
  const zeroFills: ZeroFill[] = [];
  const { entry, initrdGpa } =
    protocol === "bzimage-64"
      ? planBzImage(options, at, cmdline, writes)
      : planPvh(options, at, writes, zeroFills);

  const all = [...writes, ...entry.memoryWrites];
  checkPlacement(
    [...all.map((w) => ({ gpa: w.gpa, sizeBytes: w.bytes.length, what: w.what })), ...zeroFills],
    options.backedRanges,
  );
  return { protocol, memoryWrites: all, zeroFills, entry, initrdGpa };
}

/** Where the kernel and initrd go and how it starts. */
interface KernelPlan {
  readonly entry: EntryState;
  readonly initrdGpa: number | undefined;
}

/** The 64-bit boot protocol of a bzImage (Linux Documentation/arch/x86/boot.rst); adds to `writes`. */
function planBzImage(
  options: LinuxBootOptions,
  at: BootAddresses,
  cmdline: Uint8Array,
  writes: MemoryWrite[],
): KernelPlan {
  const kernel: BzImage = parseBzImage(options.kernel);
  writes.push({ gpa: at.kernelLoadGpa, bytes: kernel.protectedModeKernel, what: "kernel" });
  let initrdGpa: number | undefined;
  if (options.initrd !== undefined) {
    initrdGpa = chooseInitrdGpa(kernel, at.kernelLoadGpa, options.initrd.length, options.e820, FOUR_GIB);
    writes.push({ gpa: initrdGpa, bytes: options.initrd, what: "initrd" });
  }
  const zeroPage = buildZeroPage({
    kernel,
    cmdlineGpa: at.cmdlineGpa,
    cmdlineLengthBytes: cmdline.length - 1,
    initrd: initrdGpa === undefined ? undefined : { gpa: initrdGpa, sizeBytes: options.initrd!.length },
    e820: options.e820,
    acpiRsdpGpa: options.acpi.rsdpGpa,
  });
  writes.push({ gpa: at.zeroPageGpa, bytes: zeroPage, what: "zero page" });
  // The decompressor runs from max(align_up(load), pref_address) and needs init_size from there.
  const runtimeStart = Math.max(at.kernelLoadGpa, kernelRuntimeStartGpa(kernel.header, at.kernelLoadGpa));
  const kernelEnd = runtimeStart + Math.max(kernel.header.initSizeBytes, kernel.protectedModeKernel.length);
  if (!isUsableRam(options.e820, runtimeStart, kernelEnd - runtimeStart)) {
    throw new RangeError(
      `the kernel needs RAM [0x${runtimeStart.toString(16)}, 0x${kernelEnd.toString(16)}) ` +
        "(init_size from its runtime address) and the memory map does not give it",
    );
  }
  for (const w of writes) {
    if (w.what !== "kernel" && w.gpa < kernelEnd && runtimeStart < w.gpa + w.bytes.length) {
      throw new RangeError(`${w.what} lies where the kernel decompresses itself (init_size)`);
    }
  }
  const entry = linux64EntryState({
    kernelLoadGpa: at.kernelLoadGpa,
    kernelInitSizeBytes: kernel.header.initSizeBytes,
    zeroPageGpa: at.zeroPageGpa,
    cmdline: { gpa: at.cmdlineGpa, sizeBytes: cmdline.length },
    gdtGpa: at.gdtGpa,
    pageTablesGpa: at.pageTablesGpa,
    identityMapBytes: identityMapBytesFor(kernelEnd),
    stackGpa: at.stackGpa,
  });
  return { entry, initrdGpa };
}

/** PVH boot of an uncompressed vmlinux (its XEN_ELFNOTE_PHYS32_ENTRY); adds to `writes` and `zeroFills`. */
function planPvh(
  options: LinuxBootOptions,
  at: BootAddresses,
  writes: MemoryWrite[],
  zeroFills: ZeroFill[],
): KernelPlan {
  const elf = parseElf64(options.kernel);
  const entryGpa = findPvhEntry(elf);
  if (entryGpa === undefined)
    throw new RangeError("vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY: PVH boot impossible");
  let kernelEnd = 0;
  for (const segment of elfLoadPlan(elf)) {
    writes.push({
      gpa: segment.gpa,
      bytes: segment.bytes,
      what: `kernel segment 0x${segment.gpa.toString(16)}`,
    });
    const tail = segment.memSizeBytes - segment.bytes.length;
    if (tail > 0)
      zeroFills.push({ gpa: segment.gpa + segment.bytes.length, sizeBytes: tail, what: "kernel bss" });
    kernelEnd = Math.max(kernelEnd, segment.gpa + segment.memSizeBytes);
  }
  const modules: PvhModule[] = [];
  let initrdGpa: number | undefined;
  if (options.initrd !== undefined) {
    // Kept below 4 GiB, addressable from the 32-bit PVH entry code.
    initrdGpa = highestRamFit(options.e820, options.initrd.length, FOUR_GIB, kernelEnd);
    if (initrdGpa === undefined)
      throw new RangeError(`no RAM below 4 GiB for an initrd of ${options.initrd.length} bytes`);
    writes.push({ gpa: initrdGpa, bytes: options.initrd, what: "initrd" });
    modules.push({ gpa: initrdGpa, sizeBytes: options.initrd.length });
  }
  const startInfo = buildStartInfo({
    startInfoGpa: at.startInfoGpa,
    cmdlineGpa: at.cmdlineGpa,
    rsdpGpa: options.acpi.rsdpGpa,
    memoryMap: options.e820,
    modules,
  });
  writes.push({ gpa: startInfo.gpa, bytes: startInfo.bytes, what: "hvm_start_info" });
  const entry = pvhEntryState({ entryGpa, startInfoGpa: at.startInfoGpa, gdtGpa: at.gdtGpa });
  return { entry, initrdGpa };
}
