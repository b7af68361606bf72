/**
 * The run loop both machines use: `runVcpus` runs one vCPU here (`runOneVcpu`) or several on
 * threads (vcpu-threads.ts), with the same exit handlers. The single-vCPU loop:
 * KVM_RUN, each exit handed to the machine's handlers, and everything that is not about the
 * architecture kept here: SIGINT/SIGTERM through latches (their JS listeners cannot run while
 * KVM_RUN blocks the event loop), the SIGALRM deadline, the stop reason of each terminal exit,
 * and a throwing device turned into a "device-error" stop instead of a VMM crash.
 *
 * An architecture supplies only what differs: port I/O and IOAPIC EOIs exist on x86 alone (on a
 * machine without the handler such an exit stops it as an unknown exit), x86 polls its UART input
 * on a signal exit and refreshes IOAPIC routes before KVM_RUN, and the instruction pointer for an
 * internal-error stop is RIP on x86 and unknown on arm64.
 */
import { alarm } from "../kvm/libc.ts";
import { SIGINT, SIGTERM, SignalLatch } from "../kvm/signal-latch.ts";
import { RUN } from "../kvm/structs.ts";
import type { VcpuExit } from "../kvm/vcpu.ts";
import type { StopReason } from "./run-result.ts";
import { runVcpuThreads, type ThreadedVcpus } from "./vcpu-threads.ts";

/** What the loop needs of a vCPU (`Vcpu`; tests give it scripted exits). */
export interface LoopVcpu {
  /** kvm_run, where MMIO and port I/O data live. */
  readonly run: DataView;
  runOnce(): VcpuExit;
}

export interface VcpuExitHandlers {
  /** Before each KVM_RUN. */
  readonly beforeRun?: () => void;
  /** An MMIO access of `sizeBytes` at `gpa`; the data is at `data[offset]` (kvm_run). */
  readonly mmio: (isWrite: boolean, gpa: number, sizeBytes: number, data: DataView, offset: number) => void;
  /** Port I/O (x86). */
  readonly io?: (
    isWrite: boolean,
    port: number,
    sizeBytes: 1 | 2 | 4,
    count: number,
    data: DataView,
    offset: number,
  ) => void;
  /** An EOI for a level-triggered IOAPIC vector (x86 split irqchip). */
  readonly eoi?: (vector: number) => void;
  /**
   * Host input to pick up (x86: COM1's): a signal interrupted KVM_RUN, before the loop checks
   * its latches and the deadline; with vCPU threads, every pass of the device thread's loop.
   */
  readonly interrupted?: () => void;
  /** The guest's instruction pointer for an internal-error stop, or -1 when unknown. */
  readonly instructionPointer: () => number;
  /** A stop a device asked for (debug-exit, guest power-off), or null; checked after each exit. */
  readonly pendingStop: () => StopReason | null;
  /**
   * A vCPU's own exit stopped the machine (vCPU `index`, now out of KVM_RUN): the machine may
   * add what it can read of that vCPU (x86: its registers at a shutdown).
   */
  readonly vcpuStopped?: (stop: StopReason, index: number) => StopReason;
}

/** What `runVcpus` needs of a machine: its vCPUs (the first boots) and /dev/kvm (for threads). */
export interface RunnableVcpus extends ThreadedVcpus {
  readonly vcpus: readonly (LoopVcpu & {
    readonly id: number;
    readonly fd: number;
    readonly exits: number;
  })[];
}

/**
 * Runs the machine's vCPUs until a stop: one on this thread (lowest latency), more each on a
 * thread of its own with the devices on this one. `exits` counts KVM_RUN returns.
 */
export function runVcpus(
  machine: RunnableVcpus,
  handlers: VcpuExitHandlers,
  timeoutSeconds: number,
): { stop: StopReason; wallMs: number; exits: number } {
  const [first, ...others] = machine.vcpus;
  if (first === undefined) throw new Error("a machine without vCPUs cannot run");
  if (others.length > 0) return runVcpuThreads(machine, handlers, timeoutSeconds);
  const before = first.exits;
  const r = runOneVcpu(first, handlers, timeoutSeconds);
  const stop = handlers.vcpuStopped?.(r.stop, 0) ?? r.stop;
  return { stop, wallMs: r.wallMs, exits: first.exits - before };
}

/**
 * Runs `vcpu` until a device or a terminal exit stops it, a signal arrives, or `timeoutSeconds`
 * pass (0: no limit). KVM_RUN errors other than EINTR/EAGAIN throw (from `Vcpu.runOnce`).
 */
export function runOneVcpu(
  vcpu: LoopVcpu,
  handlers: VcpuExitHandlers,
  timeoutSeconds: number,
): { stop: StopReason; wallMs: number } {
  const run = vcpu.run;
  const t0 = Date.now();
  const deadline = timeoutSeconds > 0 ? t0 + timeoutSeconds * 1000 : Number.POSITIVE_INFINITY;
  // A signal interrupts KVM_RUN with EINTR; SIGALRM needs a listener so it does not kill us.
  const onAlarm = () => {};
  const interrupt = new SignalLatch(SIGINT);
  const terminate = new SignalLatch(SIGTERM);
  interrupt.arm();
  terminate.arm();
  process.on("SIGALRM", onAlarm);
  if (timeoutSeconds > 0) alarm(Math.ceil(timeoutSeconds));
  let stop: StopReason | null = handlers.pendingStop();
  try {
    while (stop === null) {
      handlers.beforeRun?.();
      const exit = vcpu.runOnce();
      let exitStop: StopReason | null = null;
      try {
        switch (exit.kind) {
          case "mmio":
            handlers.mmio(exit.isWrite, exit.gpa, exit.sizeBytes, run, RUN.mmio.data);
            break;
          case "io":
            if (handlers.io)
              handlers.io(exit.isWrite, exit.port, exit.sizeBytes, exit.count, run, exit.dataOffset);
            else exitStop = { kind: "unknown-exit", reason: -1 };
            break;
          case "ioapic-eoi":
            if (handlers.eoi) handlers.eoi(exit.vector);
            else exitStop = { kind: "unknown-exit", reason: -1 };
            break;
          case "interrupted":
            handlers.interrupted?.();
            if (interrupt.fired()) exitStop = { kind: "interrupted", signal: SIGINT };
            else if (terminate.fired()) exitStop = { kind: "interrupted", signal: SIGTERM };
            else if (Date.now() >= deadline) exitStop = { kind: "timeout", seconds: timeoutSeconds };
            break;
          default:
            exitStop = terminalStop(exit, handlers);
        }
      } catch (e) {
        // A device model threw (a bug: models answer bad input architecturally). Stop the
        // machine with the device's message and a summary instead of a VMM crash.
        exitStop = { kind: "device-error", message: (e as Error).message };
      }
      stop = handlers.pendingStop() ?? exitStop;
    }
  } finally {
    if (timeoutSeconds > 0) alarm(0);
    process.off("SIGALRM", onAlarm);
    interrupt.disarm();
    terminate.disarm();
  }
  return { stop, wallMs: Date.now() - t0 };
}

/** The stop reason of an exit that ends the run. */
function terminalStop(exit: VcpuExit, handlers: VcpuExitHandlers): StopReason {
  switch (exit.kind) {
    case "shutdown":
      return { kind: "triple-fault" };
    case "system-event":
      return { kind: "system-event", type: exit.type };
    case "internal-error":
      return { kind: "internal-error", suberror: exit.suberror, rip: handlers.instructionPointer() };
    case "fail-entry":
      return { kind: "fail-entry", hardwareReason: exit.hardwareReason };
    case "hlt":
      return { kind: "hlt" };
    case "unknown":
      return { kind: "unknown-exit", reason: exit.reason };
    default:
      return { kind: "unknown-exit", reason: -1 };
  }
}
