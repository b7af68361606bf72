/**
 * The virtio-iommu device (VIRTIO 1.3 section 5.13, device ID 23), independent of any transport.
 *
 * A transport (virtio-pci, virtio-mmio, vfio-user) hands over each request chain as its
 * device-readable bytes and its device-writable area, and gets back the used length. The device
 * keeps domains, mappings and attachments, answers every request with the architected status,
 * translates endpoint DMA as a `DmaTranslator` through the shared IOTLB (tag = domain ID), queues
 * fault records for the eventq, and mirrors mapping changes into the host IOMMU of assigned
 * endpoints.
 */
import {
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  type DmaFaultReason,
  dmaFault,
  MAX_ADDRESS,
  PERM_RW,
} from "../engine/access.ts";
import { DmaAddressSpace } from "../engine/dma-space.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { HostIommu } from "../engine/host-iommu.ts";
import { HostNotifier } from "../engine/host-notifier.ts";
import { Iotlb } from "../engine/iotlb.ts";
import { Tracer } from "../engine/trace.ts";
import type { DmaTranslator, Translation } from "../engine/translation.ts";
import type { PluggedState, ViommuModel } from "../framework/model.ts";
import { ViommuRegistry } from "../framework/registry.ts";
import type { Endpoint as FrameworkEndpoint, ViommuInstance } from "../framework/viommu.ts";
import { ConfigSpace } from "./config-space.ts";
import { type Domain, DomainTable, type Mapping, mappingSizeBytes } from "./domains.ts";
import { Endpoint, type VirtioIommuEndpointOptions } from "./endpoints.ts";
import { encodeFaultRecord, FaultEventQueue } from "./fault-events.ts";
import { NegotiatedFeatures } from "./features.ts";
import { type HostFailure, HostMirror, type HostView } from "./host-mirror.ts";
import { domainInRange, hostStatus, MapUnmap } from "./map-unmap.ts";
import { type ResolvedOptions, resolveOptions, type VirtioIommuOptions } from "./options.ts";
import { encodeProbeProperties, probePropertiesBytes } from "./probe-properties.ts";
import { DecodedRequest, decodeRequest, writeTail } from "./requests.ts";
import { validateReservedRegions } from "./reserved-regions.ts";
import { DeviceCounters, type VirtioIommuStats } from "./stats.ts";
import { VIRTIO_IOMMU_TRACE as T } from "./trace-points.ts";
import {
  ATTACH_F_BYPASS,
  CONFIG_BYPASS,
  CONFIG_SIZE_BYTES,
  F_BYPASS,
  F_BYPASS_CONFIG,
  F_DOMAIN_RANGE,
  F_INPUT_RANGE,
  F_MAP_UNMAP,
  F_MMIO,
  F_PROBE,
  FAULT_F_ADDRESS,
  FAULT_F_READ,
  FAULT_F_WRITE,
  FAULT_R_DOMAIN,
  FAULT_R_MAPPING,
  FAULT_REASON_NAMES,
  REQ_ATTACH,
  REQ_DETACH,
  REQ_MAP,
  REQ_PROBE,
  S_DEVERR,
  S_INVAL,
  S_NOENT,
  S_NOMEM,
  S_OK,
  S_RANGE,
  S_UNSUPP,
  STATUS_NAMES,
  type Status,
  TAIL_SIZE_BYTES,
} from "./wire.ts";

export type { VirtioIommuEndpointOptions } from "./endpoints.ts";
export type { VirtioIommuOptions } from "./options.ts";
export type { VirtioIommuStats } from "./stats.ts";

const SOURCE = "virtio-iommu";
const _STATUS_COUNT = STATUS_NAMES.length;

/**
 * The virtio-iommu model, and its backend of the generic vIOMMU layer: the endpoint table is the
 * `viommu` instance's, whose state per endpoint is an `Endpoint` of endpoints.ts.
 */
export class VirtioIommu implements DmaTranslator, ViommuModel<Endpoint, VirtioIommuEndpointOptions> {
  readonly modelName = "virtio-iommu";
  readonly memory: GuestMemory;
  /** The guest's vIOMMU in the framework's registry: plug and unplug endpoints there. */
  readonly viommu: ViommuInstance<Endpoint, VirtioIommuEndpointOptions>;
  readonly deviceFeatures: bigint;
  readonly configSizeBytes = CONFIG_SIZE_BYTES;
  readonly iotlb: Iotlb;
  readonly tracer: Tracer;
  /** Called by the device when a fault record is queued; the transport then calls takeEvent. */
  onEvent: (() => void) | undefined = undefined;
  /**
   * Called when the device can no longer vouch for its state: a host IOMMU refused to unmap (an
   * assigned device may still reach memory it should not) or an internal error. The transport
   * sets DEVICE_NEEDS_RESET (VIRTIO 1.3 2.1.2; 5.13.6.9 recommends it for such errors).
   */
  onNeedsReset: ((reason: string) => void) | undefined = undefined;
  private needsResetReason: string | null = null;

  private readonly opts: ResolvedOptions;
  private readonly config: ConfigSpace;
  private readonly negotiated = new NegotiatedFeatures();
  private readonly domains = new DomainTable();
  private readonly mapUnmap: MapUnmap;
  /** The framework's endpoint table (`viommu.states`), read-only here. */
  private readonly endpoints: ReadonlyMap<number, Endpoint>;
  private readonly hostsInUse = new Set<HostIommu>();
  private lastEndpoint: Endpoint | null = null;
  private readonly events: FaultEventQueue;
  private readonly decoded = new DecodedRequest();
  private ownEpoch = 0;

  private readonly counters = new DeviceCounters();

  constructor(memory: GuestMemory, options: VirtioIommuOptions = {}) {
    this.memory = memory;
    this.viommu =
      options.viommu ?? ViommuRegistry.single<Endpoint, VirtioIommuEndpointOptions>(SOURCE, 32).instance;
    this.endpoints = this.viommu.states;
    const o = resolveOptions(options);
    this.opts = o;
    this.iotlb = options.iotlb ?? new Iotlb();
    this.tracer = options.tracer ?? new Tracer();
    this.mapUnmap = new MapUnmap(o, this.negotiated, this.domains, this.iotlb, this.tracer);
    this.events = new FaultEventQueue({
      depth: o.eventQueueDepth,
      maxPendingPerSource: o.maxPendingEventsPerEndpoint,
      ratePerSecond: o.eventsPerSecondPerEndpoint,
      burst: o.eventBurstPerEndpoint,
    });
    // 5.13.3.2: SHOULD offer MAP_UNMAP; BYPASS_CONFIG supersedes BYPASS, never both.
    let features = F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP;
    features |= o.offerLegacyBypass ? F_BYPASS : F_BYPASS_CONFIG;
    if (o.offerProbe) features |= F_PROBE;
    if (o.offerMmio) features |= F_MMIO;
    this.deviceFeatures = features;
    if (o.offerProbe && probePropertiesBytes(o.reservedRegions) > o.probeSizeBytes) {
      throw new RangeError("virtio-iommu: probe_size is too small for the reserved regions");
    }
    this.config = new ConfigSpace({
      pageSizeMask: o.pageSizeMask,
      inputStart: o.inputStart,
      inputEnd: o.inputEnd,
      domainStart: o.domainStart,
      domainEnd: o.domainEnd,
      probeSizeBytes: o.offerProbe ? o.probeSizeBytes : 0,
      bypass: o.bypassInitially ? 1 : 0,
    });
    this.viommu.bindModel(this);
  }

  // ---- DmaTranslator ------------------------------------------------------------------------

  /** Changes whenever a translation handed out may be stale (IOTLB invalidations included). */
  get epoch(): number {
    return this.iotlb.epoch + this.ownEpoch;
  }

  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.counters.translations++;
    let ep = this.lastEndpoint;
    if (ep === null || ep.id !== endpointId) {
      const found = this.endpoints.get(endpointId);
      if (found === undefined) {
        // Not an endpoint of this device: no valid endpoint ID to report on the eventq.
        this.counters.faultsBlocked++;
        return dmaFault("blocked", endpointId, iova, access, 0, "unknown endpoint");
      }
      ep = found;
      this.lastEndpoint = ep;
    }
    const domain = ep.domain;
    if (domain === null) {
      if (this.unattachedBypass()) return this.identity(out);
      // 5.13.6.2: unattached endpoints not in bypass mode SHOULD NOT access guest memory.
      return this.fault(ep, FAULT_R_DOMAIN, "blocked", iova, access);
    }
    if (domain.bypass) return this.identity(out);
    const tag = domain.id;
    if (this.iotlb.lookup(tag, iova, out)) {
      if ((out.perms & access) !== 0) return null;
      return this.fault(ep, FAULT_R_MAPPING, "permission", iova, access);
    }
    const m = domain.mappings.valueAt(iova);
    if (m === undefined) return this.fault(ep, FAULT_R_MAPPING, "unmapped", iova, access);
    // 5.13.6.5.2: MUST NOT allow writes to a range mapped without WRITE (and reads need READ).
    if ((m.perms & access) === 0) return this.fault(ep, FAULT_R_MAPPING, "permission", iova, access);
    out.set(m.iovaStart, m.gpaStart, mappingSizeBytes(m), m.perms);
    this.iotlb.insertFrom(tag, iova, out);
    return null;
  }

  private identity(out: Translation): null {
    this.counters.bypassTranslations++;
    // 5.13.6: accesses in bypass mode are translated with the identity function.
    out.set(0, 0, MAX_ADDRESS + 1, PERM_RW);
    return null;
  }

  private fault(ep: Endpoint, reason: number, cause: DmaFaultReason, iova: number, access: Access): DmaFault {
    ep.faults++;
    this.counters.faultReasons[reason]++;
    if (cause === "blocked") this.counters.faultsBlocked++;
    else if (cause === "unmapped") this.counters.faultsUnmapped++;
    else this.counters.faultsPermission++;
    // 5.13.6.9: F_ADDRESS only when there is an address to report (a device can hand over any number).
    const hasAddress = Number.isInteger(iova);
    const flags =
      (access === ACCESS_WRITE ? FAULT_F_WRITE : FAULT_F_READ) | (hasAddress ? FAULT_F_ADDRESS : 0);
    const record = encodeFaultRecord(reason, flags, ep.id, hasAddress ? iova : 0);
    const queued = this.events.push(ep, record, this.opts.clockMs());
    const accessName = access === ACCESS_WRITE ? "write" : "read";
    T.fault(this.tracer, ep.id, iova, accessName, FAULT_REASON_NAMES[reason], cause, queued);
    if (queued) this.onEvent?.();
    const f = dmaFault(
      cause,
      ep.id,
      iova,
      access,
      reason,
      `virtio-iommu ${FAULT_REASON_NAMES[reason]} fault`,
    );
    this.viommu.guestFaultOf(ep.id, f);
    return f;
  }

  // ---- Features and configuration ----------------------------------------------------------

  negotiate(driverFeatures: bigint): void {
    const before = this.unattachedBypass();
    this.negotiated.set(driverFeatures & this.deviceFeatures);
    if (T.negotiate.enabled(this.tracer)) T.negotiate(this.tracer, `0x${this.negotiated.bits.toString(16)}`);
    if (before !== this.unattachedBypass()) this.unattachedModeChanged();
  }

  get negotiatedFeatures(): bigint {
    return this.negotiated.bits;
  }

  /** 5.13.6: which unattached endpoints are in bypass mode. */
  private unattachedBypass(): boolean {
    if (!this.opts.offerLegacyBypass) {
      // Applies even if the driver did not accept BYPASS_CONFIG.
      return this.config.bypass === 1;
    }
    return this.negotiated.legacyBypass;
  }

  readConfig(offset: number, sizeBytes: 1 | 2 | 4): number {
    return this.config.read(offset, sizeBytes);
  }

  /** Only `bypass` is writable, and only with BYPASS_CONFIG negotiated (5.13.4.1). */
  writeConfig(offset: number, sizeBytes: 1 | 2 | 4, value: number): void {
    if (!this.negotiated.bypassConfig) return;
    if (!Number.isInteger(offset) || offset > CONFIG_BYPASS || offset + sizeBytes <= CONFIG_BYPASS) return;
    const byte = Math.floor(value / 2 ** (8 * (CONFIG_BYPASS - offset))) & 0xff;
    // The driver MUST NOT write other values and the device MUST NOT present them: ignore them.
    if (byte > 1) return;
    if (byte === this.config.bypass) return;
    this.config.bypass = byte as 0 | 1;
    T.bypass(this.tracer, byte);
    this.unattachedModeChanged();
  }

  private unattachedModeChanged(): void {
    this.ownEpoch++;
    for (const ep of this.endpoints.values()) {
      if (ep.domain === null) this.syncHostQuietly(ep);
    }
  }

  // ---- Endpoints ----------------------------------------------------------------------------

  /**
   * Declares endpoint `endpointId` (platform setup) and returns its DMA address space: a plug
   * through the framework (`viommu.plugOrThrow`), which throws when it is refused.
   */
  addEndpoint(endpointId: number, options: VirtioIommuEndpointOptions = {}): DmaAddressSpace {
    return this.viommu.plugOrThrow({ vId: endpointId, options });
  }

  /**
   * Removes endpoint `endpointId` (hot-unplug, through the framework): see `unplugEndpoint`.
   * Returns false when no such endpoint exists.
   */
  removeEndpoint(endpointId: number): boolean {
    return this.viommu.unplug(endpointId);
  }

  /** The framework plugs an endpoint: its reserved regions, DMA space and host mirror. */
  plugEndpoint(
    endpoint: FrameworkEndpoint,
    options: VirtioIommuEndpointOptions = {},
  ): PluggedState<Endpoint> {
    const endpointId = endpoint.vId;
    if (endpointId > 0xffff_ffff) {
      throw new RangeError(`virtio-iommu: endpoint ID ${endpointId} is not a 32-bit value`);
    }
    const host = options.host;
    if (host !== undefined && this.hostsInUse.has(host)) {
      throw new Error("virtio-iommu: a host IOMMU serves one endpoint (one container per assigned device)");
    }
    const regions = validateReservedRegions([
      ...this.opts.reservedRegions,
      ...(options.reservedRegions ?? []),
    ]);
    if (this.opts.offerProbe && probePropertiesBytes(regions) > this.opts.probeSizeBytes) {
      throw new RangeError(`virtio-iommu: probe_size is too small for endpoint ${endpointId}'s regions`);
    }
    const space = new DmaAddressSpace(this.memory, this, endpointId);
    const mirror =
      host === undefined
        ? null
        : new HostMirror(
            new HostNotifier(host, {
              tracer: this.tracer,
              traceSource: SOURCE,
              endpointId,
              onIsolationLost: () =>
                this.flagNeedsReset(`host IOMMU of endpoint ${endpointId} refused an unmap`),
            }),
            this.memory,
          );
    const ep = new Endpoint(endpointId, space, regions, mirror);
    this.events.initSource(ep, this.opts.clockMs());
    if (mirror !== null) {
      const failure = mirror.apply(this.hostViewFor(ep));
      if (failure !== null) {
        throw new Error(
          `virtio-iommu: endpoint ${endpointId}: host refused the initial view: ${failure.message}`,
        );
      }
      this.hostsInUse.add(host!);
    }
    return { space, state: ep };
  }

  /**
   * The framework unplugs an endpoint: it leaves its domain (which dies if it was the last
   * endpoint), its host IOMMU is emptied and released, and its DMA space faults from now on.
   */
  unplugEndpoint(_endpoint: FrameworkEndpoint, ep: Endpoint): void {
    this.leaveDomain(ep);
    if (this.lastEndpoint === ep) this.lastEndpoint = null;
    this.ownEpoch++;
    if (ep.hostMirror !== null) {
      ep.hostMirror.apply("none");
      this.hostsInUse.delete(ep.hostMirror.notifier.backend);
    }
  }

  /** The DMA address space of a declared endpoint. */
  endpointSpace(endpointId: number): DmaAddressSpace | undefined {
    return this.endpoints.get(endpointId)?.space;
  }

  private hostViewFor(ep: Endpoint): HostView {
    const d = ep.domain;
    if (d !== null) return d.bypass ? "identity" : d;
    return this.unattachedBypass() ? "identity" : "none";
  }

  private syncHost(ep: Endpoint): HostFailure | null {
    return ep.hostMirror === null ? null : ep.hostMirror.apply(this.hostViewFor(ep));
  }

  /** For changes no request status can report: a refusal leaves the host mapping nothing. */
  private syncHostQuietly(ep: Endpoint): void {
    const failure = this.syncHost(ep);
    if (failure !== null) {
      this.counters.hostUnreportedFailures++;
      T.hostViewRefused(this.tracer, ep.id, failure.errno);
    }
  }

  /** True after an error the device cannot recover from by itself, until the next reset. */
  get needsReset(): boolean {
    return this.needsResetReason !== null;
  }

  private flagNeedsReset(reason: string): void {
    T.needsReset(this.tracer, reason);
    if (this.needsResetReason !== null) return;
    this.needsResetReason = reason;
    this.onNeedsReset?.(reason);
  }

  // ---- Requests -----------------------------------------------------------------------------

  /**
   * Handles one request. `request` is every device-readable byte of the chain, `response` the
   * device-writable area (for PROBE: properties, then the tail). Returns the used length.
   */
  handleRequest(request: Uint8Array, response: Uint8Array): number {
    try {
      return this.dispatch(request, response);
    } catch (e) {
      // Nothing guest-controlled should get here; if it does, the guest still gets an answer.
      this.counters.internalErrors++;
      this.flagNeedsReset(`internal error: ${String(e)}`);
      T.internalError(this.tracer, String(e));
      const type = request.length > 0 ? request[0] : 0;
      if (type === REQ_PROBE) return this.probeAnswer(response, S_DEVERR);
      if (response.length < TAIL_SIZE_BYTES) return this.unanswered();
      writeTail(response, 0, S_DEVERR);
      return TAIL_SIZE_BYTES;
    }
  }

  private dispatch(request: Uint8Array, response: Uint8Array): number {
    const d = this.decoded;
    const outcome = decodeRequest(request, d);
    // 5.13.6.2: an unrecognized type: do not write the buffer, used length 0.
    if (outcome === "empty" || outcome === "unknown-type") return this.unanswered();
    const type = d.type;
    if (type === REQ_PROBE) {
      // 5.13.6.7.2: PROBE without the feature offered: no write, used length 0.
      if (!this.opts.offerProbe) return this.unanswered();
      return this.probe(outcome === "ok", response);
    }
    // 5.13.6: a request whose tail cannot be found is returned without writing to it.
    if (response.length < TAIL_SIZE_BYTES) return this.unanswered();
    let status: Status;
    if (outcome === "short") status = S_INVAL;
    else if (type === REQ_ATTACH) status = this.attach(d);
    else if (type === REQ_DETACH) status = this.detach(d);
    else if (type === REQ_MAP) status = this.mapUnmap.map(d);
    else status = this.mapUnmap.unmap(d);
    this.counters.countRequest(type, status);
    writeTail(response, 0, status);
    return TAIL_SIZE_BYTES;
  }

  private unanswered(): number {
    this.counters.requestsUnanswered++;
    return 0;
  }

  private attach(d: DecodedRequest): Status {
    // 5.13.6.3.2: non-zero reserved MUST be INVAL; an unrecognized flag MUST be INVAL.
    if (d.reservedNonZero) return S_INVAL;
    // ATTACH_F_BYPASS exists only with BYPASS_CONFIG negotiated (5.13.6.3).
    const knownFlags = this.negotiated.bypassConfig ? ATTACH_F_BYPASS : 0;
    if ((d.flags & ~knownFlags) !== 0) return S_INVAL;
    const ep = this.endpoints.get(d.endpointId);
    if (ep === undefined) return S_NOENT;
    if (!domainInRange(this.opts, d.domainId)) return S_RANGE;
    const wantBypass = (d.flags & ATTACH_F_BYPASS) !== 0;
    const existing = this.domains.get(d.domainId);
    if (existing !== undefined) {
      // 5.13.6.3.2: bypass flag inconsistent with the existing domain SHOULD be INVAL.
      if (existing.bypass !== wantBypass) return S_INVAL;
      if (ep.domain === existing) return S_OK;
      // 5.13.6.3.2: properties incompatible with the domain SHOULD be UNSUPP: a reserved region
      // of this endpoint that the domain already maps.
      for (const r of ep.reservedRegions) {
        if (existing.mappings.overlaps(r.iovaStart, r.iovaLast)) return S_UNSUPP;
      }
    } else {
      const leavingDies = ep.domain !== null && ep.domain.endpoints.size === 1 ? 1 : 0;
      if (this.domains.size - leavingDies >= this.opts.maxDomains) return S_NOMEM;
    }
    // 5.13.6.3.2: attached elsewhere: behave as DETACH, then ATTACH.
    if (ep.domain !== null) this.leaveDomain(ep);
    const domain = existing ?? this.createDomain(d.domainId, wantBypass);
    domain.endpoints.add(ep);
    ep.domain = domain;
    this.ownEpoch++;
    const failure = this.syncHost(ep);
    if (failure !== null) {
      // The host could not take the domain: undo the ATTACH half; the endpoint stays detached.
      this.leaveDomain(ep);
      this.syncHostQuietly(ep);
      const status = hostStatus(this.tracer, failure, "attach", ep.id);
      // 5.13.6.3.2: another endpoint is attached to the domain and the device cannot attach this
      // one too: MUST be S_UNSUPP, whatever the host's reason (S_NOMEM only for a new domain).
      return existing !== undefined ? S_UNSUPP : status;
    }
    T.attach(this.tracer, domain.id, ep.id, domain.bypass);
    return S_OK;
  }

  private createDomain(id: number, bypass: boolean): Domain {
    const domain = this.domains.create(id, bypass);
    T.domainCreate(this.tracer, id, bypass);
    return domain;
  }

  /** Removes `ep` from its domain; a domain left without endpoints ceases to exist (5.13.6.4). */
  private leaveDomain(ep: Endpoint): void {
    const domain = ep.domain;
    if (domain === null) return;
    domain.endpoints.delete(ep);
    ep.domain = null;
    this.ownEpoch++;
    T.detach(this.tracer, domain.id, ep.id);
    if (domain.endpoints.size === 0) {
      this.domains.delete(domain);
      this.iotlb.invalidateSpace(domain.id);
      T.domainDestroy(this.tracer, domain.id, domain.mappings.size);
    }
  }

  private detach(d: DecodedRequest): Status {
    // 5.13.6.4.2: reserved is ignored; an unknown endpoint MUST be NOENT.
    const ep = this.endpoints.get(d.endpointId);
    if (ep === undefined) return S_NOENT;
    // 5.13.6.4.2: no such domain, or not attached to it: MAY be INVAL (and nothing changes).
    const domain = this.domains.get(d.domainId);
    if (domain === undefined || ep.domain !== domain) return S_INVAL;
    this.leaveDomain(ep);
    // The endpoint is now blocked or in bypass mode; it can no longer reach the domain's mappings.
    this.syncHostQuietly(ep);
    return S_OK;
  }

  private probe(wellFormed: boolean, response: Uint8Array): number {
    if (!wellFormed) return this.probeAnswer(response, S_INVAL);
    const ep = this.endpoints.get(this.decoded.endpointId);
    // 5.13.6.7.2: an unknown endpoint SHOULD be NOENT.
    if (ep === undefined) return this.probeAnswer(response, S_NOENT);
    return this.probeAnswer(response, S_OK, ep);
  }

  /**
   * Writes a PROBE answer: properties (zero-filled past the list), then the tail at probe_size.
   * 5.13.6.7.2: a properties area smaller than probe_size gets no property and S_INVAL (tail at
   * the end of what the driver gave); no room for a tail at all: used length 0.
   */
  private probeAnswer(response: Uint8Array, status: Status, ep?: Endpoint): number {
    const probeSize = this.opts.probeSizeBytes;
    if (response.length < TAIL_SIZE_BYTES) return this.unanswered();
    let tailOffset = probeSize;
    if (response.length < probeSize + TAIL_SIZE_BYTES) {
      status = S_INVAL;
      tailOffset = response.length - TAIL_SIZE_BYTES;
    }
    const properties = response.subarray(0, tailOffset);
    if (status === S_OK && ep !== undefined) encodeProbeProperties(ep.reservedRegions, properties);
    else properties.fill(0);
    writeTail(response, tailOffset, status);
    this.counters.countRequest(REQ_PROBE, status);
    return tailOffset + TAIL_SIZE_BYTES;
  }

  // ---- Events -------------------------------------------------------------------------------

  /** The next pending 24-byte fault record for the eventq, or undefined. */
  takeEvent(): Uint8Array | undefined {
    return this.events.take();
  }

  get pendingEvents(): number {
    return this.events.pending;
  }

  // ---- Reset --------------------------------------------------------------------------------

  /** Virtio device reset: no attachments, no domains (5.13.5); config.bypass survives (5.13.4.2). */
  reset(): void {
    for (const ep of this.endpoints.values()) this.leaveDomain(ep);
    this.negotiated.set(0n);
    this.events.clear();
    this.needsResetReason = null;
    this.ownEpoch++;
    for (const ep of this.endpoints.values()) this.syncHostQuietly(ep);
    T.reset(this.tracer, this.config.bypass);
  }

  /** System reset: a device reset that also restores config.bypass to its initial value. */
  systemReset(): void {
    this.config.bypass = this.opts.bypassInitially ? 1 : 0;
    this.reset();
  }

  // ---- Observability ------------------------------------------------------------------------

  stats(): VirtioIommuStats {
    return this.counters.snapshot(this.domains, this.endpoints.values(), this.events, this.iotlb);
  }

  /** The mappings of a domain in IOVA order (for tools, tests and debugging). */
  domainMappings(domainId: number): Mapping[] | undefined {
    const d = this.domains.get(domainId);
    if (d === undefined) return undefined;
    return [...d.mappings.entries()].map((e) => e.value);
  }

  /** The domain an endpoint is attached to, or null. */
  endpointDomain(endpointId: number): number | null {
    return this.endpoints.get(endpointId)?.domain?.id ?? null;
  }
}
