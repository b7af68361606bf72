/**
 * Request decoding (device side) and encoding (driver side, for transports, tools and tests).
 *
 * Decoding reads the device-readable bytes of one request with plain byte arithmetic into a
 * reusable `DecodedRequest`: nothing is allocated per request. 64-bit fields are kept exact where
 * the engine can represent them (below 2^53) and flagged otherwise; the ordering of virt_start
 * and virt_end is decided on the full 64-bit values.
 */
import {
  LE_U64_UNREPRESENTABLE,
  readU32Le,
  readU64Le,
  writeU32Le,
  writeU64Le,
} from "../engine/little-endian.ts";
import {
  ATTACH_READABLE_BYTES,
  DETACH_READABLE_BYTES,
  MAP_READABLE_BYTES,
  PROBE_READABLE_BYTES,
  REQ_ATTACH,
  REQ_DETACH,
  REQ_MAP,
  REQ_PROBE,
  REQ_UNMAP,
  type Status,
  UNMAP_READABLE_BYTES,
} from "./wire.ts";

/** Value stored in a 64-bit field of `DecodedRequest` when the guest value is 2^53 or more. */
export const U64_UNREPRESENTABLE = LE_U64_UNREPRESENTABLE;

/** True when the le64 at `a` is strictly below the le64 at `b` (exact over all 64 bits). */
function u64Below(bytes: Uint8Array, a: number, b: number): boolean {
  const hiA = readU32Le(bytes, a + 4);
  const hiB = readU32Le(bytes, b + 4);
  if (hiA !== hiB) return hiA < hiB;
  return readU32Le(bytes, a) < readU32Le(bytes, b);
}

function anyNonZero(bytes: Uint8Array, offset: number, sizeBytes: number): boolean {
  for (let i = offset; i < offset + sizeBytes; i++) if (bytes[i] !== 0) return true;
  return false;
}

/** The body size (device-readable bytes, head included) each request type needs, or 0 if unknown. */
export function readableBytesFor(type: number): number {
  switch (type) {
    case REQ_ATTACH:
      return ATTACH_READABLE_BYTES;
    case REQ_DETACH:
      return DETACH_READABLE_BYTES;
    case REQ_MAP:
      return MAP_READABLE_BYTES;
    case REQ_UNMAP:
      return UNMAP_READABLE_BYTES;
    case REQ_PROBE:
      return PROBE_READABLE_BYTES;
    default:
      return 0;
  }
}

/** The fields of one request; which ones are meaningful depends on `type`. */
export class DecodedRequest {
  type = 0;
  domainId = 0;
  endpointId = 0;
  flags = 0;
  /** A reserved field the device checks (ATTACH reserved[4], UNMAP reserved[4]) is non-zero. */
  reservedNonZero = false;
  /** virt_start, or U64_UNREPRESENTABLE. */
  virtStart = 0;
  /** virt_end (inclusive), or U64_UNREPRESENTABLE. */
  virtEnd = 0;
  /** phys_start, or U64_UNREPRESENTABLE. */
  physStart = 0;
  /** virt_end < virt_start as 64-bit values. */
  endBeforeStart = false;
}

export type DecodeOutcome =
  /** Nothing readable: not even a type byte. */
  | "empty"
  /** The type is not one this device knows. */
  | "unknown-type"
  /** A known type, but fewer readable bytes than its head and body. */
  | "short"
  | "ok";

/**
 * Decodes the device-readable bytes of a request into `out`. The head's reserved bytes are
 * ignored (VIRTIO 1.3 5.13.6.2: the device MUST ignore them); extra trailing bytes are ignored.
 */
export function decodeRequest(request: Uint8Array, out: DecodedRequest): DecodeOutcome {
  if (request.length === 0) return "empty";
  const type = request[0];
  out.type = type;
  const need = readableBytesFor(type);
  if (need === 0) return "unknown-type";
  if (request.length < need) return "short";
  out.reservedNonZero = false;
  out.endBeforeStart = false;
  switch (type) {
    case REQ_ATTACH:
      out.domainId = readU32Le(request, 4);
      out.endpointId = readU32Le(request, 8);
      out.flags = readU32Le(request, 12);
      out.reservedNonZero = anyNonZero(request, 16, 4);
      break;
    case REQ_DETACH:
      // reserved[8] at 12: the device MUST ignore it (5.13.6.4.2).
      out.domainId = readU32Le(request, 4);
      out.endpointId = readU32Le(request, 8);
      break;
    case REQ_MAP:
      out.domainId = readU32Le(request, 4);
      out.virtStart = readU64Le(request, 8);
      out.virtEnd = readU64Le(request, 16);
      out.physStart = readU64Le(request, 24);
      out.flags = readU32Le(request, 32);
      out.endBeforeStart = u64Below(request, 16, 8);
      break;
    case REQ_UNMAP:
      out.domainId = readU32Le(request, 4);
      out.virtStart = readU64Le(request, 8);
      out.virtEnd = readU64Le(request, 16);
      out.endBeforeStart = u64Below(request, 16, 8);
      out.reservedNonZero = anyNonZero(request, 24, 4);
      break;
    case REQ_PROBE:
      // reserved[64] at 8: the device MUST ignore it (5.13.6.7.2).
      out.endpointId = readU32Le(request, 4);
      break;
  }
  return "ok";
}

/** Writes a request tail {status, reserved[3] = 0} at `offset` (5.13.6.2: reserved SHOULD be 0). */
export function writeTail(response: Uint8Array, offset: number, status: Status): void {
  response[offset] = status;
  response[offset + 1] = 0;
  response[offset + 2] = 0;
  response[offset + 3] = 0;
}

// ---- Driver-side encoders -------------------------------------------------------------------

export function encodeAttach(domainId: number, endpointId: number, flags = 0): Uint8Array {
  const b = new Uint8Array(ATTACH_READABLE_BYTES);
  b[0] = REQ_ATTACH;
  writeU32Le(b, 4, domainId);
  writeU32Le(b, 8, endpointId);
  writeU32Le(b, 12, flags);
  return b;
}

export function encodeDetach(domainId: number, endpointId: number): Uint8Array {
  const b = new Uint8Array(DETACH_READABLE_BYTES);
  b[0] = REQ_DETACH;
  writeU32Le(b, 4, domainId);
  writeU32Le(b, 8, endpointId);
  return b;
}

export function encodeMap(
  domainId: number,
  virtStart: number | bigint,
  virtEnd: number | bigint,
  physStart: number | bigint,
  flags: number,
): Uint8Array {
  const b = new Uint8Array(MAP_READABLE_BYTES);
  b[0] = REQ_MAP;
  writeU32Le(b, 4, domainId);
  writeU64Le(b, 8, virtStart);
  writeU64Le(b, 16, virtEnd);
  writeU64Le(b, 24, physStart);
  writeU32Le(b, 32, flags);
  return b;
}

export function encodeUnmap(
  domainId: number,
  virtStart: number | bigint,
  virtEnd: number | bigint,
): Uint8Array {
  const b = new Uint8Array(UNMAP_READABLE_BYTES);
  b[0] = REQ_UNMAP;
  writeU32Le(b, 4, domainId);
  writeU64Le(b, 8, virtStart);
  writeU64Le(b, 16, virtEnd);
  return b;
}

export function encodeProbe(endpointId: number): Uint8Array {
  const b = new Uint8Array(PROBE_READABLE_BYTES);
  b[0] = REQ_PROBE;
  writeU32Le(b, 4, endpointId);
  return b;
}

/** The status in a response whose tail starts at `tailOffset` (0, or probe_size for PROBE). */
export function responseStatus(response: Uint8Array, tailOffset = 0): number {
  return response[tailOffset];
}
