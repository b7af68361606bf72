/**
 * Stream table entries and context descriptors: decoding and validation (SMMUv3 5.2, 5.4).
 *
 * A decoded STE or CD is cached by the model until the guest invalidates it (CFGI_*). Decoding
 * never throws: an ILLEGAL structure yields the event the architecture names (C_BAD_STE,
 * C_BAD_CD), with the field that made it illegal for traces.
 */
import { EVT } from "./events.ts";
import {
  granuleFromTg0,
  granuleFromTg1,
  type StageParams,
  stage1StartLevel,
  stage2LevelConsistent,
  stage2StartLevel,
} from "./pagetable.ts";
import { OAS_BITS, paSizeBits, type SmmuFeatures } from "./regs.ts";

export const STE_BYTES = 64;
export const CD_BYTES = 64;

/** STE.Config (5.2, Config bits 3:1). */
export const STE_CFG_ABORT = 0b000;
export const STE_CFG_BYPASS = 0b100;
export const STE_CFG_S1 = 0b101;
export const STE_CFG_S2 = 0b110;
export const STE_CFG_NESTED = 0b111;

/** STE.S1DSS: what a transaction without a SubstreamID does when S1CDMax != 0 (5.2). */
export const S1DSS_TERMINATE = 0b00;
export const S1DSS_BYPASS = 0b01;
export const S1DSS_SSID0 = 0b10;

/** STE.S1Fmt (5.2). */
export const S1FMT_LINEAR = 0b00;
export const S1FMT_2LVL_4K = 0b01;
export const S1FMT_2LVL_64K = 0b10;

/** A validated STE. */
export interface StreamConfig {
  readonly config: number;
  readonly stage1: boolean;
  readonly stage2: boolean;
  /** S2VMID (also tags stage-1-only TLB entries when stage 2 is implemented). */
  readonly vmid: number;
  readonly s2: StageParams | null;
  /** STE.S2R: record stage-2 faults. */
  readonly s2Record: boolean;
  /** S1ContextPtr (an IPA when stage 2 is enabled). */
  readonly cdTableBase: number;
  readonly s1Fmt: number;
  /** S1CDMax: log2 of the number of CDs; 0 means one CD and no substreams. */
  readonly s1CdMax: number;
  readonly s1Dss: number;
  /** Effective privilege and instruction attributes of the stream's transactions (PRIVCFG, INSTCFG). */
  readonly privileged: boolean;
  readonly instruction: boolean;
  /** STE.MEV: events of this stream may be merged (7.3.1). */
  readonly mergeEvents: boolean;
}

export type Decoded<T> = { ok: true; value: T } | { ok: false; event: number; why: string };

function bad<T>(event: number, why: string): Decoded<T> {
  return { ok: false, event, why };
}

/** Bits 51:shift of a 64-bit field spread over words lo/hi (hi holds bits 63:32). */
function addr52(lo: number, hi: number, lowBit: number): number {
  const full = (hi & 0xfffff) * 2 ** 32 + (lo >>> 0);
  return full - (full % 2 ** lowBit);
}

/** The stage-2 fields of an STE (words 5-7, 5.2.2), checked against this model's features. */
function decodeSteStage2(w: Uint32Array): Decoded<StageParams> {
  const w5 = w[5];
  const t0sz = w5 & 0x3f;
  const sl0 = (w5 >>> 6) & 3;
  const tg = (w5 >>> 14) & 3;
  const ps = (w5 >>> 16) & 7;
  if (((w5 >>> 19) & 1) === 0) return bad(EVT.C_BAD_STE, "S2AA64=0 (AArch32 tables not supported)");
  if (((w5 >>> 20) & 1) === 1) return bad(EVT.C_BAD_STE, "S2ENDI=1 (big-endian tables not supported)");
  if (((w5 >>> 25) & 1) === 1) return bad(EVT.C_BAD_STE, "S2S=1 (stall not supported)");
  // 5.2.2: S2HA/S2HD need HTTU, which this SMMU does not implement.
  if (((w5 >>> 23) & 3) !== 0) return bad(EVT.C_BAD_STE, "S2HA/S2HD without HTTU");
  const g = granuleFromTg0(tg);
  if (g === 0) return bad(EVT.C_BAD_STE, `S2TG ${tg} reserved`);
  // IAS is 48 bits (OAS 48, VAX 0); the smallest table is 2^25 bytes of IPA (T0SZ 39).
  if (t0sz < 64 - OAS_BITS || t0sz > 39) return bad(EVT.C_BAD_STE, `S2T0SZ ${t0sz} out of range`);
  const inputBits = 64 - t0sz;
  const start = stage2StartLevel(g, sl0);
  if (start < 0 || !stage2LevelConsistent(g, inputBits, start)) {
    return bad(EVT.C_BAD_STE, `S2SL0 ${sl0} inconsistent with S2T0SZ ${t0sz} and granule ${2 ** g}`);
  }
  const stride = g - 3;
  const startTableBytes = 2 ** (inputBits - (g + (3 - start) * stride) + 3);
  const ttb = addr52(w[6], w[7], 4);
  // 5.2.2: S2TTB must be aligned to the (concatenated) first-level table.
  if (ttb % Math.max(startTableBytes, 16) !== 0) return bad(EVT.C_BAD_STE, "S2TTB misaligned");
  const s2: StageParams = {
    stage: 2,
    granuleShift: g,
    inputBits,
    startLevel: start,
    // S2TTB bits below the (concatenated) table size are treated as zero.
    tableBase: ttb,
    outputBits: paSizeBits(ps),
    affd: ((w5 >>> 21) & 1) === 1,
    wxn: false,
  };
  // An S2TTB beyond the stage-2 output size makes the STE invalid (7.3.14: not F_ADDR_SIZE).
  if (s2.tableBase >= 2 ** s2.outputBits) return bad(EVT.C_BAD_STE, "S2TTB beyond S2PS");
  return { ok: true, value: s2 };
}

/**
 * Decodes the 16 words of an STE. Validation follows 5.2 "STE.Config ... ILLEGAL" conditions for
 * the features this model implements (no stall, no ATS, no Hyp/E2H, AArch64 tables only,
 * little-endian tables only).
 */
export function decodeSte(w: Uint32Array, f: SmmuFeatures): Decoded<StreamConfig> {
  const w0 = w[0];
  if ((w0 & 1) === 0) return bad(EVT.C_BAD_STE, "V=0");
  const config = (w0 >>> 1) & 7;
  if (config !== STE_CFG_ABORT && (config & 0b100) === 0)
    return bad(EVT.C_BAD_STE, `reserved Config ${config}`);
  const stage1 = config === STE_CFG_S1 || config === STE_CFG_NESTED;
  const stage2 = config === STE_CFG_S2 || config === STE_CFG_NESTED;
  // 5.2 STE.Config: enabling a stage the SMMU does not implement (IDR0.S1P/S2P = 0) is ILLEGAL.
  if (stage1 && !f.stage1) return bad(EVT.C_BAD_STE, "stage 1 not implemented (IDR0.S1P = 0)");
  if (stage2 && !f.stage2) return bad(EVT.C_BAD_STE, "stage 2 not implemented (IDR0.S2P = 0)");
  const w2 = w[2];
  const w3 = w[3];
  const strw = (w2 >>> 30) & 3;
  // STRW selects the EL2 regimes only with Hyp/E2H; 0b01 and 0b11 are reserved.
  if ((stage1 || stage2) && strw !== 0) return bad(EVT.C_BAD_STE, `STRW ${strw} without Hyp`);
  const privcfg = (w3 >>> 16) & 3;
  const instcfg = (w3 >>> 18) & 3;
  const vmidMask = f.vmid16 ? 0xffff : 0xff;
  const vmid = w[4] & vmidMask;
  let s2: StageParams | null = null;
  const s2Record = stage2 && ((w[5] >>> 26) & 1) === 1;
  if (stage2) {
    const d = decodeSteStage2(w);
    if (!d.ok) return d;
    s2 = d.value;
  }
  const s1CdMax = (w[1] >>> 27) & 0x1f;
  const s1Fmt = (w0 >>> 4) & 3;
  const s1Dss = w2 & 3;
  let cdTableBase = 0;
  if (stage1) {
    // S1STALLD is only meaningful with the stall model "stall and terminate" (5.2.2).
    if (((w2 >>> 27) & 1) === 1) return bad(EVT.C_BAD_STE, "S1STALLD=1 without stall support");
    if (s1CdMax > f.ssidBits) return bad(EVT.C_BAD_STE, `S1CDMax ${s1CdMax} > SSIDSIZE ${f.ssidBits}`);
    if (s1CdMax !== 0) {
      if (s1Fmt === 0b11) return bad(EVT.C_BAD_STE, "S1Fmt reserved");
      if (s1Dss === 0b11) return bad(EVT.C_BAD_STE, "S1DSS reserved");
    }
    cdTableBase = addr52(w0, w[1], 6);
    if (cdTableBase >= 2 ** OAS_BITS) return bad(EVT.C_BAD_STE, "S1ContextPtr beyond OAS");
  }
  return {
    ok: true,
    value: {
      config,
      stage1,
      stage2,
      vmid,
      s2,
      s2Record,
      cdTableBase,
      s1Fmt: s1CdMax === 0 ? S1FMT_LINEAR : s1Fmt,
      s1CdMax,
      s1Dss,
      // Our devices issue unprivileged data accesses; PRIVCFG/INSTCFG may override (5.2).
      mergeEvents: ((w2 >>> 19) & 1) === 1,
      privileged: privcfg === 0b11,
      instruction: instcfg === 0b11,
    },
  };
}

/** A validated CD: one or two stage-1 regions. */
export interface ContextConfig {
  readonly asid: number;
  /** TTB0 region, or null when EPD0 disables walks. */
  readonly ttb0: StageParams | null;
  readonly ttb1: StageParams | null;
  readonly tbi0: boolean;
  readonly tbi1: boolean;
  /** CD.R: record stage-1 faults. */
  readonly record: boolean;
}

function stage1Params(
  txsz: number,
  g: number,
  ttbLo: number,
  ttbHi: number,
  ipsBits: number,
  affd: boolean,
  wxn: boolean,
): StageParams {
  const inputBits = 64 - txsz;
  const start = stage1StartLevel(g, inputBits);
  const stride = g - 3;
  const startTableBytes = 2 ** (inputBits - (g + (3 - start) * stride) + 3);
  const ttb = addr52(ttbLo, ttbHi, 4);
  return {
    stage: 1,
    granuleShift: g,
    inputBits,
    startLevel: start,
    // TTBx bits below the table size are treated as zero (Arm ARM D8.2.4).
    tableBase: ttb - (ttb % Math.max(startTableBytes, 16)),
    outputBits: ipsBits,
    affd,
    wxn,
  };
}

/** Decodes the 16 words of a CD, following CdIllegal() (5.4.2) for this SMMU's features. */
export function decodeCd(w: Uint32Array, f: SmmuFeatures): Decoded<ContextConfig> {
  const w0 = w[0];
  const w1 = w[1];
  if (((w0 >>> 31) & 1) === 0) return bad(EVT.C_BAD_CD, "V=0");
  // TERM_MODEL == 1: RAZ/WI termination is not supported, CD.A must be 1.
  if (((w1 >>> 14) & 1) === 0) return bad(EVT.C_BAD_CD, "A=0 with TERM_MODEL=1");
  // STALL_MODEL == 0b01: CD.S must be 0.
  if (((w1 >>> 12) & 1) === 1) return bad(EVT.C_BAD_CD, "S=1 without stall support");
  const epd0 = ((w0 >>> 14) & 1) === 1;
  const epd1 = ((w0 >>> 30) & 1) === 1;
  // ENDI is IGNORED when both halves are disabled.
  if ((!epd0 || !epd1) && ((w0 >>> 15) & 1) === 1) {
    return bad(EVT.C_BAD_CD, "ENDI=1 (big-endian tables not supported)");
  }
  if (((w1 >>> 9) & 1) === 0) return bad(EVT.C_BAD_CD, "AA64=0 (AArch32 tables not supported)");
  if (((w1 >>> 10) & 3) !== 0) return bad(EVT.C_BAD_CD, "HA/HD without HTTU");
  if (!f.asid16 && w1 >>> 24 !== 0) return bad(EVT.C_BAD_CD, "ASID[15:8] != 0 with 8-bit ASIDs");
  const ipsBits = paSizeBits(w1 & 7);
  const affd = ((w1 >>> 3) & 1) === 1;
  const wxn = ((w1 >>> 4) & 1) === 1;
  let ttb0: StageParams | null = null;
  let ttb1: StageParams | null = null;
  if (!epd0) {
    const t0sz = w0 & 0x3f;
    const g = granuleFromTg0((w0 >>> 6) & 3);
    if (g === 0) return bad(EVT.C_BAD_CD, "TG0 reserved");
    if (t0sz < 16 || t0sz > 39) return bad(EVT.C_BAD_CD, `T0SZ ${t0sz} out of range`);
    ttb0 = stage1Params(t0sz, g, w[2], w[3], ipsBits, affd, wxn);
    // A TTB beyond the IPS makes the CD invalid (7.3.14: not F_ADDR_SIZE).
    if (ttb0.tableBase >= 2 ** ipsBits) return bad(EVT.C_BAD_CD, "TTB0 beyond IPS");
  }
  if (!epd1) {
    const t1sz = (w0 >>> 16) & 0x3f;
    const g = granuleFromTg1((w0 >>> 22) & 3);
    if (g === 0) return bad(EVT.C_BAD_CD, "TG1 reserved");
    if (t1sz < 16 || t1sz > 39) return bad(EVT.C_BAD_CD, `T1SZ ${t1sz} out of range`);
    ttb1 = stage1Params(t1sz, g, w[4], w[5], ipsBits, affd, wxn);
    if (ttb1.tableBase >= 2 ** ipsBits) return bad(EVT.C_BAD_CD, "TTB1 beyond IPS");
  }
  return {
    ok: true,
    value: {
      asid: w1 >>> 16,
      ttb0,
      ttb1,
      tbi0: ((w1 >>> 6) & 1) === 1,
      tbi1: ((w1 >>> 7) & 1) === 1,
      record: ((w1 >>> 13) & 1) === 1,
    },
  };
}
