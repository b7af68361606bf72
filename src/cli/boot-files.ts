/**
 * The files `viommu run` boots: the kernel (--kernel) and the --initramfs modules, read before
 * any machine exists, so that a file that cannot be read is one line and status 2; and the
 * machine request they go into. A front end that must refuse what the machine would refuse
 * before starting a run elsewhere (the x86 KVM lab's, tools/guest-lab/kvm-lab-cli.ts) hands that
 * request to the factory's `checkMachineRequest`: this file knows no architecture.
 */
import { readFileSync } from "node:fs";
import type { MachineRequest } from "../vmm/vmm-machine.ts";
import { fileProblem } from "./file-errors.ts";
import type { RunOptions } from "./run-options.ts";

/** A file named on the command line; a failure names the option, the path and the fix. */
function readUserFile(option: string, path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new Error(`${option} ${path}: ${fileProblem(e)} (check the path; see viommu run --help)`);
  }
}

/** The user's files: the kernel if one was named, and each module ("path args"); throws one line. */
export function readUserBootFiles(options: Pick<RunOptions, "kernel" | "modules">): {
  kernel?: { path: string; image: Uint8Array };
  modules: { data: Uint8Array; cmdline: string }[];
} {
  const kernel =
    options.kernel === undefined
      ? undefined
      : { path: options.kernel, image: readUserFile("--kernel", options.kernel) };
  const modules = options.modules.map((m) => {
    const space = m.indexOf(" ");
    return { data: readUserFile("--initramfs", space < 0 ? m : m.slice(0, space)), cmdline: m };
  });
  return { kernel, modules };
}

/** The machine the options ask for, its files read (throws one line when one cannot be). */
export function readMachineRequest(options: RunOptions): MachineRequest {
  const files = readUserBootFiles(options);
  return {
    cpus: options.cpus,
    memorySizeBytes: options.memorySizeBytes,
    memoryFile: options.memoryFile,
    kernel: files.kernel,
    modules: files.modules,
    cmdline: options.cmdline,
    iommu: options.iommu,
    devices: options.devices,
    debugExit: options.debugExit,
    stdin: options.stdin,
  };
}
