/**
 * Which way the x86 machine boots a kernel image: Multiboot (its --initramfs files become
 * Multiboot modules), or Linux (a bzImage or a PVH vmlinux; one --initramfs, the initrd).
 */
import { isElf } from "../elf.ts";
import { findMultibootHeader } from "./multiboot.ts";

export type BootFiles = {
  image: Uint8Array;
  modules: readonly { data: Uint8Array; cmdline: string }[];
};

/** Linux boot protocol: "HdrS" at 0x202 marks a bzImage setup header. */
function hasLinuxSetupHeader(image: Uint8Array): boolean {
  return image.length > 0x206 && new TextDecoder().decode(image.subarray(0x202, 0x206)) === "HdrS";
}

/** How the VMM boots these files; throws one line (naming `kernel`) when it cannot boot them. */
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
