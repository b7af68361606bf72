// The arm64 lab: run one command on arm64 with a working /dev/kvm, on this x86 machine.
//
// qemu-system-aarch64 under TCG with `-M virt,virtualization=on,gic-version=3 -cpu max` gives a
// CPU with EL2; Debian's arm64 Linux 6.12 boots on it (L1) with KVM built in. The initramfs is
// the arm64 lab initramfs (tools/provision/arm64.sh); its /init runs the job
// (tools/provision/arm64-lab-job.sh), which builds a root from the arm64 Debian root image
// (/usr, /etc, /var: node 20; a read-only virtio disk) and the host's other top-level
// directories over 9p, read-only, so the command sees this machine's paths: the repository, its
// build/js bundle and the cache.
// koffi finds its arm64 native package (npm pack'ed into the cache) in place of the host's.
//
// The API and the outcome are those of the x86 KVM lab (kvm-lab.ts), whose supervisor this
// reuses: stdout and stderr on virtio-serial ports, the exit status from the job, a required
// hard timeout, QEMU killed with this process.

import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureBuild } from "../build/js-build.mjs";
import { type CpioEntry, newcArchiveGz } from "./cpio.ts";
import {
  type KvmLabOutcome,
  listenOnce,
  qemuValue,
  type RunInKvmLabOptions,
  setpriv,
  shQuote,
  superviseL1,
  TokenStream,
} from "./kvm-lab.ts";
import { labPaths } from "./lab.ts";

export type Arm64LabPaths = {
  /** ${VIOMMU_CACHE}/arm64 */
  dir: string;
  qemu: string;
  /** The arm64 Linux Image (also the L2 kernel for `viommu run`). */
  image: string;
  /** The arm64 base initramfs (also the L2 initramfs). */
  initramfs: string;
  /** The arm64 Debian root with node: an ext4 image, attached read-only as /dev/vda. */
  rootImage: string;
  /** @koromix/koffi-linux-arm64 from npm pack. */
  koromix: string;
  smokeStamp: string;
  /**
   * The peer for side-by-side runs: an arm64 qemu-system-aarch64 wrapper that runs inside the L1
   * (tools/provision/arm64.sh step 10); not needed by the lab itself.
   */
  peerQemu: string;
};

export type RunInArm64LabOptions = Omit<RunInKvmLabOptions, "writable" | "hugePages">;

const ENV_PASSTHROUGH = /^(TERM|CI|VIOMMU_[A-Z0-9_]+)$/;
const HERE = new URL(".", import.meta.url).pathname;
const JOB_SCRIPT = join(HERE, "..", "provision", "arm64-lab-job.sh");

export function arm64LabPaths(): Arm64LabPaths {
  const dir = join(labPaths().cache, "arm64");
  return {
    dir,
    qemu: join(dir, "bin", "qemu-system-aarch64"),
    image: join(dir, "kernel", "Image"),
    initramfs: join(dir, "initramfs.cpio.gz"),
    rootImage: join(dir, "root.img"),
    koromix: join(dir, "node_modules", "@koromix"),
    smokeStamp: join(dir, "smoke.ok"),
    peerQemu: join(dir, "bin", "peer-qemu-system-aarch64"),
  };
}

/** Whether the arm64 lab is provisioned; `why` names what is missing. */
export function arm64LabAvailable(): { ok: boolean; why: string } {
  if (process.platform !== "linux") return { ok: false, why: "the arm64 lab needs a Linux host" };
  const p = arm64LabPaths();
  for (const [what, file] of [
    ["qemu-system-aarch64 wrapper", p.qemu],
    ["arm64 kernel Image", p.image],
    ["arm64 initramfs", p.initramfs],
    ["arm64 root image with node", p.rootImage],
    ["koffi arm64 package", join(p.koromix, "koffi-linux-arm64")],
    ["smoke-boot stamp (provisioning never booted L1)", p.smokeStamp],
  ] as const) {
    if (!existsSync(file)) return { ok: false, why: `arm64 lab not provisioned: ${what} missing (${file})` };
  }
  return { ok: true, why: `arm64 lab: ${p.dir}` };
}

/**
 * A fresh host directory the arm64 L1 can read at the same path, under the cache (L1 sees the
 * host's root read-only, /tmp included, but a host TMPDIR elsewhere may not be): for initramfs
 * files and disk images a test hands to `viommu run` there.
 */
export function arm64LabWorkDir(): { path: string; remove: () => void } {
  const base = join(arm64LabPaths().dir, "work");
  mkdirSync(base, { recursive: true });
  const path = mkdtempSync(join(base, "run-"));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * The command that runs `viommu ARGS...` inside the arm64 lab: node on this repository's
 * JavaScript build (made or refreshed here first: L1 cannot run the x86 esbuild, and sees the
 * repository read-only).
 */
export async function viommuInArm64Lab(args: readonly string[]): Promise<string[]> {
  const entry = fileURLToPath(
    await ensureBuild({ log: (line) => process.stderr.write(`[arm64-lab] ${line}\n`) }),
  );
  const boot = `const { main } = await import(${JSON.stringify(entry)}); process.exitCode = await main(process.argv.slice(1));`;
  return ["node", "--input-type=module", "-e", boot, ...args];
}

/** node_modules/@koromix of the repository this file belongs to, resolved through symlinks. */
function hostKoromix(): string {
  try {
    return realpathSync(join(HERE, "..", "..", "node_modules", "@koromix"));
  } catch {
    return "";
  }
}

function jobArchive(opts: RunInArm64LabOptions, token: string): Buffer {
  const paths = arm64LabPaths();
  const cwd = resolve(opts.cwd ?? process.cwd());
  // As in the x86 KVM lab: the host's /tmp is visible (read-only) at /tmp, so a repository or
  // files under it keep their paths; L1's own temporary files go to a tmpfs at /run/tmp.
  const env: Record<string, string> = {
    PATH: "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    HOME: "/run/tmp",
    TMPDIR: "/run/tmp",
    LANG: "C.UTF-8",
  };
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && ENV_PASSTHROUGH.test(k)) env[k] = v;
  env.VIOMMU_IN_ARM64_LAB = "1";
  Object.assign(env, opts.env);
  for (const k of Object.keys(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
      throw new Error(`arm64 lab: bad environment variable name ${JSON.stringify(k)}`);
  }
  const command = [
    "#!/bin/sh",
    "# Written by tools/guest-lab/arm64-lab.ts; runs in the arm64 lab's root inside L1.",
    ...Object.entries(env).map(([k, v]) => `export ${k}=${shQuote(v)}`),
    `cd ${shQuote(cwd)} || { echo "arm64 lab: no directory ${cwd.replaceAll('"', "")} in L1" >&2; exit 125; }`,
    `exec ${opts.command.map(shQuote).join(" ")}`,
    "",
  ].join("\n");
  const job = [
    `LAB_KOROMIX=${shQuote(hostKoromix())}`,
    `LAB_KOROMIX_ARM64=${shQuote(paths.koromix)}`,
    `LAB_TOKEN=${token}`,
    "",
  ].join("\n");
  const entries: CpioEntry[] = [
    { path: "viommu/script.sh", data: readFileSync(JOB_SCRIPT, "utf8"), mode: 0o755 },
    { path: "viommu/job.sh", data: job, mode: 0o644 },
    { path: "viommu/command.sh", data: command, mode: 0o755 },
  ];
  return newcArchiveGz(entries);
}

/** What differs between QEMU boots of a Linux Image on an arm64 `virt` machine. */
export interface VirtLinuxBoot {
  /** -machine, e.g. "virt,virtualization=on,gic-version=3". */
  readonly machine: string;
  /** -accel: "tcg,thread=multi" for the L1 on this x86 machine, "kvm" inside L1. */
  readonly accel: string;
  readonly cpu: string;
  readonly cpus: number;
  readonly memMiB: number;
  readonly kernel: string;
  readonly initrd: string;
  readonly append: string;
}

/**
 * The QEMU arguments every arm64 `virt` Linux boot here shares: the L1 of this lab, and the
 * peer QEMU of bench/arm64-vs-qemu.ts inside it. No default devices or user config, no display
 * or monitor, the console on stdio, no reboot (a guest reset ends QEMU); callers add devices.
 */
export function virtLinuxQemuArgs(boot: VirtLinuxBoot): string[] {
  return [
    "-machine",
    boot.machine,
    "-accel",
    boot.accel,
    "-cpu",
    boot.cpu,
    "-smp",
    String(boot.cpus),
    "-m",
    `${boot.memMiB}M`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-monitor",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    boot.kernel,
    "-initrd",
    boot.initrd,
    "-append",
    boot.append,
  ];
}

/** The QEMU command line for the arm64 L1 (exported for tests and debugging). */
export function arm64LabQemuArgs(
  paths: Arm64LabPaths,
  initrd: string,
  sockets: { out: string; err: string },
  opts: Pick<RunInArm64LabOptions, "cpus" | "memMiB">,
): string[] {
  return [
    ...virtLinuxQemuArgs({
      machine: "virt,virtualization=on,gic-version=3",
      accel: "tcg,thread=multi",
      cpu: "max",
      cpus: opts.cpus ?? 2,
      memMiB: opts.memMiB ?? 2048,
      kernel: paths.image,
      initrd,
      append: "console=ttyAMA0 panic=-1 loglevel=4",
    }),
    "-drive",
    `file=${qemuValue(paths.rootImage)},if=none,format=raw,id=root,readonly=on`,
    "-device",
    "virtio-blk-pci,drive=root",
    "-virtfs",
    "local,path=/,mount_tag=host,security_model=none,multidevs=remap,readonly=on",
    "-device",
    "virtio-serial-pci",
    "-chardev",
    `socket,id=out,path=${qemuValue(sockets.out)}`,
    "-device",
    "virtserialport,chardev=out,name=out",
    "-chardev",
    `socket,id=err,path=${qemuValue(sockets.err)}`,
    "-device",
    "virtserialport,chardev=err,name=err",
  ];
}

function failed(started: number, failedStep: string, failure: string): KvmLabOutcome {
  return {
    exitCode: null,
    stdout: "",
    stderr: "",
    console: "",
    failedStep,
    failure,
    timedOut: false,
    bootMs: -1,
    durationMs: Date.now() - started,
    qemuPid: -1,
  };
}

/**
 * Boot the arm64 L1 and run one command in it with /dev/kvm. Never throws for a failing command
 * or lab: look at `exitCode`, `failedStep` and `failure`. Throws only for bad options.
 */
export async function runInArm64Lab(opts: RunInArm64LabOptions): Promise<KvmLabOutcome> {
  if (!(opts.command.length > 0)) throw new Error("arm64 lab: empty command");
  if (!(Number.isFinite(opts.timeoutMs) && opts.timeoutMs > 0))
    throw new Error("arm64 lab: timeoutMs is required");
  const started = Date.now();
  const avail = arm64LabAvailable();
  if (!avail.ok) return failed(started, "provision", `${avail.why}: run tools/provision/arm64.sh`);
  const paths = arm64LabPaths();
  const work = mkdtempSync(join(tmpdir(), "viommu-arm64-lab-"));
  const token = `VIOMMU-ARM64-LAB-EOF-${randomBytes(12).toString("hex")}`;
  const out = new TokenStream(token, opts.onStdout);
  const err = new TokenStream(token, opts.onStderr);
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  try {
    const initrd = join(work, "initrd");
    writeFileSync(initrd, Buffer.concat([readFileSync(paths.initramfs), jobArchive(opts, token)]));
    const socketPaths = { out: join(work, "out.sock"), err: join(work, "err.sock") };
    servers.push(
      await listenOnce(socketPaths.out, out, sockets),
      await listenOnce(socketPaths.err, err, sockets),
    );
    const args = arm64LabQemuArgs(paths, initrd, socketPaths, opts);
    const pdeath = setpriv();
    const [file, argv] = pdeath
      ? [pdeath, ["--pdeathsig", "SIGKILL", "--", paths.qemu, ...args]]
      : [paths.qemu, args];
    return await superviseL1(file, argv, opts, { out, err, started });
  } finally {
    for (const s of sockets) s.destroy();
    for (const s of servers) s.close();
    rmSync(work, { recursive: true, force: true });
  }
}
