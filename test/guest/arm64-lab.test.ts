// The arm64 lab (tools/guest-lab/arm64-lab.ts): an arm64 L1 on qemu-system-aarch64 (TCG, EL2)
// runs one command with /dev/kvm and the arm64 root's node, in this machine's paths.
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
import { describeKvmLabRun } from "../../tools/guest-lab/kvm-lab.ts";

const lab = arm64LabAvailable();
const NO_LAB = `arm64 lab not provisioned (${lab.why}): run tools/provision/arm64.sh; live arm64 lab tests SKIPPED`;
if (!lab.ok) console.error(`\n*** ${NO_LAB}\n`);

test("arm64 lab: a command in the arm64 L1 has /dev/kvm, node on arm64 with koffi, the host's paths; status passes through", {
  timeout: 600_000,
}, async (t) => {
  if (!lab.ok) return t.skip(NO_LAB);
  const repo = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
  const run = await runInArm64Lab({
    command: [
      "sh",
      "-c",
      "test -c /dev/kvm && echo kvm-ok; uname -m; pwd; node -e 'import(\"koffi\").then((k) => console.log(process.arch, typeof k.default.load))'; echo err-line >&2; exit 5",
    ],
    cwd: repo,
    timeoutMs: 540_000,
  });
  const why = `${describeKvmLabRun(run)}\n${run.console.slice(-3000)}\n${run.stderr}`;
  assert.equal(run.failedStep, null, why);
  assert.equal(run.exitCode, 5, why);
  assert.equal(run.stdout, `kvm-ok\naarch64\n${repo}\narm64 function\n`, why);
  assert.equal(run.stderr, "err-line\n", why);
  assert.match(run.console, /VHE mode initialized successfully|Hyp mode initialized successfully/, why);
});

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
