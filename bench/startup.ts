/**
 * Whole-process start-up, timed from outside: from spawning node to the moment a user gets the
 * answer, for the sources run through tsx (how bin/viommu.mjs ran before the JavaScript build)
 * and for bin/viommu.mjs running build/js/ (tools/build/js-build.mjs), side by side in one run.
 *
 *   node --import tsx bench/startup.ts [--runs N]        (npm run bench:startup)
 *
 * Cases, each min/median/max over N runs (default 10) after one unmeasured warm-up, before and
 * after alternating so that machine noise hits both alike:
 *   - `help`: exec to exit;
 *   - `serve`: exec to the "ready:" line on stderr (every socket listens), then SIGTERM;
 *   - `run --iommu none|virtio|intel`: exec to the built-in guest's verdict line. Needs
 *     /dev/kvm; without it each says so in one line and no figure is printed for it. What can be
 *     measured then is `run` up to its KVM check (the CLI, the VMM's code and the built-in guest's
 *     image loaded, then the one-line refusal), shown as such.
 */
import { spawn } from "node:child_process";
import { accessSync, constants, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { ensureBuild } from "../tools/build/js-build.mjs";

const REPO = resolve(import.meta.dirname, "..");
// Start-up on this host: without /dev/kvm, `run` must refuse here, not go to the KVM lab.
process.env.VIOMMU_KVM_LAB = "off";
const args = process.argv.slice(2);
const runsArg = args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(args[runsArg + 1]) : 10;
if (!Number.isInteger(RUNS) || RUNS < 1) {
  process.stderr.write("bench/startup.ts: --runs takes a positive integer, e.g. --runs 10\n");
  process.exit(2);
}

/** The two ways of starting the CLI, as argv prefixes for node. */
const VARIANTS = {
  before: ["--import", "tsx", join(REPO, "src/cli/main.ts")],
  after: [join(REPO, "bin/viommu.mjs")],
} as const;
type Variant = keyof typeof VARIANTS;

interface Case {
  readonly name: string;
  readonly args: readonly string[];
  /** The output line that ends the timing; undefined: the process's exit. */
  readonly until?: RegExp;
  /** Exit statuses that count as a correct run. */
  readonly okStatus: readonly number[];
}

/** Milliseconds from spawn to `until` (or exit); throws when the run goes wrong. */
function timeOnce(argv: readonly string[], c: Case): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const t0 = process.hrtime.bigint();
    // VIOMMU_KVM_LAB=off: without /dev/kvm the bin would otherwise carry `run` into the KVM lab
    // (a TCG guest); what is timed here is this host's own start-up.
    const child = spawn(process.execPath, argv, {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, VIOMMU_KVM_LAB: "off" },
    });
    let output = "";
    let stoppedAtMs: number | undefined;
    const watchdog = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (c.until !== undefined && stoppedAtMs === undefined && c.until.test(output)) {
        stoppedAtMs = Number(process.hrtime.bigint() - t0) / 1e6;
        child.kill("SIGTERM");
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", reject);
    child.on("close", (status, signal) => {
      clearTimeout(watchdog);
      const exitMs = Number(process.hrtime.bigint() - t0) / 1e6;
      if (c.until !== undefined) {
        if (stoppedAtMs !== undefined) resolvePromise(stoppedAtMs);
        else
          reject(
            new Error(`${c.name}: no line matching ${c.until} (status ${status ?? signal}):\n${output}`),
          );
      } else if (status !== null && c.okStatus.includes(status)) {
        resolvePromise(exitMs);
      } else {
        reject(
          new Error(`${c.name}: status ${status ?? signal}, expected ${c.okStatus.join(" or ")}:\n${output}`),
        );
      }
    });
  });
}

function stats(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const med = s[Math.floor((s.length - 1) / 2)];
  return `${s[0].toFixed(0)} / ${med.toFixed(0)} / ${s[s.length - 1].toFixed(0)}`;
}

function median(ms: number[]): number {
  const s = [...ms].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

function kvmUsable(): boolean {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

const socketDir = (name: string) => join(REPO, "build", `bench-startup-${process.pid}-${name}`);
const cases: Case[] = [
  { name: "help (exec to exit)", args: ["help"], okStatus: [0] },
  {
    name: "serve --device edu (exec to ready)",
    args: ["serve", "--socket-dir", socketDir("edu"), "--device", "edu"],
    until: /ready: /,
    okStatus: [0],
  },
  {
    name: "serve --iommu virtio --device edu,iommu=on (to ready)",
    args: ["serve", "--socket-dir", socketDir("virtio"), "--iommu", "virtio", "--device", "edu,iommu=on"],
    until: /ready: /,
    okStatus: [0],
  },
];
const notMeasured: string[] = [];
for (const iommu of ["none", "virtio", "intel,intremap=on"]) {
  const name = `run --iommu ${iommu} (exec to the built-in guest's verdict)`;
  if (kvmUsable()) {
    cases.push({
      name,
      args: ["run", "--iommu", iommu, "--device", iommu === "none" ? "edu" : "edu,iommu=on"],
      until: /built-in guest (passed|failed)/,
      okStatus: [0],
    });
  } else {
    notMeasured.push(`${name}: not measured: /dev/kvm is missing or not read-write on this host`);
  }
}
if (!kvmUsable()) {
  cases.push({
    name: "run --iommu virtio, up to its KVM check (no /dev/kvm)",
    args: ["run", "--iommu", "virtio", "--device", "edu,iommu=on"],
    okStatus: [2],
  });
}

await ensureBuild({ log: (line) => process.stderr.write(`bench/startup.ts: ${line}\n`) });
console.log(
  `viommu start-up, exec to answer: node ${process.version}, ${new Date().toISOString()}, ${RUNS} runs each`,
);
console.log("before: node --import tsx src/cli/main.ts ...   after: node bin/viommu.mjs ... (build/js)");
const floor: number[] = [];
for (let i = 0; i <= RUNS; i++) {
  const ms = await timeOnce(["-e", "0"], { name: "node -e 0", args: [], okStatus: [0] });
  if (i > 0) floor.push(ms);
}
console.log(
  `\n${"case".padEnd(56)} ${"before ms min/med/max".padStart(22)} ${"after ms min/med/max".padStart(22)} ${"after/before".padStart(13)}`,
);
console.log(`${"node -e 0 (node's own start, for reference)".padEnd(56)} ${stats(floor).padStart(22)}`);
for (const c of cases) {
  const figures: Record<Variant, number[]> = { before: [], after: [] };
  for (let i = 0; i <= RUNS; i++) {
    for (const v of ["before", "after"] as const) {
      const ms = await timeOnce([...VARIANTS[v], ...c.args], c);
      if (i > 0) figures[v].push(ms); // run 0 warms the page cache and tsx's cache
    }
  }
  const ratio = median(figures.after) / median(figures.before);
  console.log(
    `${c.name.padEnd(56)} ${stats(figures.before).padStart(22)} ${stats(figures.after).padStart(22)} ${`${ratio.toFixed(2)}x`.padStart(13)}`,
  );
}
for (const line of notMeasured) console.log(line);
for (const name of ["edu", "virtio"]) rmSync(socketDir(name), { recursive: true, force: true });
