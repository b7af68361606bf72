/**
 * MAP and UNMAP (VIRTIO 1.3 5.13.6.5, 5.13.6.6): validation in the order the normative
 * statements give, the domain's mapping table, propagation to the host IOMMUs that mirror the
 * domain (all or nothing), and IOTLB invalidation. Also the status for a host refusal, shared
 * with ATTACH.
 */
import { MAX_ADDRESS, PERM_READ, PERM_WRITE } from "../engine/access.ts";
import type { Iotlb } from "../engine/iotlb.ts";
import type { Tracer } from "../engine/trace.ts";
import { type Domain, type DomainTable, type Mapping, mappingSizeBytes } from "./domains.ts";
import type { NegotiatedFeatures } from "./features.ts";
import type { HostFailure, HostMirror } from "./host-mirror.ts";
import type { ResolvedOptions } from "./options.ts";
import { type DecodedRequest, U64_UNREPRESENTABLE } from "./requests.ts";
import { findOverlappingRegion } from "./reserved-regions.ts";
import { VIRTIO_IOMMU_TRACE as T } from "./trace-points.ts";
import {
  MAP_F_MMIO,
  MAP_F_READ,
  MAP_F_WRITE,
  S_DEVERR,
  S_INVAL,
  S_NOENT,
  S_NOMEM,
  S_OK,
  S_RANGE,
  S_UNSUPP,
  type Status,
} from "./wire.ts";

/** Whether a domain ID lies in the device's domain_range (5.13.4). */
export function domainInRange(opts: ResolvedOptions, domainId: number): boolean {
  return domainId >= opts.domainStart && domainId <= opts.domainEnd;
}

/**
 * The status for a host refusal. 5.13.6 defines S_NOMEM as "insufficient resources": a host
 * out of DMA entries (ENOSPC, VFIO's dma_entry_limit) or memory (ENOMEM). Any other refusal of
 * an ATTACH means the device cannot attach the endpoint to that domain, which 5.13.6.3.2 answers
 * with S_UNSUPP; of a MAP, it is an internal device error, S_DEVERR.
 */
export function hostStatus(tracer: Tracer, failure: HostFailure, what: "attach" | "map", id: number): Status {
  T.hostRefused(tracer, what, id, failure.errno, failure.message);
  if (failure.errno === "ENOSPC" || failure.errno === "ENOMEM") return S_NOMEM;
  return what === "attach" ? S_UNSUPP : S_DEVERR;
}

export class MapUnmap {
  private readonly opts: ResolvedOptions;
  private readonly negotiated: NegotiatedFeatures;
  private readonly domains: DomainTable;
  private readonly iotlb: Iotlb;
  private readonly tracer: Tracer;

  constructor(
    opts: ResolvedOptions,
    negotiated: NegotiatedFeatures,
    domains: DomainTable,
    iotlb: Iotlb,
    tracer: Tracer,
  ) {
    this.opts = opts;
    this.negotiated = negotiated;
    this.domains = domains;
    this.iotlb = iotlb;
    this.tracer = tracer;
  }

  /** MAP (5.13.6.5). */
  map(d: DecodedRequest): Status {
    // 5.13.6.5: only available when MAP_UNMAP has been negotiated.
    if (!this.negotiated.mapUnmap) return S_UNSUPP;
    // 5.13.6.5.2: an unrecognized flag MUST be INVAL; MMIO exists only with F_MMIO negotiated.
    const knownFlags = MAP_F_READ | MAP_F_WRITE | (this.negotiated.mmio ? MAP_F_MMIO : 0);
    if ((d.flags & ~knownFlags) !== 0) return S_INVAL;
    if (!domainInRange(this.opts, d.domainId)) return S_RANGE;
    const domain = this.domains.get(d.domainId);
    if (domain === undefined) return S_NOENT;
    if (domain.bypass) return S_INVAL;
    if (d.endBeforeStart) return S_INVAL;
    const virtStart = d.virtStart;
    const virtLast = d.virtEnd;
    const physStart = d.physStart;
    // Values of 2^53 or more lie outside the (clamped) input range or guest-physical space.
    if (
      virtStart === U64_UNREPRESENTABLE ||
      virtLast === U64_UNREPRESENTABLE ||
      physStart === U64_UNREPRESENTABLE
    ) {
      return S_RANGE;
    }
    // 5.13.6.5.2: virt_start, phys_start and virt_end + 1 not aligned on the granule: RANGE.
    const g = this.opts.granuleBytes;
    if (virtStart % g !== 0 || (virtLast + 1) % g !== 0 || physStart % g !== 0) return S_RANGE;
    // 5.13.6: a mapping request outside input_range fails.
    if (virtStart < this.opts.inputStart || virtLast > this.opts.inputEnd) return S_RANGE;
    const sizeBytes = virtLast - virtStart + 1;
    if (physStart + (sizeBytes - 1) > MAX_ADDRESS) return S_RANGE;
    // 5.13.6.8.1.2: SHOULD reject a MAP overlapping a RESV_MEM region of an attached endpoint.
    for (const ep of domain.endpoints) {
      if (findOverlappingRegion(ep.reservedRegions, virtStart, virtLast) !== undefined) return S_INVAL;
    }
    // 5.13.6.5.2: a mapping already in the range SHOULD be INVAL.
    if (domain.mappings.overlaps(virtStart, virtLast)) return S_INVAL;
    if (
      domain.mappings.size >= this.opts.maxMappingsPerDomain ||
      this.domains.totalMappings >= this.opts.maxMappingsTotal
    ) {
      return S_NOMEM;
    }
    const perms = (d.flags & MAP_F_READ ? PERM_READ : 0) | (d.flags & MAP_F_WRITE ? PERM_WRITE : 0);
    const m: Mapping = {
      iovaStart: virtStart,
      iovaLast: virtLast,
      gpaStart: physStart,
      perms,
      mmio: (d.flags & MAP_F_MMIO) !== 0,
    };
    this.domains.addMapping(domain, m);
    const failure = this.propagateMap(domain, m);
    if (failure !== null) {
      this.domains.removeMapping(domain, m);
      return hostStatus(this.tracer, failure, "map", domain.id);
    }
    T.map(this.tracer, domain.id, virtStart, physStart, sizeBytes, perms, m.mmio);
    return S_OK;
  }

  /** Gives a new mapping to every host mirroring `domain`; all or nothing. */
  private propagateMap(domain: Domain, m: Mapping): HostFailure | null {
    let done: HostMirror[] | null = null;
    for (const ep of domain.endpoints) {
      const mirror = ep.hostMirror;
      if (mirror === null || !mirror.mirrors(domain)) continue;
      const failure = mirror.map(m);
      if (failure !== null) {
        // Roll back the hosts that took it: the MAP fails everywhere.
        if (done !== null) for (const other of done) other.unmap(m);
        return failure;
      }
      if (done === null) done = [];
      done.push(mirror);
    }
    return null;
  }

  /** UNMAP (5.13.6.6). */
  unmap(d: DecodedRequest): Status {
    if (!this.negotiated.mapUnmap) return S_UNSUPP;
    // 5.13.6.6.2: non-zero reserved MAY be INVAL; then we do not perform the UNMAP.
    if (d.reservedNonZero) return S_INVAL;
    if (!domainInRange(this.opts, d.domainId)) return S_RANGE;
    const domain = this.domains.get(d.domainId);
    if (domain === undefined) return S_NOENT;
    if (domain.bypass) return S_INVAL;
    if (d.endBeforeStart) return S_INVAL;
    // Nothing is mapped at or above 2^53 (the input range is clamped below it).
    if (d.virtStart === U64_UNREPRESENTABLE) return S_OK;
    const last = d.virtEnd === U64_UNREPRESENTABLE ? MAX_ADDRESS : d.virtEnd;
    const victims = domain.mappingsToUnmap(d.virtStart, last);
    // 5.13.6.6.2: a range that would split a mapping: RANGE, and remove nothing.
    if (victims === "split") return S_RANGE;
    if (victims.length === 0) return S_OK;
    for (const m of victims) {
      this.domains.removeMapping(domain, m);
      for (const ep of domain.endpoints) {
        if (ep.hostMirror?.mirrors(domain)) ep.hostMirror.unmap(m);
      }
      T.unmap(this.tracer, domain.id, m.iovaStart, mappingSizeBytes(m));
    }
    // One invalidation for the span of the removed mappings: every IOTLB entry of this domain in
    // it came from one of them, since they are all the mappings the range touches.
    const first = victims[0];
    const final = victims[victims.length - 1];
    this.iotlb.invalidateRange(domain.id, first.iovaStart, final.iovaLast - first.iovaStart + 1);
    return S_OK;
  }
}
