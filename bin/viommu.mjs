#!/usr/bin/env node
// The `viommu` command: runs the JavaScript build of src/ (build/js/, made by `npm run build`,
// which `npm ci` runs as its prepare step), so no TypeScript is compiled at start-up. When the
// sources changed since that build it rebuilds first and says so on stderr: a stale build never
// runs. tools/build/js-build.mjs describes the build.
import { accessSync, constants } from "node:fs";
import { ensureBuild, REPO_ROOT } from "../tools/build/js-build.mjs";

// Without a usable /dev/kvm, `run` and `demo` run inside the KVM lab (tools/guest-lab/README.md):
// one line says why, output and exit status pass through. Inside the lab, never again;
// VIOMMU_KVM_LAB=off keeps the one-line refusal instead.
const [command, ...rest] = process.argv.slice(2);
const labAllowed = !process.env.VIOMMU_IN_KVM_LAB && process.env.VIOMMU_KVM_LAB !== "off";
if ((command === "run" || command === "demo") && labAllowed) {
  // Help texts (--help, --trace help) need no guest.
  const traceAt = rest.indexOf("--trace");
  const help =
    rest.includes("--help") ||
    rest.includes("-h") ||
    rest.includes("--trace=help") ||
    (traceAt >= 0 && rest[traceAt + 1] === "help");
  let why = "";
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch (e) {
    why = e?.code === "ENOENT" ? "no /dev/kvm here" : `/dev/kvm is not usable (${e?.code})`;
  }
  if (why && !help) {
    const { register } = await import("tsx/esm/api");
    register();
    const { runViommuInKvmLab } = await import("../tools/guest-lab/kvm-lab-cli.ts");
    process.exit(await runViommuInKvmLab(REPO_ROOT, process.argv.slice(2), why));
  }
}

let entry;
try {
  entry = await ensureBuild({ log: (line) => process.stderr.write(`viommu: ${line}\n`) });
} catch (e) {
  process.stderr.write(`viommu: ${e instanceof Error ? e.message : e}\n`);
  process.exit(2);
}
const { main } = await import(entry);
process.exitCode = await main(process.argv.slice(2));
