/**
 * The VT-d remapping unit's register file (VT-d 11.4): a 4 KiB page of registers at their
 * architected offsets, declared as a table of named registers with their width and with
 * read-write and write-1-to-clear masks per 32-bit half. Bits outside both masks are read-only
 * (status, capabilities) or reserved (read as zero, writes ignored).
 *
 * The table is read by the generic `RegisterFile` (src/platform/register-file.ts); side effects
 * (commands, invalidations, queue tail updates) are left to the owner through `onWrite`.
 */
import { type RegisterDef, RegisterFile } from "../platform/register-file.ts";
import { FRCD_COUNT, FRCD_OFFSET, IVA_OFFSET, type VtdConfig } from "./config.ts";

export { type RegisterDef, RegisterFile };

export const REGISTER_FILE_BYTES = 4096;

/** Register offsets (VT-d 11.4). */
export const REG = {
  VER: 0x00,
  CAP: 0x08,
  ECAP: 0x10,
  GCMD: 0x18,
  GSTS: 0x1c,
  RTADDR: 0x20,
  CCMD: 0x28,
  FSTS: 0x34,
  FECTL: 0x38,
  FEDATA: 0x3c,
  FEADDR: 0x40,
  FEUADDR: 0x44,
  AFLOG: 0x58,
  PMEN: 0x64,
  PLMBASE: 0x68,
  PLMLIMIT: 0x6c,
  PHMBASE: 0x70,
  PHMLIMIT: 0x78,
  IQH: 0x80,
  IQT: 0x88,
  IQA: 0x90,
  ICS: 0x9c,
  IECTL: 0xa0,
  IEDATA: 0xa4,
  IEADDR: 0xa8,
  IEUADDR: 0xac,
  IQERCD: 0xb0,
  IRTA: 0xb8,
  IVA: IVA_OFFSET,
  IOTLB: IVA_OFFSET + 8,
  FRCD: FRCD_OFFSET,
} as const;

/** GCMD_REG / GSTS_REG bits (VT-d 11.4.4, 11.4.5). */
export const GCMD = {
  CFI: 1 << 23,
  SIRTP: 1 << 24,
  IRE: 1 << 25,
  QIE: 1 << 26,
  WBF: 1 << 27,
  EAFL: 1 << 28,
  SFL: 1 << 29,
  SRTP: 1 << 30,
  TE: 2 ** 31,
} as const;

/** FSTS_REG bits (VT-d 11.4.7). */
export const FSTS = { PFO: 1 << 0, PPF: 1 << 1, IQE: 1 << 4, ICE: 1 << 5, ITE: 1 << 6 } as const;
/** FECTL_REG / IECTL_REG bits. */
export const ECTL = { IP: 1 << 30, IM: 2 ** 31 } as const;

function def(
  name: string,
  offset: number,
  widthBytes: 4 | 8,
  rw: number[] = [0, 0],
  w1c: number[] = [0, 0],
  writeOnly = false,
): RegisterDef {
  return { name, offset, widthBytes, rw, w1c, writeOnly };
}

/** Mask of address bits 31:12 in a low dword, and of bits (haw-1):32 in a high dword. */
function addressMasks(hawBits: number): { lo: number; hi: number } {
  const hiBits = Math.min(hawBits, 52) - 32;
  return { lo: 0xfffff000, hi: hiBits >= 32 ? 0xffffffff : 2 ** hiBits - 1 };
}

/** The register table for a configuration. */
export function registerLayout(config: VtdConfig): RegisterDef[] {
  const a = addressMasks(config.awBits);
  const regs: RegisterDef[] = [
    def("VER", REG.VER, 4),
    def("CAP", REG.CAP, 8),
    def("ECAP", REG.ECAP, 8),
    def("GCMD", REG.GCMD, 4, [0xff800000], [0], true),
    def("GSTS", REG.GSTS, 4),
    // TTM (11:10) is writable only when scalable mode is supported; else legacy only.
    def("RTADDR", REG.RTADDR, 8, [(a.lo | (config.scalableMode ? 0xc00 : 0)) >>> 0, a.hi]),
    // DID 15:0, SID 31:16 | FM 33:32, CIRG 62:61, ICC 63 (CAIG 60:59 is status).
    def("CCMD", REG.CCMD, 8, [0xffffffff, 0xe0000003]),
    def("FSTS", REG.FSTS, 4, [0], [FSTS.PFO | FSTS.IQE | FSTS.ICE | FSTS.ITE]),
    def("FECTL", REG.FECTL, 4, [ECTL.IM]),
    def("FEDATA", REG.FEDATA, 4, [0xffff]),
    def("FEADDR", REG.FEADDR, 4, [0xfffffffc]),
    def("FEUADDR", REG.FEUADDR, 4, [0xffffffff]),
    def("AFLOG", REG.AFLOG, 8),
    def("PMEN", REG.PMEN, 4, [2 ** 31]),
    def("PLMBASE", REG.PLMBASE, 4),
    def("PLMLIMIT", REG.PLMLIMIT, 4),
    def("PHMBASE", REG.PHMBASE, 8),
    def("PHMLIMIT", REG.PHMLIMIT, 8),
    def("IQH", REG.IQH, 8),
    def("IQT", REG.IQT, 8, [0x7fff0, 0]),
    // QS 2:0, DW 11 (only with scalable mode), base address.
    def("IQA", REG.IQA, 8, [(a.lo | 0x7 | (config.scalableMode ? 0x800 : 0)) >>> 0, a.hi]),
    def("ICS", REG.ICS, 4, [0], [1]),
    def("IECTL", REG.IECTL, 4, [ECTL.IM]),
    def("IEDATA", REG.IEDATA, 4, [0xffff]),
    def("IEADDR", REG.IEADDR, 4, [0xfffffffc]),
    def("IEUADDR", REG.IEUADDR, 4, [0xffffffff]),
    def("IQERCD", REG.IQERCD, 8),
    // S 3:0, EIME 11 (only with ECAP.EIM), base address.
    def(
      "IRTA",
      REG.IRTA,
      8,
      config.intremap ? [(a.lo | 0xf | (config.eim ? 0x800 : 0)) >>> 0, a.hi] : [0, 0],
    ),
    // AM 5:0, IH 6, address 63:12.
    def("IVA", REG.IVA, 8, [0xfffff07f, 0xffffffff]),
    // DID 47:32, IIRG 61:60, IVT 63 (IAIG 58:57 is status; DR/DW absent without CAP.DRD/DWD).
    def("IOTLB", REG.IOTLB, 8, [0, 0xb000ffff]),
  ];
  for (let i = 0; i < FRCD_COUNT; i++) {
    regs.push(def(`FRCD${i}_LO`, REG.FRCD + 16 * i, 8));
    // F (bit 127) is write-1-to-clear; the rest of the record is status.
    regs.push(def(`FRCD${i}_HI`, REG.FRCD + 16 * i + 8, 8, [0, 0], [0, 2 ** 31]));
  }
  return regs;
}

// ---- Guest accesses to the register page (the unit's IoHandler) ----

/**
 * Accesses must be naturally aligned, except that an 8-byte access at a 4-byte boundary covers
 * the two dwords there (older Linux reads GSTS at 0x1C with readq).
 */
function aligned(offset: number, sizeBytes: number): boolean {
  return (
    Number.isInteger(offset) &&
    offset >= 0 &&
    offset + sizeBytes <= REGISTER_FILE_BYTES &&
    offset % (sizeBytes === 8 ? 4 : sizeBytes) === 0
  );
}

/** A guest read of 1, 2, 4 or 8 bytes (8: exact below 2^53); misaligned reads return 0. */
export function readRegisters(regs: RegisterFile, offset: number, sizeBytes: number): number {
  if (!aligned(offset, sizeBytes)) return 0;
  const index = offset >> 2;
  if (sizeBytes === 8) return regs.readDword(index + 1) * 0x1_0000_0000 + regs.readDword(index);
  const dword = regs.readDword(index);
  if (sizeBytes === 4) return dword;
  const shift = (offset & 3) * 8;
  return sizeBytes === 2 ? (dword >>> shift) & 0xffff : (dword >>> shift) & 0xff;
}

/** An exact 64-bit guest read. */
export function readRegistersWide(regs: RegisterFile, offset: number): bigint {
  if (!aligned(offset, 8)) return 0n;
  const index = offset >> 2;
  return (BigInt(regs.readDword(index + 1)) << 32n) | BigInt(regs.readDword(index));
}

/** A guest write of 4 or 8 bytes (the only sizes VT-d defines, 11.1); others are ignored. */
export function writeRegisters(regs: RegisterFile, offset: number, sizeBytes: number, value: number): void {
  if (!aligned(offset, sizeBytes) || !Number.isFinite(value)) return;
  const index = offset >> 2;
  if (sizeBytes === 4) regs.writeDword(index, value >>> 0);
  else if (sizeBytes === 8)
    regs.writeQword(index, (value % 0x1_0000_0000) >>> 0, Math.floor(value / 0x1_0000_0000) >>> 0);
}

/** An exact 64-bit guest write. */
export function writeRegistersWide(regs: RegisterFile, offset: number, value: bigint): void {
  if (!aligned(offset, 8)) return;
  const v = BigInt.asUintN(64, value);
  regs.writeQword(offset >> 2, Number(v & 0xffffffffn), Number(v >> 32n));
}
