/**
 * How a run of a machine ended, whatever its architecture: the stop reason, the process exit
 * status it maps to, and the one line that describes it. Both machines (src/vmm/x86/,
 * src/vmm/arm64/) and the vCPU loops (vcpu-loop.ts, vcpu-threads.ts) speak these.
 */
import { SIGTERM } from "../kvm/signal-latch.ts";

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
