/**
 * The arm64 Linux Image and its boot protocol (Linux Documentation/arch/arm64/booting.rst):
 * the 64-byte header, and where a loader puts the Image, the initrd and the device tree.
 *
 * Header (little-endian): code0 u32 @0, code1 u32 @4, text_offset u64 @8, image_size u64 @16,
 * flags u64 @24, res2..res4 @32..@55, magic "ARM\x64" (0x644D5241) @56, PE offset u32 @60.
 * flags bit 0 big-endian kernel, bits 2:1 page size (1 = 4K, 2 = 16K, 3 = 64K), bit 3: 1 = may
 * load at any 2 MiB-aligned address, 0 = as close to the base of DRAM as possible.
 */

export const ARM64_IMAGE_MAGIC = 0x644d5241;
export const ARM64_HEADER_BYTES = 64;
const MIB = 1024 * 1024;
const TWO_MIB = 2 * MIB;

export class Arm64ImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Arm64ImageError";
  }
}

export interface Arm64ImageHeader {
  readonly textOffset: number;
  /** Bytes from the load address the kernel needs (bss included); never smaller than the file. */
  readonly imageSizeBytes: number;
  readonly bigEndian: boolean;
  /** 4, 16 or 64 (KiB); 0 = unspecified. */
  readonly pageSizeKiB: number;
  readonly loadAnywhere: boolean;
}

/** True when `image` carries the arm64 Image magic. */
export function isArm64Image(image: Uint8Array): boolean {
  if (image.length < ARM64_HEADER_BYTES) return false;
  return new DataView(image.buffer, image.byteOffset, image.length).getUint32(56, true) === ARM64_IMAGE_MAGIC;
}

/** Decodes and validates the header; throws `Arm64ImageError` with one line on a bad image. */
export function parseArm64Image(image: Uint8Array): Arm64ImageHeader {
  if (!isArm64Image(image)) {
    throw new Arm64ImageError(
      "not an arm64 Linux Image (no ARM\\x64 magic at offset 56; a compressed Image.gz must be decompressed first)",
    );
  }
  const v = new DataView(image.buffer, image.byteOffset, image.length);
  const textOffset = Number(v.getBigUint64(8, true));
  let imageSize = Number(v.getBigUint64(16, true));
  const flags = Number(v.getBigUint64(24, true) & 0xffffn);
  // booting.rst: image_size 0 marks a kernel older than 3.17, whose text_offset is 0x80000.
  const legacy = imageSize === 0;
  if (legacy) imageSize = image.length;
  if (textOffset >= TWO_MIB)
    throw new Arm64ImageError(`arm64 Image text_offset 0x${textOffset.toString(16)} is not below 2 MiB`);
  if (imageSize > 1024 * MIB) throw new Arm64ImageError(`arm64 Image image_size ${imageSize} is implausible`);
  const bigEndian = (flags & 1) !== 0;
  if (bigEndian) throw new Arm64ImageError("big-endian arm64 kernels are not supported");
  const pageBits = (flags >> 1) & 3;
  return {
    textOffset: legacy ? 0x80000 : textOffset,
    imageSizeBytes: Math.max(imageSize, image.length),
    bigEndian,
    pageSizeKiB: [0, 4, 16, 64][pageBits] ?? 0,
    loadAnywhere: (flags & 8) !== 0,
  };
}

export interface Arm64BootPlan {
  /** Guest-physical address of the Image's first byte (= entry point, booting.rst 4). */
  readonly kernelGpa: number;
  readonly kernelEndGpa: number;
  readonly initrdGpa: number | null;
  readonly initrdSizeBytes: number;
  readonly dtbGpa: number;
}

/**
 * Places the Image at the first 2 MiB-aligned address of RAM plus text_offset, the initrd after
 * it (page-aligned, in the same 1 GiB-aligned 32 GiB window as the kernel), and the DTB in the
 * last 2 MiB of RAM below 4 GiB+ (8-byte aligned, not crossing a 2 MiB boundary: booting.rst 2).
 */
export function planArm64Boot(
  header: Arm64ImageHeader,
  ram: { readonly baseGpa: number; readonly sizeBytes: number },
  initrdSizeBytes: number,
  dtbSizeBytes: number,
): Arm64BootPlan {
  if (dtbSizeBytes > TWO_MIB) throw new Arm64ImageError(`device tree of ${dtbSizeBytes} bytes exceeds 2 MiB`);
  const ramEnd = ram.baseGpa + ram.sizeBytes;
  const base = Math.ceil(ram.baseGpa / TWO_MIB) * TWO_MIB;
  const kernelGpa = base + header.textOffset;
  const kernelEndGpa = kernelGpa + header.imageSizeBytes;
  const dtbGpa = Math.floor((ramEnd - TWO_MIB) / TWO_MIB) * TWO_MIB;
  let initrdGpa: number | null = null;
  if (initrdSizeBytes > 0) {
    // Leave the kernel room to relocate itself within its 2 MiB-aligned window (KASLR moves it
    // anyway); put the initrd 2 MiB-aligned after the image.
    initrdGpa = Math.ceil(kernelEndGpa / TWO_MIB) * TWO_MIB;
    if (initrdGpa + initrdSizeBytes > dtbGpa) {
      throw new Arm64ImageError(
        `guest RAM too small: kernel (${header.imageSizeBytes} B) and initrd (${initrdSizeBytes} B) do not fit in ${ram.sizeBytes} B`,
      );
    }
  } else if (kernelEndGpa > dtbGpa) {
    throw new Arm64ImageError(`guest RAM too small for a kernel of ${header.imageSizeBytes} B`);
  }
  return { kernelGpa, kernelEndGpa, initrdGpa, initrdSizeBytes, dtbGpa };
}
