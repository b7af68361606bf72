// The boot files of `viommu run` on x86 are read and classified before any machine (or KVM, or
// KVM-lab L1) exists: a file the VMM cannot boot is one line (src/cli/boot-files.ts).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { bootKind, readBootFiles } from "../../src/cli/boot-files.ts";

const dir = mkdtempSync(join(tmpdir(), "viommu-boot-files-"));
after(() => rmSync(dir, { recursive: true, force: true }));

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
    () => bootKind(path, readBootFiles({ kernel: path, modules: [] })),
    new Error(
      `${path}: not a Multiboot kernel (no header in the first 8 KiB), a Linux bzImage or a PVH vmlinux`,
    ),
  );
});

test("boot files: a missing kernel or initramfs names the option, the path and the fix", () => {
  assert.throws(
    () => readBootFiles({ kernel: join(dir, "none"), modules: [] }),
    /^Error: --kernel .*\/none: no such file or directory \(check the path; see viommu run --help\)$/,
  );
  const kernel = file("bz1", bzImageHead());
  assert.throws(
    () => readBootFiles({ kernel, modules: [`${join(dir, "gone.cpio")} arg`] }),
    /^Error: --initramfs .*\/gone\.cpio: no such file or directory/,
  );
});

test("boot files: a bzImage is Linux and takes at most one --initramfs; the built-in guest is Multiboot", () => {
  const kernel = file("bz2", bzImageHead());
  const initrd = file("initrd", new Uint8Array([1, 2, 3]));
  const one = readBootFiles({ kernel, modules: [initrd] });
  assert.equal(bootKind(kernel, one), "linux");
  assert.deepEqual([...one.modules[0]!.data], [1, 2, 3]);
  assert.throws(
    () => bootKind(kernel, readBootFiles({ kernel, modules: [initrd, initrd] })),
    new Error("a Linux kernel takes one --initramfs"),
  );
  assert.equal(bootKind(undefined, readBootFiles({ kernel: undefined, modules: [] })), "multiboot");
});
