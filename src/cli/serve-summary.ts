/**
 * What `viommu serve` reports when it stops: a short table on stderr for a person (one row per
 * served device, then the guest memory, the virtio-iommu and host propagation in a line each),
 * and every counter as one JSON document for a program (`--stats-json FILE`).
 */
import type { VirtioIommuPci } from "../devices/virtio-iommu-pci.ts";
import type { VfioType1Container } from "../engine/host-iommu.ts";
import type { ObservedHostIommu } from "../vfio-user/host-observer.ts";
import type { VfioUserDeviceServer } from "../vfio-user/server.ts";
import type { SharedGuestMemory } from "../vfio-user/shared-memory.ts";

/** One served PCI function, as `runServe` keeps it. */
export interface ServedDevice {
  readonly name: string;
  readonly slot: number;
  readonly iommu: boolean;
  readonly server: VfioUserDeviceServer;
  /** The device model's own counters. */
  readonly stats: () => unknown;
  readonly host?: ObservedHostIommu;
}

/** Every counter, for --stats-json. */
export function serveStatsJson(served: readonly ServedDevice[], memory: SharedGuestMemory): unknown {
  return {
    memory: memory.stats(),
    devices: served.map((s) => ({
      name: s.name,
      slot: s.slot,
      iommu: s.iommu,
      server: s.server.stats(),
      device: s.stats(),
      pci: s.server.fn.stats(),
      host:
        s.host === undefined
          ? undefined
          : {
              ...s.host.container.stats(),
              entrySizes: entrySizeHistogram(s.host.container),
              ...s.host.stats(),
            },
    })),
  };
}

/** How many host DMA entries of each size (bytes -> count). */
function entrySizeHistogram(host: VfioType1Container): Record<string, number> {
  const h: Record<string, number> = {};
  for (const e of host.list()) h[e.sizeBytes] = (h[e.sizeBytes] ?? 0) + 1;
  return h;
}

/** "name count, ..." of the non-zero entries, or "none". */
function nonZero(record: Readonly<Partial<Record<string, number>>>): string {
  const parts = Object.entries(record)
    .filter(([, v]) => v !== undefined && v !== 0)
    .map(([k, v]) => `${k} ${v}`);
  return parts.length === 0 ? "none" : parts.join(", ");
}

function sizeText(bytes: number): string {
  if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(1)} GiB`;
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Rows of cells as text columns: the first column left-aligned, the others right-aligned. */
export function formatTable(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r
      .map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])))
      .join("  ")
      .trimEnd(),
  );
}

/** The person's summary: a device table and a line per subsystem. */
export function formatServeSummary(
  served: readonly ServedDevice[],
  memory: SharedGuestMemory,
  viommu: VirtioIommuPci | undefined,
): string[] {
  const rows: string[][] = [
    ["device", "slot", "iommu", "connections", "reads", "writes", "DMA maps", "irqs", "errors"],
  ];
  for (const s of served) {
    const st = s.server.stats();
    const irq = st.irqs.signalled;
    rows.push([
      s.name,
      `00:${s.slot.toString(16).padStart(2, "0")}.0`,
      s.iommu ? "on" : "-",
      String(st.connections),
      String(st.regionReads),
      String(st.regionWrites),
      String(st.dmaMaps),
      String(irq.intx + irq.msi + irq.msix),
      String(Object.values(st.errors).reduce((a, b) => a + b, 0) + st.internalErrors),
    ]);
  }
  const lines = formatTable(rows);
  const m = memory.stats();
  lines.push(
    `guest memory: ${m.regions} regions, ${sizeText(m.mappedBytes)} mapped; ${m.maps} maps (${m.sharedMaps} shared), ${m.unmaps} unmaps, ${m.refusedMaps} refused`,
  );
  const t = m.firstTouch;
  lines.push(
    `guest memory first touches: ${t.populatedChunks} chunks populated (${sizeText(t.populatedBytes)}) in ${t.populateMs.toFixed(1)} ms${t.enabled ? "" : " (population off)"}; ${t.populateFailures} failed, ${t.unreachableChunks} unreachable`,
  );
  if (viommu !== undefined) {
    const e = viommu.engine.stats();
    const ok = (r: Readonly<Record<string, number>>) => r.OK ?? 0;
    const notOk = (r: Readonly<Record<string, number>>) => nonZero({ ...r, OK: 0 });
    lines.push(
      `virtio-iommu: ${e.domains} domains, ${e.mappings} mappings; ok: attach ${ok(e.requests.attach)}, detach ${ok(e.requests.detach)}, map ${ok(e.requests.map)}, unmap ${ok(e.requests.unmap)}, probe ${ok(e.requests.probe)}; failed maps: ${notOk(e.requests.map)}`,
    );
    lines.push(
      `virtio-iommu: IOTLB ${e.iotlb.hits} hits, ${e.iotlb.misses} misses, ${e.iotlb.invalidations} invalidations; faults: ${nonZero(e.faultCauses)}; events ${viommu.stats().eventsDelivered} delivered, ${e.events.droppedQueueFull + e.events.droppedEndpointLimit + e.events.droppedRateLimit} dropped`,
    );
  }
  for (const s of served) {
    const errors = { ...s.server.stats().errors };
    if (Object.values(errors).some((n) => n > 0)) lines.push(`${s.name} errors: ${nonZero(errors)}`);
    if (s.host === undefined) continue;
    const h = s.host.stats();
    lines.push(
      `${s.name} host propagation (VFIO type1 model): ${s.host.container.entryCount} entries, peak ${h.peakEntries} of ${s.host.container.dmaEntryLimit}; ${h.mapCalls} maps, ${h.unmapCalls} unmaps; refused: ${nonZero(h.refusals)}`,
    );
  }
  return lines;
}
