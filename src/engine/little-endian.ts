/**
 * Little-endian fields of wire structures (virtio requests and records, vfio-user messages,
 * firmware tables): the one place such helpers live. 64-bit fields are numbers where the engine
 * uses them (safe integers below 2^53); a value of 2^53 or more reads as -1
 * (`LE_U64_UNREPRESENTABLE`), which callers treat as out of range.
 */

/** What a 64-bit read returns for a value of 2^53 or more. */
export const LE_U64_UNREPRESENTABLE = -1;

const TWO32 = 0x1_0000_0000;
/** High words at or above this make a 64-bit value 2^53 or more. */
const SAFE_HIGH_LIMIT = 0x20_0000;

export function readU32Le(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset] | (bytes[offset + 1] << 8) | (bytes[offset + 2] << 16) | (bytes[offset + 3] << 24)) >>> 0
  );
}

export function writeU32Le(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

/** A 64-bit field as a number, or LE_U64_UNREPRESENTABLE when it is 2^53 or more. */
export function readU64Le(bytes: Uint8Array, offset: number): number {
  const hi = readU32Le(bytes, offset + 4);
  if (hi >= SAFE_HIGH_LIMIT) return LE_U64_UNREPRESENTABLE;
  return hi * TWO32 + readU32Le(bytes, offset);
}

/** Writes a 64-bit field; numbers must be safe non-negative integers, bigints are taken modulo 2^64. */
export function writeU64Le(bytes: Uint8Array, offset: number, value: number | bigint): void {
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) {
    writeU32Le(bytes, offset, value >>> 0);
    writeU32Le(bytes, offset + 4, Math.floor(value / TWO32));
    return;
  }
  const v = BigInt.asUintN(64, typeof value === "bigint" ? value : BigInt(value));
  writeU32Le(bytes, offset, Number(v & 0xffff_ffffn));
  writeU32Le(bytes, offset + 4, Number(v >> 32n));
}

/** A 64-bit field of a DataView as a number, or LE_U64_UNREPRESENTABLE when it is 2^53 or more. */
export function readU64Safe(view: DataView, offset: number): number {
  const lo = view.getUint32(offset, true);
  const hi = view.getUint32(offset + 4, true);
  if (hi >= SAFE_HIGH_LIMIT) return LE_U64_UNREPRESENTABLE;
  return hi * TWO32 + lo;
}

/** Writes a safe non-negative integer as a 64-bit field of a DataView. */
export function writeU64Safe(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value >>> 0, true);
  view.setUint32(offset + 4, Math.floor(value / TWO32), true);
}

/** A fresh 2-byte little-endian encoding of `value`. */
export function u16LeBytes(value: number): Uint8Array {
  const b = new Uint8Array(2);
  b[0] = value & 0xff;
  b[1] = (value >>> 8) & 0xff;
  return b;
}

/** A fresh 8-byte little-endian encoding of `value` (a safe integer or a bigint). */
export function u64LeBytes(value: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  writeU64Le(b, 0, value);
  return b;
}
