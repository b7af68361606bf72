/**
 * Side by side, one run (issue 15 item 5): in ONE arm64 L1 boot (the arm64 lab), the same L2
 * (Debian's arm64 Linux 6.12, the lab's initramfs, 512 MiB, one vCPU, a virtio-blk disk behind an
 * SMMUv3) boots twice, one VMM after the other:
 *  - `viommu run --iommu smmuv3` (our VMM, our SMMUv3 model, our virtio-blk), and
 *  - QEMU `-M virt,iommu=smmuv3 -accel kvm` (qemu-system-arm for arm64 from the provisioning,
 *    tools/provision/arm64.sh step 10), the peer.
 * Figures: boot to ready (L1 milliseconds from starting the VMM process until the L2's /init says
 * "ready", so our node start-up counts), the L2's uptime at that point, and blk read MiB/s (dd of
 * the whole disk in the L2, cold, timed with /proc/uptime). The disk is a file on the L1's tmpfs
 * (/run/tmp, the lab's TMPDIR), so neither VMM reads through 9p.
 *
 *   flock /work/lab.lock node --import tsx bench/arm64-vs-qemu.ts [--disk-mib N]
 *
 * L1 is a software CPU on a shared machine: compare the ratios within one run, not across runs.
 * Without the peer QEMU the bench says so in one line and prints our figures alone.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  arm64LabAvailable,
  arm64LabPaths,
  arm64LabWorkDir,
  runInArm64Lab,
  viommuInArm64Lab,
  virtLinuxQemuArgs,
} from "../tools/guest-lab/arm64-lab.ts";
import { newcArchiveGz } from "../tools/guest-lab/cpio.ts";
import { describeKvmLabRun, shQuote } from "../tools/guest-lab/kvm-lab.ts";
import { type GuestResult, parseResults, SCRIPT_PRELUDE } from "../tools/guest-lab/lab.ts";

const args = process.argv.slice(2);
const argValue = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const DISK_MIB = argValue("--disk-mib", 64);
if (!(Number.isInteger(DISK_MIB) && DISK_MIB >= 1 && DISK_MIB <= 512)) {
  console.error("bench/arm64-vs-qemu.ts: --disk-mib takes 1..512");
  process.exit(2);
}

const lab = arm64LabAvailable();
if (!lab.ok) {
  console.error(`*** ${lab.why}: run tools/provision/arm64.sh; arm64 side-by-side SKIPPED`);
  process.exit(0);
}
const paths = arm64LabPaths();
const peer = existsSync(paths.peerQemu);
if (!peer) {
  console.log(`no peer: ${paths.peerQemu} missing (tools/provision/arm64.sh step 10); our figures alone`);
}

// The L2's script: the disk behind the SMMU (IOMMU group), then one cold read of all of it.
const L2_SCRIPT = `${SCRIPT_PRELUDE}
line=$(dmesg | grep -o 'arm-smmu-v3 .*ias [0-9]*-bit, oas [0-9]*-bit' | head -1)
[ -n "$line" ] && result smmu-probe pass "$line" || result smmu-probe fail "no arm-smmu-v3 in dmesg"
blk=$(pci_find 1af4 1042)
g=$(pci_group "$blk")
[ -n "$g" ] && result blk-group pass "bdf=$blk group=$g" || result blk-group fail "bdf=$blk has no IOMMU group"
bytes=$(( $(cat /sys/block/vda/size) * 512 ))
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M 2>/tmp/dd.err
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
[ "$rc" = 0 ] && result blk-read pass "bytes=$bytes seconds=$(awk "BEGIN { print $t1 - $t0 }")" ||
  result blk-read fail "dd exit $rc: $(cat /tmp/dd.err)"
`;

const CMDLINE = "console=ttyAMA0 panic=-1 loglevel=4";
const MEMORY_MIB = 512;
const L1_DISK = "/run/tmp/viommu-bench-disk.img";

type Vmm = { name: string; label: string; command: string[] };

function section(stdout: string, name: string): string {
  const start = stdout.indexOf(`=== ${name} begin`);
  if (start < 0) return "";
  const end = stdout.indexOf(`=== ${name} end`, start);
  return stdout.slice(start, end < 0 ? undefined : stdout.indexOf("\n", end) + 1 || undefined);
}

function figures(text: string) {
  const results: GuestResult[] = parseResults(text);
  const ok = (n: string) => results.find((r) => r.name === n)?.status === "pass";
  const read = results.find((r) => r.name === "blk-read");
  const m = read ? /bytes=(\d+) seconds=([\d.]+)/.exec(read.detail) : null;
  const readyMs = /BENCH ready_ms=(\d+)/.exec(text);
  const uptime = /VIOMMU-LAB: ready uptime=([\d.]+)/.exec(text);
  const exit = /VMM-EXIT (\d+)/.exec(text);
  const seconds = m ? Number(m[2]) : 0;
  return {
    readyMs: readyMs ? Number(readyMs[1]) : null,
    readyUptimeS: uptime ? Number(uptime[1]) : null,
    readMiBs: m && seconds > 0 ? Number(m[1]) / 2 ** 20 / seconds : null,
    exit: exit ? Number(exit[1]) : null,
    checks: ok("smmu-probe") && ok("blk-group") && ok("blk-read"),
    results,
  };
}

const work = arm64LabWorkDir();
try {
  const initrd = join(work.path, "initrd");
  writeFileSync(
    initrd,
    Buffer.concat([
      readFileSync(paths.initramfs),
      newcArchiveGz([{ path: "viommu/script.sh", data: L2_SCRIPT, mode: 0o755 }]),
    ]),
  );
  const vmms: Vmm[] = [
    {
      name: "ours",
      label: "viommu run --iommu smmuv3",
      command: await viommuInArm64Lab([
        "run",
        "--kernel",
        paths.image,
        "--initramfs",
        initrd,
        "--memory",
        `size=${MEMORY_MIB}M`,
        "--cmdline",
        CMDLINE,
        "--timeout",
        "600",
        "--iommu",
        "smmuv3",
        "--disk",
        `path=${L1_DISK},iommu=on,readonly=on`,
      ]),
    },
  ];
  if (peer) {
    vmms.push({
      name: "qemu",
      label: "QEMU -M virt,iommu=smmuv3",
      command: [
        "timeout",
        "600",
        paths.peerQemu,
        ...virtLinuxQemuArgs({
          machine: "virt,gic-version=3,iommu=smmuv3",
          accel: "kvm",
          cpu: "host",
          cpus: 1,
          memMiB: MEMORY_MIB,
          kernel: paths.image,
          initrd,
          append: CMDLINE,
        }),
        "-drive",
        `file=${L1_DISK},if=none,id=disk,format=raw,readonly=on`,
        "-device",
        // Modern-only, as ours (on the root bus QEMU would make it transitional, ID 0x1001).
        "virtio-blk-pci,drive=disk,disable-legacy=on",
      ],
    });
  }
  // In L1: the disk on tmpfs, then each VMM with its output timestamped at the L2's ready line
  // (dash has no PIPESTATUS: the VMM's status travels as a line).
  const lines = [
    "set -u",
    `head -c ${DISK_MIB}M /dev/zero > ${L1_DISK} || exit 1`,
    peer ? `${shQuote(paths.peerQemu)} --version | head -1 | sed 's/^/PEER /'` : "true",
  ];
  for (const v of vmms) {
    lines.push(
      `echo "=== ${v.name} begin"`,
      "t0=$(date +%s%N)",
      `{ ${v.command.map(shQuote).join(" ")} </dev/null 2>&1; echo "VMM-EXIT $?"; } | while IFS= read -r l; do`,
      `  printf '%s\\n' "$l"`,
      `  case "$l" in *"VIOMMU-LAB: ready "*) echo "BENCH ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" ;; esac`,
      "done",
      `echo "=== ${v.name} end wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))"`,
    );
  }
  process.stderr.write(`[arm64-vs-qemu] one arm64 L1 boot, ${vmms.length} L2 boots; a few minutes\n`);
  const run = await runInArm64Lab({
    command: ["sh", "-c", lines.join("\n")],
    timeoutMs: 1_500_000,
    onConsole: (line) => {
      if (line.startsWith("VIOMMU-KVM-LAB: ")) process.stderr.write(`[arm64-lab] ${line.slice(16)}\n`);
    },
  });
  if (run.failedStep !== null) {
    console.error(`arm64 lab: ${describeKvmLabRun(run)}\n${run.console.slice(-3000)}`);
    process.exit(1);
  }
  const peerVersion = /^PEER (.*)$/m.exec(run.stdout)?.[1] ?? "";
  const rows = vmms
    .map((v) => ({ v, text: section(run.stdout, v.name) }))
    .map((r) => ({
      ...r,
      f: figures(r.text),
    }));
  const fmt = (x: number | null, digits: number, unit: string) =>
    x === null
      ? "-"
      : `${x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })} ${unit}`;
  console.log(
    `arm64 L2 (Linux 6.12, ${MEMORY_MIB} MiB, 1 vCPU, virtio-blk behind an SMMUv3, ${DISK_MIB} MiB disk) in one arm64 L1 boot` +
      `${peerVersion ? `; peer ${peerVersion}` : ""}; L1 boot ${run.bootMs} ms`,
  );
  console.log(
    `${"VMM".padEnd(28)} ${"boot to ready".padStart(14)} ${"L2 uptime".padStart(10)} ${"blk read".padStart(14)}  checks`,
  );
  for (const r of rows) {
    const ok = r.f.exit === 0 && r.f.checks;
    console.log(
      `${r.v.label.padEnd(28)} ${fmt(r.f.readyMs, 0, "ms").padStart(14)} ${fmt(r.f.readyUptimeS, 2, "s").padStart(10)} ${fmt(r.f.readMiBs, 1, "MiB/s").padStart(14)}  ${ok ? "pass" : `FAILED (exit ${r.f.exit})`}`,
    );
  }
  if (rows.length === 2) {
    const [o, q] = [rows[0]!.f, rows[1]!.f];
    const ratio = (a: number | null, b: number | null) =>
      a === null || b === null ? "-" : (a / b).toFixed(2);
    console.log(
      `ours / QEMU: boot to ready ${ratio(o.readyMs, q.readyMs)}x the time (L2 uptime at ready ${ratio(o.readyUptimeS, q.readyUptimeS)}x); ` +
        `blk read ${ratio(o.readMiBs, q.readMiBs)}x the MiB/s`,
    );
  }
  let failed = false;
  for (const r of rows) {
    if (r.f.exit === 0 && r.f.checks) continue;
    failed = true;
    console.error(`--- ${r.v.label}: failed ---\n${r.text.slice(-4000)}`);
  }
  process.exitCode = failed ? 1 : 0;
} finally {
  work.remove();
}
