/**
 * The Root System Description Pointer, ACPI 2.0+ form (ACPI 6.5 5.2.5.3, Table 5.3), 36 bytes:
 *   0 Signature "RSD PTR "   8 Checksum (bytes 0..19 sum to 0)   9 OEMID[6]   15 Revision = 2
 *   16 RsdtAddress u32 (0: we publish only the XSDT)   20 Length u32 = 36   24 XsdtAddress u64
 *   32 Extended Checksum (bytes 0..35 sum to 0)   33 Reserved[3]
 *
 * Linux finds it through boot_params.acpi_rsdp_addr, PVH start_info.rsdp_paddr, or by scanning
 * 0xE0000-0xFFFFF on 16-byte boundaries (ACPI 6.5 5.2.5.1), so its address must be 16-aligned.
 */

import { ByteWriter, fixChecksum, type U64 } from "./bytes.ts";

export const RSDP_SIZE = 36;
export const RSDP_V1_CHECKSUM_LENGTH = 20;
export const RSDP_REVISION_ACPI2 = 2;
export const RSDP_ALIGNMENT = 16;

export function buildRsdp(xsdtGpa: U64, oemId: string): Uint8Array {
  const bytes = new ByteWriter()
    .ascii("RSD PTR ", 8)
    .u8(0) // Checksum over the first 20 bytes
    .ascii(oemId, 6)
    .u8(RSDP_REVISION_ACPI2)
    .u32(0) // RsdtAddress: no RSDT; an ACPI 2.0+ OS uses the XSDT
    .u32(RSDP_SIZE)
    .u64(xsdtGpa, "XSDT address")
    .u8(0) // Extended Checksum over all 36 bytes
    .zeros(3)
    .finish();
  fixChecksum(bytes, 8, 0, RSDP_V1_CHECKSUM_LENGTH);
  fixChecksum(bytes, 32, 0, RSDP_SIZE);
  return bytes;
}
