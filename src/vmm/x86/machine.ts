/**
 * The micro-VMM: one KVM VM with the split irqchip (local APICs in KVM, our IOAPIC), guest RAM
 * from mmap, the platform's devices on port I/O and MMIO, and a single vCPU run loop.
 *
 * One vCPU only: KVM_RUN blocks the JavaScript thread, so more vCPUs would need worker threads
 * with device state shared across them; `cpus > 1` is refused with a clear message.
 */

import { IOAPIC_PINS } from "../../devices/ioapic.ts";
import type { SerialSink, SerialSource } from "../../devices/uart16550.ts";
import { GuestMemory } from "../../engine/guest-memory.ts";
import type { Tracer } from "../../engine/trace.ts";
import { type HostMapping, mapGuestRam } from "../../kvm/guest-ram.ts";
import { KVM_CAP_SIGNAL_MSI, KVM_CAP_SPLIT_IRQCHIP } from "../../kvm/ioctls.ts";
import { SIGINT, SIGTERM, SignalLatch } from "../../kvm/signal-latch.ts";
import { Kvm } from "../../kvm/system.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";
import { type MsiRoute, Vm } from "../../kvm/vm.ts";
import { runOneVcpu } from "../vcpu-loop.ts";
import { REQUEST, SLOT, SLOT_STATE, STOP } from "../vcpu-slot.ts";
import { VcpuThreads } from "../vcpu-threads.ts";
import { AssignedDevices } from "./assigned-devices.ts";
import { describeCpuState, enterFlatProtectedMode } from "./cpu-state.ts";
import { DeviceMsiRoutes } from "./device-msi.ts";
import { e820Map, KVM_IDENTITY_MAP_GPA, KVM_TSS_GPA, type RamLayout, ramLayout } from "./layout.ts";
import { applyLinuxBootPlan, type LinuxBootInput, planLinuxBootFor } from "./linux.ts";
import { loadMultiboot, type MultibootBoot, type MultibootModule } from "./multiboot.ts";
import { type DeviceChoice, type IommuChoice, Platform } from "./platform.ts";

export interface MachineConfig {
  readonly cpus: number;
  readonly memorySizeBytes: number;
  readonly memoryFile?: string;
  readonly serial: SerialSink;
  readonly iommu: IommuChoice;
  readonly devices: readonly DeviceChoice[];
  readonly debugExit: { readonly iobase: number; readonly iosize: number };
  readonly tracer: Tracer;
  /** Host bytes for COM1's receive side (a SerialInput over stdin), if any. */
  readonly serialInput?: SerialSource;
}

export type StopReason =
  | { readonly kind: "debug-exit"; readonly status: number }
  | { readonly kind: "triple-fault"; readonly cpuState?: string }
  | { readonly kind: "system-event"; readonly type: number }
  | { readonly kind: "internal-error"; readonly suberror: number; readonly rip: number }
  | { readonly kind: "fail-entry"; readonly hardwareReason: number }
  | { readonly kind: "timeout"; readonly seconds: number }
  | { readonly kind: "interrupted"; readonly signal: number }
  | { readonly kind: "hlt" }
  | { readonly kind: "unknown-exit"; readonly reason: number }
  | { readonly kind: "device-error"; readonly message: string }
  | { readonly kind: "guest-power"; readonly request: "poweroff" | "reset" };

export interface RunResult {
  readonly stop: StopReason;
  /** Process exit status: the debug-exit status, 0 for a guest-requested reset or shutdown, 2 for a crash, 124 on timeout, 128 + signal on SIGINT/SIGTERM. */
  readonly status: number;
  readonly exits: number;
  readonly wallMs: number;
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

/** Doorbell polls before the device thread sleeps (see VcpuThreads). */
const DOORBELL_SPINS = 20_000;

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

export class Machine {
  readonly kvm: Kvm;
  readonly vm: Vm;
  readonly ram: HostMapping;
  readonly memory: GuestMemory;
  readonly ramLayout: RamLayout;
  readonly platform: Platform;
  /** The bootstrap processor (vCPU 0). */
  readonly vcpu: Vcpu;
  /** Application processors (vCPUs 1..N-1): wait for INIT/SIPI in KVM's local APIC. */
  readonly apVcpus: readonly Vcpu[];
  private stopReason: StopReason | null = null;
  private readonly tracer: Tracer;

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
  mmioExits = 0;
  eoiExits = 0;
  routeErrors = 0;
  /** KVM_RUN returns counted by vCPU threads (--cpus > 1). */
  threadedExits = 0;

  // About 90 lines, kept whole: KVM set-up in the order its API requires (irqchip before any
  // vCPU, guest RAM before the platform, MSI routes after the devices); it needs /dev/kvm, which
  // the tests here skip without, so it is not reshuffled untested.
  // biome-ignore lint/complexity/noExcessiveLinesPerFunction: KVM set-up order, see above
  constructor(config: MachineConfig) {
    if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > MAX_CPUS) {
      throw new CpuCountError(config.cpus);
    }
    this.tracer = config.tracer;

    this.kvm = Kvm.open();
    if (!this.kvm.checkExtension(KVM_CAP_SPLIT_IRQCHIP))
      throw new Error("this KVM lacks KVM_CAP_SPLIT_IRQCHIP");
    if (!this.kvm.checkExtension(KVM_CAP_SIGNAL_MSI)) throw new Error("this KVM lacks KVM_CAP_SIGNAL_MSI");
    this.vm = new Vm(this.kvm);
    this.vm.setSystemPages(KVM_TSS_GPA, KVM_IDENTITY_MAP_GPA);
    // KVM API: the irqchip (here: split) must exist before any vCPU.
    this.vm.enableSplitIrqchip(IOAPIC_PINS);

    this.ramLayout = ramLayout(config.memorySizeBytes);
    this.ram = mapGuestRam(config.memorySizeBytes, config.memoryFile);
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
    this.assigned = new AssignedDevices(this.platform, this.vm, this.deviceMsi);
    const vtd = this.platform.vtd;
    if (vtd !== null) {
      vtd.interruptRemapper.onEntriesChanged = () => {
        if (this.deviceMsi.size > 0) this.ioapicRoutesDirty = true;
      };
    }

    const vcpus: Vcpu[] = [];
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
      vcpus.push(vcpu);
    }
    this.vcpu = vcpus[0];
    this.apVcpus = vcpus.slice(1);
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

  /** Runs until the guest stops the machine, or `timeoutSeconds` pass (0: no limit). */
  run(timeoutSeconds = 0): RunResult {
    if (this.apVcpus.length > 0) return this.runThreaded(timeoutSeconds);
    const vcpu = this.vcpu;
    const platform = this.platform;
    let result: { stop: StopReason; wallMs: number };
    try {
      // The loop shared with the arm64 machine (vcpu-loop.ts); x86 adds port I/O, IOAPIC EOIs,
      // its IOAPIC route refresh and COM1 input polling.
      result = runOneVcpu(
        vcpu,
        {
          beforeRun: () => {
            this.assigned.poll();
            if (this.ioapicRoutesDirty) this.refreshIoapicRoutes();
          },
          io: (isWrite, port, size, count, data, offset) =>
            this.dispatchIo(isWrite, port, size, count, data, offset),
          mmio: (isWrite, gpa, size, data, offset) => this.dispatchMmio(isWrite, gpa, size, data, offset),
          eoi: (vector) => this.dispatchEoi(vector),
          interrupted: () => {
            platform.uart.poll();
            this.assigned.poll();
          },
          instructionPointer: () => vcpu.getRegs().rip,
          pendingStop: () => this.stopReason,
        },
        timeoutSeconds,
      );
    } finally {
      platform.uart.flush();
    }
    const stop = withCpuState(result.stop, vcpu);
    this.stopReason = stop;
    return { stop, status: statusFor(stop), exits: vcpu.exits, wallMs: result.wallMs };
  }

  /**
   * --cpus > 1: every vCPU runs KVM_RUN on its own thread; this thread services their device
   * accesses one at a time (src/vmm/vcpu-threads.ts) until the guest stops the machine.
   */
  private runThreaded(timeoutSeconds: number): RunResult {
    const t0 = Date.now();
    const deadline = timeoutSeconds > 0 ? t0 + timeoutSeconds * 1000 : Number.POSITIVE_INFINITY;
    const interrupt = new SignalLatch(SIGINT);
    const terminate = new SignalLatch(SIGTERM);
    interrupt.arm();
    terminate.arm();
    const all = [this.vcpu, ...this.apVcpus];
    const threads = new VcpuThreads(
      all.map((v) => ({ id: v.id, fd: v.fd })),
      this.kvm.fd,
      this.kvm.vcpuMmapSizeBytes,
    );
    try {
      threads.waitReady();
      while (this.stopReason === null) {
        if (this.ioapicRoutesDirty) this.refreshIoapicRoutes();
        const seen = Atomics.load(threads.doorbell, 0);
        let serviced = false;
        for (const slot of threads.slots) {
          const state = Atomics.load(slot.ctl, SLOT.state);
          if (state === SLOT_STATE.stopped) {
            this.stopReason ??= withCpuState(stopFromSlot(slot.ctl), all[threads.slots.indexOf(slot)]);
            continue;
          }
          if (state !== SLOT_STATE.request) continue;
          serviced = true;
          const c = slot.ctl;
          try {
            const kind = c[SLOT.kind];
            if (kind === REQUEST.io) {
              this.dispatchIo(
                c[SLOT.isWrite] === 1,
                c[SLOT.addrLo],
                c[SLOT.sizeBytes] as 1 | 2 | 4,
                c[SLOT.count],
                slot.data,
                0,
              );
            } else if (kind === REQUEST.mmio) {
              const gpa = (c[SLOT.addrHi] >>> 0) * 0x1_0000_0000 + (c[SLOT.addrLo] >>> 0);
              this.dispatchMmio(c[SLOT.isWrite] === 1, gpa, c[SLOT.sizeBytes], slot.data, 0);
            } else if (kind === REQUEST.eoi) {
              this.dispatchEoi(c[SLOT.detail]);
            }
          } catch (e) {
            this.stopReason = { kind: "device-error", message: (e as Error).message };
          }
          // Routes first: the vCPU resumes on the reply and may EOI the interrupt this access
          // raised at once; KVM must already know the vector is level-triggered.
          if (this.ioapicRoutesDirty) this.refreshIoapicRoutes();
          threads.reply(slot);
        }
        this.platform.uart.poll();
        this.assigned.poll();
        if (this.stopReason !== null) break;
        if (interrupt.fired()) this.stopReason = { kind: "interrupted", signal: SIGINT };
        else if (terminate.fired()) this.stopReason = { kind: "interrupted", signal: SIGTERM };
        else if (Date.now() >= deadline) this.stopReason = { kind: "timeout", seconds: timeoutSeconds };
        else if (!serviced) {
          // Spin a little for the next request before sleeping on the doorbell futex.
          let spins = 0;
          while (spins < DOORBELL_SPINS && Atomics.load(threads.doorbell, 0) === seen) spins++;
          if (spins === DOORBELL_SPINS) Atomics.wait(threads.doorbell, 0, seen, 50);
        }
      }
    } finally {
      threads.stop();
      interrupt.disarm();
      terminate.disarm();
      this.platform.uart.flush();
    }
    const stop: StopReason = this.stopReason ?? { kind: "interrupted", signal: SIGINT };
    this.threadedExits = threads.totalExits();
    return { stop, status: statusFor(stop), exits: this.threadedExits, wallMs: Date.now() - t0 };
  }

  /** Counters of the whole machine: KVM exits by kind, interrupts, devices, the IOMMU. */
  stats(): MachineStats {
    const p = this.platform;
    return {
      exits: {
        total: this.vcpu.exits + this.threadedExits,
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
      devices: p.devices.map((d) => ({
        kind: d.kind,
        requesterId: d.requesterId,
        iommu: d.iommu,
        stats: d.stats(),
      })),
    };
  }

  /** Releases the VM, its fds and guest RAM: nothing of the machine may be used afterwards. */
  close(): void {
    this.assigned.close();
    this.platform.close();
    for (const ap of this.apVcpus) ap.close();
    this.vcpu.close();
    this.vm.close();
    this.kvm.close();
    this.ram.unmap();
  }
}

/** A shutdown names the vCPU that took it and its state (the worker thread has stopped). */
function withCpuState(stop: StopReason, vcpu: Vcpu | undefined): StopReason {
  if (stop.kind !== "triple-fault" || vcpu === undefined) return stop;
  const cpuState = describeCpuState(vcpu);
  return cpuState === "" ? stop : { kind: "triple-fault", cpuState };
}

function stopFromSlot(ctl: Int32Array): StopReason {
  const detail = ctl[SLOT.detail];
  switch (ctl[SLOT.stopCode]) {
    case STOP.tripleFault:
      return { kind: "triple-fault" };
    case STOP.systemEvent:
      return { kind: "system-event", type: detail };
    case STOP.internalError:
      return { kind: "internal-error", suberror: detail, rip: -1 };
    case STOP.failEntry:
      return { kind: "fail-entry", hardwareReason: detail };
    case STOP.unknownExit:
      return { kind: "unknown-exit", reason: detail };
    default:
      return { kind: "device-error", message: "a vCPU thread stopped unexpectedly" };
  }
}

export function statusFor(stop: StopReason): number {
  switch (stop.kind) {
    case "debug-exit":
      return stop.status;
    case "system-event":
      return stop.type === 3 ? 2 : 0;
    case "hlt":
    case "guest-power":
      return 0;
    case "timeout":
      return 124;
    case "interrupted":
      return 128 + stop.signal;
    default:
      return 2;
  }
}

export function describeStop(stop: StopReason): string {
  switch (stop.kind) {
    case "debug-exit":
      return `guest wrote isa-debug-exit: status ${stop.status}`;
    case "triple-fault":
      return `guest triple-faulted (KVM_EXIT_SHUTDOWN)${stop.cpuState ? `; ${stop.cpuState}` : ""}`;
    case "system-event":
      return `guest system event ${stop.type === 1 ? "shutdown" : stop.type === 2 ? "reset" : stop.type === 3 ? "crash" : stop.type}`;
    case "internal-error":
      return `KVM internal error, suberror ${stop.suberror}${stop.suberror === 1 ? " (instruction emulation failed)" : ""}${stop.rip >= 0 ? ` at rip 0x${stop.rip.toString(16)}` : ""}`;
    case "fail-entry":
      return `VM entry failed, hardware reason 0x${stop.hardwareReason.toString(16)}`;
    case "timeout":
      return `timed out after ${stop.seconds} s`;
    case "interrupted":
      return `interrupted (${stop.signal === SIGTERM ? "SIGTERM" : "SIGINT"})`;
    case "hlt":
      return "guest halted";
    case "unknown-exit":
      return `unhandled KVM exit reason ${stop.reason}`;
    case "device-error":
      return `a device model failed: ${stop.message}`;
    case "guest-power":
      return stop.request === "poweroff"
        ? "guest powered off (ACPI S5)"
        : "guest reset (ACPI reset register)";
  }
}
