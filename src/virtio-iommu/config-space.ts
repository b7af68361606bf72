/**
 * The 40-byte device configuration space (5.13.4), little-endian:
 *   0 page_size_mask le64 | 8 input_range.start le64 | 16 input_range.end le64 |
 *  24 domain_range.start le32 | 28 domain_range.end le32 | 32 probe_size le32 | 36 bypass u8 |
 *  37 reserved[3].
 * Only `bypass` ever changes after construction; the device decides when a driver may write it.
 */
import { writeU32Le, writeU64Le } from "../engine/little-endian.ts";
import {
  CONFIG_BYPASS,
  CONFIG_DOMAIN_RANGE_END,
  CONFIG_DOMAIN_RANGE_START,
  CONFIG_INPUT_RANGE_END,
  CONFIG_INPUT_RANGE_START,
  CONFIG_PAGE_SIZE_MASK,
  CONFIG_PROBE_SIZE,
  CONFIG_SIZE_BYTES,
} from "./wire.ts";

export interface ConfigFields {
  readonly pageSizeMask: bigint;
  readonly inputStart: number;
  readonly inputEnd: number;
  readonly domainStart: number;
  readonly domainEnd: number;
  readonly probeSizeBytes: number;
  readonly bypass: 0 | 1;
}

export class ConfigSpace {
  readonly sizeBytes = CONFIG_SIZE_BYTES;
  private readonly bytes = new Uint8Array(CONFIG_SIZE_BYTES);

  constructor(fields: ConfigFields) {
    const b = this.bytes;
    writeU64Le(b, CONFIG_PAGE_SIZE_MASK, fields.pageSizeMask);
    writeU64Le(b, CONFIG_INPUT_RANGE_START, fields.inputStart);
    writeU64Le(b, CONFIG_INPUT_RANGE_END, fields.inputEnd);
    writeU32Le(b, CONFIG_DOMAIN_RANGE_START, fields.domainStart);
    writeU32Le(b, CONFIG_DOMAIN_RANGE_END, fields.domainEnd);
    writeU32Le(b, CONFIG_PROBE_SIZE, fields.probeSizeBytes);
    b[CONFIG_BYPASS] = fields.bypass;
  }

  get bypass(): 0 | 1 {
    return this.bytes[CONFIG_BYPASS] === 1 ? 1 : 0;
  }

  /** Sets the bypass byte; 5.13.4.2: the device MUST NOT present a value other than 0 or 1. */
  set bypass(value: 0 | 1) {
    this.bytes[CONFIG_BYPASS] = value;
  }

  /** Little-endian read of `sizeBytes` at `offset`; bytes outside the 40-byte space read 0. */
  read(offset: number, sizeBytes: 1 | 2 | 4): number {
    let value = 0;
    for (let i = sizeBytes - 1; i >= 0; i--) {
      const at = offset + i;
      const byte = Number.isInteger(at) && at >= 0 && at < CONFIG_SIZE_BYTES ? this.bytes[at] : 0;
      value = value * 256 + byte;
    }
    return value;
  }

  /** A copy of the whole space, for tools and tests. */
  snapshot(): Uint8Array {
    return this.bytes.slice();
  }
}
