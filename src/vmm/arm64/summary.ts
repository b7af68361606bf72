/**
 * The arm64 machine's end-of-run summary: how the run ended, KVM exits, interrupts through the
 * ITS and wired SPIs, and what each SMMU (with its vSID -> pSID table) or the virtio-iommu and
 * the devices did.
 */
import { nonZero } from "../counters.ts";
import { describeStop, type RunResult } from "../run-result.ts";
import { SMMU_GPAS } from "./layout.ts";
import type { Arm64Machine } from "./machine.ts";

export function formatArm64Summary(machine: Arm64Machine, result: RunResult): string {
  const p = machine.platform;
  const lines = ["--- viommu run summary (arm64) ---"];
  lines.push(`stop: ${describeStop(result.stop)}; exit status ${result.status}; ${result.wallMs} ms`);
  const cpus = machine.vcpus.length;
  lines.push(`kvm: ${cpus} vCPU${cpus > 1 ? "s" : ""}, ${result.exits} exits (MMIO ${machine.mmioExits})`);
  const irq = p.interrupts.stats();
  lines.push(
    `interrupts: ${irq.msisDelivered} MSIs delivered through the ITS, ${irq.msisUnmapped} unmapped in the ITS, ` +
      `${irq.msisRejected} to no ITS, ${irq.msisBlockedByIommu} blocked by the IOMMU; ${irq.spiRaises} SPI raises`,
  );
  lines.push(`pl011: ${p.uart.stats().bytesOut} bytes out`);
  if (p.mmio.unclaimedReads + p.mmio.unclaimedWrites > 0) {
    lines.push(`unclaimed MMIO: ${p.mmio.unclaimedReads} reads, ${p.mmio.unclaimedWrites} writes`);
  }
  p.smmus.forEach((smmu, i) => {
    const s = smmu.stats();
    const name = `smmuv3[${i}] @0x${SMMU_GPAS[i]!.toString(16)}`;
    lines.push(
      `${name}: ${s.translations} translations; IOTLB ${s.iotlb.hits} hits, ${s.iotlb.misses} misses; ` +
        `${s.syncs} CMD_SYNCs, ${s.commandErrors} command errors`,
    );
    lines.push(`${name}: commands ${nonZero(s.commands)}`);
    lines.push(
      `${name}: faults ${nonZero(s.faults)}; events written ${s.eventQueue.written}; ` +
        `bad register accesses ${s.badRegisterAccesses}, ignored writes ${s.ignoredRegisterWrites}, ` +
        `ownership violations ${s.ownershipViolations}`,
    );
    const streams = p.smmuStreams
      .filter((st) => st.instance === i)
      .map((st) => `vSID 0x${st.vSid.toString(16)} -> pSID 0x${st.pSid.toString(16)}`);
    lines.push(`${name}: streams ${streams.length > 0 ? streams.join(", ") : "none"}`);
  });
  if (p.viommu !== null) {
    const s = p.viommu.engine.stats();
    lines.push(
      `virtio-iommu: ${s.domains} domains, ${s.attachedEndpoints} attached endpoints, ${s.mappings} mappings`,
    );
    lines.push(`virtio-iommu: faults by reason: ${nonZero(s.faults)}; events queued ${s.events.queued}`);
  }
  for (const d of p.devices) {
    const bdf = `00:${((d.requesterId >> 3) & 31).toString(16).padStart(2, "0")}.${d.requesterId & 7}`;
    lines.push(
      `${d.kind} ${bdf} (${d.iommu ? "behind the IOMMU" : "bypasses the IOMMU"}): ${JSON.stringify(d.stats())}`,
    );
  }
  return `${lines.join("\n")}\n`;
}
