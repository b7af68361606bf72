/**
 * `viommu run` on an arm64 host: a Linux Image on the arm64 machine (src/vmm/arm64/), with a
 * device tree describing the SMMUv3 or the virtio-iommu and the PCI devices behind it. Returns
 * the exit status: the guest's power-off 0, a crash 2, a bad kernel or option 2 (one line).
 */
import { readFileSync } from "node:fs";
import { Arm64ImageError, parseArm64Image } from "../boot/arm64-image.ts";
import type { SerialSink } from "../devices/uart16550.ts";
import type { Tracer } from "../engine/trace.ts";
import { KvmUnavailableError } from "../kvm/system.ts";
import { SMMU_GPAS } from "../vmm/arm64/layout.ts";
import { Arm64Machine, dtIommuFor, layoutArm64Linux, VCPU0_MPIDR } from "../vmm/arm64/machine.ts";
import type { Arm64IommuChoice } from "../vmm/arm64/platform.ts";
import { describeStop, type RunResult } from "../vmm/x86/machine.ts";
import type { DeviceChoice } from "../vmm/x86/platform.ts";
import type { RunOptions } from "./run-options.ts";

export interface Arm64RunContext {
  readonly options: RunOptions;
  readonly devices: readonly DeviceChoice[];
  readonly serial: SerialSink;
  readonly tracer: Tracer;
  readonly stderr: (text: string) => void;
}

function iommuFor(o: RunOptions): Arm64IommuChoice {
  const i = o.iommu;
  if (i.kind === "none" || i.kind === "virtio") return i;
  if (i.kind === "smmuv3") return { kind: "smmuv3", stage: i.stage, instances: i.instances };
  throw new Error(`--iommu ${i.kind} is an x86 IOMMU; on arm64 use --iommu smmuv3 or virtio`);
}

/** Validates, boots and runs; every failure before the guest starts is one line and status 2. */
export function runArm64(ctx: Arm64RunContext): number {
  const o = ctx.options;
  const cmdline = o.cmdline || "console=ttyAMA0";
  let machine: Arm64Machine;
  let kernel: Uint8Array;
  let initrd: Uint8Array | undefined;
  try {
    if (o.kernel === undefined)
      throw new Error("on arm64 --kernel (a Linux Image) is required: the built-in guest is x86 code");
    kernel = readFileSync(o.kernel);
    parseArm64Image(kernel);
    if (o.modules.length > 1) throw new Error("a Linux kernel takes one --initramfs");
    initrd = o.modules[0] !== undefined ? readFileSync(o.modules[0]) : undefined;
    // The whole layout and device tree once before KVM: their errors leave no VM behind.
    layoutArm64Linux({ kernel, initrd, cmdline }, o.memorySizeBytes, dtIommuFor(iommuFor(o)), [VCPU0_MPIDR]);
    machine = new Arm64Machine({
      cpus: o.cpus,
      memorySizeBytes: o.memorySizeBytes,
      memoryFile: o.memoryFile,
      serial: ctx.serial,
      iommu: iommuFor(o),
      devices: ctx.devices,
      tracer: ctx.tracer,
    });
  } catch (e) {
    const what = e instanceof Arm64ImageError ? `${o.kernel}: ${e.message}` : (e as Error).message;
    ctx.stderr(`viommu run: ${e instanceof KvmUnavailableError ? e.message : what}\n`);
    return 2;
  }
  let result: RunResult;
  try {
    const plan = machine.bootLinux({ kernel, initrd, cmdline });
    ctx.stderr(
      `viommu run: arm64 Linux Image at 0x${plan.kernelGpa.toString(16)}, device tree at 0x${plan.dtbGpa.toString(16)}` +
        `${plan.initrdGpa !== null ? `, initrd at 0x${plan.initrdGpa.toString(16)}` : ""}\n`,
    );
    result = machine.run(o.timeoutSeconds);
  } catch (e) {
    ctx.serial.flush();
    machine.close();
    ctx.stderr(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }
  ctx.serial.flush();
  ctx.stderr(formatArm64Summary(machine, result));
  machine.close();
  return result.status;
}

function nonZero(record: Readonly<Record<string, number>>): string {
  const parts = Object.entries(record)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`);
  return parts.length > 0 ? parts.join(", ") : "none";
}

export function formatArm64Summary(machine: Arm64Machine, result: RunResult): string {
  const p = machine.platform;
  const lines = ["--- viommu run summary (arm64) ---"];
  lines.push(`stop: ${describeStop(result.stop)}; exit status ${result.status}; ${result.wallMs} ms`);
  lines.push(`kvm: 1 vCPU, ${result.exits} exits (MMIO ${machine.mmioExits})`);
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
