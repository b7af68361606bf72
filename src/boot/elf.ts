/**
 * ELF64 little-endian executables, as far as loading a vmlinux needs (System V gABI "ELF-64 Object
 * File Format"): the file header, program headers and the notes in PT_NOTE segments.
 *
 * File header: e_ident[16] (7F 'E' 'L' 'F', class 2 = 64-bit @4, data 1 = little-endian @5,
 * version 1 @6), e_type u16 @16, e_machine u16 @18 (62 = x86-64), e_entry u64 @24, e_phoff u64
 * @32, e_phentsize u16 @54, e_phnum u16 @56.
 * Program header (56 bytes): p_type u32 @0 (1 LOAD, 4 NOTE), p_flags u32 @4, p_offset u64 @8,
 * p_vaddr u64 @16, p_paddr u64 @24, p_filesz u64 @32, p_memsz u64 @40, p_align u64 @48.
 * Note: namesz u32, descsz u32, type u32, name padded to 4, desc padded to 4.
 */

export const ELF_MACHINE_X86_64 = 62;
export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const ELF64_PHDR_SIZE = 56;

export class ElfError extends Error {
  constructor(why: string) {
    super(`not a loadable ELF64 x86-64 image: ${why}`);
    this.name = "ElfError";
  }
}

export interface ProgramHeader {
  readonly type: number;
  readonly flags: number;
  readonly fileOffset: number;
  readonly vaddr: bigint;
  readonly paddr: number;
  readonly fileSizeBytes: number;
  readonly memSizeBytes: number;
  readonly align: number;
}

export interface ElfNote {
  readonly name: string;
  readonly type: number;
  readonly desc: Uint8Array;
}

export interface Elf64 {
  readonly entry: bigint;
  readonly programHeaders: readonly ProgramHeader[];
  readonly file: Uint8Array;
}

function safe(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER))
    throw new ElfError(`${what} 0x${value.toString(16)} is too large`);
  return Number(value);
}

export function parseElf64(file: Uint8Array): Elf64 {
  if (file.length < 64) throw new ElfError("shorter than an ELF64 header");
  if (file[0] !== 0x7f || file[1] !== 0x45 || file[2] !== 0x4c || file[3] !== 0x46)
    throw new ElfError("no ELF magic");
  if (file[4] !== 2) throw new ElfError("not ELFCLASS64");
  if (file[5] !== 1) throw new ElfError("not little-endian");
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (v.getUint16(18, true) !== ELF_MACHINE_X86_64) throw new ElfError("e_machine is not x86-64");
  const phoff = safe(v.getBigUint64(32, true), "e_phoff");
  const phentsize = v.getUint16(54, true);
  const phnum = v.getUint16(56, true);
  if (phentsize < ELF64_PHDR_SIZE) throw new ElfError(`e_phentsize ${phentsize}`);
  if (phoff + phnum * phentsize > file.length) throw new ElfError("program headers past the end of the file");
  const programHeaders: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    const ph: ProgramHeader = {
      type: v.getUint32(at, true),
      flags: v.getUint32(at + 4, true),
      fileOffset: safe(v.getBigUint64(at + 8, true), "p_offset"),
      vaddr: v.getBigUint64(at + 16, true),
      paddr: safe(v.getBigUint64(at + 24, true), "p_paddr"),
      fileSizeBytes: safe(v.getBigUint64(at + 32, true), "p_filesz"),
      memSizeBytes: safe(v.getBigUint64(at + 40, true), "p_memsz"),
      align: safe(v.getBigUint64(at + 48, true), "p_align"),
    };
    if (ph.type === PT_LOAD || ph.type === PT_NOTE) {
      if (ph.fileOffset + ph.fileSizeBytes > file.length)
        throw new ElfError(`segment ${i} extends past the file`);
      if (ph.fileSizeBytes > ph.memSizeBytes) throw new ElfError(`segment ${i}: p_filesz > p_memsz`);
    }
    programHeaders.push(ph);
  }
  return { entry: v.getBigUint64(24, true), programHeaders, file };
}

const LATIN1 = new TextDecoder("latin1");

/** All notes of all PT_NOTE segments. */
export function elfNotes(elf: Elf64): ElfNote[] {
  const notes: ElfNote[] = [];
  const align4 = (n: number) => Math.ceil(n / 4) * 4; // not bitwise: sizes are guest-file u32s
  for (const ph of elf.programHeaders) {
    if (ph.type !== PT_NOTE) continue;
    const seg = elf.file.subarray(ph.fileOffset, ph.fileOffset + ph.fileSizeBytes);
    const v = new DataView(seg.buffer, seg.byteOffset, seg.byteLength);
    let at = 0;
    while (at + 12 <= seg.length) {
      const namesz = v.getUint32(at, true);
      const descsz = v.getUint32(at + 4, true);
      const type = v.getUint32(at + 8, true);
      const nameAt = at + 12;
      const descAt = nameAt + align4(namesz);
      if (descAt > seg.length || descAt + descsz > seg.length)
        throw new ElfError("note extends past its segment");
      const nameBytes = seg.subarray(nameAt, nameAt + Math.max(0, namesz - 1)); // without the NUL
      notes.push({
        name: LATIN1.decode(nameBytes),
        type,
        desc: seg.subarray(descAt, descAt + descsz),
      });
      at = descAt + align4(descsz);
    }
  }
  return notes;
}

/** One PT_LOAD segment to copy: file bytes to `gpa`, then zeros up to `memSizeBytes`. */
export interface LoadSegment {
  readonly gpa: number;
  readonly bytes: Uint8Array;
  readonly memSizeBytes: number;
}

/** The loading plan: every PT_LOAD at its physical address (p_paddr), in file order. */
export function elfLoadPlan(elf: Elf64): LoadSegment[] {
  return elf.programHeaders
    .filter((ph) => ph.type === PT_LOAD && ph.memSizeBytes > 0)
    .map((ph) => ({
      gpa: ph.paddr,
      bytes: elf.file.subarray(ph.fileOffset, ph.fileOffset + ph.fileSizeBytes),
      memSizeBytes: ph.memSizeBytes,
    }));
}
