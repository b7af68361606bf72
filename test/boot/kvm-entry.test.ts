// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
/**
 * The 64-bit boot protocol state, applied by the micro-VMM (src/cli/run.ts -> src/vmm/x86/linux.ts)
 * to a real KVM vCPU: a synthetic bzImage whose 64-bit entry (load + 0x200) checks, from inside
 * the guest, what boot.rst promises a kernel at that point:
 *   - the CPU executes 64-bit code (a REX.W shift of a 33-bit immediate yields 1);
 *   - RSI points at the zero page: "HdrS" at +0x202, e820_entries at +0x1E8 non-zero;
 *   - cmd_line_ptr (+0x228) points at the command line ("console=ttyS0"), through the identity map;
 *   - acpi_rsdp_addr (+0x070) points at "RSD PTR ".
 * It reports through QEMU's isa-debug-exit convention at port 0x501: 0x10 pass, 0x11 fail.
 * Skips loudly without /dev/kvm.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { Kvm } from "../../src/kvm/system.ts";
import { syntheticBzImage } from "./fixtures.ts";

const skip = Kvm.available() ? false : "/dev/kvm not available: 64-bit entry NOT VERIFIED under KVM";
if (skip !== false) console.warn(`test/boot/kvm-entry.test.ts: SKIPPED, ${skip}`);

const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];

/** x86-64 machine code; `FAIL` marks a jne/je whose rel8 is patched to the failure exit. */
function checkerProgram(): Uint8Array {
  const FAIL = -1;
  const parts: (number[] | { jcc: number })[] = [
    [0x48, 0xb8, 0, 0, 0, 0, 1, 0, 0, 0], // mov rax, 0x1_0000_0000
    [0x48, 0xc1, 0xe8, 0x20], // shr rax, 32
    [0x83, 0xf8, 0x01], // cmp eax, 1
    { jcc: 0x75 }, // jne fail
    [0x81, 0xbe, ...le32(0x202), ...le32(0x53726448)], // cmp dword [rsi+0x202], "HdrS"
    { jcc: 0x75 },
    [0x80, 0xbe, ...le32(0x1e8), 0x00], // cmp byte [rsi+0x1e8], 0
    { jcc: 0x74 }, // je fail
    [0x8b, 0x86, ...le32(0x228)], // mov eax, [rsi+0x228]   (cmd_line_ptr)
    [0x81, 0x38, ...le32(0x736e6f63)], // cmp dword [rax], "cons"
    { jcc: 0x75 },
    [0x8b, 0x86, ...le32(0x070)], // mov eax, [rsi+0x70]    (acpi_rsdp_addr, low half)
    [0x81, 0x38, ...le32(0x20445352)], // cmp dword [rax], "RSD "
    { jcc: 0x75 },
    [0x66, 0xba, 0x01, 0x05, 0x66, 0xb8, 0x10, 0x00, 0x66, 0xef], // out 0x501, 0x10 (pass)
  ];
  const fail = [0x66, 0xba, 0x01, 0x05, 0x66, 0xb8, 0x11, 0x00, 0x66, 0xef]; // out 0x501, 0x11
  let length = 0;
  for (const p of parts) length += Array.isArray(p) ? p.length : 2;
  const code: number[] = [];
  for (const p of parts) {
    if (Array.isArray(p)) code.push(...p);
    else code.push(p.jcc, length - (code.length + 2));
  }
  assert.equal(code.length, length);
  assert.ok(code.every((b) => b !== FAIL));
  return Uint8Array.from([...code, ...fail]);
}

test("a bzImage is entered in 64-bit mode under KVM with RSI -> zero page, cmdline and RSDP reachable", {
  skip,
}, () => {
  const image = syntheticBzImage();
  image.set(checkerProgram(), 4 * 512 + 0x200); // protected-mode kernel + 0x200: the 64-bit entry
  const dir = mkdtempSync(join(tmpdir(), "viommu-bzimage-"));
  try {
    const path = join(dir, "bzImage");
    writeFileSync(path, image);
    let stderr = "";
    const status = runVmm(["--kernel", path, "--memory", "64M", "--serial", "null", "--timeout", "10"], {
      stdout: () => {},
      stderr: (s) => {
        stderr += s;
      },
    });
    assert.match(stderr, /Linux bzimage-64 boot/);
    assert.equal(status, (0x10 << 1) | 1, `guest reported ${status} (0x23 = a check failed)\n${stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
