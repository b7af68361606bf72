/**
 * The VMM's end-of-run summary: how the run ended, KVM exits, and what the IOMMU and the
 * devices did (mappings, IOTLB hits and misses, faults by reason, interrupts).
 */
import type { HostNotifierStats } from "../../engine/host-notifier.ts";
import type { IotlbStats } from "../../engine/iotlb.ts";
import { nonZero } from "../counters.ts";
import type { RunResult } from "../run-result.ts";
import { describeStop } from "../run-result.ts";
import type { Machine } from "./machine.ts";

function bdf(rid: number): string {
  const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
  return `${h(rid >> 8, 2)}:${h((rid >> 3) & 0x1f, 2)}.${rid & 7}`;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * A device's counters as "name value, ..." for the non-zero numbers, nested records flattened
 * with dots ("dma.faults 2"); "no activity" when every number is zero. Non-numbers are shown
 * only when set (a last fault's description, say).
 */
export function formatCounters(stats: unknown): string {
  const parts: string[] = [];
  const walk = (value: unknown, path: string) => {
    if (typeof value === "number" || typeof value === "bigint") {
      if (value !== 0 && value !== 0n) parts.push(`${path} ${value}`);
    } else if (typeof value === "string") {
      if (value !== "") parts.push(`${path} ${value}`);
    } else if (typeof value === "boolean") {
      if (value) parts.push(path);
    } else if (value !== null && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) walk(v, path === "" ? k : `${path}.${k}`);
    }
  };
  walk(stats, "");
  return parts.length === 0 ? "no activity" : parts.join(", ");
}

/** Where the IOTLB's fills (its misses that translated) came from. */
function iotlbFills(s: IotlbStats): string {
  return (
    `IOTLB fills: ${s.coldFills} cold, ${s.refillsUnchanged + s.refillsChanged} after invalidation ` +
    `(${s.refillsUnchanged} unchanged), ${s.refillsAfterEviction} after eviction; ` +
    `${s.invalidations} invalidations dropped ${s.invalidatedEntries} entries; ` +
    `${s.prefetches} prefetched, ${s.prefetchesUsed} of them used`
  );
}

/** One assigned endpoint's host propagation (the engine's HostNotifier counters). */
function hostLine(endpoint: string, h: HostNotifierStats): string {
  return (
    `host IOMMU of ${endpoint}: ${h.maps} maps, ${h.unmaps} unmaps, ${h.entries} entries (peak ${h.peakEntries}), ` +
    `refusals: ${nonZero(h.refusals)}`
  );
}

export function formatSummary(machine: Machine, result: RunResult): string {
  const p = machine.platform;
  const lines: string[] = [];
  lines.push("--- viommu run summary ---");
  lines.push(`stop: ${describeStop(result.stop)}; exit status ${result.status}; ${result.wallMs} ms`);
  lines.push(
    `kvm: ${1 + machine.apVcpus.length} vCPU${machine.apVcpus.length > 0 ? "s" : ""}, ${result.exits} exits (port I/O ${machine.ioExits}, MMIO ${machine.mmioExits}, IOAPIC EOI ${machine.eoiExits}); ` +
      `RAM ${machine.ramLayout.totalBytes >> 20} MiB ${machine.ram.backing}`,
  );
  const u = p.uart.stats();
  lines.push(`com1: ${u.txBytes} bytes out, ${u.rxBytes} in`);
  const unclaimed =
    p.pio.unclaimedReads + p.pio.unclaimedWrites + p.mmio.unclaimedReads + p.mmio.unclaimedWrites;
  if (unclaimed > 0) {
    lines.push(
      `unclaimed accesses: ports ${p.pio.unclaimedReads} reads / ${p.pio.unclaimedWrites} writes, ` +
        `MMIO ${p.mmio.unclaimedReads} reads / ${p.mmio.unclaimedWrites} writes`,
    );
    for (const bus of [p.pio, p.mmio]) {
      const named = bus.unclaimedAddresses();
      if (named.length === 0) continue;
      const list = named.map(
        (u) => `${hex(u.address)}${u.reads > 0 ? ` r${u.reads}` : ""}${u.writes > 0 ? ` w${u.writes}` : ""}`,
      );
      lines.push(`unclaimed ${bus === p.pio ? "ports" : "MMIO"}: ${list.join(", ")}`);
    }
  }
  const irq = p.interrupts.stats();
  lines.push(
    `interrupts: ${irq.msisDelivered} MSIs delivered, ${irq.msisBlockedByRemapping} blocked by remapping, ` +
      `${irq.msisNotInterruptAddress} to non-interrupt addresses (dropped), ${irq.ioapicMessages} from the IOAPIC`,
  );
  if (p.viommu !== null) {
    const s = p.viommu.engine.stats();
    const req = Object.entries(s.requests)
      .map(([type, byStatus]) => [type, Object.values(byStatus).reduce((a, b) => a + b, 0)] as const)
      .filter(([, n]) => n > 0)
      .map(([type, n]) => `${type} ${n}`)
      .join(", ");
    lines.push(
      `virtio-iommu: ${s.domains} domains, ${s.attachedEndpoints} attached endpoints, ${s.mappings} mappings`,
    );
    lines.push(`virtio-iommu: requests ${req || "none"}`);
    lines.push(
      `virtio-iommu: IOTLB ${s.iotlb.hits} hits, ${s.iotlb.misses} misses, ${s.iotlb.invalidations} invalidations`,
    );
    lines.push(`virtio-iommu: ${iotlbFills(s.iotlb)}`);
    lines.push(
      `virtio-iommu: faults by cause: ${nonZero(s.faultCauses)}; by reason: ${nonZero(s.faults)}; events queued ${s.events.queued}`,
    );
    for (const [ep, h] of Object.entries(s.host.endpoints)) {
      lines.push(`virtio-iommu: ${hostLine(bdf(Number(ep)), h)}; MAP answers ${nonZero(s.requests.map)}`);
    }
  }
  if (p.vtd !== null) {
    const s = p.vtd.stats();
    lines.push(`vt-d: ${s.translations} translations, IOTLB ${s.iotlbHits} hits, ${s.iotlbMisses} misses`);
    lines.push(`vt-d: ${iotlbFills(s.iotlb)}`);
    lines.push(
      `vt-d: ${s.dmaFaults} DMA faults, ${s.interruptsRemapped} interrupts remapped, ${s.interruptFaults} interrupt faults`,
    );
    for (const h of s.hosts) lines.push(`vt-d: ${hostLine(bdf(h.sourceId), h)}`);
  }
  for (const d of p.devices) {
    lines.push(
      `${d.kind} ${bdf(d.requesterId)} (${d.iommu ? "behind the IOMMU" : "bypasses the IOMMU"}): ${formatCounters(d.stats())}`,
    );
  }
  return `${lines.join("\n")}\n`;
}
