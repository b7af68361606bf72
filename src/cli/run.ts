/**
 * `viommu run`: boots a Multiboot kernel (or the built-in guest) in the KVM micro-VMM and
 * prints a summary of what the machine's IOMMU and devices did. Returns the exit status.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { LineBufferedSink, NULL_SINK, type SerialSink } from "../devices/uart16550.ts";
import { formatTraceEvent, Tracer } from "../engine/trace.ts";
import { KvmUnavailableError, kvmArchitecture } from "../kvm/system.ts";
import { VfioPciDevice } from "../vfio/device.ts";
import { BUILTIN_PASS_STATUS } from "../vmm/x86/builtin-guest.ts";
import { describeStop, Machine, type RunResult } from "../vmm/x86/machine.ts";
import type { DeviceChoice } from "../vmm/x86/platform.ts";
import { SerialInput } from "../vmm/x86/serial-input.ts";
import { formatSummary } from "../vmm/x86/summary.ts";
import { type BootFiles, bootKind, readBootFiles } from "./boot-files.ts";
import { runArm64 } from "./run-arm64.ts";
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

/** The devices the machine gets: the built-in guest needs an edu, behind the IOMMU if there is one. */
export function devicesFor(
  o: RunOptions,
  openVfio: (bdf: string) => VfioPciDevice = (bdf) => VfioPciDevice.open(bdf),
): DeviceChoice[] {
  const devices: DeviceChoice[] = o.devices.map(
    (d): DeviceChoice =>
      d.kind === "disk"
        ? { kind: "disk", iommu: d.iommu, path: d.path, readOnly: d.readOnly }
        : d.kind === "vfio"
          ? { kind: "vfio", iommu: d.iommu, device: openVfio(d.host) }
          : { kind: d.kind, iommu: d.iommu },
  );
  if (o.kernel === undefined && !devices.some((d) => d.kind === "edu")) {
    devices.unshift({ kind: "edu", iommu: o.iommu.kind !== "none" });
  }
  return devices;
}

/** `viommu run` on an arm64 host (run-arm64.ts), tracing and serial output set up as on x86. */
function runOnArm64(options: RunOptions, io: RunIo): number {
  const tracer = Tracer.fromSpec(options.trace);
  if (options.trace) tracer.listen((ev) => io.stderr(`trace: ${formatTraceEvent(ev)}\n`), []);
  const serial = serialSink(options);
  const status = runArm64({
    options,
    devices: devicesFor(options),
    serial: serial.sink,
    tracer,
    stderr: io.stderr,
  });
  serial.close();
  return status;
}

export function runVmm(argv: readonly string[], io: RunIo = PROCESS_IO): number {
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
  if (kvmArchitecture() === "arm64") return runOnArm64(options, io);
  if (options.iommu.kind === "smmuv3") {
    io.stderr("viommu run: --iommu smmuv3 needs an arm64 host (the SMMUv3 is an Arm IOMMU)\n");
    return 2;
  }
  const iommu = options.iommu;
  let boot: BootFiles;
  try {
    boot = readBootFiles(options);
  } catch (e) {
    io.stderr(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }

  const tracer = Tracer.fromSpec(options.trace);
  if (options.trace) tracer.listen((ev) => io.stderr(`trace: ${formatTraceEvent(ev)}\n`), []);
  const serial = serialSink(options);
  // COM1 input: stdin when the output goes to the terminal and stdin is interactive or a pipe.
  const input = options.serial.kind === "tty" && options.stdin ? new SerialInput(0) : undefined;
  let machine: Machine;
  try {
    machine = new Machine({
      cpus: options.cpus,
      memorySizeBytes: options.memorySizeBytes,
      memoryFile: options.memoryFile,
      serial: serial.sink,
      iommu,
      devices: devicesFor(options),
      debugExit: options.debugExit,
      tracer,
      serialInput: input,
    });
  } catch (e) {
    serial.close();
    if (e instanceof KvmUnavailableError) io.stderr(`viommu run: ${e.message}\n`);
    else io.stderr(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }
  let result: RunResult;
  try {
    if (bootKind(options.kernel, boot) === "multiboot") {
      const mb = machine.bootMultiboot(
        boot.image,
        options.cmdline || (options.kernel ?? "builtin"),
        boot.modules,
      );
      for (const w of mb.warnings) io.stderr(`viommu run: warning: ${w}\n`);
    } else {
      // Not Multiboot: a Linux bzImage or PVH vmlinux; --initramfs is the initrd.
      const linux = machine.bootLinux({
        kernel: boot.image,
        initrd: boot.modules[0]?.data,
        cmdline: options.cmdline || "console=ttyS0",
      });
      io.stderr(`viommu run: Linux ${linux.protocol} boot, ACPI ${linux.acpiTables.join(" ")}\n`);
    }
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
  input?.close();
  io.stderr(formatSummary(machine, result));
  machine.close();
  if (options.kernel === undefined) {
    // The built-in guest's verdict: pass (debug-exit value 0) -> 0, anything else -> 1.
    const passed = result.stop.kind === "debug-exit" && result.status === BUILTIN_PASS_STATUS;
    io.stderr(`viommu run: built-in guest ${passed ? "passed" : `failed (${describeStop(result.stop)})`}\n`);
    return passed ? 0 : 1;
  }
  return result.status;
}
