// The boot files of `viommu run` are read, and checked by the machine (here the x86 one, as for
// the KVM lab's L1), before any machine (or KVM, or KVM-lab L1) exists: a file the VMM cannot
// boot is one line (src/cli/boot-files.ts, src/vmm/machine-factory.ts checkMachineRequest).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { readMachineRequest } from "../../src/cli/boot-files.ts";
import { parseRunOptions } from "../../src/cli/run-options.ts";
import { checkMachineRequest } from "../../src/vmm/machine-factory.ts";

const dir = mkdtempSync(join(tmpdir(), "viommu-boot-files-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** `viommu run ARGV`'s files read and its request checked by the x86 machine; throws one line. */
function check(argv: string[]): void {
  checkMachineRequest(readMachineRequest(parseRunOptions(argv)), "x86_64");
}

function file(name: string, bytes: Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

/** 1 KiB with the Linux boot protocol's "HdrS" at 0x202 (a bzImage setup header). */
function bzImageHead(): Uint8Array {
  const img = new Uint8Array(1024);
  img.set(new TextEncoder().encode("HdrS"), 0x202);
  return img;
}

test("boot files: a file that is no kernel is one line naming it and the three accepted formats", () => {
  const path = file("random.bin", new Uint8Array(9000).fill(0x5a));
  assert.throws(
    () => check(["--kernel", path]),
    new Error(
      `${path}: not a Multiboot kernel (no header in the first 8 KiB), a Linux bzImage or a PVH vmlinux`,
    ),
  );
});

test("boot files: a missing kernel or initramfs names the option, the path and the fix", () => {
  assert.throws(
    () => check(["--kernel", join(dir, "none")]),
    /^Error: --kernel .*\/none: no such file or directory \(check the path; see viommu run --help\)$/,
  );
  const kernel = file("bz1", bzImageHead());
  assert.throws(
    () => check(["--kernel", kernel, "--initramfs", `${join(dir, "gone.cpio")} arg`]),
    /^Error: --initramfs .*\/gone\.cpio: no such file or directory/,
  );
});

test("boot files: a bzImage is Linux and takes at most one --initramfs; no kernel is the built-in guest", () => {
  const kernel = file("bz2", bzImageHead());
  const initrd = file("initrd", new Uint8Array([1, 2, 3]));
  const one = readMachineRequest(parseRunOptions(["--kernel", kernel, "--initramfs", initrd]));
  assert.equal(one.kernel?.path, kernel);
  assert.deepEqual([...one.modules[0]!.data], [1, 2, 3]);
  checkMachineRequest(one, "x86_64");
  assert.throws(
    () => check(["--kernel", kernel, "--initramfs", initrd, "--initramfs", initrd]),
    new Error("a Linux kernel takes one --initramfs"),
  );
  assert.equal(readMachineRequest(parseRunOptions([])).kernel, undefined);
  check([]);
});
