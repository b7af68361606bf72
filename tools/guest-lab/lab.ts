// The Linux-guest lab: boots the Debian 13 kernel under QEMU 11 (TCG) with the base initramfs
// built by tools/provision/provision.sh, hands the guest a shell script, streams the serial
// console and collects the "RESULT name=... status=... detail=..." lines the script prints.
//
// How a script reaches the guest: a second gzip'd newc archive holding /viommu/script.sh (and
// any extra files) is appended to the base initramfs; the kernel unpacks both, and /init runs
// the script after loading the lab's modules, then powers off. Every run has a hard timeout
// after which QEMU is killed; QEMU is also killed if this process exits first.

import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { type CpioEntry, newcArchiveGz } from "./cpio.ts";

export type LabPaths = {
  cache: string;
  qemu: string;
  vmlinuz: string;
  vmlinux: string;
  initramfs: string;
  manifest: string;
};

export type LabManifest = {
  qemu: { version: string; package: string; binary: string };
  kernel: { release: string; package: string; vmlinuz: string; vmlinux: string };
  initramfs: string;
  guestPrograms: string[];
};

export type GuestResult = {
  name: string;
  status: "pass" | "fail" | "skip";
  detail: string;
  /** The whole line as printed by the guest. */
  line: string;
};

export type RunGuestOptions = {
  /** Shell script (busybox sh) that /init runs; it prints RESULT lines. */
  script: string;
  /** Extra QEMU arguments, e.g. ["-device", "virtio-iommu-pci", "-device", "edu"]. */
  qemuArgs?: string[];
  /** Hard limit for the whole run (boot + script + power-off); QEMU is killed after it. */
  timeoutMs?: number;
  /** Guest RAM in MiB (default 1024). */
  memMiB?: number;
  /** Guest CPUs (default 1). */
  smp?: number;
  /**
   * Guest RAM as a shared memfd (`memory-backend-memfd,share=on`), which vfio-user servers need
   * to map guest memory. Default false (QEMU's private RAM).
   */
  sharedMemory?: boolean;
  /**
   * Which kernel file QEMU loads: the bzImage ("vmlinuz", default) or the uncompressed ELF
   * ("vmlinux", booted through its PVH entry note), the one the KVM VMM uses.
   */
  kernelImage?: "vmlinuz" | "vmlinux";
  /** Extra kernel command line words (e.g. "hugepages=512"). */
  cmdline?: string;
  /** Extra files for the guest, keyed by path relative to /viommu/. */
  files?: Record<string, string | Uint8Array>;
  /** Called with each complete line of serial output as it arrives. */
  onLine?: (line: string) => void;
};

export type RunGuestOutcome = {
  results: GuestResult[];
  /** Serial console output (the guest kernel log at the console loglevel and the script's output). */
  log: string;
  /** QEMU's own stderr. */
  stderr: string;
  /** Host milliseconds from starting QEMU until /init reported its modules loaded; -1 if never. */
  bootMs: number;
  /** Guest uptime in seconds when /init reported ready; -1 if never. */
  guestReadyUptime: number;
  /** Exit status of the script as reported by /init; null if it never finished. */
  scriptExit: number | null;
  /** True when the hard timeout killed QEMU. */
  timedOut: boolean;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  durationMs: number;
};

const DEFAULT_TIMEOUT_MS = 120_000;

/**
 * Shell functions put in front of every script:
 *   result NAME pass|fail|skip DETAIL...   print a RESULT line
 *   check NAME DETAIL -- COMMAND...        run COMMAND; pass if it exits 0
 *   pci_find VENDOR DEVICE                 BDFs of PCI functions with that ID (hex, no 0x)
 *   pci_group BDF                          the IOMMU group number of BDF, empty if none
 */
export const SCRIPT_PRELUDE = `#!/bin/sh
result() { n="$1"; s="$2"; shift 2; echo "RESULT name=$n status=$s detail=$*"; }
check() {
  n="$1"; d="$2"; shift 3
  if "$@"; then result "$n" pass "$d"; else result "$n" fail "$d (command failed: $*)"; fi
}
pci_find() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = "0x$1" ] && [ "$(cat "$d/device")" = "0x$2" ] && basename "$d"
  done
}
pci_group() {
  [ -e "/sys/bus/pci/devices/$1/iommu_group" ] && basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"
}
`;
const MAX_LOG_BYTES = 16 * 1024 * 1024;

/** Where provisioning put everything (${VIOMMU_CACHE:-$HOME/.cache/viommu}). */
export function labPaths(): LabPaths {
  const cache = process.env.VIOMMU_CACHE || join(homedir(), ".cache", "viommu");
  return {
    cache,
    qemu: join(cache, "bin", "qemu-system-x86_64"),
    vmlinuz: join(cache, "kernel", "vmlinuz"),
    vmlinux: join(cache, "kernel", "vmlinux"),
    initramfs: join(cache, "initramfs.cpio.gz"),
    manifest: join(cache, "manifest.json"),
  };
}

/** Whether the lab is provisioned; `why` says what is missing (or names the versions). */
export function labAvailable(): { ok: boolean; why: string; manifest?: LabManifest } {
  const p = labPaths();
  if (process.platform !== "linux") return { ok: false, why: "the guest lab needs a Linux host" };
  for (const [what, file] of [
    ["manifest", p.manifest],
    ["QEMU wrapper", p.qemu],
    ["kernel", p.vmlinuz],
    ["initramfs", p.initramfs],
  ] as const) {
    if (!existsSync(file)) return { ok: false, why: `${what} missing: ${file}` };
  }
  try {
    accessSync(p.qemu, constants.X_OK);
  } catch {
    return { ok: false, why: `QEMU wrapper not executable: ${p.qemu}` };
  }
  let manifest: LabManifest;
  try {
    manifest = JSON.parse(readFileSync(p.manifest, "utf8")) as LabManifest;
  } catch (e) {
    return { ok: false, why: `manifest unreadable: ${(e as Error).message}` };
  }
  return {
    ok: true,
    why: `QEMU ${manifest.qemu?.version ?? "?"}, kernel ${manifest.kernel?.release ?? "?"}`,
    manifest,
  };
}

const RESULT_RE = /RESULT name=(\S+) status=(pass|fail|skip)(?: detail=(.*))?$/;

/** All RESULT lines in a console log, in order. */
export function parseResults(log: string): GuestResult[] {
  const out: GuestResult[] = [];
  for (const raw of log.split(/\r?\n/)) {
    const m = RESULT_RE.exec(raw.trimEnd());
    if (!m) continue;
    out.push({
      name: m[1]!,
      status: m[2] as GuestResult["status"],
      detail: (m[3] ?? "").trim(),
      line: raw.trim(),
    });
  }
  return out;
}

/** The last result with that name, or undefined. */
export function findResult(results: readonly GuestResult[], name: string): GuestResult | undefined {
  for (let i = results.length - 1; i >= 0; i--) if (results[i]!.name === name) return results[i];
  return undefined;
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

/** The QEMU command line for a run (exported for tests and debugging). */
export function qemuCommand(
  paths: LabPaths,
  initrd: string,
  opts: Pick<RunGuestOptions, "qemuArgs" | "memMiB" | "smp" | "cmdline" | "sharedMemory" | "kernelImage">,
): { file: string; args: string[] } {
  const append = ["console=ttyS0", "panic=-1", "loglevel=4", opts.cmdline ?? ""].join(" ").trim();
  const memMiB = opts.memMiB ?? 1024;
  const memory = opts.sharedMemory
    ? ["-object", `memory-backend-memfd,id=ram0,size=${memMiB}M,share=on`, "-machine", "memory-backend=ram0"]
    : [];
  return {
    file: paths.qemu,
    args: [
      "-machine",
      "q35",
      "-accel",
      "tcg",
      "-m",
      `${memMiB}M`,
      ...memory,
      "-smp",
      String(opts.smp ?? 1),
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-serial",
      "stdio",
      "-monitor",
      "none",
      "-no-reboot",
      "-kernel",
      opts.kernelImage === "vmlinux" ? paths.vmlinux : paths.vmlinuz,
      "-initrd",
      initrd,
      "-append",
      append,
      ...(opts.qemuArgs ?? []),
    ],
  };
}

/**
 * Boot the lab kernel with the script and collect its results. Never throws for guest
 * failures: look at `results`, `scriptExit` and `timedOut`. Throws only if the lab is not
 * provisioned or QEMU cannot be started.
 */
export async function runGuest(opts: RunGuestOptions): Promise<RunGuestOutcome> {
  const avail = labAvailable();
  if (!avail.ok)
    throw new Error(`guest lab not provisioned (${avail.why}): run tools/provision/provision.sh`);
  const paths = labPaths();
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const work = mkdtempSync(join(tmpdir(), "viommu-lab-"));
  try {
    const script = `${SCRIPT_PRELUDE}\n${opts.script}\n`;
    const entries: CpioEntry[] = [{ path: "viommu/script.sh", data: script, mode: 0o755 }];
    for (const [name, data] of Object.entries(opts.files ?? {})) {
      entries.push({ path: `viommu/${name}`, data, mode: 0o755 });
    }
    const initrd = join(work, "initrd");
    writeFileSync(initrd, Buffer.concat([readFileSync(paths.initramfs), newcArchiveGz(entries)]));
    const { file, args } = qemuCommand(paths, initrd, opts);
    return await runQemu(file, args, timeoutMs, opts.onLine);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function runQemu(
  file: string,
  args: string[],
  timeoutMs: number,
  onLine: ((line: string) => void) | undefined,
): Promise<RunGuestOutcome> {
  installExitHook();
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    live.add(child);
    let log = "";
    let stderr = "";
    let pending = "";
    let bootMs = -1;
    let guestReadyUptime = -1;
    let scriptExit: number | null = null;
    let timedOut = false;
    let settled = false;

    const onText = (text: string) => {
      if (log.length < MAX_LOG_BYTES) log += text;
      pending += text;
      let nl = pending.indexOf("\n");
      while (nl >= 0) {
        const line = pending.slice(0, nl).replace(/\r$/, "");
        pending = pending.slice(nl + 1);
        const ready = /VIOMMU-LAB: ready uptime=([\d.]+)/.exec(line);
        if (ready && bootMs < 0) {
          bootMs = Date.now() - started;
          guestReadyUptime = Number(ready[1]);
        }
        const done = /VIOMMU-LAB: script exit=(\d+)/.exec(line);
        if (done) scriptExit = Number(done[1]);
        onLine?.(line);
        nl = pending.indexOf("\n");
      }
    };
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", onText);
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (t: string) => {
      if (stderr.length < MAX_LOG_BYTES) stderr += t;
    });

    const hard = setTimeout(() => {
      timedOut = true;
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 2000).unref();
    }, timeoutMs);

    child.on("error", (err) => {
      clearTimeout(hard);
      live.delete(child);
      if (!settled) {
        settled = true;
        reject(err);
      }
    });
    child.on("close", (exitCode, signal) => {
      clearTimeout(hard);
      live.delete(child);
      if (pending) onText("\n");
      if (settled) return;
      settled = true;
      resolve({
        results: parseResults(log),
        log,
        stderr,
        bootMs,
        guestReadyUptime,
        scriptExit,
        timedOut,
        exitCode,
        signal,
        durationMs: Date.now() - started,
      });
    });
  });
}

/** A short description of a run for assertion messages: results and the tail of the log. */
export function describeRun(run: RunGuestOutcome, tailLines = 60): string {
  const tail = run.log.split("\n").slice(-tailLines).join("\n");
  return [
    `timedOut=${run.timedOut} scriptExit=${run.scriptExit} exitCode=${run.exitCode} bootMs=${run.bootMs}`,
    ...run.results.map((r) => r.line),
    "--- console tail ---",
    tail,
    run.stderr ? `--- qemu stderr ---\n${run.stderr.slice(-4000)}` : "",
  ].join("\n");
}
