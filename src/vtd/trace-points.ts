/**
 * The VT-d unit's trace points (source "vtd"), declared in one place as QEMU's trace-events:
 * name, category, fields and meaning. `viommu run --trace help` prints them.
 */
import { defineTracePoints } from "../engine/trace.ts";

export const VTD_TRACE = defineTracePoints("vtd", {
  reset: { category: "config", fields: [], doc: "platform reset of the unit" },
  gsts: {
    category: "config",
    fields: ["before", "after", "command"],
    doc: "GSTS changed after a GCMD write",
  },
  endpoint: {
    category: "attach",
    fields: ["sid", "host", "ats"],
    doc: "an endpoint added (assigned, with ATS)",
  },
  endpointRemoved: {
    name: "endpoint-removed",
    category: "attach",
    fields: ["sid"],
    doc: "an endpoint removed",
  },
  iotlbFill: {
    name: "iotlb-fill",
    category: "map",
    fields: ["sid", "did", "pasid", "iova", "gpa", "size", "perms"],
    doc: "a walk filled the IOTLB",
  },
  srtp: {
    category: "invalidate",
    fields: ["root", "ttm"],
    doc: "root table pointer set (every cache emptied)",
  },
  contextCache: {
    name: "context-cache",
    category: "invalidate",
    fields: ["granularity", "did", "sid", "fm"],
    doc: "context-cache invalidation (register or descriptor)",
  },
  iotlb: { category: "invalidate", fields: ["granularity", "did", "iova", "am"], doc: "IOTLB invalidation" },
  pasidIotlb: {
    name: "pasid-iotlb",
    category: "invalidate",
    fields: ["pageSelective", "did", "pasid", "iova", "am"],
    doc: "PASID-based IOTLB invalidation",
  },
  pasidCache: {
    name: "pasid-cache",
    category: "invalidate",
    fields: ["granularity", "did", "pasid"],
    doc: "PASID-cache invalidation",
  },
  deviceTlb: {
    name: "device-tlb",
    category: "invalidate",
    fields: ["sid", "pasid", "all", "iova", "size"],
    doc: "device-TLB invalidation passed to an endpoint",
  },
  iec: {
    category: "invalidate",
    fields: ["global", "index", "im"],
    doc: "interrupt entry cache invalidation",
  },
  descriptor: {
    category: "invalidate",
    fields: ["type", "q0", "q1"],
    doc: "an invalidation queue descriptor",
  },
  iqError: {
    name: "iq-error",
    category: "queue",
    fields: ["iqei", "head"],
    doc: "invalidation queue error (IQE)",
  },
  fault: {
    category: "fault",
    fields: ["sid", "reason", "address", "write", "pasid"],
    doc: "a primary fault (recorded unless dropped by overflow)",
  },
  faultSuppressed: {
    name: "fault-suppressed",
    category: "fault",
    fields: ["sid", "reason"],
    doc: "a fault an FPD bit kept from recording",
  },
  hostResyncDeferred: {
    name: "host-resync-deferred",
    category: "fault",
    fields: ["sid"],
    doc: "caching mode: an endpoint's host resync left for later (replay budget)",
  },
  eventMsi: {
    name: "event-msi",
    category: "irq",
    fields: ["address", "data"],
    doc: "fault or completion event",
  },
  irFault: {
    name: "ir-fault",
    category: "irq",
    fields: ["sid", "reason", "handle", "detail"],
    doc: "IR fault",
  },
  irRemap: {
    name: "ir-remap",
    category: "irq",
    fields: ["sid", "handle", "vector", "destination"],
    doc: "an interrupt remapped through its IRTE",
  },
  irRemapCached: {
    name: "ir-remap",
    category: "irq",
    fields: ["sid", "handle", "cached"],
    doc: "an interrupt remapped from the interrupt entry cache",
  },
});
