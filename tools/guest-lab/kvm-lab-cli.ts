// `viommu run` and `viommu demo` on a machine without a usable /dev/kvm: bin/viommu.mjs hands
// the command line to runViommuInKvmLab, which runs the same command inside the KVM lab (L1 with
// nested KVM, tools/guest-lab/kvm-lab.ts) and passes its output and exit status through. One
// line on stderr says why; the first use provisions the lab (tools/provision/provision.sh, with
// its progress lines on stderr). With a usable /dev/kvm bin/viommu.mjs never gets here.
import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { readMachineRequest } from "../../src/cli/boot-files.ts";
import { DEMO_RUNS } from "../../src/cli/demo.ts";
import { parseRunOptions } from "../../src/cli/run-options.ts";
import { checkMachineRequest } from "../../src/vmm/machine-factory.ts";
import { kvmLabAvailable, runInKvmLab } from "./kvm-lab.ts";

/** Extra time the lab gets beyond the VMM's own --timeout: L1 boot and node start-up in L1. */
const LAB_OVERHEAD_S = 300;
/** The lab's timeout when the VMM has none (it is always set): one hour plus the overhead. */
const DEFAULT_RUN_S = 3600;

/** The VMM's --timeout in seconds, if given (as `--timeout S` or `--timeout=S`). */
function vmmTimeoutSeconds(args: readonly string[]): number | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const v = a === "--timeout" ? args[i + 1] : a.startsWith("--timeout=") ? a.slice(10) : undefined;
    if (v !== undefined && Number.isFinite(Number(v)) && Number(v) > 0) return Number(v);
  }
  return undefined;
}

/** The lab's own timeout for `viommu ARGS` (always set): the VMM's --timeout or an hour, plus L1's boot. */
export function labTimeoutSeconds(args: readonly string[]): number {
  return (vmmTimeoutSeconds(args) ?? DEFAULT_RUN_S) + LAB_OVERHEAD_S;
}

function provision(repo: string, stderr: (s: string) => void): Promise<number> {
  return new Promise((done) => {
    const child = spawn(resolve(repo, "tools/provision/provision.sh"), [], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.on("data", (d: Buffer) => stderr(d.toString()));
    child.stderr.on("data", (d: Buffer) => stderr(d.toString()));
    child.on("error", (e) => {
      stderr(`viommu: cannot run provision.sh: ${e.message}\n`);
      done(1);
    });
    child.on("close", (code) => done(code ?? 1));
  });
}

/**
 * Passes text on in whole lines: stdout and stderr arrive from L1 on separate channels in
 * arbitrary chunks, and a terminal showing both should not get a line cut by the other.
 */
function lineWriter(write: (s: string) => void): { push: (t: string) => void; end: () => void } {
  let pending = "";
  return {
    push: (t) => {
      pending += t;
      const nl = pending.lastIndexOf("\n");
      if (nl < 0) return;
      write(pending.slice(0, nl + 1));
      pending = pending.slice(nl + 1);
    },
    end: () => {
      if (pending) write(pending);
      pending = "";
    },
  };
}

/**
 * Runs `node <repo>/bin/viommu.mjs ...args` in the KVM lab. Returns the exit status: the VMM's,
 * or 2 when the lab itself could not run it (one line says which step failed).
 */
export async function runViommuInKvmLab(repo: string, args: readonly string[], why: string): Promise<number> {
  const err = (s: string) => process.stderr.write(s);
  // A bad argument, or anything the machine would refuse before KVM (a kernel it cannot boot,
  // isa-debug-exit on its ports, an option of the other architecture), gets its one line and
  // status 2 here, as without the lab: no L1 boot for it. The lab's L1 is x86-64.
  try {
    const options = parseRunOptions(
      args[0] === "demo" ? [...(DEMO_RUNS[0] ?? []), ...args.slice(1)] : args.slice(1),
    );
    if (!options.help) checkMachineRequest(readMachineRequest(options), "x86_64");
  } catch (e) {
    err(`viommu run: ${(e as Error).message}\n`);
    return 2;
  }
  const labTimeoutS = labTimeoutSeconds(args);
  err(
    `viommu: ${why}: running "viommu ${args[0]}" in the KVM lab (Linux with nested KVM under QEMU TCG, ` +
      `tools/guest-lab/README.md; lab timeout ${labTimeoutS} s)\n`,
  );
  if (!kvmLabAvailable().ok) {
    err("viommu: first use: provisioning the KVM lab with tools/provision/provision.sh (a few minutes)\n");
    const status = await provision(repo, err);
    const after = kvmLabAvailable();
    if (status !== 0 || !after.ok) {
      err(`viommu: the KVM lab could not be provisioned (provision.sh exit ${status}; ${after.why})\n`);
      return 2;
    }
  }
  // The VMM writes build/ in the repository, files the user names (often in /tmp or the current
  // directory): those are writable in L1, the rest of the host root is read-only.
  const cwd = process.cwd();
  const writable = [...new Set([repo, "/tmp", cwd])].filter(
    (d, _, all) => d !== "/" && !all.some((o) => o !== d && d.startsWith(`${o}/`)),
  );
  const abort = new AbortController();
  // Ctrl-C reaches QEMU too (same process group); here it only ends the wait.
  const onSignal = () => abort.abort();
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const out = lineWriter((t) => process.stdout.write(t));
  const errLines = lineWriter(err);
  try {
    const run = await runInKvmLab({
      command: ["node", resolve(repo, "bin/viommu.mjs"), ...args],
      cwd,
      writable,
      timeoutMs: labTimeoutS * 1000,
      signal: abort.signal,
      onStdout: out.push,
      onStderr: errLines.push,
    });
    out.end();
    errLines.end();
    if (run.failedStep === "aborted") return 130;
    if (run.failedStep !== null || run.exitCode === null) {
      err(`viommu: ${run.failure ?? "the KVM lab run did not finish"}\n`);
      return 2;
    }
    return run.exitCode;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
