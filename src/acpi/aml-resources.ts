/**
 * Resource data types for _CRS buffers (ACPI 6.5 6.4): the descriptors a PCI root bridge, a
 * 16550 UART and a motherboard-resources device need, and the ResourceTemplate that wraps them.
 *
 *   Small:  I/O Port 0x47 (6.4.2.5), End Tag 0x79 (6.4.2.9)
 *   Large:  Memory32Fixed 0x86 (6.4.3.4), DWord Address Space 0x87 (6.4.3.5.2),
 *           Word Address Space 0x88 (6.4.3.5.3), Extended Interrupt 0x89 (6.4.3.6),
 *           QWord Address Space 0x8A (6.4.3.5.1)
 * Large descriptors carry a u16 length of what follows the 3-byte header.
 */

import { buffer, concat } from "./aml.ts";
import { ByteWriter, toU64, type U64 } from "./bytes.ts";

export const RESOURCE_TAG = {
  ioPort: 0x47,
  endTag: 0x79,
  memory32Fixed: 0x86,
  dwordAddressSpace: 0x87,
  wordAddressSpace: 0x88,
  extendedInterrupt: 0x89,
  qwordAddressSpace: 0x8a,
} as const;

/** Address space Resource Type (6.4.3.5.1, byte 3). */
export const ADDRESS_RESOURCE_TYPE = { memory: 0, io: 1, busNumber: 2 } as const;

/** General flags (6.4.3.5.1, byte 4): bit 3 _MAF, bit 2 _MIF, bit 1 _DEC (subtractive), bit 0 consumer. */
const GENERAL_FLAGS_PRODUCER_FIXED = (1 << 3) | (1 << 2);

/** I/O type-specific flags (6.4.3.5.4): _RNG bits 1:0, 3 = entire range. */
const IO_RANGE_ENTIRE = 3;

/** Memory type-specific flags (6.4.3.5.4): bit 0 _RW, bits 2:1 _MEM. */
export const MEMORY_CACHING = { nonCacheable: 0, cacheable: 1, writeCombining: 2, prefetchable: 3 } as const;
export type MemoryCaching = (typeof MEMORY_CACHING)[keyof typeof MEMORY_CACHING];

/** IO(Decode16, min, max, alignment, length) (6.4.2.5): 8 bytes. */
export function ioPort(min: number, max: number, alignment: number, lengthBytes: number): Uint8Array {
  return new ByteWriter()
    .u8(RESOURCE_TAG.ioPort)
    .u8(1) // Information: bit 0 = 16-bit decode
    .u16(min, "IO min")
    .u16(max, "IO max")
    .u8(alignment, "IO alignment")
    .u8(lengthBytes, "IO length")
    .finish();
}

export interface InterruptFlags {
  readonly edge: boolean;
  readonly activeLow: boolean;
  readonly shared?: boolean;
}

/**
 * Interrupt(ResourceConsumer, ...) {irqs} (6.4.3.6): tag 0x89, length 2 + 4n, flags (bit 0
 * consumer, bit 1 edge, bit 2 active low, bit 3 shared), count, u32 GSIs.
 */
export function extendedInterrupt(flags: InterruptFlags, irqs: readonly number[]): Uint8Array {
  if (irqs.length < 1 || irqs.length > 255) throw new RangeError("Interrupt descriptor needs 1-255 IRQs");
  const w = new ByteWriter().u8(RESOURCE_TAG.extendedInterrupt).u16(2 + 4 * irqs.length);
  w.u8(1 | (flags.edge ? 2 : 0) | (flags.activeLow ? 4 : 0) | (flags.shared === true ? 8 : 0));
  w.u8(irqs.length);
  for (const irq of irqs) w.u32(irq, "IRQ");
  return w.finish();
}

/** Memory32Fixed(ReadWrite|ReadOnly, base, length) (6.4.3.4): 12 bytes. */
export function memory32Fixed(readWrite: boolean, baseGpa: number, sizeBytes: number): Uint8Array {
  return new ByteWriter()
    .u8(RESOURCE_TAG.memory32Fixed)
    .u16(9)
    .u8(readWrite ? 1 : 0)
    .u32(baseGpa, "Memory32Fixed base")
    .u32(sizeBytes, "Memory32Fixed length")
    .finish();
}

/** An inclusive [min, max] range; the descriptor's _LEN is max - min + 1. */
export interface AddressRange {
  readonly min: U64;
  readonly max: U64;
}

function rangeLength(range: AddressRange): bigint {
  const min = toU64(range.min, "range min");
  const max = toU64(range.max, "range max");
  if (max < min) throw new RangeError(`address range [${min}, ${max}] is empty`);
  return max - min + 1n;
}

/**
 * The fixed-size, fixed-location producer form every bridge window uses: _MIF = _MAF = 1,
 * positive decode, granularity 0, no translation, _LEN = _MAX - _MIN + 1 (the valid
 * combinations table of 6.4.3.5).
 */
function addressSpace(
  widthBytes: 2 | 4 | 8,
  resourceType: number,
  typeFlags: number,
  range: AddressRange,
): Uint8Array {
  const tag = {
    2: RESOURCE_TAG.wordAddressSpace,
    4: RESOURCE_TAG.dwordAddressSpace,
    8: RESOURCE_TAG.qwordAddressSpace,
  }[widthBytes];
  const length = rangeLength(range);
  const w = new ByteWriter().u8(tag).u16(3 + 5 * widthBytes);
  w.u8(resourceType).u8(GENERAL_FLAGS_PRODUCER_FIXED).u8(typeFlags);
  const field = (value: U64, what: string) => {
    const v = toU64(value, what);
    if (widthBytes === 8) w.u64(v, what);
    else if (v >= 1n << BigInt(8 * widthBytes))
      throw new RangeError(`${what} ${v} exceeds ${widthBytes} bytes`);
    else if (widthBytes === 4) w.u32(Number(v), what);
    else w.u16(Number(v), what);
  };
  field(0, "granularity");
  field(range.min, "min");
  field(range.max, "max");
  field(0, "translation offset");
  field(length, "length");
  return w.finish();
}

/** WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len): 16 bytes. */
export function wordBusNumber(range: AddressRange): Uint8Array {
  return addressSpace(2, ADDRESS_RESOURCE_TYPE.busNumber, 0, range);
}

/** DWordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...): 26 bytes. */
export function dwordIo(range: AddressRange): Uint8Array {
  return addressSpace(4, ADDRESS_RESOURCE_TYPE.io, IO_RANGE_ENTIRE, range);
}

/** DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, caching, ReadWrite, ...): 26 bytes. */
export function dwordMemory(range: AddressRange, caching: MemoryCaching): Uint8Array {
  return addressSpace(4, ADDRESS_RESOURCE_TYPE.memory, 1 | (caching << 1), range);
}

/** QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, caching, ReadWrite, ...): 46 bytes. */
export function qwordMemory(range: AddressRange, caching: MemoryCaching): Uint8Array {
  return addressSpace(8, ADDRESS_RESOURCE_TYPE.memory, 1 | (caching << 1), range);
}

/**
 * ResourceTemplate() {...}: a Buffer of the descriptors followed by the End Tag. Its checksum
 * byte is 0, which 6.4.2.9 defines as "treat the checksum as valid" (what iasl emits).
 */
export function resourceTemplate(descriptors: readonly Uint8Array[]): Uint8Array {
  return buffer(concat([...descriptors, Uint8Array.of(RESOURCE_TAG.endTag, 0)]));
}
