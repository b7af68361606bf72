// Where `viommu run` spends its time while Linux does I/O behind the virtio-iommu: runs the guest
// lab's Linux (bzImage, 1 vCPU, 512 MiB) with a disk and an edu behind `--iommu virtio` (or the
// `--iommu` given), has it read the disk with O_DIRECT in 1 MiB requests and run
// vfio-map-bench, with V8's sampling profiler on in the VMM (`--cpu-prof`), and prints the
// functions by self and inclusive time, split into time inside KVM_RUN (the guest and the
// kernel) and time in the VMM's own code after each exit.
//
//   node --import tsx tools/guest-lab/profile-linux-io.ts [--iommu SPEC] [--maps N] [--keep DIR]
//
// Needs a /dev/kvm that runs Linux: inside the KVM lab, run it through
// `tools/guest-lab/kvm-run.ts` (with the lab lock held on a shared machine).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeLinuxRun, runLinux } from "./viommu-linux.ts";

const argv = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const at = argv.indexOf(name);
  return at >= 0 && at + 1 < argv.length ? argv[at + 1] : dflt;
};
const iommu = opt("--iommu", "virtio");
const maps = Number(opt("--maps", "1000"));
const keep = opt("--keep", "");

type ProfileNode = {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
};
type Profile = { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] };

/** Self and inclusive time per function (name and file), as fractions of all samples. */
export function summarizeProfile(profile: Profile): {
  totalMs: number;
  self: [string, number][];
  inclusive: [string, number][];
} {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (n: ProfileNode) =>
    `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").slice(-2).join("/")}`;
  const timeById = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    timeById.set(id, (timeById.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let total = 0;
  for (const [id, us] of timeById) {
    total += us;
    const leaf = byId.get(id)!;
    self.set(key(leaf), (self.get(key(leaf)) ?? 0) + us);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const k = key(byId.get(cur)!);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + us);
    }
  }
  const sorted = (m: Map<string, number>) =>
    [...m].sort((a, b) => b[1] - a[1]).map(([k, us]) => [k, us / total] as [string, number]);
  return { totalMs: total / 1000, self: sorted(self), inclusive: sorted(inclusive) };
}

const SCRIPT = `
edu=$(pci_find 1234 11e8)
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
result blk-read-1m pass "t0=$t0 t1=$t1 mib=128"
vfio-map-bench "$edu" --count ${maps}
cat /sys/block/vda/stat | sed 's/^/VDA-STAT /'
`;

const work = mkdtempSync(join(tmpdir(), "viommu-profile-io-"));
const profDir = keep || join(work, "prof");
mkdirSync(profDir, { recursive: true });
try {
  const disk = join(work, "disk.img");
  writeFileSync(disk, Buffer.alloc(64 << 20, 0x5a));
  const run = await runLinux({
    kernel: "vmlinuz",
    cpus: 1,
    memory: "512M",
    iommu,
    args: ["--disk", `path=${disk},iommu=on,readonly=on`, "--device", "edu,iommu=on"],
    cmdline: `vfio_iommu_type1.allow_unsafe_interrupts=1${iommu.startsWith("intel") ? " intel_iommu=on" : ""}`,
    script: SCRIPT,
    timeoutS: 900,
    // A sample every 10 ms: each SIGPROF also interrupts KVM_RUN (an exit that would not happen).
    nodeArgs: ["--cpu-prof", "--cpu-prof-interval", "10000", `--cpu-prof-dir=${profDir}`],
  });
  if (!run.results.some((r) => r.name === "blk-read-1m" && r.status === "pass")) {
    console.log(describeLinuxRun(run));
    throw new Error("the guest did not finish its reads: the profile would not show them");
  }
  for (const r of run.results) console.log(r.line);
  for (const l of run.serial.split("\n").filter((l) => l.startsWith("VDA-STAT"))) console.log(l);
  for (const l of run.stderr.split("\n").filter((l) => /^(kvm|virtio-iommu: requests|vt-d: )/.test(l)))
    console.log(l);
  const file = readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"));
  if (file === undefined) {
    console.log(describeLinuxRun(run));
    throw new Error("the VMM wrote no profile");
  }
  const s = summarizeProfile(JSON.parse(readFileSync(join(profDir, file), "utf8")) as Profile);
  const pct = (x: number) => `${(100 * x).toFixed(1).padStart(5)}%`;
  console.log(`\nprofile: ${s.totalMs.toFixed(0)} ms sampled (${file})\nSELF`);
  for (const [k, x] of s.self.slice(0, 30)) console.log(`${pct(x)}  ${k}`);
  console.log("\nINCLUSIVE");
  for (const [k, x] of s.inclusive.slice(0, 60)) console.log(`${pct(x)}  ${k}`);
} finally {
  if (!keep) rmSync(work, { recursive: true, force: true });
}
