/**
 * The System Description Table header every ACPI table but the RSDP and FACS starts with
 * (ACPI 6.5 5.2.6, Table 5.4), and the writer that fills in its length and checksum.
 *
 *   0 Signature[4]   4 Length u32   8 Revision u8   9 Checksum u8   10 OEMID[6]
 *   16 OEM Table ID[8]   24 OEM Revision u32   28 Creator ID[4]   32 Creator Revision u32
 *   36 table-specific body
 */

import { ByteWriter, fixChecksum } from "./bytes.ts";

export const SDT_HEADER_SIZE = 36;
export const SDT_LENGTH_OFFSET = 4;
export const SDT_CHECKSUM_OFFSET = 9;

/** Who made the table: the OEM fields and the creator (the "ASL compiler" for AML tables). */
export interface SdtIdentity {
  /** 6 ASCII characters, space padded. */
  readonly oemId: string;
  /** 8 ASCII characters, space padded. For DMAR/VIOT-style matching keep it stable per machine. */
  readonly oemTableId: string;
  readonly oemRevision: number;
  /** 4 ASCII characters. */
  readonly creatorId: string;
  readonly creatorRevision: number;
}

export const VIOMMU_SDT_IDENTITY: SdtIdentity = {
  oemId: "VIOMMU",
  oemTableId: "VIOMMUVM",
  oemRevision: 1,
  creatorId: "VIOM",
  creatorRevision: 1,
};

/**
 * Starts a table: writes the header with a zero length and checksum; `finishSdt` patches both.
 * The body is appended to the returned writer.
 */
export function beginSdt(signature: string, revision: number, identity: SdtIdentity): ByteWriter {
  if (signature.length !== 4) throw new RangeError(`signature "${signature}" is not 4 characters`);
  return new ByteWriter()
    .ascii(signature, 4)
    .u32(0) // Length, patched by finishSdt
    .u8(revision, "revision")
    .u8(0) // Checksum, patched by finishSdt
    .ascii(identity.oemId, 6)
    .ascii(identity.oemTableId, 8)
    .u32(identity.oemRevision, "OEM revision")
    .ascii(identity.creatorId, 4)
    .u32(identity.creatorRevision, "creator revision");
}

/** Patches Length and Checksum (the whole table sums to zero) and returns the bytes. */
export function finishSdt(writer: ByteWriter): Uint8Array {
  writer.patchU32(SDT_LENGTH_OFFSET, writer.offset);
  const bytes = writer.finish();
  fixChecksum(bytes, SDT_CHECKSUM_OFFSET);
  return bytes;
}

/** The four-character signature of a table built here (or handed in, e.g. a DMAR). */
export function sdtSignature(table: Uint8Array): string {
  if (table.length < SDT_HEADER_SIZE) throw new RangeError("table shorter than an SDT header");
  return String.fromCharCode(table[0], table[1], table[2], table[3]);
}
