/**
 * An encoder for the subset of the ACPI Machine Language (ACPI 6.5 section 20) that static
 * firmware tables need: names, scopes, devices, integers, strings, buffers, packages.
 * Every function returns the encoded bytes of one term; terms compose by concatenation.
 *
 * Opcodes (20.3): ZeroOp 0x00, OneOp 0x01, NameOp 0x08, BytePrefix 0x0A, WordPrefix 0x0B,
 * DWordPrefix 0x0C, StringPrefix 0x0D, QWordPrefix 0x0E, ScopeOp 0x10, BufferOp 0x11,
 * PackageOp 0x12, OnesOp 0xFF, ExtOpPrefix 0x5B + DeviceOp 0x82.
 */

import { toU64, type U64 } from "./bytes.ts";

export type AmlTerm = Uint8Array;

export const AML_OP = {
  zero: 0x00,
  one: 0x01,
  name: 0x08,
  bytePrefix: 0x0a,
  wordPrefix: 0x0b,
  dwordPrefix: 0x0c,
  stringPrefix: 0x0d,
  qwordPrefix: 0x0e,
  scope: 0x10,
  buffer: 0x11,
  package: 0x12,
  method: 0x14,
  extPrefix: 0x5b,
  device: 0x82,
  dualNamePrefix: 0x2e,
  multiNamePrefix: 0x2f,
  rootChar: 0x5c,
  parentPrefixChar: 0x5e,
  ones: 0xff,
} as const;

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Largest value a PkgLength of 1..4 bytes can encode (20.2.4): 6, 12, 20 and 28 bits. */
const PKG_LENGTH_LIMITS = [0x3f, 0xfff, 0xf_ffff, 0xfff_ffff] as const;

/**
 * PkgLength (ACPI 6.5 20.2.4) for a package whose contents after the PkgLength are
 * `contentLength` bytes. The encoded value counts the PkgLength bytes themselves. One byte:
 * bits 5:0 hold the length (<= 63). Otherwise bits 7:6 of the lead byte are the number of
 * following bytes (1-3), bits 3:0 the low nibble, and each following byte the next 8 bits.
 */
export function pkgLength(contentLength: number): Uint8Array {
  for (let sizeBytes = 1; sizeBytes <= 4; sizeBytes++) {
    const total = contentLength + sizeBytes;
    if (total > PKG_LENGTH_LIMITS[sizeBytes - 1]) continue;
    if (sizeBytes === 1) return Uint8Array.of(total);
    const out = new Uint8Array(sizeBytes);
    out[0] = ((sizeBytes - 1) << 6) | (total & 0x0f);
    for (let i = 1; i < sizeBytes; i++) out[i] = (total >>> (4 + 8 * (i - 1))) & 0xff;
    return out;
  }
  throw new RangeError(`AML package of ${contentLength} bytes exceeds the 28-bit PkgLength`);
}

/** Opcode(s), PkgLength, then the contents: the shape of Scope, Device, Buffer and Package. */
function withPkgLength(opcode: readonly number[], contents: readonly Uint8Array[]): Uint8Array {
  const body = concat(contents);
  return concat([Uint8Array.from(opcode), pkgLength(body.length), body]);
}

const LEAD_NAME_CHAR = /^[A-Z_]$/;
const NAME_CHAR = /^[A-Z0-9_]$/;

/** NameSeg (20.2.2): 4 characters, a lead char (A-Z, _) then A-Z 0-9 _; short names padded with '_'. */
export function nameSeg(name: string): Uint8Array {
  if (name.length < 1 || name.length > 4) throw new RangeError(`AML NameSeg "${name}" is not 1-4 characters`);
  const padded = name.padEnd(4, "_");
  if (!LEAD_NAME_CHAR.test(padded[0])) throw new RangeError(`AML NameSeg "${name}" has a bad lead character`);
  for (const c of padded.slice(1)) {
    if (!NAME_CHAR.test(c)) throw new RangeError(`AML NameSeg "${name}" has a bad character "${c}"`);
  }
  return Uint8Array.from(padded, (c) => c.charCodeAt(0));
}

/**
 * NameString (20.2.2) from ASL-style text: an optional root "\" or parent "^" prefixes, then
 * dot-separated segments: one segment as a NameSeg, two with DualNamePrefix, more with
 * MultiNamePrefix and a count.
 */
export function nameString(path: string): Uint8Array {
  const prefix: number[] = [];
  let rest = path;
  if (rest.startsWith("\\")) {
    prefix.push(AML_OP.rootChar);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith("^")) {
      prefix.push(AML_OP.parentPrefixChar);
      rest = rest.slice(1);
    }
  }
  const segments = rest === "" ? [] : rest.split(".").map(nameSeg);
  if (segments.length === 0) return Uint8Array.from([...prefix, 0x00]); // NullName
  if (segments.length > 255) throw new RangeError(`AML name "${path}" has too many segments`);
  let head: number[];
  if (segments.length === 1) head = prefix;
  else if (segments.length === 2) head = [...prefix, AML_OP.dualNamePrefix];
  else head = [...prefix, AML_OP.multiNamePrefix, segments.length];
  return concat([Uint8Array.from(head), ...segments]);
}

/** An integer constant (20.2.3): ZeroOp, OneOp, OnesOp, or the smallest prefixed width. */
export function integer(value: U64): Uint8Array {
  const v = toU64(value, "AML integer");
  if (v === 0n) return Uint8Array.of(AML_OP.zero);
  if (v === 1n) return Uint8Array.of(AML_OP.one);
  if (v === 0xffff_ffff_ffff_ffffn) return Uint8Array.of(AML_OP.ones);
  let prefix: number;
  let sizeBytes: number;
  if (v <= 0xffn) [prefix, sizeBytes] = [AML_OP.bytePrefix, 1];
  else if (v <= 0xffffn) [prefix, sizeBytes] = [AML_OP.wordPrefix, 2];
  else if (v <= 0xffff_ffffn) [prefix, sizeBytes] = [AML_OP.dwordPrefix, 4];
  else [prefix, sizeBytes] = [AML_OP.qwordPrefix, 8];
  const out = new Uint8Array(1 + sizeBytes);
  out[0] = prefix;
  for (let i = 0; i < sizeBytes; i++) out[1 + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** A String (20.2.3): StringPrefix, ASCII characters 0x01-0x7F, NUL. */
export function string(text: string): Uint8Array {
  const out = new Uint8Array(text.length + 2);
  out[0] = AML_OP.stringPrefix;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x01 || c > 0x7f) throw new RangeError(`AML string "${text}" is not 7-bit ASCII`);
    out[1 + i] = c;
  }
  return out;
}

/**
 * EISAID("PNP0A08") (the ASL EISAID() macro, ACPI 6.5 section 19): three letters compressed to 5 bits each (A = 1) in a
 * 16-bit big-endian word, then four hex digits; the 32-bit result is stored as those bytes in
 * order, so it is emitted as a DWord constant whose little-endian bytes are 41 D0 0A 08.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new RangeError(`"${id}" is not an EISA ID like PNP0A08`);
  const letter = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (letter(0) << 10) | (letter(1) << 5) | letter(2);
  const product = Number.parseInt(id.slice(3), 16);
  const bytes = [vendor >> 8, vendor & 0xff, product >> 8, product & 0xff];
  return (bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24)) >>> 0;
}

export function eisaId(id: string): Uint8Array {
  const value = eisaIdValue(id);
  return Uint8Array.of(
    AML_OP.dwordPrefix,
    value & 0xff,
    (value >>> 8) & 0xff,
    (value >>> 16) & 0xff,
    value >>> 24,
  );
}

/** DefName (20.2.5.1): NameOp NameString DataRefObject. */
export function name(path: string, data: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(AML_OP.name), nameString(path), data]);
}

/** DefScope (20.2.5.1): ScopeOp PkgLength NameString TermList. */
export function scope(path: string, terms: readonly Uint8Array[]): Uint8Array {
  return withPkgLength([AML_OP.scope], [nameString(path), ...terms]);
}

/** DefDevice (20.2.5.2): ExtOpPrefix DeviceOp PkgLength NameString TermList. */
export function device(path: string, terms: readonly Uint8Array[]): Uint8Array {
  return withPkgLength([AML_OP.extPrefix, AML_OP.device], [nameString(path), ...terms]);
}

/** DefBuffer (20.2.5.4): BufferOp PkgLength BufferSize(integer) ByteList. */
export function buffer(bytes: Uint8Array): Uint8Array {
  return withPkgLength([AML_OP.buffer], [integer(bytes.length), bytes]);
}

/** DefPackage (20.2.5.4): PackageOp PkgLength NumElements(byte) PackageElementList. */
export function pkg(elements: readonly Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new RangeError("AML Package with more than 255 elements needs VarPackage");
  return withPkgLength([AML_OP.package], [Uint8Array.of(elements.length), ...elements]);
}

/**
 * DefMethod (20.2.5.2): MethodOp PkgLength NameString MethodFlags TermList. MethodFlags: bits 2:0
 * ArgCount, bit 3 SerializeFlag, bits 7:4 SyncLevel (0 here: not serialized).
 */
export function method(path: string, argCount: number, body: readonly Uint8Array[]): Uint8Array {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7) {
    throw new RangeError(`AML method ${path}: ArgCount ${argCount} is not 0-7`);
  }
  return withPkgLength([AML_OP.method], [nameString(path), Uint8Array.of(argCount), ...body]);
}

/** A reference to a named object inside a Package (20.2.5.4 PackageElement := DataRefObject | NameString). */
export function nameReference(path: string): Uint8Array {
  return nameString(path);
}
