/**
 * The files `viommu run` boots: the kernel (--kernel) and the --initramfs modules, read before
 * any machine exists, so that a file that cannot be read is one line and status 2. The x86
 * KVM lab's front end (tools/guest-lab/kvm-lab-cli.ts) also classifies them with the x86
 * machine's `bootKind` before it boots L1 (readBootFiles: the built-in guest when no kernel).
 */
import { readFileSync } from "node:fs";
import type { BootFiles } from "../vmm/x86/boot-kind.ts";
import { builtinGuestImage } from "../vmm/x86/builtin-guest.ts";
import { fileProblem } from "./file-errors.ts";
import type { RunOptions } from "./run-options.ts";

export { type BootFiles, bootKind } from "../vmm/x86/boot-kind.ts";

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

/** The x86 machine's boot files: the user's, or the built-in guest without --kernel. */
export function readBootFiles(options: Pick<RunOptions, "kernel" | "modules">): BootFiles {
  const files = readUserBootFiles(options);
  return { image: files.kernel?.image ?? builtinGuestImage(), modules: files.modules };
}
