/**
 * The one machine interface `viommu run` drives, whatever the host's architecture: a machine
 * is built from a `MachineSpec` with its guest loaded (machine-factory.ts picks the
 * architecture), runs to a stop, then gives its summary, stats and exit status, and is closed.
 */
import type { SerialSink } from "../devices/uart16550.ts";
import type { Tracer } from "../engine/trace.ts";
import type { DeviceRequest } from "./device-choice.ts";
import type { RunResult } from "./run-result.ts";

/** `--iommu`: what the user asked for; each architecture offers some of these. */
export type IommuRequest =
  | { readonly kind: "none" }
  | { readonly kind: "virtio"; readonly pageSizeMask?: bigint }
  | { readonly kind: "intel"; readonly spec: string }
  | { readonly kind: "smmuv3"; readonly stage: "1" | "2" | "nested"; readonly instances: number };

/**
 * What the user asked the machine to be: everything of a `MachineSpec` but the run's sinks, so
 * a front end can have it checked (machine-factory.ts `checkMachineRequest`) before any run.
 */
export interface MachineRequest {
  readonly cpus: number;
  readonly memorySizeBytes: number;
  readonly memoryFile?: string;
  /** The kernel the user named (its path for messages, its bytes); undefined: the built-in guest. */
  readonly kernel?: { readonly path: string; readonly image: Uint8Array };
  /** The --initramfs files in order; `cmdline` is the whole argument ("path args"). */
  readonly modules: readonly { readonly data: Uint8Array; readonly cmdline: string }[];
  /** The kernel command line; "" for the machine's default. */
  readonly cmdline: string;
  readonly iommu: IommuRequest;
  readonly devices: readonly DeviceRequest[];
  /** isa-debug-exit's ports when the user gave them (undefined: the machine's default, if any). */
  readonly debugExit?: { readonly iobase: number; readonly iosize: number };
  /** Feed stdin to the machine's serial port. */
  readonly stdin: boolean;
}

export interface MachineSpec extends MachineRequest {
  readonly serial: SerialSink;
  readonly tracer: Tracer;
}

export interface VmmMachine {
  /** What loading the guest found worth saying (boot protocol, where things went, warnings). */
  readonly bootNotes: readonly string[];
  /** Runs until the guest stops the machine, or `timeoutSeconds` pass (0: no limit). */
  run(timeoutSeconds: number): RunResult;
  /** The end-of-run summary: lines ending in a newline. */
  summary(result: RunResult): string;
  /** The process exit status for `result`, and the guest's own verdict when it gives one. */
  outcome(result: RunResult): { readonly status: number; readonly verdict: string | null };
  /** Counters of the whole machine. */
  stats(): object;
  /** Releases the VM, its fds and guest RAM: nothing of the machine may be used afterwards. */
  close(): void;
}
