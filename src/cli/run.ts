/**
 * `viommu run`: boots a kernel (or, on x86, the built-in guest) in the KVM micro-VMM and prints
 * a summary of what the machine's IOMMU and devices did. Returns the exit status.
 *
 * The machine is the host's (src/vmm/machine-factory.ts picks it and refuses what it lacks);
 * this file knows no architecture.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { LineBufferedSink, NULL_SINK, type SerialSink } from "../devices/uart16550.ts";
import { formatTraceEvent, Tracer } from "../engine/trace.ts";
import type { KvmArchitecture } from "../kvm/system.ts";
import { createMachine } from "../vmm/machine-factory.ts";
import type { RunResult } from "../vmm/run-result.ts";
import type { MachineSpec, VmmMachine } from "../vmm/vmm-machine.ts";
import { readMachineRequest } from "./boot-files.ts";
import { parseRunOptions, RUN_USAGE, type RunOptions } from "./run-options.ts";
import { formatTraceCatalogue } from "./trace-help.ts";

export interface RunIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

const PROCESS_IO: RunIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

function serialSink(o: RunOptions): { sink: SerialSink; close: () => void } {
  if (o.serial.kind === "null") return { sink: NULL_SINK, close: () => {} };
  if (o.serial.kind === "file") {
    const fd = openSync(o.serial.path, "w");
    return { sink: new LineBufferedSink((b) => writeSync(fd, b)), close: () => closeSync(fd) };
  }
  return { sink: new LineBufferedSink((b) => writeSync(1, b)), close: () => {} };
}

/** The machine's spec from the options: the files read, the serial port and tracer made. */
function machineSpec(options: RunOptions, serial: SerialSink, tracer: Tracer): MachineSpec {
  return { ...readMachineRequest(options), serial, tracer };
}

/**
 * `architecture` is the host's unless a test names another (to check that machine's
 * refusals, which all come before /dev/kvm is opened).
 */
export function runVmm(
  argv: readonly string[],
  io: RunIo = PROCESS_IO,
  architecture?: KvmArchitecture,
): number {
  let options: RunOptions;
  try {
    options = parseRunOptions(argv);
  } catch (e) {
    io.stderr(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }
  if (options.help) {
    io.stdout(`${RUN_USAGE}\n`);
    return 0;
  }
  if (options.trace === "help") {
    io.stdout(`${formatTraceCatalogue()}\n`);
    return 0;
  }
  const tracer = Tracer.fromSpec(options.trace);
  if (options.trace) tracer.listen((ev) => io.stderr(`trace: ${formatTraceEvent(ev)}\n`), []);
  const serial = serialSink(options);
  let machine: VmmMachine;
  try {
    machine = createMachine(machineSpec(options, serial.sink, tracer), architecture);
  } catch (e) {
    serial.sink.flush();
    serial.close();
    io.stderr(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }
  for (const note of machine.bootNotes) io.stderr(`viommu run: ${note}\n`);
  let result: RunResult;
  try {
    result = machine.run(options.timeoutSeconds);
  } catch (e) {
    serial.sink.flush();
    serial.close();
    machine.close();
    io.stderr(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }
  serial.sink.flush();
  serial.close();
  io.stderr(machine.summary(result));
  const outcome = machine.outcome(result);
  machine.close();
  if (outcome.verdict !== null) io.stderr(`viommu run: ${outcome.verdict}\n`);
  return outcome.status;
}
