/**
 * The virtio-iommu's trace points (source "virtio-iommu"), declared in one place as QEMU's
 * trace-events: name, category, fields and meaning. `viommu run --trace help` prints them.
 */
import { defineTracePoints } from "../engine/trace.ts";

export const VIRTIO_IOMMU_TRACE = defineTracePoints("virtio-iommu", {
  negotiate: { category: "config", fields: ["features"], doc: "features negotiated (FEATURES_OK)" },
  bypass: { category: "config", fields: ["bypass"], doc: "config.bypass written (5.13.4)" },
  reset: { category: "config", fields: ["bypass"], doc: "device reset: no domains or attachments" },
  attach: { category: "attach", fields: ["domain", "endpoint", "bypass"], doc: "ATTACH done" },
  detach: { category: "attach", fields: ["domain", "endpoint"], doc: "an endpoint left its domain" },
  domainCreate: {
    name: "domain-create",
    category: "attach",
    fields: ["domain", "bypass"],
    doc: "domain created",
  },
  domainDestroy: {
    name: "domain-destroy",
    category: "attach",
    fields: ["domain", "mappings"],
    doc: "a domain died with its last endpoint",
  },
  map: {
    category: "map",
    fields: ["domain", "iova", "gpa", "sizeBytes", "perms", "mmio"],
    doc: "MAP done (host IOMMUs mirroring the domain included)",
  },
  unmap: { category: "unmap", fields: ["domain", "iova", "sizeBytes"], doc: "one mapping removed by UNMAP" },
  fault: {
    category: "fault",
    fields: ["endpoint", "iova", "access", "reason", "cause", "queued"],
    doc: "a translation fault (queued: a record went to the eventq queue)",
  },
  hostRefused: {
    name: "host-refused",
    category: "fault",
    fields: ["what", "id", "errno", "message"],
    doc: "a host IOMMU refused an ATTACH or MAP (rolled back)",
  },
  hostViewRefused: {
    name: "host-view-refused",
    category: "fault",
    fields: ["endpoint", "errno"],
    doc: "a host IOMMU refused a view change no request could report",
  },
  needsReset: {
    name: "needs-reset",
    category: "fault",
    fields: ["reason"],
    doc: "DEVICE_NEEDS_RESET raised",
  },
  internalError: {
    name: "internal-error",
    category: "fault",
    fields: ["message"],
    doc: "an exception caught at the request boundary (answered S_DEVERR)",
  },
});
