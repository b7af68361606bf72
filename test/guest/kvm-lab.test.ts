// The KVM lab (tools/guest-lab/kvm-lab.ts): L1 under TCG with kvm_amd runs one command with
// /dev/kvm, passes its stdout, stderr and exit status through, and leaves nothing running.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  describeKvmLabRun,
  kvmLabAvailable,
  kvmLabPaths,
  kvmLabQemuArgs,
  runInKvmLab,
} from "../../tools/guest-lab/kvm-lab.ts";
import { nativeKvm, REPO } from "../../tools/guest-lab/kvm-tests.mjs";

const lab = kvmLabAvailable();
const NO_LAB = `KVM lab not provisioned (${lab.why}): run tools/provision/provision.sh; live KVM lab tests SKIPPED`;
if (!lab.ok) console.error(`\n*** ${NO_LAB}\n`);

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ESRCH";
  }
}

test("KVM lab: a command in L1 sees /dev/kvm; stdout, stderr and the exit status pass through; QEMU is gone after", {
  timeout: 300_000,
}, async (t) => {
  if (!lab.ok) return t.skip(NO_LAB);
  const run = await runInKvmLab({
    command: [
      "sh",
      "-c",
      "test -c /dev/kvm && echo kvm-ok; echo err-line >&2; pwd; printf no-newline; exit 7",
    ],
    cwd: "/usr",
    timeoutMs: 240_000,
  });
  const why = `${describeKvmLabRun(run)}\n${run.console.slice(-3000)}`;
  assert.equal(run.failedStep, null, why);
  assert.equal(run.exitCode, 7, why);
  assert.equal(run.stdout, "kvm-ok\n/usr\nno-newline", why);
  assert.equal(run.stderr, "err-line\n", why);
  assert.match(run.console, /Nested Paging enabled/, why);
  assert.ok(run.bootMs > 0, why);
  assert.ok(gone(run.qemuPid), `QEMU ${run.qemuPid} still running`);
});

test("KVM lab: the hard timeout kills L1 and names the step it stopped in", {
  timeout: 60_000,
}, async (t) => {
  if (!lab.ok) return t.skip(NO_LAB);
  const run = await runInKvmLab({ command: ["true"], timeoutMs: 1500 });
  assert.equal(run.timedOut, true);
  assert.equal(run.exitCode, null);
  assert.equal(run.failedStep, "boot", describeKvmLabRun(run));
  assert.match(run.failure ?? "", /timed out after 2 s in step boot/);
  assert.ok(run.durationMs < 10_000, `took ${run.durationMs} ms`);
  assert.ok(gone(run.qemuPid), `QEMU ${run.qemuPid} still running`);
});

test("KVM lab: an unprovisioned cache is one line naming what is missing, and no QEMU starts", async () => {
  const empty = mkdtempSync(join(tmpdir(), "viommu-nolab-"));
  const saved = process.env.VIOMMU_CACHE;
  process.env.VIOMMU_CACHE = empty;
  try {
    const avail = kvmLabAvailable();
    assert.equal(avail.ok, false);
    const run = await runInKvmLab({ command: ["true"], timeoutMs: 1000 });
    assert.equal(run.failedStep, "provision");
    assert.equal(run.qemuPid, -1);
    assert.match(
      run.failure ?? "",
      /KVM lab not provisioned: QEMU wrapper missing .*run tools\/provision\/provision\.sh/,
    );
    assert.doesNotMatch(run.failure ?? "", /\n/);
  } finally {
    if (saved === undefined) delete process.env.VIOMMU_CACHE;
    else process.env.VIOMMU_CACHE = saved;
    rmSync(empty, { recursive: true, force: true });
  }
});

test("KVM lab: QEMU arguments share the root read-only, the writable directories by tag, and escape commas", () => {
  const args = kvmLabQemuArgs(kvmLabPaths(), "/tmp/i", { out: "/tmp/o", err: "/tmp/e" }, ["/a,b"], {
    cpus: 2,
  });
  const virtfs = args.filter((_, i) => args[i - 1] === "-virtfs");
  assert.ok(virtfs[0]!.startsWith("local,path=/,mount_tag=host,") && virtfs[0]!.endsWith(",readonly=on"));
  assert.ok(virtfs.some((v) => v.startsWith("local,path=/a,,b,mount_tag=w0,") && !v.includes("readonly")));
  assert.ok(args.includes("tcg,thread=multi") && args.includes("max"));
});

const NATIVE_KVM = nativeKvm().kvm;
const HAS_KVM = "this machine has a usable /dev/kvm: viommu run never goes to the KVM lab here (SKIPPED)";

test("viommu run without /dev/kvm: a bad argument is refused on the host in one line, status 2, no L1 boot", (t) => {
  if (NATIVE_KVM) return t.skip(HAS_KVM);
  const r = spawnSync(process.execPath, [join(REPO, "bin/viommu.mjs"), "run", "--memory", "lots"], {
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.equal(r.status, 2, r.stderr);
  // Exactly what viommu run says with KVM: the arguments are checked before any lab is involved.
  assert.equal(r.stderr, 'viommu run: --memory: "lots" is not a size (examples: 512M, 2G, 65536K)\n');
});

test("npm start without /dev/kvm: the built-in guest passes in the KVM lab, one line says why, status passes through", {
  timeout: 400_000,
}, async (t) => {
  if (NATIVE_KVM) return t.skip(HAS_KVM);
  if (!lab.ok) return t.skip(NO_LAB);
  const r = spawnSync(
    process.execPath,
    [join(REPO, "bin/viommu.mjs"), "run", "--iommu", "virtio", "--device", "edu,iommu=on"],
    {
      encoding: "utf8",
      timeout: 360_000,
    },
  );
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.equal(r.stderr.split("\n").filter((l) => l.includes("KVM lab")).length, 1, r.stderr);
  assert.match(r.stderr, /^viommu: no \/dev\/kvm here: running "viommu run" in the KVM lab/);
  assert.match(r.stdout, /verdict: PASS/);
  assert.match(r.stderr, /viommu run: built-in guest passed/);
});
