// The explicit, cached answer to "does this machine's /dev/kvm run Linux guests?", which decides
// whether `// @needs kvm-linux` test files run natively or in the KVM lab
// (tools/guest-lab/kvm-tests.mjs). A software-nested KVM can run bare-metal programs but not
// Linux, so this is never assumed: the probe boots the guest lab's PVH vmlinux under
// `viommu run` on this machine's KVM and waits for the initramfs to run a script.
//
//   node --import tsx tools/guest-lab/kvm-linux-probe.ts [--force]
//
// Writes kvm-linux-probe.json in the lab cache: {"runsLinux", "hostKernel", "detail", "at"}.
// kvm-tests.mjs trusts it only for the host kernel it was measured on. Exit 0 when Linux runs.
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import { findResult, labAvailable, labPaths } from "./lab.ts";
import { runLinux } from "./viommu-linux.ts";

/** Linux reaches userspace in ~4 s of guest time on a real KVM; a minute is a generous bound. */
const PROBE_TIMEOUT_S = 90;

export type KvmLinuxProbe = { runsLinux: boolean; hostKernel: string; detail: string; at: string };

export function probePath(): string {
  return join(labPaths().cache, "kvm-linux-probe.json");
}

export async function probeKvmLinux(): Promise<KvmLinuxProbe> {
  const base = { hostKernel: release(), at: new Date().toISOString() };
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch (e) {
    return {
      ...base,
      runsLinux: false,
      detail: `/dev/kvm not usable (${(e as NodeJS.ErrnoException).code})`,
    };
  }
  const lab = labAvailable();
  if (!lab.ok) return { ...base, runsLinux: false, detail: `guest lab not provisioned: ${lab.why}` };
  const run = await runLinux({
    kernel: "vmlinux",
    cpus: 1,
    script: 'result probe pass "$(uname -r)"',
    timeoutS: PROBE_TIMEOUT_S,
    env: { VIOMMU_KVM_LAB: "off" },
  });
  const ok = run.status === 0 && findResult(run.results, "probe")?.status === "pass";
  const detail = ok
    ? `Linux ${findResult(run.results, "probe")!.detail} ran its initramfs script in ${run.readyUptime} s of guest uptime`
    : `no script result (viommu run status ${run.status}): ${run.stderr.trim().split("\n").slice(-2).join(" | ")}`;
  return { ...base, runsLinux: ok, detail };
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const force = process.argv.includes("--force");
  const path = probePath();
  if (!force && existsSync(path)) {
    const cached = JSON.parse(readFileSync(path, "utf8")) as KvmLinuxProbe;
    if (cached.hostKernel === release()) {
      console.log(`kvm-linux-probe: cached (${path}): runsLinux=${cached.runsLinux}: ${cached.detail}`);
      process.exit(cached.runsLinux ? 0 : 1);
    }
  }
  const probe = await probeKvmLinux();
  writeFileSync(path, `${JSON.stringify(probe, null, 2)}\n`);
  console.log(`kvm-linux-probe: runsLinux=${probe.runsLinux}: ${probe.detail} (${path})`);
  process.exit(probe.runsLinux ? 0 : 1);
}
