// What `viommu run` refuses because of the machine it would build, not the command line: each
// architecture's checks (src/vmm/machine-factory.ts and each machine's build.ts), one line and
// exit status 2 before /dev/kvm is opened, on any host (the architecture is named).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { readMachineRequest } from "../../src/cli/boot-files.ts";
import { runVmm } from "../../src/cli/run.ts";
import { parseRunOptions } from "../../src/cli/run-options.ts";
import type { KvmArchitecture } from "../../src/kvm/system.ts";
import { checkMachineRequest } from "../../src/vmm/machine-factory.ts";
import { debugExitPorts } from "../../src/vmm/x86/build.ts";

const dir = mkdtempSync(join(tmpdir(), "viommu-machine-checks-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** `viommu run ARGV` on `architecture`'s machine; these runs all stop before KVM. */
function run(architecture: KvmArchitecture, argv: string[]): { status: number; stderr: string } {
  let stderr = "";
  const io = {
    stdout: () => {},
    stderr: (t: string) => {
      stderr += t;
    },
  };
  return { status: runVmm(["--serial", "null", ...argv], io, architecture), stderr };
}

/** A minimal arm64 Image (booting.rst header: 8 MiB image, "ARM\x64" at 56). */
function arm64Image(): string {
  const b = new Uint8Array(4096);
  const v = new DataView(b.buffer);
  v.setBigUint64(16, 8n << 20n, true);
  v.setUint32(56, 0x644d_5241, true);
  const path = join(dir, "Image");
  writeFileSync(path, b);
  return path;
}

test("x86: --debug-exit on a port range the platform decodes is one line naming it, status 2", () => {
  for (const [ports, line] of [
    ["iobase=0x3fc,iosize=4", "--debug-exit: ports 0x3fc-0x3ff overlap COM1 (0x3f8-0x3ff)"],
    ["iobase=0xcfe,iosize=2", "--debug-exit: ports 0xcfe-0xcff overlap PCI configuration (0xcf8-0xcff)"],
    ["iobase=0xc000", "--debug-exit: ports 0xc000-0xc001 overlap the PCI I/O BAR window (0xc000-0xffff)"],
  ] as const) {
    const r = run("x86_64", ["--debug-exit", ports]);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, `viommu run: ${line}\n`);
  }
});

test("x86: isa-debug-exit gets the user's ports when given, QEMU's 0x501 (2 bytes) when not", () => {
  const request = (argv: string[]) => readMachineRequest(parseRunOptions(argv));
  assert.deepEqual(debugExitPorts(request([])), { iobase: 0x501, iosize: 2 });
  assert.deepEqual(debugExitPorts(request(["--debug-exit", "iobase=0xf4,iosize=4"])), {
    iobase: 0xf4,
    iosize: 4,
  });
  for (const argv of [
    [],
    ["--debug-exit", "iobase=0xf4,iosize=4"],
    ["--debug-exit", "iobase=0x80,iosize=1"],
  ]) {
    checkMachineRequest(request(argv), "x86_64");
  }
});

test("arm64: --debug-exit given is refused even with QEMU's default ports, and not named when absent", () => {
  const kernel = arm64Image();
  const refusal = "viommu run: --debug-exit is an x86 I/O-port device; the arm64 machine has no port I/O\n";
  // Given explicitly, whatever the values: tracked as given, not compared with a default.
  for (const ports of ["iobase=0x501,iosize=2", "iobase=0x3fc,iosize=4"]) {
    const r = run("arm64", ["--kernel", kernel, "--debug-exit", ports]);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, refusal, "the arm64 machine has no COM1 ports to overlap");
  }
  checkMachineRequest(readMachineRequest(parseRunOptions(["--kernel", kernel])), "arm64");
});

test("arm64: options only the x86 machine has are one line each, status 2", () => {
  const kernel = arm64Image();
  for (const [argv, line] of [
    [["--iommu", "intel"], "--iommu intel is an x86 IOMMU; on arm64 use --iommu smmuv3 or virtio"],
    [[], "on arm64 --kernel (a Linux Image) is required: the built-in guest is x86 code"],
    [
      ["--kernel", kernel, "--device", "vfio,host=0000:01:00.0"],
      "--device vfio is not available on the arm64 machine yet (x86 hosts only)",
    ],
  ] as const) {
    const r = run("arm64", [...argv]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr, `viommu run: ${line}\n`);
  }
  // --stdin needs --serial tty, which these runs do not write to: the check alone.
  assert.throws(
    () => checkMachineRequest(readMachineRequest(parseRunOptions(["--kernel", kernel, "--stdin"])), "arm64"),
    { message: "--stdin feeds COM1, an x86 device; the arm64 machine's PL011 takes no input yet" },
  );
});
