// Command-line front end to the guest lab, for trying things by hand:
//
//   node --import tsx tools/guest-lab/run.ts [options] SCRIPT.sh [-- QEMU ARGS...]
//     --timeout SECONDS   hard limit (default 120)
//     --mem MIB           guest RAM (default 1024)
//     --append WORDS      extra kernel command line
//     --shared-memory     guest RAM as a shared memfd (for vfio-user)
//     --quiet             print only RESULT lines and the summary
//
// Streams the serial console, then prints a summary; exits 0 when the script exited 0 and no
// RESULT line failed.
import { readFileSync } from "node:fs";
import { labAvailable, runGuest } from "./lab.ts";

function usage(): never {
  console.error(
    "usage: run.ts [--timeout S] [--mem MIB] [--append WORDS] [--shared-memory] [--quiet] SCRIPT.sh [-- QEMU ARGS...]",
  );
  process.exit(2);
}

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
const own = dash >= 0 ? argv.slice(0, dash) : argv;
const qemuArgs = dash >= 0 ? argv.slice(dash + 1) : [];
let timeoutMs = 120_000;
let memMiB = 1024;
let cmdline = "";
let sharedMemory = false;
let quiet = false;
let scriptPath = "";
for (let i = 0; i < own.length; i++) {
  const a = own[i]!;
  if (a === "--timeout") timeoutMs = Number(own[++i]) * 1000;
  else if (a === "--mem") memMiB = Number(own[++i]);
  else if (a === "--append") cmdline = own[++i] ?? "";
  else if (a === "--shared-memory") sharedMemory = true;
  else if (a === "--quiet") quiet = true;
  else if (!a.startsWith("-") && !scriptPath) scriptPath = a;
  else usage();
}
if (!scriptPath || !Number.isFinite(timeoutMs) || !Number.isFinite(memMiB)) usage();

const avail = labAvailable();
if (!avail.ok) {
  console.error(`guest lab not provisioned (${avail.why}): run tools/provision/provision.sh`);
  process.exit(1);
}
const run = await runGuest({
  script: readFileSync(scriptPath, "utf8"),
  qemuArgs,
  timeoutMs,
  memMiB,
  cmdline,
  sharedMemory,
  onLine: (line) => {
    if (!quiet || line.startsWith("RESULT ")) console.log(line);
  },
});
if (run.stderr.trim()) console.error(`--- qemu stderr ---\n${run.stderr.trimEnd()}`);
const failed = run.results.filter((r) => r.status === "fail").length;
console.log(
  `[guest-lab] ${avail.why}; boot ${run.bootMs} ms; ran ${run.durationMs} ms; script exit ${run.scriptExit}; ` +
    `${run.results.length} results, ${failed} failed${run.timedOut ? "; TIMED OUT" : ""}`,
);
process.exit(run.scriptExit === 0 && failed === 0 && !run.timedOut ? 0 : 1);
