// Command-line front end to the arm64 lab, for trying things by hand:
//
//   node --import tsx tools/guest-lab/arm64-run.ts [options] -- COMMAND [ARGS...]
//     --timeout SECONDS   hard limit for L1 boot + command (default 900)
//     --cpus N            L1 vCPUs (default 2)
//     --mem MIB           L1 RAM (default 2048)
//     --console           also print L1's console (kernel log) on stderr
//
// The command runs on arm64 with /dev/kvm, in the host's paths (read-only), e.g.
//   arm64-run.ts -- node bin/viommu.mjs run --kernel ~/.cache/viommu/arm64/kernel/Image ...
// (run `npm run build` first: L1 cannot rebuild build/js). The command's stdout and stderr pass
// through; the exit status is the command's (125 when the lab itself failed).
import { arm64LabPaths, runInArm64Lab } from "./arm64-lab.ts";
import { describeKvmLabRun } from "./kvm-lab.ts";

function usage(): never {
  console.error("usage: arm64-run.ts [--timeout S] [--cpus N] [--mem MIB] [--console] -- COMMAND [ARGS...]");
  process.exit(2);
}

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
if (dash < 0 || dash === argv.length - 1) usage();
const own = argv.slice(0, dash);
const command = argv.slice(dash + 1);
let timeoutMs = 900_000;
let cpus = 2;
let memMiB = 2048;
let showConsole = false;
for (let i = 0; i < own.length; i++) {
  const a = own[i]!;
  const num = () => {
    const v = Number(own[++i]);
    if (!Number.isFinite(v) || v < 0) usage();
    return v;
  };
  if (a === "--timeout") timeoutMs = num() * 1000;
  else if (a === "--cpus") cpus = num();
  else if (a === "--mem") memMiB = num();
  else if (a === "--console") showConsole = true;
  else usage();
}
process.stderr.write(`[arm64-lab] ${arm64LabPaths().dir}\n`);
const run = await runInArm64Lab({
  command,
  timeoutMs,
  cpus,
  memMiB,
  onStdout: (t) => process.stdout.write(t),
  onStderr: (t) => process.stderr.write(t),
  onConsole: (line) => {
    if (showConsole) process.stderr.write(`[L1] ${line}\n`);
    else if (line.startsWith("VIOMMU-KVM-LAB: ")) process.stderr.write(`[arm64-lab] ${line.slice(16)}\n`);
  },
});
process.stderr.write(`[arm64-lab] ${describeKvmLabRun(run)}\n`);
process.exit(run.failedStep !== null || run.exitCode === null ? 125 : run.exitCode);
