// Command-line front end to the KVM lab, for trying things by hand:
//
//   node --import tsx tools/guest-lab/kvm-run.ts [options] -- COMMAND [ARGS...]
//     --timeout SECONDS   hard limit for L1 boot + command (default 600)
//     --writable DIR      a host directory the command may write (repeatable; default: the cwd)
//     --cpus N            L1 vCPUs (default 2)
//     --mem MIB           L1 RAM (default 3072)
//     --huge-pages N      2 MiB pages reserved in L1, mounted at /dev/hugepages
//     --console           also print L1's console (kernel log) on stderr
//
// The command's stdout and stderr pass through; progress lines go to stderr; the exit status is
// the command's (125 when the lab itself failed, with one line saying which step).
import { describeKvmLabRun, runInKvmLab } from "./kvm-lab.ts";

function usage(): never {
  console.error(
    "usage: kvm-run.ts [--timeout S] [--writable DIR]... [--cpus N] [--mem MIB] [--huge-pages N] [--console] -- COMMAND [ARGS...]",
  );
  process.exit(2);
}

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
if (dash < 0 || dash === argv.length - 1) usage();
const own = argv.slice(0, dash);
const command = argv.slice(dash + 1);
let timeoutMs = 600_000;
const writable: string[] = [];
let cpus = 2;
let memMiB = 3072;
let hugePages = 0;
let showConsole = false;
for (let i = 0; i < own.length; i++) {
  const a = own[i]!;
  const num = () => {
    const v = Number(own[++i]);
    if (!Number.isFinite(v) || v < 0) usage();
    return v;
  };
  if (a === "--timeout") timeoutMs = num() * 1000;
  else if (a === "--writable") writable.push(own[++i] ?? usage());
  else if (a === "--cpus") cpus = num();
  else if (a === "--mem") memMiB = num();
  else if (a === "--huge-pages") hugePages = num();
  else if (a === "--console") showConsole = true;
  else usage();
}
const run = await runInKvmLab({
  command,
  writable: writable.length > 0 ? writable : [process.cwd()],
  timeoutMs,
  cpus,
  memMiB,
  hugePages,
  onStdout: (t) => process.stdout.write(t),
  onStderr: (t) => process.stderr.write(t),
  onConsole: (line) => {
    if (showConsole) process.stderr.write(`[L1] ${line}\n`);
    else if (line.startsWith("VIOMMU-KVM-LAB: step=")) process.stderr.write(`[kvm-lab] ${line.slice(16)}\n`);
  },
});
process.stderr.write(`[kvm-lab] ${describeKvmLabRun(run)}\n`);
process.exit(run.failedStep !== null || run.exitCode === null ? 125 : run.exitCode);
