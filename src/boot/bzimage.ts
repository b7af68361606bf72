/**
 * The real-mode setup header of a Linux bzImage (Documentation/arch/x86/boot.rst, "The Real-Mode
 * Kernel Header"), as far as a loader that enters the kernel at its 64-bit entry point needs it.
 *
 * Offsets in the file (= offsets in boot_params, whose `hdr` starts at 0x1F1):
 *   0x1F1 setup_sects u8 (0 means 4)   0x1FE boot_flag u16 = 0xAA55   0x200 jump (EB xx)
 *   0x202 header "HdrS"   0x206 version u16   0x211 loadflags u8   0x214 code32_start u32
 *   0x22C initrd_addr_max u32   0x230 kernel_alignment u32   0x234 relocatable_kernel u8
 *   0x236 xloadflags u16 (2.12+)   0x238 cmdline_size u32   0x248 payload_offset u32
 *   0x24C payload_length u32   0x258 pref_address u64   0x260 init_size u32
 * The header ends at 0x202 + the jump's displacement byte at 0x201.
 */

export const SETUP_HEADER_GPA_OFFSET = 0x1f1;
export const HDRS_MAGIC = 0x5372_6448; // "HdrS" little-endian
export const BOOT_FLAG = 0xaa55;
/** 2.12 introduced xloadflags, needed to know the 64-bit entry exists. */
export const MIN_BOOT_PROTOCOL = 0x020c;
export const SECTOR_BYTES = 512;
/** The 64-bit entry point is 0x200 bytes into the protected-mode kernel (boot.rst "64-bit BOOT PROTOCOL"). */
export const ENTRY_64_OFFSET = 0x200;

export const LOADFLAGS = {
  LOADED_HIGH: 1 << 0,
  KASLR_FLAG: 1 << 1,
  QUIET_FLAG: 1 << 5,
  KEEP_SEGMENTS: 1 << 6,
  CAN_USE_HEAP: 1 << 7,
} as const;

export const XLOADFLAGS = {
  KERNEL_64: 1 << 0,
  CAN_BE_LOADED_ABOVE_4G: 1 << 1,
  EFI_HANDOVER_32: 1 << 2,
  EFI_HANDOVER_64: 1 << 3,
  EFI_KEXEC: 1 << 4,
  FIVE_LEVEL: 1 << 5,
  FIVE_LEVEL_ENABLED: 1 << 6,
} as const;

export const HEADER_OFFSET = {
  setupSects: 0x1f1,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  minAlignment: 0x235,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  payloadOffset: 0x248,
  payloadLength: 0x24c,
  setupData: 0x250,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

export class BzImageError extends Error {
  constructor(why: string) {
    super(`not a loadable bzImage: ${why}`);
    this.name = "BzImageError";
  }
}

export interface SetupHeader {
  /** Boot protocol version, e.g. 0x020F. */
  readonly version: number;
  /** Sectors of real-mode setup code after the boot sector. */
  readonly setupSects: number;
  readonly loadflags: number;
  readonly xloadflags: number;
  readonly initrdAddrMax: number;
  readonly kernelAlignment: number;
  readonly relocatable: boolean;
  /** Maximum command line length in bytes, without the terminating NUL. */
  readonly cmdlineSize: number;
  /** Offset and length of the compressed payload inside the protected-mode kernel. */
  readonly payloadOffset: number;
  readonly payloadLengthBytes: number;
  readonly prefAddress: number;
  /** Bytes of linear memory the kernel needs from its runtime start before it reads the memory map. */
  readonly initSizeBytes: number;
  /** End (exclusive, file offset) of the setup header: 0x202 + byte[0x201]. */
  readonly headerEnd: number;
}

export interface BzImage {
  readonly header: SetupHeader;
  /** The whole file: the setup header is copied from it into boot_params. */
  readonly image: Uint8Array;
  /** The protected-mode kernel: file bytes from (setup_sects + 1) * 512 on. */
  readonly protectedModeKernel: Uint8Array;
}

/** Parses and validates a bzImage for the 64-bit boot protocol. Throws BzImageError. */
export function parseBzImage(image: Uint8Array): BzImage {
  if (image.length < 0x400) throw new BzImageError("file shorter than the setup header");
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (v.getUint32(HEADER_OFFSET.header, true) !== HDRS_MAGIC) throw new BzImageError('no "HdrS" at 0x202');
  if (v.getUint16(HEADER_OFFSET.bootFlag, true) !== BOOT_FLAG)
    throw new BzImageError("boot_flag is not 0xAA55");
  const version = v.getUint16(HEADER_OFFSET.version, true);
  if (version < MIN_BOOT_PROTOCOL) {
    throw new BzImageError(`boot protocol ${version.toString(16)} < 2.12 has no 64-bit entry flag`);
  }
  const xloadflags = v.getUint16(HEADER_OFFSET.xloadflags, true);
  if ((xloadflags & XLOADFLAGS.KERNEL_64) === 0)
    throw new BzImageError("XLF_KERNEL_64 clear: no 64-bit entry");
  const loadflags = image[HEADER_OFFSET.loadflags];
  if ((loadflags & LOADFLAGS.LOADED_HIGH) === 0)
    throw new BzImageError("LOADED_HIGH clear: a zImage, not a bzImage");
  if (image[HEADER_OFFSET.jump] !== 0xeb) throw new BzImageError("no short jump at 0x200");
  const setupSects = image[HEADER_OFFSET.setupSects] === 0 ? 4 : image[HEADER_OFFSET.setupSects];
  const kernelOffset = (setupSects + 1) * SECTOR_BYTES;
  if (kernelOffset >= image.length) throw new BzImageError("setup_sects points past the end of the file");
  const headerEnd = HEADER_OFFSET.header + image[HEADER_OFFSET.jump + 1];
  const kernelAlignment = v.getUint32(HEADER_OFFSET.kernelAlignment, true);
  const relocatable = image[HEADER_OFFSET.relocatableKernel] !== 0;
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0)) {
    throw new BzImageError(`kernel_alignment 0x${kernelAlignment.toString(16)} is not a power of two`);
  }
  const header: SetupHeader = {
    version,
    setupSects,
    loadflags,
    xloadflags,
    initrdAddrMax: v.getUint32(HEADER_OFFSET.initrdAddrMax, true),
    kernelAlignment,
    relocatable,
    cmdlineSize: v.getUint32(HEADER_OFFSET.cmdlineSize, true),
    payloadOffset: v.getUint32(HEADER_OFFSET.payloadOffset, true),
    payloadLengthBytes: v.getUint32(HEADER_OFFSET.payloadLength, true),
    prefAddress: Number(v.getBigUint64(HEADER_OFFSET.prefAddress, true)),
    initSizeBytes: v.getUint32(HEADER_OFFSET.initSize, true),
    headerEnd,
  };
  if (header.payloadOffset + header.payloadLengthBytes > image.length - kernelOffset) {
    throw new BzImageError("payload extends past the end of the file");
  }
  return { header, image, protectedModeKernel: image.subarray(kernelOffset) };
}

/** Where the kernel runs after it relocates itself (boot.rst: pref_address, kernel_alignment). */
export function kernelRuntimeStartGpa(header: SetupHeader, loadGpa: number): number {
  if (!header.relocatable) return header.prefAddress;
  const aligned = Math.ceil(loadGpa / header.kernelAlignment) * header.kernelAlignment;
  return Math.max(aligned, header.prefAddress);
}
