// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, test } from "node:test";
import { Kvm } from "../../src/kvm/system.ts";
import { REPO_ROOT } from "../../src/vmm/x86/builtin-guest.ts";
import { ensureBuild } from "../../tools/build/js-build.mjs";

const BIN = join(REPO_ROOT, "bin", "viommu.mjs");

// The bin runs the JavaScript build; make it current first, so that no test below sees the
// bin's one-line "rebuilding" notice on stderr.
before(() => ensureBuild());

// A safety net, not a measure: `demo` boots three guests, which takes over 30 s on a loaded
// machine in the KVM lab (a TCG guest).
function viommu(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 180_000 });
}

test("bin/viommu.mjs: unknown subcommand is one line on stderr and status 2", () => {
  const r = viommu(["frobnicate"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'viommu: unknown command "frobnicate" (run, demo, serve, help)\n');
});

test("bin/viommu.mjs: help lists run and serve", () => {
  const r = viommu(["help"]);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /run +boot a guest/);
  assert.match(r.stdout, /serve +serve devices over vfio-user/);
});

test("bin/viommu.mjs run: a bad argument is one clear line and a nonzero status, no stack trace", () => {
  const r = viommu(["run", "--memory", "lots"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'viommu run: --memory: "lots" is not a size (examples: 512M, 2G, 65536K)\n');
});

test("bin/viommu.mjs run: a file that is no kernel is refused in one line", (t) => {
  if (!Kvm.available()) return t.skip("/dev/kvm not available: KVM test skipped");
  const path = join(mkdtempSync(join(tmpdir(), "viommu-nokernel-")), "random.bin");
  writeFileSync(path, new Uint8Array(9000).fill(0x5a));
  const r = viommu(["run", "--kernel", path, "--memory", "32M"]);
  assert.equal(r.status, 2);
  assert.equal(
    r.stderr,
    `viommu run: ${path}: not a Multiboot kernel (no header in the first 8 KiB), a Linux bzImage or a PVH vmlinux\n`,
  );
});

test("bin/viommu.mjs run: a missing kernel file is one line", () => {
  const r = viommu(["run", "--kernel", "/nonexistent/kernel.elf"]);
  assert.equal(r.status, 2);
  assert.equal(
    r.stderr,
    "viommu run: --kernel /nonexistent/kernel.elf: no such file or directory (check the path; see viommu run --help)\n",
  );
});

test("bin/viommu.mjs run --stdin: host input reaches the guest through COM1's receiver", (t) => {
  if (!Kvm.available()) return t.skip("/dev/kvm not available: KVM test skipped");
  // Multiboot a.out-kludge kernel: poll LSR.DR, read RBR, write the byte to isa-debug-exit.
  const code = [
    0xba, 0xfd, 0x03, 0, 0, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0xba, 0xf8, 0x03, 0, 0, 0xec, 0xba, 0x01, 0x05, 0,
    0, 0x0f, 0xb6, 0xc0, 0x66, 0xef,
  ];
  const img = new Uint8Array(0x20 + code.length);
  const v = new DataView(img.buffer);
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, 0x00010002, true);
  v.setUint32(8, -(0x1badb002 + 0x00010002) >>> 0, true);
  v.setUint32(12, 0x100000, true);
  v.setUint32(16, 0x100000, true);
  v.setUint32(28, 0x100020, true);
  img.set(code, 0x20);
  const path = join(mkdtempSync(join(tmpdir(), "viommu-stdin-")), "echo.bin");
  writeFileSync(path, img);
  const r = spawnSync(
    process.execPath,
    [BIN, "run", "--kernel", path, "--stdin", "--memory", "32M", "--timeout", "120"],
    {
      input: "A",
      encoding: "utf8",
      timeout: 180_000, // a safety net: node alone takes seconds to start in a loaded KVM lab
    },
  );
  assert.equal(r.status, ((0x41 << 1) | 1) & 0xff, r.stderr);
  assert.match(r.stderr, /com1: 0 bytes out, 1 in/);
});

test("bin/viommu.mjs run: SIGINT stops a running guest with status 130 and a summary", async (t) => {
  if (!Kvm.available()) return t.skip("/dev/kvm not available: KVM test skipped");
  // mov dx,0x3f8; mov al,'R'; out dx,al; mov al,10; out dx,al; jmp $ : the guest says it runs
  // (a whole line: the VMM flushes COM1 output at each newline), then spins.
  const code = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x52, 0xee, 0xb0, 0x0a, 0xee, 0xeb, 0xfe];
  const img = new Uint8Array(0x20 + code.length);
  const v = new DataView(img.buffer);
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, 0x00010002, true);
  v.setUint32(8, -(0x1badb002 + 0x00010002) >>> 0, true);
  v.setUint32(12, 0x100000, true);
  v.setUint32(16, 0x100000, true);
  v.setUint32(28, 0x100020, true);
  img.set(code, 0x20);
  const path = join(mkdtempSync(join(tmpdir(), "viommu-sigint-")), "spin.bin");
  writeFileSync(path, img);
  const child = spawn(process.execPath, [
    BIN,
    "run",
    "--kernel",
    path,
    "--memory",
    "32M",
    "--timeout",
    "120",
  ]);
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr += d;
  });
  // SIGINT once the guest runs (node's start-up takes seconds on a slow machine, e.g. the KVM lab).
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  await Promise.race([
    new Promise<void>((r) => child.stdout.on("data", (d: Buffer) => d.includes("R") && r())),
    exited,
  ]);
  child.kill("SIGINT");
  const status = await exited;
  assert.equal(status, 130, stderr);
  assert.match(stderr, /stop: interrupted \(SIGINT\)/);
});

test("bin/viommu.mjs demo: the built-in guest passes under no IOMMU, virtio-iommu and VT-d with IR", (t) => {
  if (!Kvm.available()) return t.skip("/dev/kvm not available: KVM test skipped");
  const r = viommu(["demo", "--memory", "64M"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /PASS {2}viommu run --memory 64M\n/);
  assert.match(r.stdout, /PASS {2}viommu run --iommu virtio --memory 64M\n/);
  assert.match(r.stdout, /PASS {2}viommu run --iommu intel,intremap=on --memory 64M\n/);
});
