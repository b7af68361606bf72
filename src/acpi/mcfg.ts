/**
 * The PCI Express memory-mapped configuration table (PCI Firmware Specification 3.3 4.1.2,
 * signature "MCFG", revision 1): the SDT header, 8 reserved bytes at 36, then one 16-byte
 * allocation per ECAM region at 44:
 *   0 Base Address u64 (the ECAM address of bus 0, even when start bus > 0)
 *   8 PCI Segment Group u16   10 Start Bus u8   11 End Bus u8   12 Reserved u32
 * Linux also wants the ECAM range reserved in a PNP0C01/PNP0C02 _CRS (see dsdt.ts).
 */

import type { U64 } from "./bytes.ts";
import { beginSdt, finishSdt, type SdtIdentity } from "./sdt.ts";

export const MCFG_REVISION = 1;
export const MCFG_ALLOCATIONS_OFFSET = 44;
export const MCFG_ALLOCATION_SIZE = 16;
/** ECAM: 32 devices x 8 functions x 4 KiB per bus (PCIe 6.0 7.2.2). */
export const ECAM_BYTES_PER_BUS = 1 << 20;

export interface EcamRegion {
  /** Guest-physical address of the ECAM window of bus 0 of this segment. */
  readonly baseGpa: U64;
  readonly segment: number;
  readonly startBus: number;
  readonly endBus: number;
}

export function buildMcfg(regions: readonly EcamRegion[], identity: SdtIdentity): Uint8Array {
  const w = beginSdt("MCFG", MCFG_REVISION, identity).zeros(8);
  for (const r of regions) {
    if (r.startBus > r.endBus) throw new RangeError(`MCFG: start bus ${r.startBus} > end bus ${r.endBus}`);
    w.u64(r.baseGpa, "ECAM base")
      .u16(r.segment, "segment")
      .u8(r.startBus, "start bus")
      .u8(r.endBus, "end bus");
    w.u32(0);
  }
  return finishSdt(w);
}
