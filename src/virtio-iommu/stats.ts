/**
 * What a virtio-iommu counts (`VirtioIommuStats`) and the counters behind it: requests by type
 * and status, faults by reason and cause, translations, host propagation, internal errors.
 */
import type { HostNotifierStats } from "../engine/host-notifier.ts";
import type { Iotlb, IotlbStats } from "../engine/iotlb.ts";
import type { DomainTable } from "./domains.ts";
import type { Endpoint } from "./endpoints.ts";
import type { FaultEventQueue } from "./fault-events.ts";
import {
  FAULT_R_DOMAIN,
  FAULT_R_MAPPING,
  FAULT_REASON_NAMES,
  REQ_ATTACH,
  REQ_PROBE,
  REQUEST_TYPE_NAMES,
  type RequestTypeName,
  STATUS_NAMES,
  type Status,
  type StatusName,
} from "./wire.ts";

const STATUS_COUNT = STATUS_NAMES.length;

export interface VirtioIommuStats {
  readonly domains: number;
  readonly endpoints: number;
  readonly attachedEndpoints: number;
  readonly mappings: number;
  /** Requests answered, by type and status. */
  readonly requests: Readonly<
    Record<Exclude<RequestTypeName, "unknown">, Readonly<Record<StatusName, number>>>
  >;
  /** Requests returned with used length 0 (unknown type, no room for the tail, PROBE not offered). */
  readonly requestsUnanswered: number;
  /** Translation faults by virtio fault reason. */
  readonly faults: Readonly<Record<(typeof FAULT_REASON_NAMES)[number], number>>;
  /** Translation faults by cause. */
  readonly faultCauses: Readonly<Record<"blocked" | "unmapped" | "permission", number>>;
  readonly events: {
    readonly queued: number;
    readonly taken: number;
    readonly pending: number;
    readonly droppedQueueFull: number;
    readonly droppedEndpointLimit: number;
    readonly droppedRateLimit: number;
  };
  readonly iotlb: IotlbStats;
  readonly host: {
    readonly maps: number;
    readonly unmaps: number;
    readonly refusals: number;
    readonly teardownErrors: number;
    /** View changes the host refused outside a request that could report them (DETACH, bypass). */
    readonly unreportedFailures: number;
    /** Per assigned endpoint: the engine's host-propagation counters (entries, peak, refusals by errno). */
    readonly endpoints: Readonly<Record<number, HostNotifierStats>>;
  };
  /** Translations resolved by the model (cache misses of the endpoints' one-entry caches). */
  readonly translations: number;
  readonly bypassTranslations: number;
  /** Exceptions caught at the request boundary and answered S_DEVERR: always 0 unless a bug. */
  readonly internalErrors: number;
}

export class DeviceCounters {
  /** Requests answered, indexed type * STATUS_COUNT + status. */
  readonly requests = new Float64Array(REQUEST_TYPE_NAMES.length * STATUS_COUNT);
  requestsUnanswered = 0;
  /** Translation faults by virtio fault reason. */
  readonly faultReasons = new Float64Array(FAULT_REASON_NAMES.length);
  faultsBlocked = 0;
  faultsUnmapped = 0;
  faultsPermission = 0;
  translations = 0;
  bypassTranslations = 0;
  hostUnreportedFailures = 0;
  internalErrors = 0;

  countRequest(type: number, status: Status): void {
    this.requests[type * STATUS_COUNT + status]++;
  }

  /** The device's counters with the state they describe. */
  snapshot(
    domains: DomainTable,
    endpoints: Iterable<Endpoint>,
    events: FaultEventQueue,
    iotlb: Iotlb,
  ): VirtioIommuStats {
    const requestsByType = {} as Record<Exclude<RequestTypeName, "unknown">, Record<StatusName, number>>;
    for (let t = REQ_ATTACH; t <= REQ_PROBE; t++) {
      const byStatus = {} as Record<StatusName, number>;
      for (let s = 0; s < STATUS_COUNT; s++) byStatus[STATUS_NAMES[s]] = this.requests[t * STATUS_COUNT + s];
      requestsByType[REQUEST_TYPE_NAMES[t] as Exclude<RequestTypeName, "unknown">] = byStatus;
    }
    let attached = 0;
    let endpointCount = 0;
    let maps = 0;
    let unmaps = 0;
    let refusals = 0;
    let teardownErrors = 0;
    const hostEndpoints: Record<number, HostNotifierStats> = {};
    for (const ep of endpoints) {
      endpointCount++;
      if (ep.domain !== null) attached++;
      const n = ep.hostMirror?.notifier;
      if (n !== undefined) {
        hostEndpoints[ep.id] = n.stats();
        maps += n.maps;
        unmaps += n.unmaps;
        refusals += n.refusalsTotal - n.unmapsRefused;
        teardownErrors += n.unmapsRefused;
      }
    }
    return {
      domains: domains.size,
      endpoints: endpointCount,
      attachedEndpoints: attached,
      mappings: domains.totalMappings,
      requests: requestsByType,
      requestsUnanswered: this.requestsUnanswered,
      faults: {
        unknown: this.faultReasons[0],
        domain: this.faultReasons[FAULT_R_DOMAIN],
        mapping: this.faultReasons[FAULT_R_MAPPING],
      },
      faultCauses: {
        blocked: this.faultsBlocked,
        unmapped: this.faultsUnmapped,
        permission: this.faultsPermission,
      },
      events: {
        queued: events.queued,
        taken: events.taken,
        pending: events.pending,
        droppedQueueFull: events.droppedQueueFull,
        droppedEndpointLimit: events.droppedSourceLimit,
        droppedRateLimit: events.droppedRateLimit,
      },
      iotlb: iotlb.stats(),
      host: {
        maps,
        unmaps,
        refusals,
        teardownErrors,
        unreportedFailures: this.hostUnreportedFailures,
        endpoints: hostEndpoints,
      },
      translations: this.translations,
      bypassTranslations: this.bypassTranslations,
      internalErrors: this.internalErrors,
    };
  }
}
