/**
 * Construction options of a virtio-iommu device and their validation.
 *
 * Options are platform configuration, not guest input: an inconsistent option throws at
 * construction. The engine represents addresses as numbers below 2^53, so an input range whose
 * end is above 2^53 - 1 is clamped to 2^53 - 1 (a guest sees the clamped end in the config
 * space, and MAP requests beyond it get S_RANGE); a start above that is refused.
 */
import { MAX_ADDRESS } from "../engine/access.ts";
import type { Iotlb } from "../engine/iotlb.ts";
import type { Tracer } from "../engine/trace.ts";
import type { ViommuInstance } from "../framework/viommu.ts";
import type { Endpoint, VirtioIommuEndpointOptions } from "./endpoints.ts";
import { type ReservedRegion, validateReservedRegions } from "./reserved-regions.ts";

export interface VirtioIommuOptions {
  /** page_size_mask: lowest set bit is the mapping granule (default 4 KiB | 2 MiB | 1 GiB). */
  pageSizeMask?: bigint;
  /** Inclusive IOVA range MAP accepts (default 0 .. 2^48 - 1); `end` is clamped to 2^53 - 1. */
  inputRange?: { start: number | bigint; end: number | bigint };
  /** Inclusive range of domain IDs (default 0 .. 2^16 - 1). */
  domainRange?: { start: number; end: number };
  /** probe_size: bytes of properties in a PROBE response (default 512, at most MAX_PROBE_SIZE_BYTES). */
  probeSizeBytes?: number;
  /** Initial (and system-reset) value of config.bypass (default false). */
  bypassInitially?: boolean;
  /** Offer legacy VIRTIO_IOMMU_F_BYPASS instead of BYPASS_CONFIG (5.13.3.2: never both). */
  offerLegacyBypass?: boolean;
  /** Offer VIRTIO_IOMMU_F_MMIO (MAP_F_MMIO) (default false). */
  offerMmio?: boolean;
  /** Offer VIRTIO_IOMMU_F_PROBE (default true). */
  offerProbe?: boolean;
  /** RESV_MEM regions reported for every endpoint (default: the x86 MSI window as MSI). */
  reservedRegions?: readonly ReservedRegion[];
  /** Mappings one domain may hold before MAP answers S_NOMEM (default 2^20). */
  maxMappingsPerDomain?: number;
  /** Mappings all domains together may hold before MAP answers S_NOMEM (default 2^21). */
  maxMappingsTotal?: number;
  /** Domains that may exist at once before ATTACH answers S_NOMEM (default 2^16). */
  maxDomains?: number;
  /** The IOTLB to cache translations in (tag = domain ID); dedicate it to this device. */
  iotlb?: Iotlb;
  tracer?: Tracer;
  /** Fault records held for the eventq before further faults are dropped (default 64). */
  eventQueueDepth?: number;
  /** Fault records one endpoint may have pending before its further faults are dropped (default 8). */
  maxPendingEventsPerEndpoint?: number;
  /** Sustained fault records per second one endpoint may report (default 1000). */
  eventsPerSecondPerEndpoint?: number;
  /** Fault records one endpoint may report in a burst above that rate (default 32). */
  eventBurstPerEndpoint?: number;
  /** Milliseconds clock for the event rate limit (default performance.now); tests inject one. */
  clockMs?: () => number;
  /**
   * The guest's vIOMMU in the framework's registry that this device backs (its endpoint table).
   * Default: a registry of its own with one emulated physical IOMMU ("virtio-iommu", 32-bit IDs).
   */
  viommu?: ViommuInstance<Endpoint, VirtioIommuEndpointOptions>;
}

/** The x86 MSI doorbell window (Intel SDM vol. 3 11.11.1), reported as RESV_MEM_T_MSI. */
export const X86_MSI_REGION: ReservedRegion = {
  iovaStart: 0xfee0_0000,
  iovaLast: 0xfeef_ffff,
  subtype: "msi",
};

export const DEFAULT_PAGE_SIZE_MASK = (1n << 12n) | (1n << 21n) | (1n << 30n);
export const DEFAULT_INPUT_RANGE_END = 2 ** 48 - 1;
export const DEFAULT_DOMAIN_RANGE_END = 2 ** 16 - 1;
export const DEFAULT_PROBE_SIZE_BYTES = 512;
/**
 * Largest probe_size: a PROBE answer (properties and the 4-byte tail) then fits in 64 KiB, the
 * most a transport writes back per request (src/devices/virtio-iommu-pci.ts).
 */
export const MAX_PROBE_SIZE_BYTES = 64 * 1024 - 4;
export const DEFAULT_MAX_MAPPINGS_PER_DOMAIN = 2 ** 20;
export const DEFAULT_MAX_MAPPINGS_TOTAL = 2 ** 21;
export const DEFAULT_MAX_DOMAINS = 2 ** 16;
export const DEFAULT_EVENT_QUEUE_DEPTH = 64;
export const DEFAULT_MAX_PENDING_EVENTS_PER_ENDPOINT = 8;
export const DEFAULT_EVENTS_PER_SECOND_PER_ENDPOINT = 1000;
export const DEFAULT_EVENT_BURST_PER_ENDPOINT = 32;

export interface ResolvedOptions {
  readonly pageSizeMask: bigint;
  readonly granuleBytes: number;
  readonly inputStart: number;
  readonly inputEnd: number;
  readonly domainStart: number;
  readonly domainEnd: number;
  readonly probeSizeBytes: number;
  readonly bypassInitially: boolean;
  readonly offerLegacyBypass: boolean;
  readonly offerMmio: boolean;
  readonly offerProbe: boolean;
  readonly reservedRegions: readonly ReservedRegion[];
  readonly maxMappingsPerDomain: number;
  readonly maxMappingsTotal: number;
  readonly maxDomains: number;
  readonly eventQueueDepth: number;
  readonly maxPendingEventsPerEndpoint: number;
  readonly eventsPerSecondPerEndpoint: number;
  readonly eventBurstPerEndpoint: number;
  readonly clockMs: () => number;
}

function positiveInt(name: string, value: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new RangeError(`virtio-iommu: ${name} must be an integer in [1, ${max}], got ${value}`);
  }
  return value;
}

function u32(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`virtio-iommu: ${name} must be a 32-bit unsigned integer, got ${value}`);
  }
  return value;
}

function probeSize(value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > MAX_PROBE_SIZE_BYTES) {
    throw new RangeError(
      `virtio-iommu: probeSizeBytes must be an integer in [0, ${MAX_PROBE_SIZE_BYTES}], got ${value}`,
    );
  }
  return value;
}

function toAddress(name: string, value: number | bigint, clamp: boolean): number {
  const v = typeof value === "bigint" ? value : BigInt(value);
  if (v < 0n || v >= 1n << 64n) throw new RangeError(`virtio-iommu: ${name} is not a 64-bit address`);
  if (v > BigInt(MAX_ADDRESS)) {
    if (!clamp) throw new RangeError(`virtio-iommu: ${name} 0x${v.toString(16)} is above 2^53 - 1`);
    return MAX_ADDRESS;
  }
  return Number(v);
}

export function resolveOptions(options: VirtioIommuOptions = {}): ResolvedOptions {
  const pageSizeMask = options.pageSizeMask ?? DEFAULT_PAGE_SIZE_MASK;
  // 5.13.4.2: the device MUST set at least one bit in page_size_mask.
  if (pageSizeMask <= 0n || pageSizeMask >= 1n << 64n) {
    throw new RangeError("virtio-iommu: page_size_mask must be a non-zero 64-bit mask");
  }
  let granuleShift = 0;
  while (((pageSizeMask >> BigInt(granuleShift)) & 1n) === 0n) granuleShift++;
  if (granuleShift > 52) throw new RangeError("virtio-iommu: the page granule must be at most 2^52 bytes");
  const inputStart = toAddress("inputRange.start", options.inputRange?.start ?? 0, false);
  const inputEnd = toAddress("inputRange.end", options.inputRange?.end ?? DEFAULT_INPUT_RANGE_END, true);
  if (inputEnd < inputStart) throw new RangeError("virtio-iommu: inputRange.end < inputRange.start");
  const domainStart = u32("domainRange.start", options.domainRange?.start ?? 0);
  const domainEnd = u32("domainRange.end", options.domainRange?.end ?? DEFAULT_DOMAIN_RANGE_END);
  if (domainEnd < domainStart) throw new RangeError("virtio-iommu: domainRange.end < domainRange.start");
  const offerLegacyBypass = options.offerLegacyBypass ?? false;
  if (offerLegacyBypass && options.bypassInitially) {
    // config.bypass exists only with BYPASS_CONFIG, which is never offered with legacy BYPASS.
    throw new RangeError("virtio-iommu: bypassInitially needs BYPASS_CONFIG, not legacy BYPASS");
  }
  const reservedRegions = validateReservedRegions(options.reservedRegions ?? [X86_MSI_REGION]);
  return {
    pageSizeMask,
    granuleBytes: 2 ** granuleShift,
    inputStart,
    inputEnd,
    domainStart,
    domainEnd,
    probeSizeBytes: probeSize(options.probeSizeBytes ?? DEFAULT_PROBE_SIZE_BYTES),
    bypassInitially: options.bypassInitially ?? false,
    offerLegacyBypass,
    offerMmio: options.offerMmio ?? false,
    offerProbe: options.offerProbe ?? true,
    reservedRegions,
    maxMappingsPerDomain: positiveInt(
      "maxMappingsPerDomain",
      options.maxMappingsPerDomain ?? DEFAULT_MAX_MAPPINGS_PER_DOMAIN,
    ),
    maxMappingsTotal: positiveInt("maxMappingsTotal", options.maxMappingsTotal ?? DEFAULT_MAX_MAPPINGS_TOTAL),
    maxDomains: positiveInt("maxDomains", options.maxDomains ?? DEFAULT_MAX_DOMAINS),
    eventQueueDepth: positiveInt(
      "eventQueueDepth",
      options.eventQueueDepth ?? DEFAULT_EVENT_QUEUE_DEPTH,
      1 << 20,
    ),
    maxPendingEventsPerEndpoint: positiveInt(
      "maxPendingEventsPerEndpoint",
      options.maxPendingEventsPerEndpoint ?? DEFAULT_MAX_PENDING_EVENTS_PER_ENDPOINT,
    ),
    eventsPerSecondPerEndpoint: positiveInt(
      "eventsPerSecondPerEndpoint",
      options.eventsPerSecondPerEndpoint ?? DEFAULT_EVENTS_PER_SECOND_PER_ENDPOINT,
    ),
    eventBurstPerEndpoint: positiveInt(
      "eventBurstPerEndpoint",
      options.eventBurstPerEndpoint ?? DEFAULT_EVENT_BURST_PER_ENDPOINT,
    ),
    clockMs: options.clockMs ?? (() => performance.now()),
  };
}
