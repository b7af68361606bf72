// `viommu run` options for the arm64 machine, and its refusals before any KVM work.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { parseRunOptions } from "../../src/cli/run-options.ts";
import { kvmArchitecture } from "../../src/kvm/system.ts";

test("--iommu smmuv3[,stage=1|2|nested][,instances=1|2]: stage 1, one instance by default; anything else is one line", () => {
  const iommu = (spec: string) => parseRunOptions(["--iommu", spec]).iommu;
  assert.deepEqual(iommu("smmuv3"), { kind: "smmuv3", stage: "1", instances: 1 });
  assert.deepEqual(iommu("smmuv3,stage=2"), { kind: "smmuv3", stage: "2", instances: 1 });
  assert.deepEqual(iommu("smmuv3,stage=nested,instances=2"), {
    kind: "smmuv3",
    stage: "nested",
    instances: 2,
  });
  assert.throws(() => iommu("smmuv3,instances=3"), /unknown property "instances=3"/);
  assert.throws(
    () => parseRunOptions(["--iommu", "smmuv3,stage=3"]),
    /--iommu smmuv3: unknown property "stage=3"/,
  );
  assert.throws(() => parseRunOptions(["--iommu", "smmuv3,ats=on"]), /unknown property "ats=on"/);
});

/** `viommu run ARGV` with the arm64 machine, on any host (its refusals come before KVM). */
function run(argv: string[]): { status: number; stderr: string } {
  let stderr = "";
  const io = {
    stdout: () => {},
    stderr: (t: string) => {
      stderr += t;
    },
  };
  const status = runVmm(["--serial", "null", ...argv], io, "arm64");
  return { status, stderr };
}

test("arm64 run: a kernel that is not an arm64 Image is one clear line and exit status 2, before KVM", () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-a64-"));
  try {
    const bzImage = join(dir, "bzImage");
    writeFileSync(bzImage, new Uint8Array(8192).fill(0x90));
    const r = run(["--kernel", bzImage, "--iommu", "smmuv3"]);
    assert.equal(r.status, 2);
    assert.match(
      r.stderr,
      /^viommu run: .*bzImage: not an arm64 Linux Image \(no ARM\\x64 magic at offset 56/,
    );
    assert.equal(r.stderr.trim().split("\n").length, 1);
    const none = run(["--iommu", "smmuv3"]);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /on arm64 --kernel \(a Linux Image\) is required/);
    const missing = run(["--kernel", join(dir, "nope")]);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /ENOENT|no such file or directory/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A minimal arm64 Image: the 64-byte header (booting.rst) of a kernel of `imageSize` bytes. */
function arm64Image(imageSize: number): Uint8Array {
  const b = new Uint8Array(4096);
  const v = new DataView(b.buffer);
  v.setBigUint64(16, BigInt(imageSize), true);
  v.setBigUint64(24, 0xan, true);
  v.setUint32(56, 0x644d_5241, true); // "ARM\x64"
  return b;
}

test("arm64 run: a device-tree or boot-layout error is one clear line and exit status 2, before KVM", () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-a64-"));
  try {
    const image = join(dir, "Image");
    writeFileSync(image, arm64Image(8 << 20));
    // A command line longer than arm64 Linux's COMMAND_LINE_SIZE would be cut silently.
    const long = run([
      "--kernel",
      image,
      "--iommu",
      "smmuv3",
      "--cmdline",
      `console=ttyAMA0 ${"x".repeat(2100)}`,
    ]);
    assert.equal(long.status, 2);
    assert.match(long.stderr, /^viommu run: kernel command line of 2116 bytes exceeds arm64 Linux's 2047/);
    // An initrd that does not fit beside the kernel and the DTB in guest RAM.
    const initrd = join(dir, "initrd");
    writeFileSync(initrd, new Uint8Array(15 << 20));
    const big = run(["--kernel", image, "--initramfs", initrd, "--memory", "size=16M", "--iommu", "virtio"]);
    assert.equal(big.status, 2);
    assert.match(
      big.stderr,
      /^viommu run: .*Image: guest RAM too small: kernel \(8388608 B\) and initrd \(15728640 B\)/,
    );
    for (const r of [long, big]) {
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /\/dev\/kvm/, "refused before KVM is opened");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("x86 run: --iommu smmuv3 needs an arm64 host (one line, status 2)", (t) => {
  if (kvmArchitecture() !== "x86_64") return t.skip("SKIPPED: this check is for x86-64 hosts");
  let stderr = "";
  const status = runVmm(["--iommu", "smmuv3"], { stdout: () => {}, stderr: (s) => (stderr += s) });
  assert.equal(status, 2);
  assert.equal(stderr, "viommu run: --iommu smmuv3 needs an arm64 host (the SMMUv3 is an Arm IOMMU)\n");
});
