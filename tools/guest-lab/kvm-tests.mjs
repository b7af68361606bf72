// Which test files need KVM, and where they run: natively where this machine's /dev/kvm can run
// what they need, in the KVM lab (tools/guest-lab/kvm-lab.ts, L1 with nested SVM) otherwise.
//
// A test file declares what it needs with a marker line among its first 30 lines:
//   // @needs kvm          a /dev/kvm that runs bare-metal test programs (the built-in guest)
//   // @needs kvm-linux    a /dev/kvm that runs Linux guests
// Plain JavaScript (no tsx) so that `npm test` can call it before starting the test runner:
//   node tools/guest-lab/kvm-tests.mjs --native-files   test files to run natively, one a line
//   node tools/guest-lab/kvm-tests.mjs --lab-files      test files the KVM lab must run
//   node tools/guest-lab/kvm-tests.mjs --explain        both lists and why
import { accessSync, constants, existsSync, readdirSync, readFileSync } from "node:fs";
import { homedir, release } from "node:os";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(fileURLToPath(import.meta.url), "../../..");
const MARKER = /^\s*\/\/\s*@needs\s+(kvm-linux|kvm)\b/;

/** Every test file under test/ (repository-relative, sorted), like `find test -name '*.test.ts'`. */
export function allTestFiles(root = REPO) {
  const out = [];
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".test.ts")) out.push(relative(root, p));
    }
  };
  walk(join(root, "test"));
  return out.sort();
}

/** "kvm", "kvm-linux" or null: what the file's marker line says it needs. */
export function fileNeeds(file, root = REPO) {
  const lines = readFileSync(resolve(root, file), "utf8").split("\n", 30);
  for (const line of lines) {
    const m = MARKER.exec(line);
    if (m) return m[1];
  }
  return null;
}

/**
 * What this machine's KVM can run. Linux guests: only when said explicitly, by
 * VIOMMU_KVM_RUNS_LINUX=1 (the KVM lab sets it; a host whose KVM runs Linux can) or by the
 * cached result of tools/guest-lab/kvm-linux-probe.ts (`kvm-linux-probe.json` in the lab cache,
 * for this host kernel); a
 * software-nested /dev/kvm runs bare-metal programs but not Linux, so it is never assumed.
 */
export function nativeKvm() {
  let kvm = false;
  let why = "no /dev/kvm";
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    kvm = true;
    why = "/dev/kvm";
  } catch (e) {
    if (existsSync("/dev/kvm")) why = `/dev/kvm not usable (${e.code})`;
  }
  let linux = false;
  let linuxWhy = "no /dev/kvm";
  if (kvm) {
    const env = process.env.VIOMMU_KVM_RUNS_LINUX;
    if (env === "1") [linux, linuxWhy] = [true, "VIOMMU_KVM_RUNS_LINUX=1"];
    else if (env === "0") linuxWhy = "VIOMMU_KVM_RUNS_LINUX=0";
    else {
      const cache = process.env.VIOMMU_CACHE || join(homedir(), ".cache", "viommu");
      const probe = join(cache, "kvm-linux-probe.json");
      try {
        const r = JSON.parse(readFileSync(probe, "utf8"));
        if (r.hostKernel === release()) {
          linux = r.runsLinux === true;
          linuxWhy = `${probe} says runsLinux=${r.runsLinux}`;
        } else
          linuxWhy = `${probe} was measured on kernel ${r.hostKernel}, not ${release()}: run the probe again`;
      } catch {
        linuxWhy =
          "not known to run Linux (VIOMMU_KVM_RUNS_LINUX=1, or node --import tsx tools/guest-lab/kvm-linux-probe.ts)";
      }
    }
  }
  return { kvm, linux, why, linuxWhy };
}

/** Split the test files into those run natively and those the KVM lab runs. */
export function planKvmTests(root = REPO) {
  const native = nativeKvm();
  const nativeFiles = [];
  const labFiles = [];
  for (const f of allTestFiles(root)) {
    const need = fileNeeds(f, root);
    if (need === "kvm" && !native.kvm) labFiles.push(f);
    else if (need === "kvm-linux" && !native.linux) labFiles.push(f);
    else nativeFiles.push(f);
  }
  return { native, nativeFiles, labFiles };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const plan = planKvmTests();
  const arg = process.argv[2];
  if (arg === "--native-files") console.log(plan.nativeFiles.join("\n"));
  else if (arg === "--lab-files") console.log(plan.labFiles.join("\n"));
  else if (arg === "--explain") {
    console.log(`native KVM: ${plan.native.why}; Linux guests: ${plan.native.linuxWhy}`);
    for (const f of plan.labFiles) console.log(`KVM lab: ${f} (needs ${fileNeeds(f)})`);
  } else {
    console.error("usage: kvm-tests.mjs --native-files | --lab-files | --explain");
    process.exit(2);
  }
}
