/**
 * What the x86 and the arm64 machine share: /dev/kvm, the VM, guest RAM, the vCPUs and the run
 * over them (vcpu-loop.ts: one vCPU on this thread, more on threads), MMIO exit counting, the
 * devices' counters and the release of it all. An architecture adds its set-up (in its own
 * folder), its exit handlers, its summary and its stats.
 */
import { type HostMapping, mapGuestRam } from "../kvm/guest-ram.ts";
import { Kvm } from "../kvm/system.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import { Vm } from "../kvm/vm.ts";
import { type PlacedDevice, placedDeviceStats } from "./device-choice.ts";
import { type RunResult, statusFor } from "./run-result.ts";
import { runVcpus, type VcpuExitHandlers } from "./vcpu-loop.ts";
import type { VmmMachine } from "./vmm-machine.ts";

/** What the shared part needs of an architecture's platform (its devices without KVM). */
export interface MachinePlatform {
  readonly devices: readonly PlacedDevice[];
  readonly uart: { flush(): void };
  close(): void;
}

export abstract class KvmMachine implements VmmMachine {
  readonly kvm: Kvm;
  readonly vm: Vm;
  readonly ram: HostMapping;
  /** vCPU 0 boots; the others wait for the guest to start them (INIT/SIPI, PSCI CPU_ON). */
  readonly vcpus: Vcpu[] = [];
  readonly bootNotes: string[] = [];
  abstract readonly platform: MachinePlatform;
  mmioExits = 0;
  /** KVM_RUN returns of the last run, over all vCPUs. */
  runExits = 0;
  /**
   * What wakes the device thread with --cpus > 1 (vcpu-threads.ts): the vCPU threads' requests,
   * and the INTx watchers of assigned devices (eventfd-watch.ts), so an INTx is raised at once.
   */
  readonly deviceDoorbell = new SharedArrayBuffer(4);

  /** Opens /dev/kvm, makes the VM and maps (not yet registers) guest RAM. */
  protected constructor(memorySizeBytes: number, memoryFile?: string) {
    this.kvm = Kvm.open();
    this.vm = new Vm(this.kvm);
    this.ram = mapGuestRam(memorySizeBytes, memoryFile);
  }

  /** The bootstrap processor (vCPU 0). */
  get vcpu(): Vcpu {
    const v = this.vcpus[0];
    if (v === undefined) throw new Error("the machine has no vCPU yet");
    return v;
  }

  /** The architecture's handlers for the exits that need the VMM (vcpu-loop.ts). */
  protected abstract exitHandlers(): VcpuExitHandlers;

  abstract summary(result: RunResult): string;

  abstract stats(): object;

  run(timeoutSeconds = 0): RunResult {
    let r: ReturnType<typeof runVcpus>;
    try {
      r = runVcpus(this, this.exitHandlers(), timeoutSeconds);
    } finally {
      this.platform.uart.flush();
    }
    this.runExits = r.exits;
    return { stop: r.stop, status: statusFor(r.stop), exits: r.exits, wallMs: r.wallMs };
  }

  outcome(result: RunResult): { status: number; verdict: string | null } {
    return { status: result.status, verdict: null };
  }

  protected deviceStats() {
    return placedDeviceStats(this.platform.devices);
  }

  close(): void {
    this.platform.close();
    for (const v of this.vcpus) v.close();
    this.vm.close();
    this.kvm.close();
    this.ram.unmap();
  }
}
