// Nested device assignment in the KVM lab, end to end:
//
//   L0 (this machine): `viommu serve` with a virtio-iommu and an edu,iommu=on over vfio-user;
//   L1 (QEMU TCG -cpu max, KVM inside, from kvm-lab.ts): those devices, edu bound to vfio-pci;
//   L2 (Linux under `viommu run` in L1): the edu assigned with --device vfio,host=BDF,iommu=on,
//      behind our virtio-iommu or our VT-d (caching-mode=on); vfio-edu-test runs in L2.
//
// L2's DMA crosses three translations: L2's vIOMMU (our model in L1) -> L1's VFIO (real type1)
// -> L0's virtio-iommu (our model in `viommu serve`). The run returns L2's RESULT lines, what
// `viommu run` printed in L1, and L0's stats (map requests, faults) from `viommu serve`.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { newcArchiveGz } from "./cpio.ts";
import { type KvmLabOutcome, kvmLabPaths, runInKvmLab } from "./kvm-lab.ts";
import { type GuestResult, labPaths, parseResults, SCRIPT_PRELUDE } from "./lab.ts";

export type NestedIommu = "virtio" | "intel";

/** One L2 inside the shared L1 boot: under `viommu run` (ours) or under QEMU (the peer). */
export type NestedL2Run = {
  /** The L1 VMM: ours (default), or QEMU with vfio-pci behind its own vIOMMU, for comparison. */
  vmm?: "viommu" | "qemu";
  /** L2's IOMMU in `viommu run` (intel gets caching-mode=on). */
  iommu: NestedIommu;
  /**
   * The L1 device assigned to L2: the edu (default), or L0's virtio-rng (MSI-X), which L1 binds
   * to vfio-pci when L0 serves one. In `command` they are $edu and $rng.
   */
  device?: "edu" | "rng";
  /** Extra properties of `--iommu virtio` (e.g. "page-size-mask=4k:2m"). */
  iommuProps?: string;
  /** The script L2 runs (lab prelude included); default: vfio-edu-test on the edu. */
  l2Script?: string;
  /** Extra words for L2's kernel command line. */
  l2Cmdline?: string;
  /**
   * The `viommu run` command line as shell text (docs/guide.md's assign-virtio or assign-intel,
   * as written), run in L1 with BDF (the edu), LAB (the lab cache) and INITRD (this run's L2
   * initrd) set; replaces the one built from iommu, iommuProps and l2Cmdline.
   */
  command?: string;
};

export type NestedAssignOptions = {
  /** The L2 runs, one after the other in one L1 boot (L1 boots are the expensive part). */
  runs: readonly NestedL2Run[];
  /** L0's virtio-iommu page-size-mask (e.g. "4k", "4k:2m"); default the serve default. */
  l0PageSizeMask?: string;
  /** More words for L1's kernel command line (e.g. "vfio_iommu_type1.dma_entry_limit=200"). */
  l1Cmdline?: string;
  /** Shell text that binds $BDF to vfio-pci in L1 (docs/guide.md's assign-bind); default our own. */
  bindCommands?: string;
  /** L0's `viommu serve` arguments for a socket directory (docs/guide.md's nested-l0); default our own. */
  l0ServeArgs?: (socketDir: string) => string[];
  timeoutMs: number;
  /**
   * Run a `viommu run` that timed out (status 124) once more, marked in the output: the L0
   * QEMU's SVM bug can hang an L2 at a random point (tools/guest-lab/README.md). For tests;
   * counts (benches, map counts) must not mix two attempts.
   */
  retryTimedOutOnce?: boolean;
  onLine?: (text: string) => void;
};

export type NestedL2Outcome = {
  readonly run: NestedL2Run;
  /** `viommu run`'s exit status in L1 (null: it never finished). */
  readonly exitCode: number | null;
  /** RESULT lines L2 printed. */
  readonly results: GuestResult[];
  /** Everything `viommu run` and L2 printed for this run (its last attempt). */
  readonly output: string;
  /** The first attempt timed out and this is the second (retryTimedOutOnce). */
  readonly retried: boolean;
};

export type NestedAssignOutcome = {
  lab: KvmLabOutcome;
  runs: NestedL2Outcome[];
  /** Every counter of L0's `viommu serve` (--stats-json), or null when it wrote none. */
  l0Stats: Record<string, unknown> | null;
  l0Stderr: string;
};

const L1_RAM_MIB = 3072;
/** L2's RAM: with VT-d every byte is mapped (pinned) in L1's VFIO while translation is off. */
const L2_RAM_MIB = 256;

export const L2_EDU_SCRIPT = `
edu=$(pci_find 1234 11e8)
[ -n "$edu" ] || { result edu-present fail "no 1234:11e8 device"; exit 1; }
result edu-present pass "bdf=$edu"
vfio-edu-test "$edu"
`;

const RUN_MARK = "NESTED-ASSIGN-RUN";

/** The L1 shell script: bind the edu to vfio-pci, then `viommu run` each L2 with it assigned. */
export function l1Script(
  repo: string,
  runs: readonly { run: NestedL2Run; initrd: string }[],
  bindCommands: string | undefined,
  retryTimedOutOnce: boolean,
): string {
  const kernel = labPaths().vmlinux;
  const lines = [
    'edu=""',
    "for d in /sys/bus/pci/devices/*; do",
    '  if [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ]; then edu=$(basename $d); fi',
    "done",
    '[ -n "$edu" ] || { echo "L1: no edu (1234:11e8) from viommu serve" >&2; exit 3; }',
    // L0's virtio-rng when it serves one (modern virtio-pci 1af4:1044): assigned with MSI-X.
    'rng=""',
    "for d in /sys/bus/pci/devices/*; do",
    '  if [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1044 ]; then rng=$(basename $d); fi',
    "done",
    `LAB=${labPaths().cache}`,
    ...["$edu", "$rng"].flatMap((dev) => [
      `if [ -n "${dev}" ]; then`,
      `BDF=${dev}`,
      ...(bindCommands === undefined
        ? [
            '[ -e "/sys/bus/pci/devices/$BDF/driver" ] && echo "$BDF" > "/sys/bus/pci/devices/$BDF/driver/unbind"',
            'echo vfio-pci > "/sys/bus/pci/devices/$BDF/driver_override"',
            'echo "$BDF" > /sys/bus/pci/drivers_probe',
          ]
        : [bindCommands]),
      'echo "L1: $BDF driver $(basename $(readlink /sys/bus/pci/devices/$BDF/driver)) group $(basename $(readlink /sys/bus/pci/devices/$BDF/iommu_group))" >&2',
      "fi",
    ]),
    "BDF=$edu",
    `cd ${repo} || exit 3`,
    "worst=0",
  ];
  runs.forEach(({ run, initrd }, i) => {
    const props = run.iommuProps ? `,${run.iommuProps}` : "";
    const cmdline = `console=ttyS0 panic=-1 loglevel=4 vfio_iommu_type1.allow_unsafe_interrupts=1 ${run.l2Cmdline ?? ""}`;
    const iommuArg = run.iommu === "virtio" ? `virtio${props}` : `intel,caching-mode=on${props}`;
    // QEMU's peer configuration: its virtio-iommu-pci, or intel-iommu with caching mode (which
    // needs the split irqchip for interrupt remapping), the same edu through vfio-pci.
    const qemuIommu =
      run.iommu === "virtio"
        ? "-M q35 -device virtio-iommu-pci"
        : `-M q35,kernel-irqchip=split -device intel-iommu,caching-mode=on${props}`;
    const command =
      run.command !== undefined
        ? run.command.trimEnd()
        : run.vmm === "qemu"
          ? `timeout 300 ${labPaths().qemu} -accel kvm -cpu host -m ${L2_RAM_MIB} -smp 1 -nodefaults -no-user-config ` +
            `-display none -monitor none -serial stdio -no-reboot ${qemuIommu} -device "vfio-pci,host=$edu" ` +
            `-kernel ${kernel} -initrd ${initrd} -append "${cmdline}"`
          : `node bin/viommu.mjs run --iommu ${iommuArg} --device "vfio,host=$${run.device ?? "edu"},iommu=on" --memory ${L2_RAM_MIB}M ` +
            `--kernel ${kernel} --initramfs ${initrd} --timeout 240 --cmdline "${cmdline}"`;
    lines.push(
      `echo "${RUN_MARK} ${i} start"`,
      `INITRD=${initrd}`,
      `${command} 2>&1`,
      "rc=$?",
      ...(retryTimedOutOnce && run.vmm !== "qemu"
        ? [`if [ "$rc" -eq 124 ]; then echo "${RUN_MARK} ${i} retry"; ${command} 2>&1; rc=$?; fi`]
        : []),
      `echo "${RUN_MARK} ${i} exit=$rc"`,
      '[ "$rc" -ne 0 ] && worst=$rc',
    );
  });
  lines.push("exit $worst");
  return lines.join("\n");
}

/** Cuts L1's stdout into the output of each run. */
export function splitRuns(stdout: string, runs: readonly NestedL2Run[]): NestedL2Outcome[] {
  return runs.map((run, i) => {
    const start = stdout.indexOf(`${RUN_MARK} ${i} start\n`);
    const endRe = new RegExp(`${RUN_MARK} ${i} exit=(\\d+)`);
    const end = endRe.exec(stdout);
    const whole = start < 0 ? "" : stdout.slice(start, end === null ? undefined : end.index);
    const retry = whole.indexOf(`${RUN_MARK} ${i} retry\n`);
    const output = retry < 0 ? whole : whole.slice(retry);
    const exitCode = end === null ? null : Number(end[1]);
    return { run, exitCode, results: parseResults(output), output, retried: retry >= 0 };
  });
}

/** Splits the line `viommu serve` prints into argv (words; single quotes group). */
export function splitServeLine(line: string): string[] {
  const out: string[] = [];
  const re = /'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m !== null; m = re.exec(line)) out.push(m[1] ?? m[2]);
  return out;
}

function startServe(
  repo: string,
  socketDir: string,
  pageSizeMask: string | undefined,
  serveArgs: string[] | undefined,
): Promise<{ child: ChildProcess; line: string; stderr: () => string }> {
  const iommu = pageSizeMask === undefined ? "virtio" : `virtio,page-size-mask=${pageSizeMask}`;
  const args = serveArgs ?? [
    "--socket-dir",
    socketDir,
    "--iommu",
    iommu,
    "--device",
    "edu,iommu=on",
    "--guest-ram-mib",
    String(L1_RAM_MIB),
  ];
  const child = spawn(
    process.execPath,
    ["bin/viommu.mjs", "serve", ...args, "--stats-json", join(socketDir, "stats.json")],
    { cwd: repo, stdio: ["ignore", "pipe", "pipe"] },
  );
  let err = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (t: string) => {
    err += t;
  });
  return new Promise((resolveStart, reject) => {
    let out = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (t: string) => {
      out += t;
      const nl = out.indexOf("\n");
      if (nl >= 0) resolveStart({ child, line: out.slice(0, nl), stderr: () => err });
    });
    child.on("exit", (code) =>
      reject(new Error(`viommu serve exited (${code}) before it was ready: ${err}`)),
    );
  });
}

/** Stops `viommu serve` with SIGTERM and reads every counter it wrote (--stats-json). */
function stopServe(child: ChildProcess, statsPath: string): Promise<Record<string, unknown> | null> {
  return new Promise((resolveStop) => {
    const done = () => {
      try {
        resolveStop(JSON.parse(readFileSync(statsPath, "utf8")) as Record<string, unknown>);
      } catch {
        resolveStop(null);
      }
    };
    if (child.exitCode !== null) return done();
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", () => {
      clearTimeout(timer);
      done();
    });
    child.kill("SIGTERM");
  });
}

/**
 * Guest programs newer than the provisioned ones (guest/*.c changed since provisioning):
 * compiled here as provision.sh does, to go into L2's initrd as /usr/bin/NAME.
 */
function freshGuestPrograms(repo: string, stage: string): { path: string; data: Buffer; mode: number }[] {
  const guest = join(repo, "guest");
  const newest = Math.max(...readdirSync(guest).map((f) => statSync(join(guest, f)).mtimeMs));
  const out: { path: string; data: Buffer; mode: number }[] = [];
  for (const f of readdirSync(guest)) {
    if (!f.endsWith(".c")) continue;
    const name = f.slice(0, -2);
    const provisioned = join(labPaths().cache, "guest-bin", name);
    if (existsSync(provisioned) && statSync(provisioned).mtimeMs > newest) continue;
    const bin = join(stage, `${name}-${randomBytes(4).toString("hex")}`);
    execFileSync("gcc", [
      "-O2",
      "-static",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-std=gnu11",
      `-I${guest}`,
      "-o",
      bin,
      join(guest, f),
    ]);
    out.push({ path: `usr/bin/${name}`, data: readFileSync(bin), mode: 0o755 });
    rmSync(bin, { force: true });
  }
  return out;
}

/** Runs the nested scenario: one L0, one L1 boot, the L2 runs in order. Never throws for a failing guest. */
export async function runNestedAssignment(opts: NestedAssignOptions): Promise<NestedAssignOutcome> {
  const repo = resolve(import.meta.dirname, "../..");
  const socketDir = mkdtempSync(join(tmpdir(), "viommu-nested-"));
  // L1 chroots into this machine's root over 9p, with a tmpfs on /tmp: L2's initrds must live
  // outside /tmp to be visible there; the lab cache is.
  const stage = join(kvmLabPaths().cache, "kvm-lab", "nested");
  mkdirSync(stage, { recursive: true });
  const base = readFileSync(labPaths().initramfs);
  const programs = freshGuestPrograms(repo, stage);
  const staged = opts.runs.map((run) => {
    const initrd = join(stage, `l2-${randomBytes(6).toString("hex")}.cpio.gz`);
    const script = `${SCRIPT_PRELUDE}\n${run.l2Script ?? L2_EDU_SCRIPT}\n`;
    writeFileSync(
      initrd,
      Buffer.concat([
        base,
        newcArchiveGz([{ path: "viommu/script.sh", data: script, mode: 0o755 }, ...programs]),
      ]),
    );
    return { run, initrd };
  });
  let serve: Awaited<ReturnType<typeof startServe>> | null = null;
  try {
    serve = await startServe(repo, socketDir, opts.l0PageSizeMask, opts.l0ServeArgs?.(socketDir));
    const lab = await runInKvmLab({
      command: ["sh", "-c", l1Script(repo, staged, opts.bindCommands, opts.retryTimedOutOnce === true)],
      cwd: repo,
      timeoutMs: opts.timeoutMs,
      memMiB: L1_RAM_MIB,
      qemuArgs: splitServeLine(serve.line),
      cmdline: `vfio_iommu_type1.allow_unsafe_interrupts=1 ${opts.l1Cmdline ?? ""}`.trimEnd(),
      onStdout: opts.onLine,
      onStderr: opts.onLine,
    });
    const l0Stats = await stopServe(serve.child, join(socketDir, "stats.json"));
    return { lab, runs: splitRuns(lab.stdout, opts.runs), l0Stats, l0Stderr: serve.stderr() };
  } finally {
    if (serve !== null && serve.child.exitCode === null) serve.child.kill("SIGKILL");
    for (const { initrd } of staged) rmSync(initrd, { force: true });
    rmSync(socketDir, { recursive: true, force: true });
  }
}
