/**
 * Command queue entries (SMMUv3 4.1-4.7): opcodes, field extraction and per-opcode legality for
 * the features this model implements. A command is 16 bytes (two little-endian dwords), read as
 * four 32-bit words w0..w3.
 */

export const CMD_BYTES = 16;

export const OP = {
  PREFETCH_CONFIG: 0x01,
  PREFETCH_ADDR: 0x02,
  CFGI_STE: 0x03,
  /** CFGI_STE_RANGE; CFGI_ALL is this opcode with Range = 31. */
  CFGI_STE_RANGE: 0x04,
  CFGI_CD: 0x05,
  CFGI_CD_ALL: 0x06,
  TLBI_NH_ALL: 0x10,
  TLBI_NH_ASID: 0x11,
  TLBI_NH_VA: 0x12,
  TLBI_NH_VAA: 0x13,
  TLBI_EL3_ALL: 0x18,
  TLBI_EL3_VA: 0x1a,
  TLBI_EL2_ALL: 0x20,
  TLBI_EL2_ASID: 0x21,
  TLBI_EL2_VA: 0x22,
  TLBI_EL2_VAA: 0x23,
  TLBI_S12_VMALL: 0x28,
  TLBI_S2_IPA: 0x2a,
  TLBI_NSNH_ALL: 0x30,
  ATC_INV: 0x40,
  PRI_RESP: 0x41,
  RESUME: 0x44,
  STALL_TERM: 0x45,
  CMD_SYNC: 0x46,
} as const;

const OP_NAMES: string[] = Array.from({ length: 256 }, (_, op) => `OP_0x${op.toString(16)}`);
for (const [name, code] of Object.entries(OP)) OP_NAMES[code] = name;

export function opName(op: number): string {
  return OP_NAMES[op & 0xff];
}

/** CMD_SYNC.CS (4.7.3): completion signal. */
export const CS_NONE = 0;
export const CS_IRQ = 1;
export const CS_SEV = 2;

/** Field accessors over the four words of a command. */
export const cmdOpcode = (w0: number): number => w0 & 0xff;
/** SSec (bit 10): a Secure-stream command; ILLEGAL on the Non-secure queue. */
export const cmdSsec = (w0: number): boolean => ((w0 >>> 10) & 1) === 1;
export const cmdSsv = (w0: number): boolean => ((w0 >>> 11) & 1) === 1;
export const cmdSsid = (w0: number): number => w0 >>> 12;
/** TLBI range: NUM 16:12, SCALE 24:20. */
export const cmdNum = (w0: number): number => (w0 >>> 12) & 0x1f;
export const cmdScale = (w0: number): number => (w0 >>> 20) & 0x1f;
/** CMD_SYNC: CS 13:12, MSIData in w1. */
export const cmdSyncCs = (w0: number): number => (w0 >>> 12) & 3;
/** CFGI / PREFETCH StreamID: w1. TLBI: VMID w1 15:0, ASID w1 31:16. */
export const cmdVmid = (w1: number): number => w1 & 0xffff;
export const cmdAsid = (w1: number): number => w1 >>> 16;
/** dword1: Leaf bit 0, Range 4:0 (CFGI_STE_RANGE), TTL 9:8, TG 11:10. */
export const cmdLeaf = (w2: number): boolean => (w2 & 1) === 1;
export const cmdRange = (w2: number): number => w2 & 0x1f;
export const cmdTtl = (w2: number): number => (w2 >>> 8) & 3;
export const cmdTg = (w2: number): number => (w2 >>> 10) & 3;

/** TLBI range granule from TG (1: 4K, 2: 16K, 3: 64K), as log2 bytes; 0 for a non-range TLBI. */
export function rangeGranuleShift(tg: number): number {
  return tg === 1 ? 12 : tg === 2 ? 14 : tg === 3 ? 16 : 0;
}
