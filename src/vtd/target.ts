/**
 * Where a request goes: the context entry (and in scalable mode the PASID entry) for a source
 * id, PASID and privilege, resolved into a `Target` (identity, second-stage or first-stage
 * tables, domain id, IOTLB tag, FPD). Resolved targets are the unit's context cache and PASID
 * cache: they are read from guest memory only on a miss, and dropped by the context-cache and
 * PASID-cache invalidations (and SRTP) that cover them. Lookups that fault are never cached.
 *
 * The cache key is the endpoint id the DMA address spaces use: the source id for requests
 * without PASID, plus 65536 * (1 + pasid + 2^20 * privileged) for requests with one.
 */

import type { VtdConfig } from "./config.ts";
import { FR } from "./fault-reasons.ts";
import { type FirstStageRequest, FirstStageWalker } from "./first-stage.ts";
import {
  type ContextEntry,
  type LegacyContext,
  type Lookup,
  PGTT,
  type ScalableContext,
  type TableReader,
  TT,
} from "./tables.ts";

export const TARGET = { IDENTITY: 0, SECOND_STAGE: 1, FIRST_STAGE: 2, NESTED: 3 } as const;

/** Tag value for "request without PASID" in legacy mode. */
const NO_PASID = 2 ** 20;

export interface Target {
  readonly kind: number;
  readonly scalable: boolean;
  readonly sourceId: number;
  /** PASID used for the translation (RID_PASID for requests without PASID in scalable mode); -1 in legacy. */
  readonly pasid: number;
  /** True when the request itself carried a PASID (recorded in faults). */
  readonly requestHasPasid: boolean;
  readonly privileged: boolean;
  readonly fpd: boolean;
  readonly domainId: number;
  /** First-stage (or second-stage, or nested first-stage) table root and levels. */
  readonly root: number;
  readonly levels: number;
  /** Nested: the second-stage table under the first stage, its levels and input limit. */
  readonly ssRoot: number;
  readonly ssLevels: number;
  readonly ssLimit: number;
  /** Input addresses must be below this (AGAW / MGAW / paging-mode limit). */
  readonly inputLimit: number;
  readonly iotlbTag: number;
  /** Translation requests (ATS) allowed: legacy TT=01, scalable DTE=1. */
  readonly atsAllowed: boolean;
  readonly fsRequest: FirstStageRequest;
}

/**
 * Endpoint ids at or above this carry translated requests (PCIe AT=10b) from the source id in
 * their low 16 bits: addresses a device-TLB already translated.
 */
export const TRANSLATED_KEY = 2 ** 40;

export function endpointKey(sourceId: number, pasid: number, privileged: boolean): number {
  if (pasid < 0) return sourceId;
  return sourceId + 65536 * (1 + pasid + NO_PASID * (privileged ? 1 : 0));
}

export function decodeEndpointKey(key: number): { sourceId: number; pasid: number; privileged: boolean } {
  const sourceId = key % 65536;
  const rest = Math.floor(key / 65536);
  if (rest === 0) return { sourceId, pasid: -1, privileged: false };
  return { sourceId, pasid: (rest - 1) % NO_PASID, privileged: Math.floor((rest - 1) / NO_PASID) % 2 === 1 };
}

/**
 * Which IOTLB invalidation covers an entry (VT-d 6.5.2.4, 6.5.2.6): IOTLB descriptors cover
 * second-stage and nested entries of a domain, PASID-based IOTLB descriptors first-stage and
 * nested entries of a domain and PASID.
 */
export const TAG_CLASS = { SECOND_STAGE: 0, FIRST_STAGE: 1, NESTED: 2 } as const;

/** IOTLB tag: domain id, PASID (or none), privilege and class: ((did*2^21 + pasid)*2 + priv)*4 + class. */
export function iotlbTag(domainId: number, pasid: number, privileged: boolean, tagClass: number): number {
  return (
    ((domainId * (NO_PASID * 2) + (pasid < 0 ? NO_PASID : pasid)) * 2 + (privileged ? 1 : 0)) * 4 + tagClass
  );
}

export function tagDomain(tag: number): number {
  return Math.floor(tag / (NO_PASID * 16));
}

/** The PASID of a tag (2^20 for requests without PASID in legacy mode). */
export function tagPasid(tag: number): number {
  return Math.floor((tag % (NO_PASID * 16)) / 8);
}

export function tagClass(tag: number): number {
  return tag % 4;
}

/** Default bound of the target cache and of the IOTLB tag index (against PASID / domain floods). */
export const DEFAULT_TARGET_CAPACITY = 1 << 16;

export type TargetLookup =
  | { ok: true; target: Target }
  | { ok: false; reason: number; fpd: boolean; requestHasPasid: boolean };

const USER_REQUEST: FirstStageRequest = {
  privileged: false,
  writeProtect: false,
  noExecute: false,
  updateAccessed: true,
};

export class TargetCache {
  private readonly tables: TableReader;
  private readonly config: VtdConfig;
  private readonly targets = new Map<number, Target>();
  /** IOTLB tags ever handed out per domain id (for page-selective invalidation). */
  readonly domainTags = new Map<number, Set<number>>();
  hits = 0;
  misses = 0;
  invalidations = 0;

  private readonly capacity: number;

  constructor(tables: TableReader, config: VtdConfig, capacity = DEFAULT_TARGET_CAPACITY) {
    this.tables = tables;
    this.config = config;
    this.capacity = capacity;
  }

  get size(): number {
    return this.targets.size;
  }

  /** The cached target for an endpoint key, or undefined (no allocation). */
  get(key: number): Target | undefined {
    const t = this.targets.get(key);
    if (t !== undefined) this.hits++;
    return t;
  }

  values(): IterableIterator<Target> {
    return this.targets.values();
  }

  private noteTag(domainId: number, tag: number): void {
    let s = this.domainTags.get(domainId);
    if (s === undefined) {
      s = new Set();
      this.domainTags.set(domainId, s);
    }
    if (!s.has(tag)) {
      s.add(tag);
      this.tagCount++;
    }
  }

  /**
   * Called before the cache would exceed its bounds (many PASIDs or domains): the owner must
   * drop every IOTLB entry, since tags are forgotten with it.
   */
  onOverflow: () => void = () => {};
  private tagCount = 0;
  /** Times the bounds were reached and everything was dropped. */
  overflows = 0;

  /**
   * Resolves and caches the target of `key` under root table `rootTable` in mode `scalable`.
   * `cache` false resolves without caching (caching-mode replay of a single endpoint).
   */
  resolve(key: number, rootTable: number, scalable: boolean): TargetLookup {
    this.misses++;
    if (this.targets.size >= this.capacity || this.tagCount >= this.capacity) {
      // A cache may drop entries at any time; the tag index goes with the IOTLB it indexes.
      this.overflows++;
      this.targets.clear();
      this.domainTags.clear();
      this.tagCount = 0;
      this.onOverflow();
    }
    const { sourceId, pasid, privileged } = decodeEndpointKey(key);
    const hasPasid = pasid >= 0;
    const ctxLookup: Lookup<ContextEntry> = scalable
      ? this.tables.scalableContext(rootTable, sourceId)
      : this.tables.legacyContext(rootTable, sourceId);
    if (!ctxLookup.ok)
      return { ok: false, reason: ctxLookup.reason, fpd: ctxLookup.fpd, requestHasPasid: hasPasid };
    const ctx = ctxLookup.entry;
    const mgawLimit = 2 ** Math.min(this.config.awBits, 53);
    const r =
      ctx.kind === "legacy"
        ? legacyTarget(ctx, sourceId, hasPasid, mgawLimit)
        : this.scalableTarget(ctx, sourceId, pasid, privileged, mgawLimit);
    if (!r.ok) return r;
    this.targets.set(key, r.target);
    this.noteTag(r.target.domainId, r.target.iotlbTag);
    return r;
  }

  /** The target a scalable-mode context entry and its PASID entry give (VT-d 9.4, 9.6). */
  private scalableTarget(
    ctx: ScalableContext,
    sourceId: number,
    pasid: number,
    privileged: boolean,
    mgawLimit: number,
  ): TargetLookup {
    const hasPasid = pasid >= 0;
    if (hasPasid && !ctx.pasidEnable) {
      return { ok: false, reason: FR.SM_CONTEXT_PASIDE_CLEAR, fpd: ctx.fpd, requestHasPasid: true };
    }
    const effectivePasid = hasPasid ? pasid : ctx.ridPasid;
    const effectivePriv = hasPasid ? privileged : ctx.ridPriv;
    const peLookup = this.tables.pasidEntry(ctx, effectivePasid);
    if (!peLookup.ok)
      return { ok: false, reason: peLookup.reason, fpd: peLookup.fpd, requestHasPasid: hasPasid };
    const pe = peLookup.entry;
    // VT-d 9.6: supervisor requests need SRE.
    if (effectivePriv && !pe.supervisorEnable) {
      return { ok: false, reason: FR.SM_PASID_SRE_CLEAR, fpd: pe.fpd, requestHasPasid: hasPasid };
    }
    let kind: number = TARGET.IDENTITY;
    let root = 0;
    let levels = 0;
    let inputLimit = mgawLimit;
    if (pe.pgtt === PGTT.SECOND_STAGE) {
      kind = TARGET.SECOND_STAGE;
      root = pe.slptptr;
      levels = pe.ssLevels;
      inputLimit = Math.min(mgawLimit, 2 ** (12 + 9 * levels));
    } else if (pe.pgtt === PGTT.FIRST_STAGE || pe.pgtt === PGTT.NESTED) {
      kind = pe.pgtt === PGTT.NESTED ? TARGET.NESTED : TARGET.FIRST_STAGE;
      root = pe.flptptr;
      levels = pe.fsLevels;
      inputLimit = Math.min(2 ** 53, FirstStageWalker.inputLimit(levels));
    }
    const target: Target = {
      kind,
      scalable: true,
      sourceId,
      pasid: effectivePasid,
      requestHasPasid: hasPasid,
      privileged: effectivePriv,
      fpd: pe.fpd,
      domainId: pe.domainId,
      root,
      levels,
      ssRoot: pe.slptptr,
      ssLevels: pe.ssLevels,
      ssLimit: Math.min(mgawLimit, 2 ** (12 + 9 * pe.ssLevels)),
      inputLimit,
      iotlbTag: iotlbTag(
        pe.domainId,
        effectivePasid,
        effectivePriv && kind >= TARGET.FIRST_STAGE,
        kind === TARGET.FIRST_STAGE
          ? TAG_CLASS.FIRST_STAGE
          : kind === TARGET.NESTED
            ? TAG_CLASS.NESTED
            : TAG_CLASS.SECOND_STAGE,
      ),
      atsAllowed: ctx.deviceTlbEnable,
      fsRequest: {
        privileged: effectivePriv,
        writeProtect: pe.writeProtect,
        noExecute: pe.noExecute,
        updateAccessed: true,
      },
    };
    return { ok: true, target };
  }

  /** Drops everything (global context-cache / PASID-cache invalidation, SRTP). */
  clear(): number {
    const n = this.targets.size;
    this.targets.clear();
    this.invalidations++;
    return n;
  }

  /** Drops targets for which `drop` is true; returns how many. */
  dropWhere(drop: (t: Target) => boolean): number {
    let n = 0;
    for (const [k, t] of this.targets) {
      if (drop(t)) {
        this.targets.delete(k);
        n++;
      }
    }
    this.invalidations++;
    return n;
  }
}

/** The target a legacy-mode context entry gives (VT-d 9.3): second stage or pass-through. */
function legacyTarget(
  ctx: LegacyContext,
  sourceId: number,
  hasPasid: boolean,
  mgawLimit: number,
): TargetLookup {
  // VT-d 3.4.2 / 3.9: legacy mode has no PASID support; requests with PASID are blocked.
  if (hasPasid) return { ok: false, reason: FR.SM_TTM0_WITH_PASID, fpd: ctx.fpd, requestHasPasid: true };
  const pt = ctx.translationType === TT.PASS_THROUGH;
  const target: Target = {
    kind: pt ? TARGET.IDENTITY : TARGET.SECOND_STAGE,
    scalable: false,
    sourceId,
    pasid: -1,
    requestHasPasid: false,
    privileged: false,
    fpd: ctx.fpd,
    domainId: ctx.domainId,
    root: ctx.slptptr,
    levels: ctx.levels,
    ssRoot: 0,
    ssLevels: 0,
    ssLimit: 0,
    inputLimit: pt ? mgawLimit : Math.min(mgawLimit, 2 ** (12 + 9 * ctx.levels)),
    iotlbTag: iotlbTag(ctx.domainId, -1, false, TAG_CLASS.SECOND_STAGE),
    atsAllowed: ctx.translationType === TT.DEVICE_TLB,
    fsRequest: USER_REQUEST,
  };
  return { ok: true, target };
}
