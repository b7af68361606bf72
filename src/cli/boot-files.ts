/**
 * The files `viommu run` boots on x86: the kernel (--kernel, or the built-in guest) and the
 * --initramfs modules, read and checked before any machine exists, so that a file the VMM
 * cannot boot is one line and status 2 wherever the run would happen (natively, or before the
 * KVM lab boots L1 for it: tools/guest-lab/kvm-lab-cli.ts).
 */
import { readFileSync } from "node:fs";
import { isElf } from "../vmm/elf.ts";
import { builtinGuestImage } from "../vmm/x86/builtin-guest.ts";
import { findMultibootHeader } from "../vmm/x86/multiboot.ts";
import { fileProblem } from "./file-errors.ts";
import type { RunOptions } from "./run-options.ts";

export type BootFiles = {
  image: Uint8Array;
  modules: { data: Uint8Array; cmdline: string }[];
};

/** A file named on the command line; a failure names the option, the path and the fix. */
function readUserFile(option: string, path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new Error(`${option} ${path}: ${fileProblem(e)} (check the path; see viommu run --help)`);
  }
}

/** Linux boot protocol: "HdrS" at 0x202 marks a bzImage setup header. */
function hasLinuxSetupHeader(image: Uint8Array): boolean {
  return image.length > 0x206 && new TextDecoder().decode(image.subarray(0x202, 0x206)) === "HdrS";
}

/** Reads the boot files; throws one line (no "viommu run:" prefix) when one cannot be read. */
export function readBootFiles(options: Pick<RunOptions, "kernel" | "modules">): BootFiles {
  const image = options.kernel === undefined ? builtinGuestImage() : readUserFile("--kernel", options.kernel);
  const modules = options.modules.map((m) => {
    const space = m.indexOf(" ");
    return { data: readUserFile("--initramfs", space < 0 ? m : m.slice(0, space)), cmdline: m };
  });
  return { image, modules };
}

/**
 * How the VMM boots these files: a Multiboot kernel (modules as Multiboot modules), or a Linux
 * bzImage / PVH vmlinux (one --initramfs, the initrd). Throws one line when it cannot boot them.
 */
export function bootKind(kernel: string | undefined, files: BootFiles): "multiboot" | "linux" {
  if (findMultibootHeader(files.image) !== null) return "multiboot";
  if (!isElf(files.image) && !hasLinuxSetupHeader(files.image)) {
    throw new Error(
      `${kernel}: not a Multiboot kernel (no header in the first 8 KiB), a Linux bzImage or a PVH vmlinux`,
    );
  }
  if (files.modules.length > 1) throw new Error("a Linux kernel takes one --initramfs");
  return "linux";
}
