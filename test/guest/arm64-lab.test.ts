// The arm64 lab (tools/guest-lab/arm64-lab.ts): an arm64 L1 on qemu-system-aarch64 (TCG, EL2)
// runs one command with /dev/kvm and the arm64 root's node, in this machine's paths.
// The live check of the lab (/dev/kvm, node with koffi, paths, status) shares the one L1 boot of
// test/guest/arm64-vmm.test.ts (CI time); here, what needs no boot.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  arm64LabAvailable,
  arm64LabPaths,
  arm64LabQemuArgs,
  runInArm64Lab,
} from "../../tools/guest-lab/arm64-lab.ts";

test("arm64 lab: an unprovisioned cache is one line naming what is missing, and no QEMU starts", async () => {
  const empty = mkdtempSync(join(tmpdir(), "viommu-nolab-"));
  const saved = process.env.VIOMMU_CACHE;
  process.env.VIOMMU_CACHE = empty;
  try {
    assert.equal(arm64LabAvailable().ok, false);
    const run = await runInArm64Lab({ command: ["true"], timeoutMs: 1000 });
    assert.equal(run.failedStep, "provision");
    assert.equal(run.qemuPid, -1);
    assert.match(
      run.failure ?? "",
      /arm64 lab not provisioned: qemu-system-aarch64 wrapper missing .*arm64\.sh/,
    );
    assert.doesNotMatch(run.failure ?? "", /\n/);
  } finally {
    if (saved === undefined) delete process.env.VIOMMU_CACHE;
    else process.env.VIOMMU_CACHE = saved;
    rmSync(empty, { recursive: true, force: true });
  }
});

test("arm64 lab: QEMU runs virt with EL2 and GICv3, the root image read-only, the host root read-only over 9p", () => {
  const args = arm64LabQemuArgs(arm64LabPaths(), "/tmp/i", { out: "/tmp/o", err: "/tmp/e" }, {});
  assert.ok(args.includes("virt,virtualization=on,gic-version=3") && args.includes("max"));
  const drive = args[args.indexOf("-drive") + 1]!;
  assert.match(drive, /root\.img,if=none,format=raw,id=root,readonly=on$/);
  const virtfs = args[args.indexOf("-virtfs") + 1]!;
  assert.ok(virtfs.startsWith("local,path=/,mount_tag=host,") && virtfs.endsWith(",readonly=on"));
});
