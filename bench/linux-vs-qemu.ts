/**
 * Side by side in one run (issue 10 item 7): the same Linux 6.12 L2 guest (the guest lab's
 * bzImage and base initramfs plus one script) under `viommu run` and under QEMU 11 with
 * `-accel kvm`, on the same KVM, each VMM with its own vIOMMU: our virtio-iommu beside QEMU's
 * virtio-iommu-pci, our VT-d beside QEMU's intel-iommu (both with interrupt remapping and caching
 * mode, which VFIO in the guest needs). Figures, per run:
 *   - boot to the initramfs's "ready" line: host ms from spawning the VMM, and guest uptime;
 *   - virtio-blk sequential read MiB/s through the vIOMMU (64 MiB, O_DIRECT, 1 MiB requests; and
 *     16 MiB in 4 KiB requests, where every request is one page and so one MAP and one UNMAP in
 *     any guest, whereas a 1 MiB request needs one per physically contiguous run of its pages);
 *   - guest VFIO 4 KiB map+unmap pairs per second (vfio-map-bench on the edu behind the vIOMMU).
 * Ratios are ours / QEMU's: for boot time lower is better, for the rates higher is better.
 *
 *   node --import tsx bench/linux-vs-qemu.ts [--runs N] [--maps N]
 *
 * Where this machine's KVM does not run Linux (tools/guest-lab/kvm-tests.mjs) the whole bench runs
 * inside one KVM-lab L1 (tools/guest-lab/kvm-lab.ts), so both VMMs share that L1; take the lab
 * lock first (`flock /work/lab.lock ...` on the shared machine). L1 runs under TCG on a shared
 * machine: compare the ratios within one run, not figures across runs. When QEMU cannot run its
 * side one line says why and only our figures are printed: never a ratio that was not measured.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { newcArchiveGz } from "../tools/guest-lab/cpio.ts";
import { describeKvmLabRun, kvmLabAvailable, runInKvmLab, setpriv } from "../tools/guest-lab/kvm-lab.ts";
import { nativeKvm } from "../tools/guest-lab/kvm-tests.mjs";
import { findResult, labAvailable, labPaths, parseResults, SCRIPT_PRELUDE } from "../tools/guest-lab/lab.ts";
import { runLinux } from "../tools/guest-lab/viommu-linux.ts";

const REPO = resolve(import.meta.dirname, "..");
const argv = process.argv.slice(2);
function intArg(name: string, dflt: number): number {
  const at = argv.indexOf(name);
  const v = at >= 0 ? Number(argv[at + 1]) : dflt;
  if (!Number.isInteger(v) || v < 1) {
    console.error(`bench/linux-vs-qemu.ts: ${name} takes a positive integer`);
    process.exit(2);
  }
  return v;
}
const RUNS = intArg("--runs", 1);
const MAPS = intArg("--maps", 1000);
const DISK_MIB = 64;
/** The part of the disk read again in 4 KiB requests. */
const DISK_4K_MIB = 16;
const L2_TIMEOUT_S = 600;
const L2_MEMORY_MIB = 512;
const CMDLINE = "console=ttyS0 panic=-1 loglevel=4 vfio_iommu_type1.allow_unsafe_interrupts=1";

const SCRIPT = `
edu=$(pci_find 1234 11e8)
# Free memory by block order before the reads: how contiguous the pages of dd's buffer can be.
grep -E 'zone +(DMA32|Normal) ' /proc/buddyinfo | sed 's/^/BUDDYINFO /'
t0=$(cut -d' ' -f1 /proc/uptime)
if dd if=/dev/vda of=/dev/null bs=1M count=${DISK_MIB} iflag=direct 2>/dev/null; then
  t1=$(cut -d' ' -f1 /proc/uptime)
  result blk-seq-read pass "t0=$t0 t1=$t1 mib=${DISK_MIB}"
else
  result blk-seq-read fail "dd from /dev/vda failed"
fi
# The same read in 4 KiB requests: one page, so one MAP and one UNMAP, per request in every guest.
t0=$(cut -d' ' -f1 /proc/uptime)
if dd if=/dev/vda of=/dev/null bs=4k count=${DISK_4K_MIB * 256} iflag=direct 2>/dev/null; then
  t1=$(cut -d' ' -f1 /proc/uptime)
  result blk-seq-read-4k pass "t0=$t0 t1=$t1 mib=${DISK_4K_MIB}"
else
  result blk-seq-read-4k fail "dd from /dev/vda failed"
fi
vfio-map-bench "$edu" --count ${MAPS}
`;

type Figures = {
  readyMs: number;
  readyUptimeS: number;
  blkMiBps: number;
  blk4kMiBps: number;
  pairsPerS: number;
};
type Side = { iommu: "virtio" | "intel"; label: string };
const SIDES: Side[] = [
  { iommu: "virtio", label: "virtio-iommu" },
  { iommu: "intel", label: "VT-d (IR, caching mode)" },
];

/** The figures from one L2's serial log; throws with the guest's lines when one is missing. */
function figuresFrom(log: string, readyMs: number, who: string): Figures {
  const buddy = (log.match(/^BUDDYINFO .*$/gm) ?? []).map((l) =>
    l
      .replace(/^BUDDYINFO Node \d+, zone\s+/, "")
      .replace(/\s+/g, " ")
      .trim(),
  );
  const vmm = who.replace(/ \(.*$/s, "");
  console.error(`[bench] ${vmm}: free blocks by order 0..10 before the reads: ${buddy.join("; ") || "-"}`);
  const results = parseResults(log);
  const blk = findResult(results, "blk-seq-read");
  const blk4k = findResult(results, "blk-seq-read-4k");
  const map = findResult(results, "map-4k");
  const unmap = findResult(results, "unmap-4k");
  const ready = /VIOMMU-LAB: ready uptime=([\d.]+)/.exec(log);
  const ok = [blk, blk4k, map, unmap].every((r) => r?.status === "pass");
  if (!ok || !ready || readyMs < 0) {
    const lines = results.map((r) => r.line).join("\n");
    throw new Error(`${who}: the guest did not report every figure\n${lines}\n${log.slice(-2500)}`);
  }
  // /proc/uptime has 10 ms resolution; a read faster than that is not a figure.
  const rate = (detail: string, mib: number) => {
    const [, t0, t1] = /t0=([\d.]+) t1=([\d.]+)/.exec(detail) ?? [];
    const seconds = Number(t1) - Number(t0);
    return seconds > 0 ? mib / seconds : Number.NaN;
  };
  const mapNs = Number(/ns_per_op=([\d.]+)/.exec(map!.detail)?.[1]);
  const unmapNs = Number(/ns_per_op=([\d.]+)/.exec(unmap!.detail)?.[1]);
  return {
    readyMs,
    readyUptimeS: Number(ready[1]),
    blkMiBps: rate(blk!.detail, DISK_MIB),
    blk4kMiBps: rate(blk4k!.detail, DISK_4K_MIB),
    pairsPerS: 1e9 / (mapNs + unmapNs),
  };
}

function initrdWithScript(dir: string): string {
  const path = join(dir, "initrd");
  const extra = newcArchiveGz([
    { path: "viommu/script.sh", data: `${SCRIPT_PRELUDE}\n${SCRIPT}\n`, mode: 0o755 },
  ]);
  writeFileSync(path, Buffer.concat([readFileSync(labPaths().initramfs), extra]));
  return path;
}

/** QEMU's peer of `viommu run --iommu X`: its own vIOMMU, virtio-blk through it, the edu. */
function qemuL2Args(side: Side, initrd: string, disk: string): string[] {
  const iommu =
    side.iommu === "virtio"
      ? ["-device", "virtio-iommu-pci"]
      : ["-device", "intel-iommu,intremap=on,caching-mode=on"];
  return [
    // The split irqchip: what `viommu run` has, and what intel-iommu's intremap=on needs.
    ...["-machine", "q35,kernel-irqchip=split", "-accel", "kvm", "-cpu", "host"],
    ...["-m", `${L2_MEMORY_MIB}M`, "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none"],
    ...["-serial", "stdio", "-monitor", "none", "-no-reboot"],
    ...["-kernel", labPaths().vmlinuz, "-initrd", initrd],
    ...["-append", `${CMDLINE}${side.iommu === "intel" ? " intel_iommu=on" : ""}`],
    ...iommu,
    ...["-drive", `file=${disk},format=raw,if=none,id=d0,readonly=on`],
    // iommu_platform=on: the virtio device's DMA goes through the vIOMMU, as with our iommu=on.
    ...["-device", "virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on", "-device", "edu"],
  ];
}

async function qemuRun(side: Side, initrd: string, disk: string): Promise<Figures> {
  const args = qemuL2Args(side, initrd, disk);
  const pdeath = setpriv();
  const [file, fileArgs] = pdeath
    ? [pdeath, ["--pdeathsig", "SIGKILL", "--", labPaths().qemu, ...args]]
    : [labPaths().qemu, args];
  const started = Date.now();
  const { log, readyMs, how } = await new Promise<{ log: string; readyMs: number; how: string }>((done) => {
    const child = spawn(file, fileArgs, { stdio: ["ignore", "pipe", "pipe"] });
    const killOnExit = () => child.kill("SIGKILL");
    process.on("exit", killOnExit);
    let out = "";
    let stderr = "";
    let ready = -1;
    const kill = setTimeout(() => child.kill("SIGKILL"), L2_TIMEOUT_S * 1000);
    child.stdout.setEncoding("latin1");
    child.stdout.on("data", (t: string) => {
      out += t;
      if (ready < 0 && out.includes("VIOMMU-LAB: ready")) ready = Date.now() - started;
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (t: string) => {
      stderr += t;
    });
    const finish = (how: string) => {
      clearTimeout(kill);
      process.off("exit", killOnExit);
      done({ log: out, readyMs: ready, how: `${how}${stderr ? `: ${stderr.trim().slice(-300)}` : ""}` });
    };
    child.on("error", (e) => finish(`cannot start: ${e.message}`));
    child.on("close", (code, signal) => finish(signal ? `killed by ${signal}` : `exit ${code}`));
  });
  return figuresFrom(log, readyMs, `QEMU -accel kvm, ${side.label} (${how})`);
}

async function oursRun(side: Side, disk: string): Promise<Figures> {
  const run = await runLinux({
    kernel: "vmlinuz",
    cpus: 1,
    memory: `${L2_MEMORY_MIB}M`,
    iommu: side.iommu === "virtio" ? "virtio" : "intel,intremap=on,caching-mode=on",
    args: ["--disk", `path=${disk},iommu=on,readonly=on`, "--device", "edu,iommu=on"],
    cmdline: `vfio_iommu_type1.allow_unsafe_interrupts=1${side.iommu === "intel" ? " intel_iommu=on" : ""}`,
    script: SCRIPT,
    timeoutS: L2_TIMEOUT_S,
  });
  // Where the time went, from the VMM's own summary (exits, vIOMMU requests or translations).
  const summary = run.stderr
    .split("\n")
    .filter((l) => /^(kvm|virtio-iommu: requests|vt-d: \d+ translations)/.test(l));
  console.error(`[bench] ${side.label}, viommu run: ${summary.join("; ")}`);
  const how = `status ${run.status}: ${run.stderr.trim().split("\n").slice(-3).join(" | ")}`;
  return figuresFrom(run.serial, run.readyMs, `viommu run, ${side.label} (${how})`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
}

const ROWS: [string, (f: Figures) => number, "lower" | "higher"][] = [
  ["boot to ready, host ms from spawning the VMM", (f) => f.readyMs, "lower"],
  ["boot to ready, guest uptime s", (f) => f.readyUptimeS, "lower"],
  [`virtio-blk sequential read MiB/s (${DISK_MIB} MiB, O_DIRECT, 1 MiB)`, (f) => f.blkMiBps, "higher"],
  [`virtio-blk sequential read MiB/s (${DISK_4K_MIB} MiB, O_DIRECT, 4 KiB)`, (f) => f.blk4kMiBps, "higher"],
  ["guest VFIO 4 KiB map+unmap pairs/s", (f) => f.pairsPerS, "higher"],
];

const num = (x: number) => (Number.isFinite(x) ? x.toFixed(x < 100 ? 2 : 0) : "-");

function table(side: Side, ours: Figures[], qemu: Figures[], qemuWhy: string): string[] {
  const lines = [`\n${side.label}: ${ours.length} run(s) of ours, ${qemu.length} of QEMU; medians`];
  if (qemuWhy) lines.push(`QEMU's side did not run: ${qemuWhy}; our figures alone, no ratios`);
  const head = `${"figure".padEnd(62)} ${"viommu run".padStart(11)} ${"QEMU".padStart(9)} ${"ours/QEMU".padStart(10)}`;
  lines.push(`${head}  better`);
  for (const [name, pick, better] of ROWS) {
    const o = median(ours.map(pick));
    const q = qemu.length > 0 ? median(qemu.map(pick)) : Number.NaN;
    const ratio = Number.isFinite(o) && Number.isFinite(q) && q !== 0 ? (o / q).toFixed(2) : "-";
    lines.push(
      `${name.padEnd(62)} ${num(o).padStart(11)} ${num(q).padStart(9)} ${ratio.padStart(10)}  ${better}`,
    );
  }
  return lines;
}

async function benchHere(): Promise<number> {
  const lab = labAvailable();
  if (!lab.ok) {
    console.log(`bench/linux-vs-qemu.ts: guest lab not provisioned (${lab.why}): nothing measured`);
    return 1;
  }
  const dir = mkdtempSync(join(tmpdir(), "viommu-linux-bench-"));
  let failed = false;
  try {
    const disk = join(dir, "disk.img");
    const buf = Buffer.alloc(DISK_MIB << 20);
    for (let i = 0; i < buf.length; i += 4096) buf.writeUInt32LE(i >>> 12, i);
    writeFileSync(disk, buf);
    const initrd = initrdWithScript(dir);
    // Progress goes to stderr as it happens; the tables are printed together at the end.
    const tables = [
      `Linux 6.12 L2: bzImage, 1 vCPU, ${L2_MEMORY_MIB} MiB, ${MAPS} x 4 KiB VFIO map/unmap; KVM: ${nativeKvm().why}${process.env.VIOMMU_IN_KVM_LAB ? " in the KVM lab's L1 (TCG, nested SVM)" : ""}`,
    ];
    for (const side of SIDES) {
      const ours: Figures[] = [];
      const qemu: Figures[] = [];
      let qemuWhy = "";
      for (let i = 0; i < RUNS; i++) {
        const progress = (who: string) => console.error(`[bench] ${side.label}: ${who} run ${i + 1}/${RUNS}`);
        progress("viommu run");
        try {
          ours.push(await oursRun(side, disk));
        } catch (e) {
          failed = true;
          console.error((e as Error).message);
        }
        if (qemuWhy) continue;
        progress("QEMU");
        try {
          qemu.push(await qemuRun(side, initrd, disk));
        } catch (e) {
          qemuWhy = (e as Error).message.split("\n")[0] ?? "";
          console.error((e as Error).message);
        }
      }
      tables.push(...table(side, ours, qemu, qemuWhy));
    }
    console.log(tables.join("\n"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return failed ? 1 : 0;
}

if (nativeKvm().linux) {
  process.exitCode = await benchHere();
} else {
  const lab = kvmLabAvailable();
  if (!lab.ok) {
    console.log(`bench/linux-vs-qemu.ts: ${nativeKvm().linuxWhy}, and ${lab.why}: nothing measured`);
    process.exit(1);
  }
  console.error(`bench/linux-vs-qemu.ts: ${nativeKvm().linuxWhy}: both VMMs run in one KVM-lab L1`);
  // stdout and stderr arrive from L1 on two channels in arbitrary chunks: pass whole lines on.
  const byLine = (write: (t: string) => void) => {
    let pending = "";
    const push = (t: string) => {
      pending += t;
      const nl = pending.lastIndexOf("\n");
      if (nl < 0) return;
      write(pending.slice(0, nl + 1));
      pending = pending.slice(nl + 1);
    };
    return { push, end: () => write(pending) };
  };
  const out = byLine((t) => process.stdout.write(t));
  const err = byLine((t) => process.stderr.write(t));
  const run = await runInKvmLab({
    command: ["node", "--import", "tsx", join(REPO, "bench/linux-vs-qemu.ts"), ...argv],
    cwd: REPO,
    writable: [REPO],
    timeoutMs: (RUNS * SIDES.length * 2 * L2_TIMEOUT_S + 300) * 1000,
    onStdout: out.push,
    onStderr: err.push,
  });
  out.end();
  err.end();
  if (run.failedStep !== null) console.error(`bench/linux-vs-qemu.ts: ${describeKvmLabRun(run)}`);
  else console.error(`bench/linux-vs-qemu.ts: L1 boot ${run.bootMs} ms, whole run ${run.durationMs} ms`);
  process.exit(run.exitCode ?? 2);
}
