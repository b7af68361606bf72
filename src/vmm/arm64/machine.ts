/**
 * The arm64 micro-VMM: one KVM VM on an arm64 host with vCPUs from KVM_ARM_VCPU_INIT (PSCI 0.2),
 * the in-kernel GICv3 and ITS, RAM at 1 GiB, the platform's devices on MMIO (Arm64Platform) and
 * a Linux Image booted with a device tree (booting.rst): x0 = DTB, PC = Image.
 *
 * 1 to 16 vCPUs, run by the loop the x86 machine uses too (../kvm-machine.ts, ../vcpu-loop.ts:
 * one vCPU on this thread, more each on a thread of its own). vCPU 0 boots; the others start
 * powered off (KVM_ARM_VCPU_POWER_OFF) and the guest starts them with PSCI CPU_ON, which KVM
 * handles (the DT's cpu nodes say enable-method "psci"). arm64 gives the loop MMIO exits only; a
 * PSCI SYSTEM_OFF / SYSTEM_RESET arrives as KVM_EXIT_SYSTEM_EVENT.
 */
import { type Arm64BootPlan, parseArm64Image, planArm64Boot } from "../../boot/arm64-image.ts";
import { FdtError } from "../../boot/fdt.ts";
import type { SerialSink } from "../../devices/uart16550.ts";
import { GuestMemory } from "../../engine/guest-memory.ts";
import type { Tracer } from "../../engine/trace.ts";
import { initVcpu, preferredTarget, readMpidr, setBootRegisters } from "../../kvm/arm64/cpu.ts";
import { VgicV3 } from "../../kvm/arm64/vgic.ts";
import type { AccessSize } from "../../platform/bus.ts";
import { SMMU_FRAME_BYTES } from "../../smmuv3/regs.ts";
import type { DeviceChoice } from "../device-choice.ts";
import { KvmMachine } from "../kvm-machine.ts";
import type { RunResult } from "../run-result.ts";
import type { VcpuExitHandlers } from "../vcpu-loop.ts";
import { buildDeviceTree, type DtIommu } from "./device-tree.ts";
import {
  GIC_DIST_GPA,
  GIC_ITS_GPA,
  GIC_REDIST_BYTES_PER_CPU,
  GIC_REDIST_GPA,
  GIC_REDIST_REGION_BYTES,
  MAX_RAM_BYTES,
  RAM_GPA,
  SMMU_GPAS,
  SPI_COUNT,
} from "./layout.ts";
import { ARM64_VIRTIO_IOMMU_SLOT, type Arm64IommuChoice, Arm64Platform } from "./platform.ts";
import { formatArm64Summary } from "./summary.ts";

/**
 * vCPUs the arm64 machine runs: as `viommu run --cpus` allows; the redistributor region (one
 * 128 KiB RD_base + SGI_base pair per vCPU, GICv3 12.10) has room for 123.
 */
export const ARM64_MAX_CPUS = Math.min(16, Math.floor(GIC_REDIST_REGION_BYTES / GIC_REDIST_BYTES_PER_CPU));

export interface Arm64MachineConfig {
  readonly cpus: number;
  readonly memorySizeBytes: number;
  readonly memoryFile?: string;
  readonly serial: SerialSink;
  readonly iommu: Arm64IommuChoice;
  readonly devices: readonly DeviceChoice[];
  readonly tracer: Tracer;
}

export interface Arm64LinuxBoot {
  readonly kernel: Uint8Array;
  readonly initrd?: Uint8Array;
  readonly cmdline: string;
}

/** The device tree for the chosen IOMMU: the SMMU instances, or the virtio-iommu's PCI slot. */
export function dtIommuFor(choice: Arm64IommuChoice): DtIommu {
  if (choice.kind === "smmuv3") return { kind: "smmuv3", instances: choice.instances ?? 1 };
  if (choice.kind === "virtio") return { kind: "virtio", slot: ARM64_VIRTIO_IOMMU_SLOT };
  return { kind: "none" };
}

/** The longest kernel command line arm64 Linux keeps whole (COMMAND_LINE_SIZE less the NUL). */
export const ARM64_COMMAND_LINE_MAX_BYTES = 2047;

/**
 * The MPIDR_EL1 KVM gives vCPU `id` at reset (arch/arm64/kvm/sys_regs.c reset_mpidr: Aff0 = id
 * bits 3:0, so that GICv3 SGIs reach each CPU of a cluster of 16 directly; Aff1 = bits 11:4,
 * Aff2 = bits 19:12; bit 31 RES1): for laying out before KVM. bootLinux reads the real ones.
 */
export function kvmResetMpidr(id: number): bigint {
  return BigInt(((id & 0xf) | (((id >> 4) & 0xff) << 8) | (((id >> 12) & 0xff) << 16)) >>> 0) | 0x8000_0000n;
}

/** A device tree or boot layout that cannot be built: one line for the user. */
export class Arm64BootLayoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Arm64BootLayoutError";
  }
}

/**
 * Where the Image, initrd and DTB go, and the DTB itself. Pure: `viommu run` calls it before it
 * opens /dev/kvm (with kvmResetMpidr's), so a layout or device-tree error is one line and status 2
 * with no VM made; `bootLinux` calls it again with the MPIDRs KVM reports.
 */
export function layoutArm64Linux(
  input: Arm64LinuxBoot,
  memorySizeBytes: number,
  iommu: DtIommu,
  mpidrs: readonly bigint[],
): { plan: Arm64BootPlan; dtb: Uint8Array } {
  const header = parseArm64Image(input.kernel);
  // arm64 COMMAND_LINE_SIZE (arch/arm64/include/uapi/asm/setup.h): Linux copies /chosen/bootargs
  // into a buffer of that size and silently cuts the rest.
  const cmdlineBytes = new TextEncoder().encode(input.cmdline).length;
  if (cmdlineBytes > ARM64_COMMAND_LINE_MAX_BYTES) {
    throw new Arm64BootLayoutError(
      `kernel command line of ${cmdlineBytes} bytes exceeds arm64 Linux's ${ARM64_COMMAND_LINE_MAX_BYTES} (COMMAND_LINE_SIZE 2048 with its NUL)`,
    );
  }
  const build = (initrd: { gpa: number; sizeBytes: number } | null) => {
    try {
      return buildDeviceTree({
        mpidrs,
        ramGpa: RAM_GPA,
        ramBytes: memorySizeBytes,
        cmdline: input.cmdline,
        initrd,
        iommu,
      });
    } catch (e) {
      if (e instanceof FdtError) throw new Arm64BootLayoutError(`device tree: ${e.message}`);
      throw e;
    }
  };
  // The DTB's size does not depend on where the initrd goes: lay it out once to size it.
  const initrdBytes = input.initrd?.length ?? 0;
  const probe = build(initrdBytes > 0 ? { gpa: 0, sizeBytes: initrdBytes } : null);
  const plan = planArm64Boot(
    header,
    { baseGpa: RAM_GPA, sizeBytes: memorySizeBytes },
    initrdBytes,
    probe.length,
  );
  const dtb = build(plan.initrdGpa !== null ? { gpa: plan.initrdGpa, sizeBytes: initrdBytes } : null);
  return { plan, dtb };
}

export class Arm64Machine extends KvmMachine {
  readonly memory: GuestMemory;
  readonly platform: Arm64Platform;
  readonly gic: VgicV3;
  private readonly tracer: Tracer;
  private readonly memorySizeBytes: number;
  private readonly iommu: DtIommu;

  constructor(config: Arm64MachineConfig) {
    if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > ARM64_MAX_CPUS)
      throw new Error(`--cpus ${config.cpus}: the arm64 machine runs 1 to ${ARM64_MAX_CPUS} vCPUs`);
    if (config.memorySizeBytes > MAX_RAM_BYTES)
      throw new Error("guest RAM above 255 GiB does not fit the arm64 map");
    super(config.memorySizeBytes, config.memoryFile);
    this.tracer = config.tracer;
    this.memorySizeBytes = config.memorySizeBytes;
    this.iommu = dtIommuFor(config.iommu);
    this.vm.addMemory(RAM_GPA, config.memorySizeBytes, this.ram.hostAddress);
    this.memory = new GuestMemory([
      { gpa: RAM_GPA, sizeBytes: config.memorySizeBytes, bytes: this.ram.bytes, name: "ram" },
    ]);
    // vCPUs before the GIC (its redistributors follow the vCPUs), and all initialised: vCPU 0
    // runs, the others wait powered off for the guest's PSCI CPU_ON (api.rst 4.82).
    const target = preferredTarget(this.vm.fd);
    for (let id = 0; id < config.cpus; id++) {
      const vcpu = this.vm.createVcpu(id);
      initVcpu(vcpu.fd, target, id === 0);
      this.vcpus.push(vcpu);
    }
    this.gic = new VgicV3(this.vm.fd, {
      distributorGpa: GIC_DIST_GPA,
      redistributorGpa: GIC_REDIST_GPA,
      itsGpa: GIC_ITS_GPA,
      irqs: SPI_COUNT + 32,
    });
    this.platform = new Arm64Platform({
      memory: this.memory,
      serial: config.serial,
      iommu: config.iommu,
      devices: config.devices,
      tracer: config.tracer,
      irq: this.gic,
    });
  }

  /** Loads the Image, the initrd and the device tree, and points the boot vCPU at the Image. */
  bootLinux(input: Arm64LinuxBoot): Arm64BootPlan {
    const mpidrs = this.vcpus.map((v) => readMpidr(v.fd));
    const { plan, dtb } = layoutArm64Linux(input, this.memorySizeBytes, this.iommu, mpidrs);
    this.memory.write(plan.kernelGpa, input.kernel);
    if (plan.initrdGpa !== null && input.initrd) this.memory.write(plan.initrdGpa, input.initrd);
    this.memory.write(plan.dtbGpa, dtb);
    setBootRegisters(this.vcpu.fd, plan.kernelGpa, plan.dtbGpa);
    if (this.tracer.on("config")) {
      this.tracer.emit("config", "vmm", "boot-arm64", {
        kernel: plan.kernelGpa,
        initrd: plan.initrdGpa ?? 0,
        dtb: plan.dtbGpa,
        dtbBytes: dtb.length,
      });
    }
    return plan;
  }

  private dispatchMmio(isWrite: boolean, gpa: number, size: number, data: DataView, offset: number): void {
    this.mmioExits++;
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) return;
    // 64-bit SMMU registers carry values above 2^53 (STRTAB_BASE.RA is bit 62): all 64 bits.
    if (size === 8) {
      const smmus = this.platform.smmus;
      for (let i = 0; i < smmus.length; i++) {
        const base = SMMU_GPAS[i]!;
        if (gpa >= base && gpa + 8 <= base + SMMU_FRAME_BYTES) {
          if (isWrite) smmus[i]!.writeWide(gpa - base, data.getBigUint64(offset, true));
          else data.setBigUint64(offset, smmus[i]!.readWide(gpa - base), true);
          return;
        }
      }
    }
    const mmio = this.platform.mmio;
    if (isWrite) {
      if (size === 8) {
        const lo = data.getUint32(offset, true);
        const hi = data.getUint32(offset + 4, true);
        if (hi < 0x20_0000) mmio.write(gpa, 8, hi * 0x1_0000_0000 + lo);
        else {
          mmio.write(gpa, 4, lo);
          mmio.write(gpa + 4, 4, hi);
        }
        return;
      }
      const v =
        size === 1
          ? data.getUint8(offset)
          : size === 2
            ? data.getUint16(offset, true)
            : data.getUint32(offset, true);
      mmio.write(gpa, size as AccessSize, v);
      return;
    }
    const v = mmio.read(gpa, size as AccessSize);
    if (size === 8) {
      data.setUint32(offset, (v % 0x1_0000_0000) >>> 0, true);
      data.setUint32(offset + 4, Math.floor(v / 0x1_0000_0000) >>> 0, true);
    } else if (size === 1) data.setUint8(offset, v);
    else if (size === 2) data.setUint16(offset, v, true);
    else data.setUint32(offset, v >>> 0, true);
  }

  /**
   * The arm64 exits for the shared loop: MMIO only (no port I/O, no IOAPIC EOIs); a PSCI
   * SYSTEM_OFF / SYSTEM_RESET arrives as KVM_EXIT_SYSTEM_EVENT, which the loop stops on.
   */
  protected exitHandlers(): VcpuExitHandlers {
    return {
      mmio: (isWrite, gpa, size, data, offset) => this.dispatchMmio(isWrite, gpa, size, data, offset),
      instructionPointer: () => -1,
      pendingStop: () => null,
    };
  }

  summary(result: RunResult): string {
    return formatArm64Summary(this, result);
  }

  stats(): object {
    const p = this.platform;
    return {
      exits: { total: this.runExits, mmio: this.mmioExits },
      gic: {
        msisDelivered: this.gic.msisDelivered,
        msisUnmapped: this.gic.msisUnmapped,
        msisRejected: this.gic.msisRejected,
      },
      interrupts: p.interrupts.stats(),
      pl011: p.uart.stats(),
      unclaimed: { mmioReads: p.mmio.unclaimedReads, mmioWrites: p.mmio.unclaimedWrites },
      smmus: p.smmus.map((s) => s.stats()),
      virtioIommu: p.viommu?.engine.stats() ?? null,
      devices: this.deviceStats(),
    };
  }
}
