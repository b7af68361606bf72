/**
 * Side-by-side Linux-guest figures, one run: our devices over vfio-user (`viommu serve`) against
 * QEMU's own virtio-iommu-pci, virtio-blk-pci and edu, on the same QEMU 11 (TCG), kernel and
 * initramfs from the guest lab.
 *
 *   node --import tsx bench/vfio-user-vs-qemu.ts [--read-mib N] [--maps N] [--runs N] [--baseline DIR]
 *
 * Per configuration, one boot: host milliseconds to guest userspace (/init's "ready"), sequential
 * virtio-blk read throughput (dd of N MiB after drop_caches, timed with the guest's
 * /proc/uptime), the same read again (into guest pages the device has touched before), and, with an IOMMU, the guest's VFIO_IOMMU_MAP_DMA / UNMAP_DMA rate for 4 KiB
 * buffers (vfio-map-bench on edu), and from them map+unmap pairs per second. Each configuration
 * boots `--runs` times (default 3), alternating QEMU and ours; the table shows medians and
 * ours/QEMU ratios (above 1: ours takes longer, or moves more). TCG on a shared machine is
 * noisy: compare within one run.
 *
 * Two more columns, measured in the same run and alternating with the others:
 *   - base: `--baseline DIR`, another checkout of this repository (the tree before a change):
 *     its `viommu serve` against the same guest, so before and after come from one run;
 *   - floor (IOMMU on, maps only): bench/support/floor-serve.ts, our server with MAP and UNMAP
 *     answered at once without the IOMMU model (its disk outside the IOMMU, read first as in the
 *     other columns): what the vfio-user round trip, the guest and our transport cost without
 *     the model's work.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { findResult, labAvailable, type RunGuestOutcome, runGuest } from "../tools/guest-lab/lab.ts";

const REPO = resolve(import.meta.dirname, "..");
const args = process.argv.slice(2);
const argValue = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const READ_MIB = argValue("--read-mib", 128);
const MAPS = argValue("--maps", 1000);
const RUNS = argValue("--runs", 3);
const baselineAt = args.indexOf("--baseline");
const BASELINE = baselineAt >= 0 ? resolve(args[baselineAt + 1] ?? "") : null;

interface Figures {
  bootMs: number;
  readMiBps: number | null;
  readAgainMiBps: number | null;
  mapNs: number | null;
  unmapNs: number | null;
}

function guestScript(withVfio: boolean, eduBdf: string): string {
  return [
    "echo 3 > /proc/sys/vm/drop_caches",
    "t0=$(cut -d' ' -f1 /proc/uptime)",
    `dd if=/dev/vda of=/dev/null bs=1048576 count=${READ_MIB} 2>/dev/null`,
    "t1=$(cut -d' ' -f1 /proc/uptime)",
    'echo "RESULT name=blk-read status=pass detail=t0=$t0 t1=$t1"',
    // The same read again after dropping the guest's page cache: the guest reuses the pages it
    // just freed, which the server's process has already touched (no first-touch page faults).
    "echo 3 > /proc/sys/vm/drop_caches",
    "t0=$(cut -d' ' -f1 /proc/uptime)",
    `dd if=/dev/vda of=/dev/null bs=1048576 count=${READ_MIB} 2>/dev/null`,
    "t1=$(cut -d' ' -f1 /proc/uptime)",
    'echo "RESULT name=blk-read-again status=pass detail=t0=$t0 t1=$t1"',
    withVfio ? `vfio-map-bench ${eduBdf} --count ${MAPS} --huge-mib 0` : "",
  ].join("\n");
}

function figures(run: RunGuestOutcome): Figures {
  const mibps = (name: string) => {
    const m = /t0=([\d.]+) t1=([\d.]+)/.exec(findResult(run.results, name)?.detail ?? "");
    return m ? READ_MIB / Math.max(Number(m[2]) - Number(m[1]), 0.01) : null;
  };
  const ns = (name: string) => {
    const r = findResult(run.results, name);
    const x = /ns_per_op=(\d+)/.exec(r?.detail ?? "");
    return r?.status === "pass" && x ? Number(x[1]) : null;
  };
  return {
    bootMs: run.bootMs,
    readMiBps: mibps("blk-read"),
    readAgainMiBps: mibps("blk-read-again"),
    mapNs: ns("map-4k"),
    unmapNs: ns("unmap-4k"),
  };
}

/** Starts the server `script` (`viommu serve` or the floor); resolves with its QEMU arguments. */
async function startServe(
  script: string,
  dir: string,
  serveArgs: string[],
): Promise<{ child: ChildProcess; qemuArgs: string[] }> {
  const child = spawn(process.execPath, ["--import", "tsx", script, "--socket-dir", dir, ...serveArgs], {
    // The checkout's own tsx and dependencies (a baseline tree resolves its own).
    cwd: resolve(script, "../../.."),
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stderr!.resume();
  const line = await new Promise<string>((res, rej) => {
    let out = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      if (out.includes("\n")) res(out.split("\n")[0]);
    });
    child.on("exit", (code) => rej(new Error(`serve exited ${code}`)));
  });
  const qemuArgs: string[] = [];
  const re = /'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m !== null; m = re.exec(line)) qemuArgs.push(m[1] ?? m[2]);
  return { child, qemuArgs };
}

async function stopServe(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.on("exit", r));
  child.kill("SIGINT");
  await exited;
}

/** `viommu serve` of the checkout at `repo` (this one, or the baseline). */
async function ours(disk: string, iommu: boolean, repo = REPO): Promise<Figures> {
  const serveArgs = iommu
    ? ["--iommu", "virtio", "--disk", `path=${disk},iommu=on`, "--device", "edu,iommu=on"]
    : ["--disk", `path=${disk}`];
  return served(join(repo, "src/cli/serve.ts"), serveArgs, iommu);
}

/**
 * The floor server. Its disk is outside the IOMMU: the guest reads it as against ours before its
 * maps (the same guest state then), and only the map figures are kept.
 */
async function floor(disk: string): Promise<Figures> {
  const f = await served(join(REPO, "bench/support/floor-serve.ts"), ["--disk", disk], true);
  return { ...f, readMiBps: null, readAgainMiBps: null };
}

async function served(script: string, serveArgs: string[], iommu: boolean): Promise<Figures> {
  const dir = mkdtempSync(join(tmpdir(), "viommu-bench-"));
  const { child, qemuArgs } = await startServe(script, dir, serveArgs);
  try {
    const run = await runGuest({
      qemuArgs,
      cmdline: "vfio_iommu_type1.allow_unsafe_interrupts=1",
      timeoutMs: 600_000,
      // With an IOMMU: virtio-iommu 00:10.0, disk 00:11.0, edu 00:12.0.
      script: guestScript(iommu, "0000:00:12.0"),
    });
    return figures(run);
  } finally {
    await stopServe(child);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function qemu(disk: string, iommu: boolean): Promise<Figures> {
  const qemuArgs = [
    "-drive",
    `file=${disk},if=none,id=d0,format=raw,cache=none,aio=threads`,
    "-device",
    `virtio-blk-pci,drive=d0,addr=0x11,disable-legacy=on${iommu ? ",iommu_platform=on" : ""}`,
  ];
  if (iommu) qemuArgs.push("-device", "virtio-iommu-pci,addr=0x10", "-device", "edu,addr=0x12");
  const run = await runGuest({
    qemuArgs,
    cmdline: "vfio_iommu_type1.allow_unsafe_interrupts=1",
    timeoutMs: 600_000,
    script: guestScript(iommu, "0000:00:12.0"),
  });
  return figures(run);
}

function median(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null && x >= 0).sort((a, b) => a - b);
  return v.length === 0 ? null : v[Math.floor(v.length / 2)];
}

function medianFigures(fs: Figures[]): Figures {
  return {
    bootMs: median(fs.map((f) => f.bootMs)) ?? -1,
    readMiBps: median(fs.map((f) => f.readMiBps)),
    readAgainMiBps: median(fs.map((f) => f.readAgainMiBps)),
    mapNs: median(fs.map((f) => f.mapNs)),
    unmapNs: median(fs.map((f) => f.unmapNs)),
  };
}

const fmt = (x: number | null, digits = 1) => (x === null ? "n/a" : x.toFixed(digits));
const ratio = (a: number | null, b: number | null) =>
  a === null || b === null || b === 0 ? "n/a" : (a / b).toFixed(2);

/** One configuration's medians per column (null: the column was not measured). */
interface Row {
  name: string;
  qemu: Figures;
  ours: Figures;
  base: Figures | null;
  floor: Figures | null;
}

function printRows(rows: Row[]): void {
  const cols: [string, (r: Row) => Figures | null][] = [
    ["QEMU", (r) => r.qemu],
    ...(BASELINE === null ? [] : [["base", (r: Row) => r.base] as [string, (r: Row) => Figures | null]]),
    ["ours", (r) => r.ours],
    ["floor", (r) => r.floor],
  ];
  const ratios = cols.slice(1);
  console.log(
    `\n${"config".padEnd(10)} ${"metric".padEnd(24)} ${cols.map(([n]) => n.padStart(10)).join(" ")} ${ratios.map(([n]) => `${n}/QEMU`.padStart(11)).join(" ")}`,
  );
  const pairs = (f: Figures) => (f.mapNs === null || f.unmapNs === null ? null : 1e9 / (f.mapNs + f.unmapNs));
  const us = (x: number | null) => (x === null ? null : x / 1000);
  const metrics: [string, (f: Figures) => number | null, number, boolean][] = [
    ["boot to userspace (ms)", (f) => (f.bootMs < 0 ? null : f.bootMs), 0, false],
    ["blk seq read (MiB/s)", (f) => f.readMiBps, 1, false],
    ["blk read again (MiB/s)", (f) => f.readAgainMiBps, 1, false],
    ["VFIO map 4 KiB (us)", (f) => us(f.mapNs), 1, true],
    ["VFIO unmap 4 KiB (us)", (f) => us(f.unmapNs), 1, true],
    // The issue 14 target is in these units: map+unmap pairs per second, ours/QEMU >= 0.5.
    ["VFIO map+unmap (pairs/s)", pairs, 0, true],
  ];
  for (const r of rows) {
    for (const [metric, get, digits, iommuOnly] of metrics) {
      if (iommuOnly && r.floor === null) continue;
      const q = get(r.qemu);
      const values = cols.map(([, col]) => {
        const f = col(r);
        return f === null ? null : get(f);
      });
      console.log(
        `${r.name.padEnd(10)} ${metric.padEnd(24)} ${values.map((v) => fmt(v, digits).padStart(10)).join(" ")} ${values
          .slice(1)
          .map((v) => ratio(v, q).padStart(11))
          .join(" ")}`,
      );
    }
  }
}

async function main(): Promise<void> {
  const lab = labAvailable();
  if (!lab.ok) {
    console.error(`guest lab not provisioned: ${lab.why}`);
    process.exit(2);
  }
  if (BASELINE !== null && !existsSync(join(BASELINE, "src/cli/serve.ts"))) {
    console.error(
      `--baseline ${BASELINE}: no src/cli/serve.ts there (give another checkout of this repository)`,
    );
    process.exit(2);
  }
  const work = mkdtempSync(join(tmpdir(), "viommu-bench-disk-"));
  const disk = join(work, "disk.img");
  const chunk = new Uint8Array(1 << 20).map((_, i) => (i * 131) & 0xff);
  writeFileSync(disk, new Uint8Array(0));
  for (let i = 0; i < READ_MIB; i++) writeFileSync(disk, chunk, { flag: "a" });
  console.log(
    `vfio-user vs QEMU: ${lab.why}; read ${READ_MIB} MiB, ${MAPS} VFIO 4 KiB maps; TCG, medians of ${RUNS} boots each` +
      (BASELINE === null ? "" : `; base: ${BASELINE}`),
  );
  const rows: Row[] = [];
  try {
    for (const iommu of [false, true]) {
      const qs: Figures[] = [];
      const os: Figures[] = [];
      const bs: Figures[] = [];
      const fs: Figures[] = [];
      for (let r = 0; r < RUNS; r++) {
        qs.push(await qemu(disk, iommu));
        if (BASELINE !== null) bs.push(await ours(disk, iommu, BASELINE));
        os.push(await ours(disk, iommu));
        if (iommu) fs.push(await floor(disk));
        console.error(`run ${r + 1}/${RUNS} with the IOMMU ${iommu ? "on" : "off"} done`);
      }
      rows.push({
        name: iommu ? "IOMMU on" : "IOMMU off",
        qemu: medianFigures(qs),
        ours: medianFigures(os),
        base: BASELINE === null ? null : medianFigures(bs),
        floor: iommu ? medianFigures(fs) : null,
      });
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  printRows(rows);
}

await main();
