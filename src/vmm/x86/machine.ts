/**
 * The x86 micro-VMM: one KVM VM with the split irqchip (local APICs in KVM, our IOAPIC), guest
 * RAM below and above the 4 GiB hole, the platform's devices on port I/O and MMIO, and 1 to 16
 * vCPUs run by the shared loop (../kvm-machine.ts, ../vcpu-loop.ts, ../vcpu-threads.ts). It
 * boots a Multiboot kernel (or the built-in guest) or a Linux bzImage / PVH vmlinux.
 */

import { IOAPIC_PINS } from "../../devices/ioapic.ts";
import type { SerialSink, SerialSource } from "../../devices/uart16550.ts";
import { GuestMemory } from "../../engine/guest-memory.ts";
import type { Tracer } from "../../engine/trace.ts";
import { KVM_CAP_SIGNAL_MSI, KVM_CAP_SPLIT_IRQCHIP } from "../../kvm/ioctls.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";
import type { MsiRoute } from "../../kvm/vm.ts";
import type { DeviceChoice } from "../device-choice.ts";
import { KvmMachine } from "../kvm-machine.ts";
import { describeStop, type RunResult, type StopReason } from "../run-result.ts";
import type { VcpuExitHandlers } from "../vcpu-loop.ts";
import { AssignedDevices } from "./assigned-devices.ts";
import { BUILTIN_PASS_STATUS } from "./builtin-guest.ts";
import { describeCpuState, enterFlatProtectedMode } from "./cpu-state.ts";
import { DeviceMsiRoutes } from "./device-msi.ts";
import { e820Map, KVM_IDENTITY_MAP_GPA, KVM_TSS_GPA, type RamLayout, ramLayout } from "./layout.ts";
import { applyLinuxBootPlan, type LinuxBootInput, planLinuxBootFor } from "./linux.ts";
import { loadMultiboot, type MultibootBoot, type MultibootModule } from "./multiboot.ts";
import { type IommuChoice, Platform } from "./platform.ts";
import { formatSummary } from "./summary.ts";

export interface MachineConfig {
  readonly cpus: number;
  readonly memorySizeBytes: number;
  readonly memoryFile?: string;
  readonly serial: SerialSink;
  readonly iommu: IommuChoice;
  readonly devices: readonly DeviceChoice[];
  readonly debugExit: { readonly iobase: number; readonly iosize: number };
  readonly tracer: Tracer;
  /** Host bytes for COM1's receive side (a SerialInput over stdin), if any; closed with the machine. */
  readonly serialInput?: SerialSource & { close?: () => void; start?: (doorbell: SharedArrayBuffer) => void };
}

export interface MachineStats {
  readonly exits: {
    readonly total: number;
    readonly portIo: number;
    readonly mmio: number;
    readonly ioapicEoi: number;
  };
  readonly msis: { readonly signalled: number; readonly refusedByLapic: number };
  /** KVM_SET_GSI_ROUTING refusals for guest-derived IOAPIC routes. */
  readonly ioapicRouteErrors: number;
  readonly interrupts: ReturnType<Platform["interrupts"]["stats"]>;
  readonly ioapic: ReturnType<Platform["ioapic"]["stats"]>;
  readonly com1: ReturnType<Platform["uart"]["stats"]>;
  readonly fwCfg: ReturnType<Platform["fwCfg"]["stats"]>;
  readonly unclaimed: {
    readonly portReads: number;
    readonly portWrites: number;
    readonly mmioReads: number;
    readonly mmioWrites: number;
  };
  readonly virtioIommu: ReturnType<NonNullable<Platform["viommu"]>["engine"]["stats"]> | null;
  readonly vtd: ReturnType<NonNullable<Platform["vtd"]>["stats"]> | null;
  readonly devices: readonly {
    readonly kind: string;
    readonly requesterId: number;
    readonly iommu: boolean;
    readonly stats: object;
  }[];
}

/** vCPUs a machine may have (APIC IDs stay below the xAPIC broadcast ID). */
export const MAX_CPUS = 16;

export class CpuCountError extends Error {
  constructor(cpus: number) {
    super(`--cpus ${cpus}: this VMM runs 1 to ${MAX_CPUS} vCPUs`);
    this.name = "CpuCountError";
  }
}

const IA32_APIC_LVT0 = 0x350;
const IA32_APIC_LVT1 = 0x360;
const APIC_MODE_EXTINT = 7 << 8;
const APIC_MODE_NMI = 4 << 8;

export class Machine extends KvmMachine {
  readonly memory: GuestMemory;
  readonly ramLayout: RamLayout;
  readonly platform: Platform;
  /** The built-in guest runs (its verdict is the exit status): set by the x86 build. */
  builtinGuest = false;
  private stopReason: StopReason | null = null;
  private readonly tracer: Tracer;
  private readonly serialInput: MachineConfig["serialInput"];

  private ioapicRoutesDirty = true;
  /** The MSI data of each pin's KVM route (-1: none), to notice remapping changes. */
  private readonly routedData = new Int32Array(IOAPIC_PINS).fill(-1);
  /** The last message each pin delivered after remapping (data -1: none yet). */
  private readonly deliveredAddress = new Float64Array(IOAPIC_PINS);
  private readonly deliveredData = new Int32Array(IOAPIC_PINS).fill(-1);
  /** Assigned devices' MSI vectors (KVM_IRQFD on GSIs above the IOAPIC's). */
  private readonly deviceMsi: DeviceMsiRoutes;
  /** Assigned devices' vectors, BAR slots and INTx watchers. */
  private readonly assigned: AssignedDevices;
  ioExits = 0;
  eoiExits = 0;
  routeErrors = 0;

  // About 90 lines, kept whole: KVM set-up in the order its API requires (irqchip before any
  // vCPU, guest RAM before the platform, MSI routes after the devices); it needs /dev/kvm, which
  // the tests here skip without, so it is not reshuffled untested.
  // biome-ignore lint/complexity/noExcessiveLinesPerFunction: KVM set-up order, see above
  constructor(config: MachineConfig) {
    if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > MAX_CPUS) {
      throw new CpuCountError(config.cpus);
    }
    super(config.memorySizeBytes, config.memoryFile);
    this.tracer = config.tracer;
    this.serialInput = config.serialInput;
    if (!this.kvm.checkExtension(KVM_CAP_SPLIT_IRQCHIP))
      throw new Error("this KVM lacks KVM_CAP_SPLIT_IRQCHIP");
    if (!this.kvm.checkExtension(KVM_CAP_SIGNAL_MSI)) throw new Error("this KVM lacks KVM_CAP_SIGNAL_MSI");
    this.vm.setSystemPages(KVM_TSS_GPA, KVM_IDENTITY_MAP_GPA);
    // KVM API: the irqchip (here: split) must exist before any vCPU.
    this.vm.enableSplitIrqchip(IOAPIC_PINS);

    this.ramLayout = ramLayout(config.memorySizeBytes);
    const regions = this.ramLayout.regions.map((r, i) => {
      this.vm.addMemory(r.gpa, r.sizeBytes, this.ram.hostAddress + BigInt(r.hostOffset));
      return {
        gpa: r.gpa,
        sizeBytes: r.sizeBytes,
        bytes: this.ram.bytes.subarray(r.hostOffset, r.hostOffset + r.sizeBytes),
        name: `ram${i}`,
      };
    });
    this.memory = new GuestMemory(regions);
    // Assigned devices' VFIO containers map guest RAM by its host address.
    const ramBase = Number(this.ram.hostAddress);
    const layoutRegions = this.ramLayout.regions;
    for (const d of config.devices) {
      if (d.kind !== "vfio") continue;
      d.device.container.bindGuestRam((gpa, sizeBytes) => {
        for (const r of layoutRegions) {
          if (gpa >= r.gpa && gpa + sizeBytes <= r.gpa + r.sizeBytes)
            return ramBase + r.hostOffset + (gpa - r.gpa);
        }
        return -1;
      });
    }

    this.platform = new Platform({
      memory: this.memory,
      ramLayout: this.ramLayout,
      cpus: config.cpus,
      serial: config.serial,
      iommu: config.iommu,
      devices: config.devices,
      debugExit: config.debugExit,
      tracer: config.tracer,
      msiTarget: this.vm,
      onDebugExit: (status) => {
        if (this.stopReason === null) this.stopReason = { kind: "debug-exit", status };
      },
      serialInput: config.serialInput,
      onPowerRequest: (request) => {
        if (this.stopReason === null) this.stopReason = { kind: "guest-power", request };
      },
      onIoapicRoutesChanged: () => {
        this.ioapicRoutesDirty = true;
      },
      // With interrupt remapping an IRTE change alters a pin's delivered message without any
      // IOAPIC write: a level pin whose message differs from its route gets re-routed before
      // the guest can EOI it.
      onIoapicMessage: (pin, message) => {
        this.deliveredAddress[pin] = message.address;
        this.deliveredData[pin] = message.data & 0x7fffffff;
        if (this.platform.ioapic.isLevelTriggered(pin) && this.routedData[pin] !== this.deliveredData[pin]) {
          this.ioapicRoutesDirty = true;
        }
      },
    });

    // Assigned devices' MSIs reach the guest through KVM_IRQFD on GSIs routed to their
    // (remapped) messages; IRTE changes recompute the routes.
    this.deviceMsi = new DeviceMsiRoutes(this.vm, IOAPIC_PINS, (now) => {
      this.ioapicRoutesDirty = true;
      if (now) this.refreshIoapicRoutes();
    });
    this.assigned = new AssignedDevices(this.platform, this.vm, this.deviceMsi, this.deviceDoorbell);
    // COM1 input starts reading now that the device thread's doorbell exists (serial-input.ts).
    this.serialInput?.start?.(this.deviceDoorbell);
    const vtd = this.platform.vtd;
    if (vtd !== null) {
      vtd.interruptRemapper.onEntriesChanged = () => {
        if (this.deviceMsi.size > 0) this.ioapicRoutesDirty = true;
      };
    }

    for (let id = 0; id < config.cpus; id++) {
      const vcpu = this.vm.createVcpu(id);
      vcpu.setupCpuid((entries) =>
        entries.map((e) => {
          // Leaf 1: EBX[31:24] initial APIC ID, ECX[31] hypervisor present; leaves 0xB and
          // 0x1F: EDX = x2APIC ID. (Under the nested kvm-pvm host the guest was observed to
          // see the host's CPUID regardless.)
          if (e.fn === 1)
            return { ...e, ebx: ((e.ebx & 0x00ffffff) | (id << 24)) >>> 0, ecx: (e.ecx | (1 << 31)) >>> 0 };
          if (e.fn === 0xb || e.fn === 0x1f) return { ...e, edx: id };
          return e;
        }),
      );
      // As the PC firmware leaves it: LINT0 ExtINT, LINT1 NMI.
      vcpu.editLapic((regs) => {
        regs.setUint32(IA32_APIC_LVT0, APIC_MODE_EXTINT, true);
        regs.setUint32(IA32_APIC_LVT1, APIC_MODE_NMI, true);
      });
      this.vcpus.push(vcpu);
    }
  }

  /** Application processors (vCPUs 1..N-1): wait for INIT/SIPI in KVM's local APIC. */
  get apVcpus(): readonly Vcpu[] {
    return this.vcpus.slice(1);
  }

  /** Loads a Multiboot kernel and points the vCPU at it. */
  bootMultiboot(image: Uint8Array, cmdline: string, modules: readonly MultibootModule[] = []): MultibootBoot {
    const boot = loadMultiboot(this.memory, image, { cmdline, modules, memoryMap: e820Map(this.ramLayout) });
    enterFlatProtectedMode(this.vcpu, this.memory, { eip: boot.entry, eax: 0x2badb002, ebx: boot.infoGpa });
    if (this.tracer.on("config")) {
      this.tracer.emit("config", "vmm", "boot-multiboot", {
        loadedBy: boot.loadedBy,
        entry: boot.entry,
        kernelStart: boot.kernelStart,
        kernelEnd: boot.kernelEnd,
        modules: boot.modules.length,
        info: boot.infoGpa,
      });
    }
    return boot;
  }

  /** Plans and applies a direct Linux boot (bzImage 64-bit protocol, or PVH for a vmlinux ELF). */
  bootLinux(input: LinuxBootInput): { protocol: string; acpiTables: string[] } {
    const { plan, acpi } = planLinuxBootFor(this.platform, this.ramLayout.totalBytes, input);
    applyLinuxBootPlan(this.memory, this.vcpu, plan);
    if (this.tracer.on("config")) {
      this.tracer.emit("config", "vmm", "boot-linux", {
        protocol: plan.protocol,
        entry: plan.entry.regs.rip,
        rsdp: acpi.rsdpGpa,
        initrd: plan.initrdGpa ?? 0,
      });
    }
    return { protocol: plan.protocol, acpiTables: acpi.tables.map((t) => t.signature.trim()) };
  }

  /**
   * Under the split irqchip, KVM exits on EOI only for vectors it sees on the IOAPIC GSIs'
   * routes; give it one MSI route per unmasked level-triggered pin (after remapping).
   */
  private refreshIoapicRoutes(): void {
    this.ioapicRoutesDirty = false;
    const io = this.platform.ioapic;
    const remapping = this.platform.interrupts.remapping;
    const routes: MsiRoute[] = [];
    this.routedData.fill(-1);
    for (let pin = 0; pin < IOAPIC_PINS; pin++) {
      if (io.isMasked(pin) || !io.isLevelTriggered(pin)) continue;
      // With remapping, route what the pin last delivered: translating here could record
      // interrupt-remapping faults for entries the guest has not set up yet. A pin that has
      // not fired needs no route: its first delivery marks the routes dirty before any EOI.
      const address = remapping ? this.deliveredAddress[pin] : io.messageFor(pin).address;
      const data = remapping ? this.deliveredData[pin] : io.messageFor(pin).data;
      if (data < 0) continue;
      routes.push({ gsi: pin, address, data });
      this.routedData[pin] = data;
    }
    this.deviceMsi.appendRoutes(routes, this.platform.interrupts);
    try {
      this.vm.setMsiRoutes(routes);
    } catch {
      // The messages come from guest-programmed entries: KVM refusing one (EINVAL) must not
      // stop the machine. Those pins then get no EOI exits; counted in stats().
      this.routeErrors++;
    }
  }

  /** Port I/O of `count` items of `size` bytes at `data[offset]` (kvm_run or a vCPU slot). */
  private dispatchIo(
    isWrite: boolean,
    port: number,
    size: 1 | 2 | 4,
    count: number,
    data: DataView,
    offset: number,
  ): void {
    this.ioExits++;
    const pio = this.platform.pio;
    for (let i = 0, off = offset; i < count; i++, off += size) {
      if (isWrite) {
        const v =
          size === 1
            ? data.getUint8(off)
            : size === 2
              ? data.getUint16(off, true)
              : data.getUint32(off, true);
        pio.write(port, size, v);
      } else {
        const v = pio.read(port, size);
        if (size === 1) data.setUint8(off, v);
        else if (size === 2) data.setUint16(off, v, true);
        else data.setUint32(off, v >>> 0, true);
      }
    }
  }

  private dispatchMmio(isWrite: boolean, gpa: number, size: number, data: DataView, offset: number): void {
    this.mmioExits++;
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) return;
    if (isWrite) this.platform.mmioWrite(gpa, size, data, offset);
    else this.platform.mmioRead(gpa, size, data, offset);
  }

  private dispatchEoi(vector: number): void {
    this.eoiExits++;
    this.platform.ioapic.eoi(vector);
  }

  /**
   * The x86 exits for the shared loop: port I/O, MMIO and IOAPIC EOIs, KVM's IOAPIC routes
   * refreshed before a vCPU resumes, COM1 input polled, RIP for an internal-error stop.
   */
  protected exitHandlers(): VcpuExitHandlers {
    return {
      beforeRun: () => {
        this.assigned.poll();
        if (this.ioapicRoutesDirty) this.refreshIoapicRoutes();
      },
      io: (isWrite, port, size, count, data, offset) =>
        this.dispatchIo(isWrite, port, size, count, data, offset),
      mmio: (isWrite, gpa, size, data, offset) => this.dispatchMmio(isWrite, gpa, size, data, offset),
      eoi: (vector) => this.dispatchEoi(vector),
      interrupted: () => {
        this.platform.uart.poll();
        this.assigned.poll();
      },
      instructionPointer: () => this.vcpu.getRegs().rip,
      pendingStop: () => this.stopReason,
      vcpuStopped: (stop, index) => withCpuState(stop, this.vcpus[index]),
    };
  }

  summary(result: RunResult): string {
    return formatSummary(this, result);
  }

  /** The built-in guest's verdict: pass (debug-exit value 0) -> 0, anything else -> 1. */
  override outcome(result: RunResult): { status: number; verdict: string | null } {
    if (!this.builtinGuest) return super.outcome(result);
    const passed = result.stop.kind === "debug-exit" && result.status === BUILTIN_PASS_STATUS;
    return {
      status: passed ? 0 : 1,
      verdict: `built-in guest ${passed ? "passed" : `failed (${describeStop(result.stop)})`}`,
    };
  }

  /** Counters of the whole machine: KVM exits by kind, interrupts, devices, the IOMMU. */
  stats(): MachineStats {
    const p = this.platform;
    return {
      exits: {
        total: this.runExits,
        portIo: this.ioExits,
        mmio: this.mmioExits,
        ioapicEoi: this.eoiExits,
      },
      msis: { signalled: this.vm.msisSignalled, refusedByLapic: this.vm.msisBlocked },
      ioapicRouteErrors: this.routeErrors,
      interrupts: p.interrupts.stats(),
      ioapic: p.ioapic.stats(),
      com1: p.uart.stats(),
      fwCfg: p.fwCfg.stats(),
      unclaimed: {
        portReads: p.pio.unclaimedReads,
        portWrites: p.pio.unclaimedWrites,
        mmioReads: p.mmio.unclaimedReads,
        mmioWrites: p.mmio.unclaimedWrites,
      },
      virtioIommu: p.viommu?.engine.stats() ?? null,
      vtd: p.vtd?.stats() ?? null,
      devices: this.deviceStats(),
    };
  }

  override close(): void {
    this.serialInput?.close?.();
    this.assigned.close();
    super.close();
  }
}

/** A shutdown names the vCPU that took it and its state (the vCPU is out of KVM_RUN). */
function withCpuState(stop: StopReason, vcpu: Vcpu | undefined): StopReason {
  if (stop.kind !== "triple-fault" || vcpu === undefined) return stop;
  const cpuState = describeCpuState(vcpu);
  return cpuState === "" ? stop : { kind: "triple-fault", cpuState };
}
