/**
 * A minimal ELF reader for boot images (ELF32 and ELF64, little-endian x86): the header, the
 * loadable program headers and PT_NOTE notes. Every field is bounds-checked against the file;
 * a malformed image is an `ImageError` with what is wrong, never an out-of-range read.
 */

export class ImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ImageError";
  }
}

export const PT_LOAD = 1;
export const PT_NOTE = 4;

export interface ElfSegment {
  readonly type: number;
  readonly fileOffset: number;
  readonly vaddr: number;
  readonly paddr: number;
  readonly fileSizeBytes: number;
  readonly memSizeBytes: number;
}

export interface ElfImage {
  readonly is64: boolean;
  readonly machine: number;
  readonly entry: number;
  readonly segments: readonly ElfSegment[];
}

export interface ElfNote {
  readonly name: string;
  readonly type: number;
  readonly desc: Uint8Array;
}

export function isElf(file: Uint8Array): boolean {
  return file.length >= 4 && file[0] === 0x7f && file[1] === 0x45 && file[2] === 0x4c && file[3] === 0x46;
}

function u64(v: DataView, off: number): number {
  const n = v.getBigUint64(off, true);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new ImageError(`ELF field at ${off} too large`);
  return Number(n);
}

export function parseElf(file: Uint8Array): ElfImage {
  if (!isElf(file)) throw new ImageError("not an ELF file");
  if (file.length < 52) throw new ImageError("ELF header truncated");
  const cls = file[4];
  if (cls !== 1 && cls !== 2) throw new ImageError(`ELF class ${cls} unknown`);
  if (file[5] !== 1) throw new ImageError("ELF is not little-endian");
  const is64 = cls === 2;
  if (is64 && file.length < 64) throw new ImageError("ELF64 header truncated");
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const machine = v.getUint16(18, true);
  const entry = is64 ? u64(v, 24) : v.getUint32(24, true);
  const phoff = is64 ? u64(v, 32) : v.getUint32(28, true);
  const phentsize = v.getUint16(is64 ? 54 : 42, true);
  const phnum = v.getUint16(is64 ? 56 : 44, true);
  const minEnt = is64 ? 56 : 32;
  if (phnum > 0 && phentsize < minEnt) throw new ImageError(`ELF program header size ${phentsize} too small`);
  if (phoff + phnum * phentsize > file.length) throw new ImageError("ELF program headers outside the file");
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    const seg: ElfSegment = is64
      ? {
          type: v.getUint32(o, true),
          fileOffset: u64(v, o + 8),
          vaddr: u64(v, o + 16),
          paddr: u64(v, o + 24),
          fileSizeBytes: u64(v, o + 32),
          memSizeBytes: u64(v, o + 40),
        }
      : {
          type: v.getUint32(o, true),
          fileOffset: v.getUint32(o + 4, true),
          vaddr: v.getUint32(o + 8, true),
          paddr: v.getUint32(o + 12, true),
          fileSizeBytes: v.getUint32(o + 16, true),
          memSizeBytes: v.getUint32(o + 20, true),
        };
    if (seg.type === PT_LOAD || seg.type === PT_NOTE) {
      if (seg.fileOffset + seg.fileSizeBytes > file.length) {
        throw new ImageError(`ELF segment ${i} extends past the end of the file`);
      }
      if (seg.fileSizeBytes > seg.memSizeBytes && seg.type === PT_LOAD) {
        throw new ImageError(`ELF segment ${i} has filesz > memsz`);
      }
    }
    segments.push(seg);
  }
  return { is64, machine, entry, segments };
}

/** The notes of every PT_NOTE segment (4-byte aligned name and descriptor). */
export function elfNotes(file: Uint8Array, image: ElfImage): ElfNote[] {
  const notes: ElfNote[] = [];
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  for (const seg of image.segments) {
    if (seg.type !== PT_NOTE) continue;
    let o = seg.fileOffset;
    const end = seg.fileOffset + seg.fileSizeBytes;
    while (o + 12 <= end) {
      const namesz = v.getUint32(o, true);
      const descsz = v.getUint32(o + 4, true);
      const type = v.getUint32(o + 8, true);
      const nameStart = o + 12;
      const descStart = nameStart + ((namesz + 3) & ~3);
      const next = descStart + ((descsz + 3) & ~3);
      if (next > end || descStart + descsz > end) break;
      const nameBytes = file.subarray(nameStart, nameStart + Math.max(0, namesz - 1));
      notes.push({
        name: new TextDecoder().decode(nameBytes),
        type,
        desc: file.subarray(descStart, descStart + descsz),
      });
      o = next;
    }
  }
  return notes;
}
