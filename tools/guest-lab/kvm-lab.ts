// The KVM lab: run one command with a working /dev/kvm on a machine that has none.
//
// QEMU 11 under TCG with `-cpu max` emulates AMD SVM with nested paging. The lab boots Debian's
// Linux 6.12 on it (L1) with the initramfs that tools/provision/provision.sh builds
// (kvm-lab.cpio.gz; /init is tools/provision/kvm-lab-init.sh): /init loads kvm_amd, mounts this
// machine's root read-only over virtio-9p (plus the directories the caller wants writable),
// chroots into it and runs the command. The command therefore sees the same paths, the same
// `node` and the same repository as the host, and a real /dev/kvm.
//
// Channels: the command's stdout and stderr reach the host on two virtio-serial ports (UNIX
// sockets this process listens on), byte for byte; L1's console (kernel log and /init's step
// lines) is QEMU's stdout. /init ends each port with a per-run token and prints the exit status
// on the console; the host then stops QEMU. Every run has a hard timeout after which QEMU is
// killed; QEMU also dies with this process (PR_SET_PDEATHSIG through setpriv, and an exit hook).

import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { type CpioEntry, newcArchiveGz } from "./cpio.ts";
import { labPaths } from "./lab.ts";

export type KvmLabPaths = {
  cache: string;
  qemu: string;
  vmlinuz: string;
  /** The L1 initramfs (busybox, kvm_amd and 9p modules, /init). */
  initramfs: string;
  /** Writable directory shared into every L1 boot (tsx's transform cache lives in it). */
  scratch: string;
  /** Present once provisioning booted L1 and ran node in it. */
  smokeStamp: string;
};

export type RunInKvmLabOptions = {
  /** The command and its arguments; argv[0] is looked up on PATH inside L1. */
  command: readonly string[];
  /** Working directory inside L1 (the same path as on the host). Default: process.cwd(). */
  cwd?: string;
  /**
   * Environment of the command, on top of PATH, TERM, CI, NODE_OPTIONS and VIOMMU_* from this
   * process, and VIOMMU_IN_KVM_LAB=1 / VIOMMU_KVM_RUNS_LINUX=1, which the lab sets.
   */
  env?: Record<string, string>;
  /** Host directories the command may write (e.g. the repository, for build/). Default none. */
  writable?: readonly string[];
  /** Hard limit for the whole run (L1 boot + command); QEMU is killed after it. Required. */
  timeoutMs: number;
  /** L1 vCPUs (default 2, multi-threaded TCG). */
  cpus?: number;
  /** L1 RAM in MiB (default 3072: room for L2 guests with several vCPUs). */
  memMiB?: number;
  /** 2 MiB huge pages reserved in L1 and mounted at /dev/hugepages (default 0). */
  hugePages?: number;
  /** Each chunk of the command's stdout / stderr as it arrives. */
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  /** Each complete line of L1's console (kernel log and /init's "VIOMMU-KVM-LAB:" lines). */
  onConsole?: (line: string) => void;
  /** Aborting kills QEMU; the outcome then says failedStep "aborted". */
  signal?: AbortSignal;
  /**
   * More QEMU arguments for L1, e.g. the line `viommu serve` prints (vfio-user devices, a shared
   * memory backend of memMiB, a VIOT): L1 then has our devices and our IOMMU.
   */
  qemuArgs?: readonly string[];
  /** More words for L1's kernel command line (`module.param=value` reaches insmod in /init). */
  cmdline?: string;
};

export type KvmLabOutcome = {
  /** The command's exit status as /init reported it; null when it never finished. */
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** L1's console: kernel messages at loglevel 4 and /init's step lines. */
  console: string;
  /** Null on success; otherwise the step that failed ("qemu", "boot", "kvm", "9p", ..., "run"). */
  failedStep: string | null;
  /** One line saying what went wrong, or null. */
  failure: string | null;
  timedOut: boolean;
  /** Host milliseconds from starting QEMU until the command started in L1; -1 if it never did. */
  bootMs: number;
  durationMs: number;
  /** QEMU's process ID (gone when the promise resolves); -1 if it never started. */
  qemuPid: number;
};

const MAX_CAPTURE_CHARS = 32 * 1024 * 1024;
const ENV_PASSTHROUGH = /^(PATH|TERM|CI|NODE_OPTIONS|VIOMMU_[A-Z0-9_]+)$/;
/** After /init reports the exit status, how long to wait for both streams' end tokens. */
const DRAIN_MS = 10_000;

/** Where provisioning put the lab (${VIOMMU_CACHE:-$HOME/.cache/viommu}). */
export function kvmLabPaths(): KvmLabPaths {
  const p = labPaths();
  return {
    cache: p.cache,
    qemu: p.qemu,
    vmlinuz: p.vmlinuz,
    initramfs: join(p.cache, "kvm-lab.cpio.gz"),
    scratch: join(p.cache, "kvm-lab", "scratch"),
    smokeStamp: join(p.cache, "kvm-lab", "smoke.ok"),
  };
}

/** Whether the KVM lab is provisioned; `why` names what is missing. */
export function kvmLabAvailable(): { ok: boolean; why: string } {
  if (process.platform !== "linux" || process.arch !== "x64")
    return { ok: false, why: "the KVM lab needs an x86-64 Linux host" };
  const p = kvmLabPaths();
  for (const [what, file] of [
    ["QEMU wrapper", p.qemu],
    ["kernel", p.vmlinuz],
    ["L1 initramfs", p.initramfs],
    ["scratch directory", p.scratch],
    ["smoke-boot stamp (provisioning never booted L1)", p.smokeStamp],
  ] as const) {
    if (!existsSync(file)) return { ok: false, why: `KVM lab not provisioned: ${what} missing (${file})` };
  }
  return { ok: true, why: `KVM lab: ${p.initramfs}` };
}

/** sh single-quoting. */
export function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** QEMU's option syntax doubles commas inside a value. */
export function qemuValue(s: string): string {
  return s.replaceAll(",", ",,");
}

function labEnv(extra: Record<string, string> | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && ENV_PASSTHROUGH.test(k)) env[k] = v;
  // L1's tmpfs (kvm-lab-init.sh); the host's /tmp is visible at /tmp, read-only unless writable.
  env.TMPDIR = "/run/tmp";
  env.HOME = "/run/tmp";
  // HOME differs in L1: name the host's lab cache (kernels, initramfs) explicitly.
  env.VIOMMU_CACHE ??= kvmLabPaths().cache;
  env.VIOMMU_IN_KVM_LAB = "1";
  // Measured: KVM in L1 (nested SVM with NPT under TCG) runs Linux guests.
  env.VIOMMU_KVM_RUNS_LINUX = "1";
  Object.assign(env, extra);
  for (const k of Object.keys(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
      throw new Error(`KVM lab: bad environment variable name ${JSON.stringify(k)}`);
  }
  return env;
}

/** The job archive appended to the L1 initramfs: /viommu/job.sh and /viommu/command.sh. */
function jobArchive(opts: RunInKvmLabOptions, token: string, writable: readonly string[]): Buffer {
  const cwd = resolve(opts.cwd ?? process.cwd());
  const env = labEnv(opts.env);
  const command = [
    "#!/bin/sh",
    "# Written by tools/guest-lab/kvm-lab.ts; runs chrooted into the host root inside L1.",
    ...Object.entries(env).map(([k, v]) => `export ${k}=${shQuote(v)}`),
    `cd ${shQuote(cwd)} || { echo "KVM lab: no directory ${cwd.replaceAll('"', "")} in L1" >&2; exit 125; }`,
    `exec ${opts.command.map(shQuote).join(" ")}`,
    "",
  ].join("\n");
  const job = [
    `LAB_WRITABLE=${shQuote(writable.map((dir, i) => `w${i}:${dir}`).join(" "))}`,
    `LAB_HUGEPAGES=${Math.max(0, Math.floor(opts.hugePages ?? 0))}`,
    `LAB_TOKEN=${token}`,
    "",
  ].join("\n");
  const entries: CpioEntry[] = [
    { path: "viommu/job.sh", data: job, mode: 0o644 },
    { path: "viommu/command.sh", data: command, mode: 0o755 },
  ];
  return newcArchiveGz(entries);
}

/** The QEMU command line for L1 (exported for tests and debugging). */
export function kvmLabQemuArgs(
  paths: KvmLabPaths,
  initrd: string,
  sockets: { out: string; err: string },
  writable: readonly string[],
  opts: Pick<RunInKvmLabOptions, "cpus" | "memMiB" | "qemuArgs" | "cmdline">,
): string[] {
  const virtfs = (path: string, tag: string, readonly: boolean) => [
    "-virtfs",
    `local,path=${qemuValue(path)},mount_tag=${tag},security_model=none,multidevs=remap${readonly ? ",readonly=on" : ""}`,
  ];
  return [
    "-machine",
    "q35",
    // Multi-threaded TCG: one host thread per L1 vCPU. -cpu max includes svm and npt.
    "-accel",
    "tcg,thread=multi",
    "-cpu",
    "max",
    "-smp",
    String(opts.cpus ?? 2),
    "-m",
    `${opts.memMiB ?? 3072}M`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-monitor",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    paths.vmlinuz,
    "-initrd",
    initrd,
    "-append",
    `console=ttyS0 panic=-1 loglevel=4 mitigations=off ${opts.cmdline ?? ""}`.trimEnd(),
    ...virtfs("/", "host", true),
    ...virtfs(paths.scratch, "scratch", false),
    ...writable.flatMap((dir, i) => virtfs(dir, `w${i}`, false)),
    "-device",
    "virtio-serial-pci",
    "-chardev",
    `socket,id=out,path=${qemuValue(sockets.out)}`,
    "-device",
    "virtserialport,chardev=out,name=out",
    "-chardev",
    `socket,id=err,path=${qemuValue(sockets.err)}`,
    "-device",
    "virtserialport,chardev=err,name=err",
    ...(opts.qemuArgs ?? []),
  ];
}

// QEMU processes still running, killed if this process exits before their runs end.
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const child of live) child.kill("SIGKILL");
  });
}

let setprivPath: string | null | undefined;
/** setpriv(1) from util-linux, to give QEMU PR_SET_PDEATHSIG; null when absent. */
export function setpriv(): string | null {
  if (setprivPath === undefined) {
    setprivPath = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p)) ?? null;
  }
  return setprivPath;
}

/**
 * A byte stream ending with a token: passes text on as it comes, holding back just enough to
 * recognise the token across chunk boundaries, and notes when the token arrived.
 */
export class TokenStream {
  text = "";
  ended = false;
  private held = "";
  private readonly token: string;
  private readonly sink: ((text: string) => void) | undefined;
  constructor(token: string, sink: ((text: string) => void) | undefined) {
    this.token = token;
    this.sink = sink;
  }
  push(chunk: string): void {
    if (this.ended) return;
    const data = this.held + chunk;
    const at = data.indexOf(this.token);
    if (at >= 0) {
      this.emit(data.slice(0, at));
      this.held = "";
      this.ended = true;
      return;
    }
    const keep = Math.min(data.length, this.token.length - 1);
    this.emit(data.slice(0, data.length - keep));
    this.held = data.slice(data.length - keep);
  }
  flush(): void {
    if (!this.ended && this.held) this.emit(this.held);
    this.held = "";
  }
  private emit(text: string): void {
    if (!text) return;
    if (this.text.length < MAX_CAPTURE_CHARS) this.text += text;
    this.sink?.(text);
  }
}

/** Listen on a UNIX socket for QEMU's chardev connection; resolves once listening. */
export function listenOnce(path: string, stream: TokenStream, sockets: Set<Socket>): Promise<Server> {
  return new Promise((resolveListen, reject) => {
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.setEncoding("utf8");
      socket.on("data", (t: string) => stream.push(t));
      socket.on("error", () => {});
      socket.on("close", () => sockets.delete(socket));
      server.close();
    });
    server.on("error", reject);
    server.listen(path, () => resolveListen(server));
  });
}

/**
 * Boot L1 and run one command in it with /dev/kvm. Never throws for a failing command or lab:
 * look at `exitCode`, `failedStep` and `failure`. Throws only for bad options.
 */
export async function runInKvmLab(opts: RunInKvmLabOptions): Promise<KvmLabOutcome> {
  if (!(opts.command.length > 0)) throw new Error("KVM lab: empty command");
  if (!(Number.isFinite(opts.timeoutMs) && opts.timeoutMs > 0))
    throw new Error("KVM lab: timeoutMs is required");
  const started = Date.now();
  const fail = (failedStep: string, failure: string): KvmLabOutcome => ({
    exitCode: null,
    stdout: "",
    stderr: "",
    console: "",
    failedStep,
    failure,
    timedOut: false,
    bootMs: -1,
    durationMs: Date.now() - started,
    qemuPid: -1,
  });
  const avail = kvmLabAvailable();
  if (!avail.ok) return fail("provision", `${avail.why}: run tools/provision/provision.sh`);
  const writable = (opts.writable ?? []).map((d) => resolve(d));
  for (const dir of writable)
    if (!existsSync(dir)) return fail("setup", `writable directory ${dir} does not exist`);

  const paths = kvmLabPaths();
  const work = mkdtempSync(join(tmpdir(), "viommu-kvm-lab-"));
  const token = `VIOMMU-KVM-LAB-EOF-${randomBytes(12).toString("hex")}`;
  const out = new TokenStream(token, opts.onStdout);
  const err = new TokenStream(token, opts.onStderr);
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  try {
    const initrd = join(work, "initrd");
    writeFileSync(initrd, Buffer.concat([readFileSync(paths.initramfs), jobArchive(opts, token, writable)]));
    const socketPaths = { out: join(work, "out.sock"), err: join(work, "err.sock") };
    servers.push(
      await listenOnce(socketPaths.out, out, sockets),
      await listenOnce(socketPaths.err, err, sockets),
    );
    const args = kvmLabQemuArgs(paths, initrd, socketPaths, writable, opts);
    const pdeath = setpriv();
    const [file, argv] = pdeath
      ? [pdeath, ["--pdeathsig", "SIGKILL", "--", paths.qemu, ...args]]
      : [paths.qemu, args];
    return await superviseL1(file, argv, opts, { out, err, started });
  } finally {
    for (const s of sockets) s.destroy();
    for (const s of servers) s.close();
    rmSync(work, { recursive: true, force: true });
  }
}

const STEP_RE = /VIOMMU-KVM-LAB: step=(\S+)/;
const FAILED_RE = /VIOMMU-KVM-LAB: failed step=(\S+): (.*)$/;
const EXIT_RE = /VIOMMU-KVM-LAB: exit=(\d+)/;

// About 100 lines, kept whole: one QEMU process supervised by event handlers that share the run's
// state (step, failure, timers); it runs only in the KVM lab.
// biome-ignore lint/complexity/noExcessiveLinesPerFunction: one supervisor, see above
export function superviseL1(
  file: string,
  argv: string[],
  opts: Pick<RunInKvmLabOptions, "timeoutMs" | "onConsole" | "signal">,
  io: { out: TokenStream; err: TokenStream; started: number },
): Promise<KvmLabOutcome> {
  installExitHook();
  // biome-ignore lint/complexity/noExcessiveLinesPerFunction: the supervisor itself, see above
  return new Promise((resolveRun) => {
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"] });
    live.add(child);
    let consoleText = "";
    let qemuStderr = "";
    let pending = "";
    let step = "boot";
    let failedStep: string | null = null;
    let failure: string | null = null;
    let exitCode: number | null = null;
    let bootMs = -1;
    let timedOut = false;
    let stopping = false;

    const stop = () => {
      if (stopping) return;
      stopping = true;
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 3000).unref();
    };
    let drain: NodeJS.Timeout | undefined;
    const maybeDone = () => {
      if (exitCode === null) return;
      if (io.out.ended && io.err.ended) stop();
      else drain ??= setTimeout(stop, DRAIN_MS);
    };
    const onLine = (line: string) => {
      const s = STEP_RE.exec(line);
      if (s) {
        step = s[1]!;
        if (step === "run" && bootMs < 0) bootMs = Date.now() - io.started;
      }
      const f = FAILED_RE.exec(line);
      if (f) {
        failedStep = f[1]!;
        failure = `KVM lab: step ${f[1]} failed in L1: ${f[2]}`;
        stop();
      }
      const e = EXIT_RE.exec(line);
      if (e) {
        exitCode = Number(e[1]);
        maybeDone();
      }
      opts.onConsole?.(line);
    };
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (text: string) => {
      if (consoleText.length < MAX_CAPTURE_CHARS) consoleText += text;
      pending += text;
      for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
        onLine(pending.slice(0, nl).replace(/\r$/, ""));
        pending = pending.slice(nl + 1);
      }
    });
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (t: string) => {
      if (qemuStderr.length < 65536) qemuStderr += t;
    });
    // The streams' end tokens can arrive after the exit line.
    const poll = setInterval(maybeDone, 100);

    const hard = setTimeout(() => {
      timedOut = true;
      stop();
    }, opts.timeoutMs);
    const onAbort = () => {
      failedStep ??= "aborted";
      failure ??= "KVM lab: run aborted";
      stop();
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();

    let finished = false;
    const finish = (qemuExit: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(hard);
      clearInterval(poll);
      if (drain) clearTimeout(drain);
      opts.signal?.removeEventListener("abort", onAbort);
      live.delete(child);
      if (pending) onLine(pending);
      io.out.flush();
      io.err.flush();
      if (timedOut && exitCode === null) {
        failedStep = step;
        failure = `KVM lab: timed out after ${Math.round(opts.timeoutMs / 1000)} s in step ${step}`;
      } else if (exitCode === null && failedStep === null) {
        failedStep = step === "boot" && !consoleText ? "qemu" : step;
        const why = qemuStderr.trim().split("\n").slice(-3).join(" | ");
        failure = `KVM lab: L1 stopped in step ${step} before the command finished (QEMU ${qemuExit})${why ? `: ${why}` : ""}`;
      }
      resolveRun({
        exitCode,
        stdout: io.out.text,
        stderr: io.err.text,
        console: consoleText + (qemuStderr ? `\n--- qemu stderr ---\n${qemuStderr}` : ""),
        failedStep,
        failure,
        timedOut,
        bootMs,
        durationMs: Date.now() - io.started,
        qemuPid: child.pid ?? -1,
      });
    };
    child.on("error", (e) => {
      failedStep = "qemu";
      failure = `KVM lab: cannot start QEMU: ${e.message}`;
      finish("not started");
    });
    child.on("close", (code, signal) => finish(signal ? `killed by ${signal}` : `exit ${code}`));
  });
}

/** One-line summary of an outcome, for messages. */
export function describeKvmLabRun(run: KvmLabOutcome): string {
  const head = run.failure ?? `command exit ${run.exitCode}`;
  return `${head}; L1 boot ${run.bootMs} ms; total ${run.durationMs} ms${run.timedOut ? "; TIMED OUT" : ""}`;
}
