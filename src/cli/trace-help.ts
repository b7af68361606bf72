/**
 * `viommu run --trace help`: the catalogue of declared trace points, by source, from each
 * folder's trace-points.ts (importing them declares their points).
 */
import { TRACE_CATEGORIES, traceCatalogue } from "../engine/trace.ts";
import "../smmuv3/trace-points.ts";
import "../virtio-iommu/trace-points.ts";
import "../vtd/trace-points.ts";

export function formatTraceCatalogue(): string {
  const lines = [
    `Trace points (--trace CATS or VIOMMU_TRACE=CATS; CATS: ${TRACE_CATEGORIES.join(",")} or all):`,
  ];
  let source = "";
  for (const p of traceCatalogue()) {
    if (p.source !== source) {
      source = p.source;
      lines.push("", `${source}:`);
    }
    const fields = p.fields.length === 0 ? "-" : p.fields.join(",");
    lines.push(`  ${p.name.padEnd(22)} ${p.category.padEnd(11)} ${fields.padEnd(40)} ${p.doc}`);
  }
  lines.push(
    "",
    "Also emitted, not yet declared here: host propagation (host-map, host-unmap, host-refused),",
    "PCI, virtio transport, devices, the VMM and the vfio-user server.",
  );
  return lines.join("\n");
}
