// The KVM lab (tools/guest-lab/kvm-lab.ts): L1 under TCG with kvm_amd runs one command with
// /dev/kvm, passes its stdout, stderr and exit status through, and leaves nothing running.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
import { labTimeoutSeconds } from "../../tools/guest-lab/kvm-lab-cli.ts";
import { nativeKvm, REPO } from "../../tools/guest-lab/kvm-tests.mjs";

const lab = kvmLabAvailable();
const NO_LAB = `KVM lab not provisioned (${lab.why}): run tools/provision/provision.sh; live KVM lab tests SKIPPED`;
if (!lab.ok) console.error(`\n*** ${NO_LAB}\n`);
const NATIVE_KVM = nativeKvm().kvm;
const HAS_KVM = "this machine has a usable /dev/kvm: viommu run never goes to the KVM lab here (SKIPPED)";

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

test("KVM lab: a QEMU that cannot start is one line naming the step, from the API and from viommu run", async (t) => {
  // A cache that looks provisioned but whose QEMU fails at once, as a broken install would.
  const cache = mkdtempSync(join(tmpdir(), "viommu-badqemu-"));
  try {
    for (const d of ["bin", "kernel", "kvm-lab/scratch"]) mkdirSync(join(cache, d), { recursive: true });
    writeFileSync(
      join(cache, "bin/qemu-system-x86_64"),
      "#!/bin/sh\necho 'qemu: no usable accelerator' >&2\nexit 1\n",
      {
        mode: 0o755,
      },
    );
    for (const f of ["kernel/vmlinuz", "kvm-lab.cpio.gz", "kvm-lab/smoke.ok"])
      writeFileSync(join(cache, f), "");
    const saved = process.env.VIOMMU_CACHE;
    process.env.VIOMMU_CACHE = cache;
    let run: Awaited<ReturnType<typeof runInKvmLab>>;
    try {
      run = await runInKvmLab({ command: ["true"], timeoutMs: 30_000 });
    } finally {
      if (saved === undefined) delete process.env.VIOMMU_CACHE;
      else process.env.VIOMMU_CACHE = saved;
    }
    assert.equal(run.failedStep, "qemu", describeKvmLabRun(run));
    assert.equal(
      run.failure,
      "KVM lab: L1 stopped in step boot before the command finished (QEMU exit 1): qemu: no usable accelerator",
    );
    if (NATIVE_KVM) return t.skip(`${HAS_KVM}: the viommu run half`);
    const r = spawnSync(process.execPath, [join(REPO, "bin/viommu.mjs"), "run", "--timeout", "5"], {
      encoding: "utf8",
      timeout: 60_000,
      env: { ...process.env, VIOMMU_CACHE: cache },
    });
    assert.equal(r.status, 2, r.stderr);
    assert.match(
      r.stderr,
      /\nviommu: KVM lab: L1 stopped in step boot before the command finished \(QEMU exit 1\): qemu: no usable accelerator\n$/,
    );
  } finally {
    rmSync(cache, { recursive: true, force: true });
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

test("viommu run without /dev/kvm: a kernel the VMM cannot boot is refused on the host in one line, status 2, no L1 boot", (t) => {
  if (NATIVE_KVM) return t.skip(HAS_KVM);
  const dir = mkdtempSync(join(tmpdir(), "viommu-nokernel-lab-"));
  try {
    const path = join(dir, "random.bin");
    writeFileSync(path, new Uint8Array(9000).fill(0x5a));
    const r = spawnSync(process.execPath, [join(REPO, "bin/viommu.mjs"), "run", "--kernel", path], {
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(r.status, 2, r.stderr);
    // The same line as with KVM (test/cli/main.test.ts), and no line about the lab.
    assert.equal(
      r.stderr,
      `viommu run: ${path}: not a Multiboot kernel (no header in the first 8 KiB), a Linux bzImage or a PVH vmlinux\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("viommu run in the KVM lab: the lab's own timeout is always set (the VMM's --timeout, or an hour, plus L1's boot)", () => {
  assert.equal(labTimeoutSeconds(["run"]), 3600 + 300);
  assert.equal(labTimeoutSeconds(["run", "--timeout", "20"]), 20 + 300);
  assert.equal(labTimeoutSeconds(["demo", "--timeout=7"]), 7 + 300);
  // A --timeout the VMM refuses never reaches the lab; here it only falls back to the hour.
  assert.equal(labTimeoutSeconds(["run", "--timeout", "soon"]), 3600 + 300);
});

/** PIDs of processes whose command line mentions `text` (e.g. QEMU's -initrd in a private TMPDIR). */
function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "latin1").includes(text)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

test("viommu run in the KVM lab: Ctrl-C (SIGINT) during the run ends it with status 130 and leaves no QEMU", {
  timeout: 180_000,
}, async (t) => {
  if (NATIVE_KVM) return t.skip(HAS_KVM);
  if (!lab.ok) return t.skip(NO_LAB);
  // A private TMPDIR: the L1 QEMU's -initrd lies in it, so its command line identifies it.
  const dir = mkdtempSync(join(tmpdir(), "viommu-sigint-lab-"));
  try {
    const child = spawn(process.execPath, [join(REPO, "bin/viommu.mjs"), "run", "--timeout", "120"], {
      env: { ...process.env, TMPDIR: dir },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (s: string) => {
      stderr += s;
    });
    const exited = new Promise<number | null>((done) => child.on("close", (code) => done(code)));
    let qemu: number[] = [];
    for (let waited = 0; qemu.length === 0 && waited < 60_000; waited += 200) {
      await new Promise((r) => setTimeout(r, 200));
      qemu = processesMentioning(dir);
    }
    assert.ok(qemu.length > 0, `no L1 QEMU started within 60 s:\n${stderr}`);
    child.kill("SIGINT");
    const status = await exited;
    assert.equal(status, 130, stderr);
    let left = processesMentioning(dir);
    for (let waited = 0; left.length > 0 && waited < 5_000; waited += 100) {
      await new Promise((r) => setTimeout(r, 100));
      left = processesMentioning(dir);
    }
    assert.deepEqual(left, [], `still running after Ctrl-C: ${left.join(" ")} (QEMU was ${qemu.join(" ")})`);
    t.diagnostic(`L1 QEMU ${qemu.join(" ")} gone after SIGINT; viommu exit ${status}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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
