/**
 * SMMUv3 register map and the identification values this model advertises.
 *
 * Offsets are from the start of the 128 KiB register frame: page 0 at 0x0, page 1 at 0x10000
 * (SMMUv3 6.2, 6.3). Field positions follow the register descriptions in 6.3.x.
 */

/** Size of the Non-secure register frame: two 64 KiB pages (SMMUv3 6.2). */
export const SMMU_FRAME_BYTES = 0x20000;
export const PAGE1 = 0x10000;

export const REG = {
  IDR0: 0x00,
  IDR1: 0x04,
  IDR2: 0x08,
  IDR3: 0x0c,
  IDR4: 0x10,
  IDR5: 0x14,
  IIDR: 0x18,
  AIDR: 0x1c,
  CR0: 0x20,
  CR0ACK: 0x24,
  CR1: 0x28,
  CR2: 0x2c,
  STATUSR: 0x40,
  GBPA: 0x44,
  AGBPA: 0x48,
  IRQ_CTRL: 0x50,
  IRQ_CTRLACK: 0x54,
  GERROR: 0x60,
  GERRORN: 0x64,
  GERROR_IRQ_CFG0: 0x68,
  GERROR_IRQ_CFG1: 0x70,
  GERROR_IRQ_CFG2: 0x74,
  STRTAB_BASE: 0x80,
  STRTAB_BASE_CFG: 0x88,
  CMDQ_BASE: 0x90,
  CMDQ_PROD: 0x98,
  CMDQ_CONS: 0x9c,
  EVENTQ_BASE: 0xa0,
  /** Page-0 aliases of the page-1 EVENTQ_PROD/CONS. */
  EVENTQ_PROD_P0: 0xa8,
  EVENTQ_CONS_P0: 0xac,
  EVENTQ_IRQ_CFG0: 0xb0,
  EVENTQ_IRQ_CFG1: 0xb8,
  EVENTQ_IRQ_CFG2: 0xbc,
  EVENTQ_PROD: PAGE1 + 0xa8,
  EVENTQ_CONS: PAGE1 + 0xac,
  PIDR4: 0xfd0,
  PIDR0: 0xfe0,
  PIDR1: 0xfe4,
  PIDR2: 0xfe8,
  PIDR3: 0xfec,
  CIDR0: 0xff0,
  CIDR1: 0xff4,
  CIDR2: 0xff8,
  CIDR3: 0xffc,
} as const;

/** CR0 / CR0ACK bits (6.3.9). PRIQEN is RES0 here: IDR0.PRI is 0 (no PRI queue). */
export const CR0_SMMUEN = 1 << 0;
export const CR0_EVENTQEN = 1 << 2;
export const CR0_CMDQEN = 1 << 3;
export const CR0_WRITABLE = CR0_SMMUEN | CR0_EVENTQEN | CR0_CMDQEN;

/** CR1 (6.3.11): queue and table cacheability/shareability, 12 bits. */
export const CR1_MASK = 0xfff;
/** CR2 (6.3.12): E2H (RES0 without Hyp), RECINVSID bit 1, PTM bit 2. */
export const CR2_MASK = 0b110;
/** CR2.RECINVSID: record C_BAD_STREAMID for out-of-range StreamIDs (7.3.3). */
export const CR2_RECINVSID = 1 << 1;

/** GBPA (6.3.14). */
export const GBPA_ABORT = 1 << 20;
export const GBPA_UPDATE = 1 << 31;
/** MemAttr 3:0, MTCFG 4, ALLOCCFG 11:8, SHCFG 13:12, PRIVCFG 17:16, INSTCFG 19:18, ABORT 20. */
export const GBPA_FIELDS = 0x1f_3f1f;
/** Reset value: SHCFG = 0b01 (use incoming), ABORT = 0. */
export const GBPA_RESET = 0x1000;

/** IRQ_CTRL / IRQ_CTRLACK (6.3.16). PRIQ_IRQEN is RES0 here. */
export const IRQ_GERROR = 1 << 0;
export const IRQ_EVENTQ = 1 << 2;
export const IRQ_CTRL_MASK = IRQ_GERROR | IRQ_EVENTQ;

/** GERROR / GERRORN bits (6.3.18). */
export const GERROR_CMDQ_ERR = 1 << 0;
export const GERROR_EVENTQ_ABT = 1 << 2;
export const GERROR_PRIQ_ABT = 1 << 3;
export const GERROR_MSI_CMDQ_ABT = 1 << 4;
export const GERROR_MSI_EVENTQ_ABT = 1 << 5;
export const GERROR_MSI_PRIQ_ABT = 1 << 6;
export const GERROR_MSI_GERROR_ABT = 1 << 7;
export const GERROR_SFM = 1 << 8;
export const GERROR_MASK = 0x1fd;

/** CMDQ_CONS.ERR values (7.1). */
export const CERROR_NONE = 0;
export const CERROR_ILL = 1;
export const CERROR_ABT = 2;
export const CERROR_ATC_INV_SYNC = 3;

/** STRTAB_BASE_CFG.FMT (6.3.24). */
export const STRTAB_FMT_LINEAR = 0;
export const STRTAB_FMT_2LVL = 1;

/** Features this model implements; they drive both the IDR values and validation. */
export interface SmmuFeatures {
  /** StreamID width in bits (IDR1.SIDSIZE), at most 32. */
  readonly sidBits: number;
  /** SubstreamID width in bits (IDR1.SSIDSIZE), 0..20. */
  readonly ssidBits: number;
  /** 16-bit ASIDs (IDR0.ASID16); otherwise ASID[15:8] is ignored. */
  readonly asid16: boolean;
  /** 16-bit VMIDs (IDR0.VMID16); otherwise VMID[15:8] is ignored. */
  readonly vmid16: boolean;
  /** log2 of the largest command queue (IDR1.CMDQS), at most 19. */
  readonly cmdqLog2Max: number;
  /** log2 of the largest event queue (IDR1.EVENTQS), at most 19. */
  readonly eventqLog2Max: number;
  /** Stage 1 translation is implemented (IDR0.S1P). */
  readonly stage1: boolean;
  /** Stage 2 translation is implemented (IDR0.S2P). At least one stage must be. */
  readonly stage2: boolean;
}

export const DEFAULT_FEATURES: SmmuFeatures = {
  sidBits: 16,
  ssidBits: 20,
  asid16: true,
  vmid16: true,
  cmdqLog2Max: 19,
  eventqLog2Max: 19,
  stage1: true,
  stage2: true,
};

/** Output address size: 48 bits (IDR5.OAS = 0b101). */
export const OAS_BITS = 48;
export const OAS_ENCODING = 0b101;

/** Physical address sizes for the IPS / S2PS / OAS encodings (6.3.6). */
export const PA_SIZE_BITS = [32, 36, 40, 42, 44, 48, 52] as const;

/** Bits of the PA-size encoding, capped at the implemented OAS (values above behave as OAS). */
export function paSizeBits(encoding: number): number {
  const bits = encoding < PA_SIZE_BITS.length ? PA_SIZE_BITS[encoding] : OAS_BITS;
  return Math.min(bits, OAS_BITS);
}

/**
 * IDR0 (6.3.1): S2P, S1P, TTF=AArch64, COHACC, ASID16, MSI, SEV, VMID16, CD2L,
 * TTENDIAN=little, STALL_MODEL=0b01 (no stall), TERM_MODEL=1 (abort only), ST_LEVEL=2-level.
 * Not advertised: BTM, HTTU, Hyp, ATS, PRI, ATOS, VATOS, VMW.
 */
export function idr0(f: SmmuFeatures): number {
  return (
    ((f.stage2 ? 1 << 0 : 0) | // S2P
      (f.stage1 ? 1 << 1 : 0) | // S1P
      (0b10 << 2) | // TTF: AArch64 tables only
      (1 << 4) | // COHACC
      (f.asid16 ? 1 << 12 : 0) |
      (1 << 13) | // MSI
      (1 << 14) | // SEV
      (f.vmid16 ? 1 << 18 : 0) |
      (1 << 19) | // CD2L
      (0b10 << 21) | // TTENDIAN: little-endian only
      (0b01 << 24) | // STALL_MODEL: stall not supported
      (1 << 26) | // TERM_MODEL: terminated transactions abort
      (0b01 << 27)) >>> // ST_LEVEL: 2-level stream table
    0
  );
}

/**
 * IDR1 (6.3.2): SIDSIZE, SSIDSIZE, EVENTQS, CMDQS; PRIQS 0; ATTR_PERMS_OVR (STE.PRIVCFG/INSTCFG
 * are honoured); ATTR_TYPES_OVR 0 (memory types are not modelled); no presets, REL 0.
 */
export function idr1(f: SmmuFeatures): number {
  return (f.sidBits | (f.ssidBits << 6) | (f.eventqLog2Max << 16) | (f.cmdqLog2Max << 21) | (1 << 26)) >>> 0;
}

/** IDR3 (6.3.4): RIL (range invalidation) only. */
export const IDR3_VALUE = 1 << 10;

/** IDR5 (6.3.6): OAS 48 bits, 4 KiB, 16 KiB and 64 KiB granules, VAX = 48-bit VAs. */
export const IDR5_VALUE = OAS_ENCODING | (1 << 4) | (1 << 5) | (1 << 6);

/** AIDR (6.3.8): SMMUv3.2 (range invalidations are a v3.2 feature). */
export const AIDR_VALUE = 0x02;

/** IIDR (6.3.7): ProductID 0x1, no JEP106 implementer (an emulated part). */
export const IIDR_VALUE = 0x0010_0000;

/** CoreSight-style ID registers (6.3.x, PIDR/CIDR): CIDR reads 0xB105F00D. */
export const CIDR_VALUES = [0x0d, 0xf0, 0x05, 0xb1] as const;
