/**
 * PROBE request properties (5.13.6.7, 5.13.6.8): encoding by the device, parsing for drivers,
 * tools and tests.
 *
 * Each property is a le16 {type: 12 bits, reserved: 4 bits} and a le16 length (bytes after the
 * 4-byte header); the next property starts exactly length + 4 bytes later; type 0 ends the list.
 */

import { writeU64Le } from "../engine/little-endian.ts";
import type { ReservedRegion } from "./reserved-regions.ts";
import {
  PROBE_PROPERTY_HEADER_BYTES,
  PROBE_T_RESV_MEM,
  RESV_MEM_PROPERTY_BYTES,
  RESV_MEM_PROPERTY_LENGTH,
  RESV_MEM_T_MSI,
  RESV_MEM_T_RESERVED,
} from "./wire.ts";

/** Bytes the properties of `regions` take in a PROBE response. */
export function probePropertiesBytes(regions: readonly ReservedRegion[]): number {
  return regions.length * RESV_MEM_PROPERTY_BYTES;
}

/**
 * Writes one RESV_MEM property per region into `properties` and zero-fills the rest (5.13.6.7.2:
 * unused bytes SHOULD be zero; length excludes the header; reserved fields are zero).
 * The caller guarantees `properties` is large enough (checked at endpoint creation).
 */
export function encodeProbeProperties(regions: readonly ReservedRegion[], properties: Uint8Array): void {
  properties.fill(0);
  let off = 0;
  for (const r of regions) {
    properties[off] = PROBE_T_RESV_MEM & 0xff;
    properties[off + 1] = (PROBE_T_RESV_MEM >> 8) & 0x0f;
    properties[off + 2] = RESV_MEM_PROPERTY_LENGTH & 0xff;
    properties[off + 3] = RESV_MEM_PROPERTY_LENGTH >> 8;
    // subtype, then reserved[3] left zero by the fill above.
    properties[off + 4] = r.subtype === "msi" ? RESV_MEM_T_MSI : RESV_MEM_T_RESERVED;
    writeU64Le(properties, off + 8, r.iovaStart);
    writeU64Le(properties, off + 16, r.iovaLast);
    off += PROBE_PROPERTY_HEADER_BYTES + RESV_MEM_PROPERTY_LENGTH;
  }
}

export interface ParsedProbeProperty {
  readonly type: number;
  readonly reservedBits: number;
  readonly length: number;
  /** The property value (after the header). */
  readonly value: Uint8Array;
}

export interface ParsedResvMem {
  readonly subtype: number;
  readonly start: bigint;
  readonly end: bigint;
}

/** Walks a properties buffer as a driver does (5.13.6.7.1): until type 0 or the end. */
export function parseProbeProperties(properties: Uint8Array): ParsedProbeProperty[] {
  const out: ParsedProbeProperty[] = [];
  const view = new DataView(properties.buffer, properties.byteOffset, properties.byteLength);
  let off = 0;
  while (off + PROBE_PROPERTY_HEADER_BYTES <= properties.length) {
    const word = view.getUint16(off, true);
    const type = word & 0x0fff;
    if (type === 0) break;
    const length = view.getUint16(off + 2, true);
    const end = Math.min(properties.length, off + PROBE_PROPERTY_HEADER_BYTES + length);
    out.push({ type, reservedBits: word >> 12, length, value: properties.subarray(off + 4, end) });
    off += PROBE_PROPERTY_HEADER_BYTES + length;
  }
  return out;
}

export function parseResvMem(p: ParsedProbeProperty): ParsedResvMem | undefined {
  if (p.type !== PROBE_T_RESV_MEM || p.value.length < RESV_MEM_PROPERTY_LENGTH) return undefined;
  const view = new DataView(p.value.buffer, p.value.byteOffset, p.value.byteLength);
  return { subtype: view.getUint8(0), start: view.getBigUint64(4, true), end: view.getBigUint64(12, true) };
}
