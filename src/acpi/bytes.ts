/**
 * A growable little-endian byte writer and the ACPI checksum rule, shared by every table builder
 * and by the AML encoder. ACPI is little-endian throughout (ACPI 6.5 5.2: "all numeric values in
 * ACPI-defined tables ... are little-endian").
 */

/** Values of 64-bit fields: a safe-integer `number` or a `bigint` up to 2^64 - 1. */
export type U64 = number | bigint;

const U64_MAX = (1n << 64n) - 1n;

export function checkUnsigned(value: number, bits: 8 | 16 | 32, what: string): number {
  const max = bits === 32 ? 0xffff_ffff : (1 << bits) - 1;
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what}: ${value} does not fit in ${bits} unsigned bits`);
  }
  return value;
}

export function toU64(value: U64, what: string): bigint {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new RangeError(`${what}: ${value} is not a safe integer (pass a bigint)`);
  }
  const big = BigInt(value);
  if (big < 0n || big > U64_MAX) throw new RangeError(`${what}: ${value} does not fit in 64 unsigned bits`);
  return big;
}

export class ByteWriter {
  private bytes = new Uint8Array(64);
  private view = new DataView(this.bytes.buffer);
  private lengthBytes = 0;

  get offset(): number {
    return this.lengthBytes;
  }

  private reserve(sizeBytes: number): number {
    const at = this.lengthBytes;
    const needed = at + sizeBytes;
    if (needed > this.bytes.length) {
      let capacity = this.bytes.length * 2;
      while (capacity < needed) capacity *= 2;
      const grown = new Uint8Array(capacity);
      grown.set(this.bytes.subarray(0, at));
      this.bytes = grown;
      this.view = new DataView(grown.buffer);
    }
    this.lengthBytes = needed;
    return at;
  }

  u8(value: number, what = "u8"): this {
    const at = this.reserve(1); // may replace this.bytes
    this.bytes[at] = checkUnsigned(value, 8, what);
    return this;
  }

  u16(value: number, what = "u16"): this {
    const at = this.reserve(2); // may replace this.view
    this.view.setUint16(at, checkUnsigned(value, 16, what), true);
    return this;
  }

  u32(value: number, what = "u32"): this {
    const at = this.reserve(4); // may replace this.view
    this.view.setUint32(at, checkUnsigned(value, 32, what), true);
    return this;
  }

  u64(value: U64, what = "u64"): this {
    const at = this.reserve(8); // may replace this.view
    this.view.setBigUint64(at, toU64(value, what), true);
    return this;
  }

  zeros(sizeBytes: number): this {
    this.reserve(sizeBytes); // fresh capacity is zero-filled and never reused
    return this;
  }

  bytesOf(data: Uint8Array | readonly number[]): this {
    const at = this.reserve(data.length);
    this.bytes.set(data, at);
    return this;
  }

  /**
   * A fixed-width ASCII field: `text` must be printable ASCII no longer than `sizeBytes`; the rest
   * is padded with `pad` (spaces for OEM IDs, NULs where the spec says so).
   */
  ascii(text: string, sizeBytes: number, pad = 0x20): this {
    if (text.length > sizeBytes) throw new RangeError(`"${text}" is longer than ${sizeBytes} bytes`);
    const at = this.reserve(sizeBytes);
    for (let i = 0; i < sizeBytes; i++) {
      if (i < text.length) {
        const c = text.charCodeAt(i);
        if (c < 0x20 || c > 0x7e) throw new RangeError(`"${text}" is not printable ASCII`);
        this.bytes[at + i] = c;
      } else {
        this.bytes[at + i] = pad;
      }
    }
    return this;
  }

  /** Patch a u16 already written at `offset`. */
  patchU16(offset: number, value: number): void {
    if (offset + 2 > this.lengthBytes) throw new RangeError(`patch at ${offset} is past the end`);
    this.view.setUint16(offset, checkUnsigned(value, 16, "patch"), true);
  }

  /** Patch a u32 already written at `offset`. */
  patchU32(offset: number, value: number): void {
    if (offset + 4 > this.lengthBytes) throw new RangeError(`patch at ${offset} is past the end`);
    this.view.setUint32(offset, checkUnsigned(value, 32, "patch"), true);
  }

  /** A copy of the bytes written so far. */
  finish(): Uint8Array {
    return this.bytes.slice(0, this.lengthBytes);
  }
}

/** Sum of `bytes[start, end)` modulo 256. */
export function byteSum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum = (sum + bytes[i]) & 0xff;
  return sum;
}

/**
 * ACPI 6.5 5.2.6 / 5.2.5.3: a checksum byte is chosen so that the covered bytes sum to zero
 * modulo 256. Writes that byte at `checksumOffset` (which lies inside [start, end)).
 */
export function fixChecksum(bytes: Uint8Array, checksumOffset: number, start = 0, end = bytes.length): void {
  bytes[checksumOffset] = 0;
  bytes[checksumOffset] = (0x100 - byteSum(bytes, start, end)) & 0xff;
}
