// Linux 6.12 (the guest lab's kernel and base initramfs) under `viommu run` (this machine's KVM,
// or the KVM lab's when run inside it): builds the initrd
// (base initramfs + a small archive with /viommu/script.sh, as tools/guest-lab/lab.ts does for
// QEMU), runs `node bin/viommu.mjs run` (the JavaScript build: vCPU threads start fast), and
// collects the guest's RESULT lines from COM1 and the VMM's summary from stderr.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { newcArchiveGz } from "./cpio.ts";
import { setpriv } from "./kvm-lab.ts";
import { type GuestResult, labPaths, parseResults, SCRIPT_PRELUDE } from "./lab.ts";

const REPO = resolve(import.meta.dirname, "../..");
/** Seconds past the VMM's --timeout after which the VMM is killed. */
const BACKSTOP_S = 60;

export type LinuxRun = {
  results: GuestResult[];
  /** The guest's COM1 output (kernel console at loglevel 4, /init and the script). */
  serial: string;
  /** The VMM's stderr: its one-line messages and the end-of-run summary. */
  stderr: string;
  status: number | null;
  /** Guest uptime (s) when /init was ready; -1 if never. */
  readyUptime: number;
  /** Host ms from spawning the VMM to /init's ready line; -1 if never. */
  readyMs: number;
  durationMs: number;
};

export type LinuxRunOptions = {
  kernel: "vmlinux" | "vmlinuz";
  cpus: number;
  /** `--iommu` value, or undefined for no vIOMMU. */
  iommu?: string;
  /** Extra `viommu run` arguments (devices, disks). */
  args?: string[];
  cmdline?: string;
  script: string;
  memory?: string;
  timeoutS: number;
  /** Each chunk of COM1 output as it arrives (progress, debugging). */
  onSerial?: (text: string) => void;
  /** Extra environment for the VMM process. */
  env?: Record<string, string>;
  /** Options for the VMM's node (before its script), e.g. `--cpu-prof` (not allowed in NODE_OPTIONS). */
  nodeArgs?: string[];
};

/** Runs the script in Linux under `viommu run`; never throws for guest failures. */
export async function runLinux(opts: LinuxRunOptions): Promise<LinuxRun> {
  const paths = labPaths();
  const work = mkdtempSync(join(tmpdir(), "viommu-linux-"));
  try {
    const initrd = join(work, "initrd");
    const extra = newcArchiveGz([
      { path: "viommu/script.sh", data: `${SCRIPT_PRELUDE}\n${opts.script}\n`, mode: 0o755 },
    ]);
    writeFileSync(initrd, Buffer.concat([readFileSync(paths.initramfs), extra]));
    const kernel = opts.kernel === "vmlinux" ? paths.vmlinux : paths.vmlinuz;
    const cmdline = ["console=ttyS0", "panic=-1", "loglevel=4", opts.cmdline ?? ""].join(" ").trim();
    const argv = [
      ...(opts.nodeArgs ?? []),
      join(REPO, "bin/viommu.mjs"),
      "run",
      "--kernel",
      kernel,
      "--initramfs",
      initrd,
      "--cmdline",
      cmdline,
      "--cpus",
      String(opts.cpus),
      "--memory",
      opts.memory ?? "512M",
      "--timeout",
      String(opts.timeoutS),
      ...(opts.iommu ? ["--iommu", opts.iommu] : []),
      ...(opts.args ?? []),
    ];
    const started = Date.now();
    return await new Promise<LinuxRun>((done) => {
      // Nothing outlives the caller: the VMM gets PR_SET_PDEATHSIG (through setpriv) where
      // available, and is killed on this process's exit in any case.
      const pdeath = setpriv();
      const [file, args] = pdeath
        ? [pdeath, ["--pdeathsig", "SIGKILL", "--", process.execPath, ...argv]]
        : [process.execPath, argv];
      const child = spawn(file, args, {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, ...opts.env },
      });
      const killOnExit = () => child.kill("SIGKILL");
      process.on("exit", killOnExit);
      let serial = "";
      let stderr = "";
      let readyMs = -1;
      child.stdout.setEncoding("latin1");
      child.stdout.on("data", (t: string) => {
        serial += t;
        opts.onSerial?.(t);
        if (readyMs < 0 && serial.includes("VIOMMU-LAB: ready")) readyMs = Date.now() - started;
      });
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (t: string) => {
        stderr += t;
      });
      // The VMM's own --timeout should end the run; this is the backstop if it does not.
      const backstop = setTimeout(
        () => {
          stderr += `\n[viommu-linux] no exit ${opts.timeoutS + BACKSTOP_S} s after start: SIGKILL\n`;
          child.kill("SIGKILL");
        },
        (opts.timeoutS + BACKSTOP_S) * 1000,
      );
      child.on("close", (status) => {
        clearTimeout(backstop);
        process.off("exit", killOnExit);
        const ready = /VIOMMU-LAB: ready uptime=([\d.]+)/.exec(serial);
        done({
          results: parseResults(serial),
          serial,
          stderr,
          status,
          readyUptime: ready ? Number(ready[1]) : -1,
          readyMs,
          durationMs: Date.now() - started,
        });
      });
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** For assertion messages: the results, the VMM's stderr and the serial tail. */
export function describeLinuxRun(run: LinuxRun, tailLines = 50): string {
  return [
    `status=${run.status} readyUptime=${run.readyUptime}s readyMs=${run.readyMs} durationMs=${run.durationMs}`,
    ...run.results.map((r) => r.line),
    "--- viommu run stderr ---",
    run.stderr.slice(-4000),
    "--- serial tail ---",
    run.serial.split("\n").slice(-tailLines).join("\n"),
  ].join("\n");
}

/** A disk image with a deterministic pattern, and its SHA-256 (hex). */
export function patternDisk(dir: string, sizeBytes: number): { path: string; sha256: string } {
  const buf = Buffer.alloc(sizeBytes);
  let x = 0x12345678;
  for (let i = 0; i < sizeBytes; i += 4) {
    // xorshift32: the pattern differs in every 4 bytes, so a misplaced block changes the hash.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE(x >>> 0, i);
  }
  const path = join(dir, "pattern.img");
  writeFileSync(path, buf);
  return { path, sha256: createHash("sha256").update(buf).digest("hex") };
}
