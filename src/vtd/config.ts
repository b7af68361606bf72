/**
 * VT-d unit configuration in QEMU's `intel-iommu` property syntax (`key=value,...`), and the
 * capability registers (CAP_REG, ECAP_REG; VT-d 11.4.2, 11.4.3) it implies.
 *
 * CAP/ECAP are 64-bit and carry bits above 2^53, so they are `bigint`s.
 */

export interface VtdConfig {
  /** ECAP.IR: interrupt remapping. */
  readonly intremap: boolean;
  /** ECAP.EIM: x2APIC (32-bit destination) interrupt remapping; needs intremap. */
  readonly eim: boolean;
  /** CAP.CM: caching mode; required for endpoints backed by a host IOMMU (assigned devices). */
  readonly cachingMode: boolean;
  /** ECAP.DT: device-TLBs (ATS); the DMAR table then carries an ATSR. */
  readonly deviceIotlb: boolean;
  /** ECAP.PT: pass-through translation type. */
  readonly passThrough: boolean;
  /** Guest address width in bits: 39 (3-level), 48 (4-level) or 57 (5-level). */
  readonly awBits: 39 | 48 | 57;
  /** ECAP.SMTS (+SLTS, FLTS): scalable-mode translation tables. */
  readonly scalableMode: boolean;
  /** ECAP.PASID with a 20-bit PASID space (PSS=19); needs scalable-mode. */
  readonly pasid: boolean;
  /** ECAP.SC: snoop control (SNP bit in second-stage leaf entries). */
  readonly snoopControl: boolean;
  /** DMA remapping; off gives SAGAW=0, an interrupt-remapping-only unit. */
  readonly dmaTranslation: boolean;
  /** ECAP.NEST: nested (first stage over second stage) PASID entries; needs scalable-mode. */
  readonly nested: boolean;
  /** ECAP.FLTS (+CAP.FL1GP, FL5LP): first-stage PASID entries in scalable mode (QEMU x-flts). */
  readonly firstStage: boolean;
}

export const DEFAULT_VTD_CONFIG: VtdConfig = {
  intremap: false,
  eim: false,
  cachingMode: false,
  deviceIotlb: false,
  passThrough: true,
  awBits: 48,
  scalableMode: false,
  pasid: false,
  snoopControl: false,
  dmaTranslation: true,
  nested: false,
  firstStage: true,
};

export class VtdConfigError extends Error {
  constructor(message: string) {
    super(`intel-iommu: ${message}`);
    this.name = "VtdConfigError";
  }
}

const BOOLEAN_KEYS: Record<string, keyof VtdConfig> = {
  intremap: "intremap",
  eim: "eim",
  "caching-mode": "cachingMode",
  "device-iotlb": "deviceIotlb",
  pt: "passThrough",
  "scalable-mode": "scalableMode",
  "x-scalable-mode": "scalableMode",
  pasid: "pasid",
  "x-pasid-mode": "pasid",
  "snoop-control": "snoopControl",
  "dma-translation": "dmaTranslation",
  nested: "nested",
  "x-flts": "firstStage",
  flts: "firstStage",
};

function parseBool(key: string, value: string): boolean {
  switch (value.toLowerCase()) {
    case "on":
    case "true":
    case "yes":
    case "1":
      return true;
    case "off":
    case "false":
    case "no":
    case "0":
      return false;
    default:
      throw new VtdConfigError(`${key}=${value}: expected on or off`);
  }
}

/** Checks combinations the architecture or the platform cannot honour. */
export function validateVtdConfig(c: VtdConfig): VtdConfig {
  if (c.awBits !== 39 && c.awBits !== 48 && c.awBits !== 57) {
    throw new VtdConfigError(`aw-bits=${String(c.awBits)}: supported values are 39, 48 and 57`);
  }
  if (c.eim && !c.intremap) throw new VtdConfigError("eim=on requires intremap=on");
  if (c.pasid && !c.scalableMode) throw new VtdConfigError("pasid=on requires scalable-mode=on");
  if (c.nested && !c.scalableMode) throw new VtdConfigError("nested=on requires scalable-mode=on");
  if (c.nested && !c.firstStage)
    throw new VtdConfigError("nested=on requires first-stage translation (x-flts=on)");
  if (!c.dmaTranslation && (c.scalableMode || c.cachingMode || c.deviceIotlb || c.passThrough)) {
    throw new VtdConfigError(
      "dma-translation=off gives an interrupt-remapping-only unit: scalable-mode, caching-mode, device-iotlb and pt must be off",
    );
  }
  if (!c.dmaTranslation && !c.intremap) {
    throw new VtdConfigError("dma-translation=off with intremap=off leaves the unit with nothing to do");
  }
  return c;
}

/** Parses `key=value,...` (QEMU property names) over the defaults. */
export function parseVtdConfig(spec: string): VtdConfig {
  const c: Record<string, unknown> = { ...DEFAULT_VTD_CONFIG };
  const seen = new Set<string>();
  for (const raw of spec.split(",")) {
    const item = raw.trim();
    if (item === "") continue;
    const eq = item.indexOf("=");
    if (eq <= 0) throw new VtdConfigError(`"${item}": expected key=value`);
    const key = item.slice(0, eq).trim();
    const value = item.slice(eq + 1).trim();
    if (seen.has(key)) throw new VtdConfigError(`${key} given twice`);
    seen.add(key);
    if (key === "aw-bits") {
      const n = Number(value);
      if (n !== 39 && n !== 48 && n !== 57) {
        throw new VtdConfigError(`aw-bits=${value}: supported values are 39, 48 and 57`);
      }
      c.awBits = n;
      continue;
    }
    const field = BOOLEAN_KEYS[key];
    if (field === undefined) {
      throw new VtdConfigError(
        `unknown property "${key}" (known: ${[...Object.keys(BOOLEAN_KEYS), "aw-bits"].join(", ")})`,
      );
    }
    c[field] = parseBool(key, value);
  }
  if (!seen.has("pt") && c.dmaTranslation === false) c.passThrough = false;
  return validateVtdConfig(c as unknown as VtdConfig);
}

// ---- Capability values (VT-d 11.4.2 CAP_REG, 11.4.3 ECAP_REG) ----

/** Byte offset of the first fault recording register (CAP.FRO is in 16-byte units). */
export const FRCD_OFFSET = 0x220;
/** Number of fault recording registers (CAP.NFR + 1). */
export const FRCD_COUNT = 4;
/** Byte offset of IVA_REG; IOTLB_REG follows at +8 (ECAP.IRO is in 16-byte units). */
export const IVA_OFFSET = 0xf0;
/** CAP.MAMV: largest address mask in page-selective invalidations (2^18 pages = 1 GiB). */
export const MAMV = 18;
/** CAP.ND = 6: 16-bit domain ids. */
export const DOMAIN_ID_BITS = 16;
/** ECAP.MHMV: largest handle mask in index-selective IEC invalidations. */
export const MHMV = 15;
/** ECAP.PSS + 1: supported PASID width. */
export const PASID_BITS = 20;

export function capRegister(c: VtdConfig): bigint {
  let cap = 6n; // ND: 16-bit domain ids
  if (c.cachingMode) cap |= 1n << 7n;
  if (c.dmaTranslation) {
    let sagaw = 0b010n; // 39-bit, 3-level
    if (c.awBits >= 48) sagaw |= 0b100n;
    if (c.awBits >= 57) sagaw |= 0b1000n;
    cap |= sagaw << 8n;
  }
  cap |= BigInt(c.awBits - 1) << 16n; // MGAW
  cap |= BigInt(FRCD_OFFSET / 16) << 24n; // FRO
  if (c.dmaTranslation) cap |= 0b11n << 34n; // SLLPS: 2 MiB and 1 GiB
  cap |= 1n << 39n; // PSI
  cap |= BigInt(FRCD_COUNT - 1) << 40n; // NFR
  cap |= BigInt(MAMV) << 48n;
  if (c.scalableMode && c.firstStage) {
    cap |= 1n << 56n; // FL1GP
    if (c.awBits === 57) cap |= 1n << 60n; // FL5LP
  }
  // ESRTPS / ESIRTPS (63, 62) stay clear: the guest invalidates after SRTP / SIRTP itself. The
  // unit still empties its caches there (more than required, never less), and CAP stays below
  // 2^53 for every non-scalable configuration, so an 8-byte read as a number is exact.
  return cap;
}

export function ecapRegister(c: VtdConfig): bigint {
  let ecap = 1n << 1n; // QI
  if (c.deviceIotlb) ecap |= 1n << 2n;
  if (c.intremap) ecap |= 1n << 3n;
  if (c.eim) ecap |= 1n << 4n;
  if (c.passThrough) ecap |= 1n << 6n;
  if (c.snoopControl) ecap |= 1n << 7n;
  ecap |= BigInt(IVA_OFFSET / 16) << 8n; // IRO
  if (c.intremap) ecap |= BigInt(MHMV) << 20n;
  if (c.pasid) {
    ecap |= BigInt(PASID_BITS - 1) << 35n; // PSS
    ecap |= 1n << 40n; // PASID
  }
  if (c.scalableMode) {
    ecap |= 1n << 43n; // SMTS
    ecap |= 1n << 46n; // SLTS
    if (c.firstStage) ecap |= 1n << 47n; // FLTS
    if (c.nested) ecap |= 1n << 26n; // NEST
  }
  return ecap;
}

/** Second-stage paging levels usable for an AW field value (1: 3 levels, 2: 4, 3: 5), or 0. */
export function levelsForAw(c: VtdConfig, aw: number): number {
  if (!c.dmaTranslation) return 0;
  if (aw === 1) return 3;
  if (aw === 2 && c.awBits >= 48) return 4;
  if (aw === 3 && c.awBits >= 57) return 5;
  return 0;
}
