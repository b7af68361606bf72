/**
 * The Extended System Description Table (ACPI 6.5 5.2.8, Table 5.7): the SDT header (signature
 * "XSDT", revision 1) followed by one u64 guest-physical pointer per table. The DSDT is not
 * listed: it is reached through FADT.X_DSDT (ACPI 6.5 5.2.9).
 */

import type { U64 } from "./bytes.ts";
import { beginSdt, finishSdt, type SdtIdentity } from "./sdt.ts";

export const XSDT_REVISION = 1;
export const XSDT_ENTRY_SIZE = 8;

export function buildXsdt(tableGpas: readonly U64[], identity: SdtIdentity): Uint8Array {
  const w = beginSdt("XSDT", XSDT_REVISION, identity);
  for (const gpa of tableGpas) w.u64(gpa, "XSDT entry");
  return finishSdt(w);
}
