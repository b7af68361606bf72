/**
 * `viommu serve`: our PCI devices as vfio-user servers, one UNIX socket per device, for QEMU's
 * vfio-user-pci client (QEMU 10.1+).
 *
 *   viommu serve --socket-dir DIR [--iommu virtio[,page-size-mask=4k:2m:1g][,boot-bypass=on|off]]
 *                [--disk path=F[,iommu=on]]... [--rng [iommu=on]]... [--device edu[,iommu=on]]...
 *                [--guest-ram-mib N] [--guest-ram-backend memfd|hugetlb]
 *
 * All devices share one device platform and one guest memory view built from the DMA regions
 * the clients register (src/vfio-user/shared-memory.ts). Each device DMAs through its own
 * address space: identity (iommu=off), or an endpoint of the virtio-iommu served alongside
 * (iommu=on; endpoint ID = the BDF we assign). An iommu=on edu also gets a host-propagation
 * model (the engine's VfioType1Container), standing for the host IOMMU of an assigned device:
 * every mapping the guest gives it is mirrored there, with VFIO type1's rules and its
 * 65,535-entry limit.
 *
 * Slots: the virtio-iommu at 00:10.0, the other devices from 00:11.0 in command-line order.
 * With an IOMMU, DIR/viot.bin is the ACPI VIOT naming it and the iommu=on endpoints.
 *
 * stdout: one line of QEMU arguments to append (shared guest RAM backend, one
 * `-device {"driver":"vfio-user-pci",...}` per device, `-acpitable file=DIR/viot.bin`).
 * stderr: a "ready" line when every socket listens, client events, and a short summary table on
 * SIGINT/SIGTERM (src/cli/serve-summary.ts); --stats-json FILE gets every counter as JSON.
 *
 * This module exports `runServe(argv)` for src/cli/main.ts; it also runs directly:
 * `node --import tsx src/cli/serve.ts --socket-dir DIR ...`.
 */
import { accessSync, constants, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { buildVirtioPciIommuViot } from "../acpi/viot.ts";
import { EduDevice } from "../devices/edu.ts";
import { VirtioBlk } from "../devices/virtio-blk.ts";
import { VirtioIommuPci } from "../devices/virtio-iommu-pci.ts";
import { VirtioRng } from "../devices/virtio-rng.ts";
import { DmaAddressSpace, IDENTITY } from "../engine/dma-space.ts";
import { VfioType1Container } from "../engine/host-iommu.ts";
import { formatTraceEvent, Tracer } from "../engine/trace.ts";
import type { PciFunction } from "../pci/function.ts";
import { ObservedHostIommu } from "../vfio-user/host-observer.ts";
import { VfioUserDeviceServer } from "../vfio-user/server.ts";
import { SharedGuestMemory } from "../vfio-user/shared-memory.ts";
import { VirtioPciTransport } from "../virtio/pci-transport.ts";
import { fileProblem } from "./file-errors.ts";
import {
  formatUsage,
  type OptionRow,
  parseOnOff,
  parseOptionTable,
  parseProperties,
  splitKind,
} from "./option-table.ts";
import { formatServeSummary, type ServedDevice, serveStatsJson } from "./serve-summary.ts";

export type DeviceKind = "edu" | "rng" | "disk";

export interface DeviceSpec {
  readonly kind: DeviceKind;
  readonly iommu: boolean;
  /** disk: the backing file. */
  readonly path?: string;
  readonly readOnly?: boolean;
}

export interface ServeOptions {
  readonly socketDir: string;
  /** page_size_mask of the virtio-iommu; undefined when no IOMMU is served. */
  readonly iommuPageSizeMask: bigint | undefined;
  /** Initial config.bypass (QEMU's boot-bypass, default on): firmware DMA works before the OS attaches. */
  readonly iommuBootBypass: boolean;
  readonly devices: readonly DeviceSpec[];
  readonly guestRamMiB: number;
  /** The printed memory backend: a plain memfd, or a memfd of 2 MiB huge pages (hugetlb=on). */
  readonly guestRamBackend: GuestRamBackend;
  /** Where every counter goes as JSON at exit (--stats-json); stderr gets a short table. */
  readonly statsJsonPath: string | undefined;
}

const serveError = (message: string): Error => new Error(message);

export type GuestRamBackend = "memfd" | "hugetlb";

type ServeState = {
  socketDir: string | undefined;
  guestRamMiB: number;
  guestRamBackend: GuestRamBackend;
  iommuPageSizeMask: bigint | undefined;
  iommuBootBypass: boolean;
  devices: DeviceSpec[];
  statsJsonPath: string | undefined;
};

/** Thrown by the --help row: parsing stops and `runServe` prints `USAGE`. */
export class ServeHelpRequested extends Error {
  constructor() {
    super("--help");
    this.name = "ServeHelpRequested";
  }
}

/** An optional on/off property: absent is off, a bare key is on. */
function flagProp(p: Map<string, string>, key: string): boolean {
  const value = p.get(key);
  return value === undefined ? false : parseOnOff(value, key, serveError);
}

/** Every `viommu serve` option, in help order. */
export const SERVE_OPTIONS: readonly OptionRow<ServeState>[] = [
  {
    names: ["--socket-dir"],
    arity: "value",
    help: [{ synopsis: "--socket-dir DIR", text: "where the vfio-user sockets and viot.bin are created" }],
    apply: (s, v) => {
      s.socketDir = v;
    },
  },
  {
    names: ["--iommu"],
    arity: "value",
    help: [
      {
        synopsis: "--iommu virtio[,k=v]",
        text:
          "a virtio-iommu-pci (at 00:10.0) translating the iommu=on devices;\n" +
          "page-size-mask=M: granules joined by ':' (4k, 2m, 1g) or a number;\n" +
          "boot-bypass=on|off: initial config.bypass (default on, as QEMU)",
      },
    ],
    apply: (s, v = "") => {
      const { kind, rest } = splitKind(v);
      if (kind !== "virtio") throw new Error(`--iommu: unknown model "${kind}" (available: virtio)`);
      const p = parseProperties(rest, "--iommu", ["page-size-mask", "boot-bypass"], serveError);
      const bypass = p.get("boot-bypass");
      if (bypass !== undefined) s.iommuBootBypass = parseOnOff(bypass, "boot-bypass", serveError);
      const mask = p.get("page-size-mask");
      s.iommuPageSizeMask =
        mask === undefined ? (1n << 12n) | (1n << 21n) | (1n << 30n) : parsePageSizeMask(mask);
    },
  },
  {
    names: ["--disk"],
    arity: "value",
    repeatable: true,
    help: [
      { synopsis: "--disk path=FILE[,iommu=on][,readonly=on]", text: "virtio-blk on FILE (repeatable)" },
    ],
    apply: (s, v = "") => {
      const p = parseProperties(v, "--disk", ["path", "iommu", "readonly"], serveError);
      const path = p.get("path");
      if (path === undefined || path === "") throw new Error("--disk needs path=FILE");
      s.devices.push({
        kind: "disk",
        path: resolve(path),
        iommu: flagProp(p, "iommu"),
        readOnly: flagProp(p, "readonly"),
      });
    },
  },
  {
    names: ["--rng"],
    arity: "optional-value",
    repeatable: true,
    help: [{ synopsis: "--rng [iommu=on]", text: "virtio-rng (repeatable)" }],
    apply: (s, v = "") => {
      const p = parseProperties(v, "--rng", ["iommu"], serveError);
      s.devices.push({ kind: "rng", iommu: flagProp(p, "iommu") });
    },
  },
  {
    names: ["--device"],
    arity: "value",
    repeatable: true,
    help: [{ synopsis: "--device edu[,iommu=on]", text: "QEMU's edu device (PCI 1234:11e8; repeatable)" }],
    apply: (s, v = "") => {
      const { kind, rest } = splitKind(v);
      if (kind !== "edu") throw new Error(`--device: unknown device "${kind}" (available: edu)`);
      const p = parseProperties(rest, "--device edu", ["iommu"], serveError);
      s.devices.push({ kind: "edu", iommu: flagProp(p, "iommu") });
    },
  },
  {
    names: ["--guest-ram-mib"],
    arity: "value",
    help: [
      {
        synopsis: "--guest-ram-mib N",
        text: "guest RAM size for the printed memory backend\n(default 1024; give QEMU the same -m)",
      },
    ],
    apply: (s, v) => {
      s.guestRamMiB = Number(v);
      if (!Number.isInteger(s.guestRamMiB) || s.guestRamMiB < 16)
        throw new Error("--guest-ram-mib must be an integer >= 16");
    },
  },
  {
    names: ["--guest-ram-backend"],
    arity: "value",
    help: [
      {
        synopsis: "--guest-ram-backend memfd|hugetlb",
        text:
          "the printed guest RAM backend: memfd (default), or hugetlb: a memfd of\n" +
          "2 MiB huge pages (QEMU and the server fault once per 2 MiB, not per 4 KiB;\n" +
          "the host needs that many free: vm.nr_hugepages)",
      },
    ],
    apply: (s, v) => {
      if (v !== "memfd" && v !== "hugetlb")
        throw new Error(`--guest-ram-backend: "${v}" (available: memfd, hugetlb)`);
      s.guestRamBackend = v;
    },
  },
  {
    names: ["--stats-json"],
    arity: "value",
    help: [
      {
        synopsis: "--stats-json FILE",
        text: "at exit, write every counter to FILE as JSON\n(stderr gets a short table either way)",
      },
    ],
    apply: (s, v) => {
      if (v === undefined || v === "") throw new Error("--stats-json needs a file name");
      s.statsJsonPath = resolve(v);
    },
  },
  {
    names: ["--help", "-h"],
    arity: "flag",
    repeatable: true,
    help: [{ synopsis: "--help, -h", text: "this text" }],
    apply: () => {
      throw new ServeHelpRequested();
    },
  },
];

export const USAGE = formatUsage(
  `usage: viommu serve --socket-dir DIR [--iommu virtio[,k=v]] [--disk path=FILE[,iommu=on][,readonly=on]]...
                    [--rng [iommu=on]]... [--device edu[,iommu=on]]... [--guest-ram-mib N]
                    [--guest-ram-backend memfd|hugetlb] [--stats-json FILE]`,
  SERVE_OPTIONS,
  "",
  23,
);

/** A served device's name (and socket file stem): its kind and its place on the command line. */
function deviceName(spec: DeviceSpec, index: number): string {
  return `${spec.kind}${index}`;
}

/** PCI slot of the virtio-iommu; devices follow it. Low slots are the machine's own. */
export const IOMMU_SLOT = 0x10;

const GRANULES: Record<string, bigint> = { "4k": 1n << 12n, "2m": 1n << 21n, "1g": 1n << 30n };

export function parsePageSizeMask(text: string): bigint {
  let mask = 0n;
  if (/^(0x[0-9a-f]+|\d+)$/i.test(text)) mask = BigInt(text);
  else {
    for (const g of text.toLowerCase().split(/[:|+]/)) {
      const bit = GRANULES[g];
      if (bit === undefined) throw new Error(`page-size-mask: unknown granule "${g}" (4k, 2m, 1g)`);
      mask |= bit;
    }
  }
  // VIRTIO 1.3 5.13.4: at least one bit; the lowest set bit is the granule (4 KiB minimum here:
  // the vfio-user DMA regions and Linux's pages are 4 KiB).
  if (mask === 0n || (mask & ((1n << 12n) - 1n)) !== 0n)
    throw new Error("page-size-mask needs granules of 4 KiB or more");
  return mask;
}

/** The options; throws `ServeHelpRequested` for --help, an `Error` naming the option otherwise. */
export function parseServeArgs(argv: readonly string[]): ServeOptions {
  const initial: ServeState = {
    socketDir: undefined,
    guestRamMiB: 1024,
    guestRamBackend: "memfd",
    iommuPageSizeMask: undefined,
    iommuBootBypass: true,
    devices: [],
    statsJsonPath: undefined,
  };
  const s = parseOptionTable(
    { command: "viommu serve", rows: SERVE_OPTIONS, error: serveError },
    argv,
    initial,
  );
  // Rules between options, checked once every option is known.
  if (s.socketDir === undefined) throw new Error("--socket-dir is required (e.g. --socket-dir /tmp/vu)");
  if (s.devices.length === 0 && s.iommuPageSizeMask === undefined) {
    throw new Error("nothing to serve: give --iommu virtio, --device edu, --disk path=FILE or --rng");
  }
  if (s.iommuPageSizeMask === undefined && s.devices.some((d) => d.iommu)) {
    throw new Error("iommu=on needs --iommu virtio (or drop iommu=on)");
  }
  if (s.guestRamBackend === "hugetlb" && s.guestRamMiB % 2 !== 0) {
    throw new Error("--guest-ram-backend hugetlb needs an even --guest-ram-mib (whole 2 MiB pages)");
  }
  if (IOMMU_SLOT + 1 + s.devices.length > 0x1f) {
    throw new Error(`too many devices for one bus (${s.devices.length}; at most ${0x1f - IOMMU_SLOT - 1})`);
  }
  const socketDir = resolve(s.socketDir);
  // A socket's path must fit sockaddr_un.sun_path: 108 bytes with the terminating NUL.
  const names = [
    ...(s.iommuPageSizeMask === undefined ? [] : ["virtio-iommu"]),
    ...s.devices.map(deviceName),
  ];
  const longest = Math.max(...names.map((n) => Buffer.byteLength(join(socketDir, `${n}.sock`))));
  if (longest > 107) {
    throw new Error(
      `--socket-dir ${socketDir}: too long for UNIX sockets (a socket path would be ${longest} bytes, at most 107): use a shorter directory, e.g. $(mktemp -d)`,
    );
  }
  return {
    socketDir,
    iommuPageSizeMask: s.iommuPageSizeMask,
    iommuBootBypass: s.iommuBootBypass,
    devices: s.devices,
    guestRamMiB: s.guestRamMiB,
    guestRamBackend: s.guestRamBackend,
    statsJsonPath: s.statsJsonPath,
  };
}

interface Served extends ServedDevice {
  readonly bdf: number;
  readonly close?: () => void;
}

/**
 * The QEMU arguments for the served devices, as one shell-quoted line. With hugetlb, QEMU's
 * memfd backend takes its pages from the 2 MiB hugetlb pool (`hugetlb=on,hugetlbsize=2M`; it
 * reserves them all at start and refuses to start without them) and seals the file as usual.
 */
export function qemuArgsLine(
  guestRamMiB: number,
  served: readonly { slot: number; socketPath: string }[],
  viotPath: string | undefined,
  backend: GuestRamBackend = "memfd",
): string {
  const huge = backend === "hugetlb" ? ",hugetlb=on,hugetlbsize=2M" : "";
  const parts = [
    `-object memory-backend-memfd,id=viommu-ram,size=${guestRamMiB}M,share=on${huge}`,
    "-machine memory-backend=viommu-ram",
  ];
  for (const s of served) {
    const dev = {
      driver: "vfio-user-pci",
      socket: { type: "unix", path: s.socketPath },
      addr: `0x${s.slot.toString(16)}`,
    };
    parts.push(`-device '${JSON.stringify(dev)}'`);
  }
  if (viotPath !== undefined) parts.push(`-acpitable file=${viotPath}`);
  return parts.join(" ");
}

export async function runServe(argv: string[]): Promise<number> {
  let opts: ServeOptions;
  try {
    opts = parseServeArgs(argv);
  } catch (e) {
    if (e instanceof ServeHelpRequested) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    process.stderr.write(`viommu serve: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const served: Served[] = [];
  try {
    return await serve(opts, served);
  } catch (e) {
    // Setup failed: nothing may keep listening, or the process would not exit.
    for (const s of served) {
      s.server.close();
      s.close?.();
      rmSync(s.server.socketPath, { force: true });
    }
    process.stderr.write(
      `viommu serve: ${e instanceof ServeSetupError ? e.message : ((e as Error).stack ?? String(e))}\n`,
    );
    return 2;
  }
}

/** A setup failure the user caused (a path that does not work); its message names the fix. */
class ServeSetupError extends Error {}

/** What every served function shares: the options, guest memory, tracing, what listens so far. */
interface ServeContext {
  readonly opts: ServeOptions;
  readonly tracer: Tracer;
  readonly log: (line: string) => void;
  readonly memory: SharedGuestMemory;
  /** Every listening server, for the summary and the caller's cleanup. */
  readonly served: Served[];
}

/** Serves until SIGINT or SIGTERM; `served` collects what listens, for the caller's cleanup. */
async function serve(opts: ServeOptions, served: Served[]): Promise<number> {
  checkOutputPaths(opts);
  const tracer = Tracer.fromSpec(process.env.VIOMMU_TRACE);
  tracer.listen((e) => process.stderr.write(`trace ${formatTraceEvent(e)}\n`), []);
  const log = (line: string) => process.stderr.write(`viommu serve: ${line}\n`);
  const ctx: ServeContext = { opts, tracer, log, memory: new SharedGuestMemory(), served };
  const viommu = opts.iommuPageSizeMask === undefined ? undefined : serveIommu(ctx, opts.iommuPageSizeMask);
  let slot = IOMMU_SLOT + 1;
  for (const [i, spec] of opts.devices.entries()) serveDevice(ctx, spec, deviceName(spec, i), slot++, viommu);

  let viotPath: string | undefined;
  if (viommu !== undefined) {
    viotPath = join(opts.socketDir, "viot.bin");
    writeFileSync(
      viotPath,
      buildVirtioPciIommuViot({
        iommuBdf: IOMMU_SLOT << 3,
        endpointBdfs: served.filter((s) => s.iommu).map((s) => s.bdf),
        coverWholeSlots: true,
      }),
    );
  }
  const line = qemuArgsLine(
    opts.guestRamMiB,
    served.map((s) => ({ slot: s.slot, socketPath: s.server.socketPath })),
    viotPath,
    opts.guestRamBackend,
  );
  if (opts.guestRamBackend === "hugetlb") checkHugePages(opts.guestRamMiB, log);
  return await untilSignalled(ctx, viommu, line);
}

/** Says on stderr when the host has fewer free 2 MiB huge pages than the guest's RAM needs. */
function checkHugePages(guestRamMiB: number, log: (line: string) => void): void {
  const path = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
  let free = 0;
  try {
    free = Number(readFileSync(path, "utf8").trim());
  } catch {
    log(`--guest-ram-backend hugetlb: this host has no 2 MiB huge pages (${path} missing)`);
    return;
  }
  const need = guestRamMiB / 2;
  if (free < need) {
    log(
      `--guest-ram-backend hugetlb: ${free} free 2 MiB huge pages, the guest needs ${need}: QEMU will refuse to start (reserve more with sysctl vm.nr_hugepages)`,
    );
  }
}

/**
 * Creates the socket directory and checks that --stats-json can be written: found out now, not
 * at exit when the figures would be lost.
 */
function checkOutputPaths(opts: ServeOptions): void {
  try {
    mkdirSync(opts.socketDir, { recursive: true });
  } catch (e) {
    throw new ServeSetupError(
      `--socket-dir ${opts.socketDir}: cannot create it: ${fileProblem(e)} (choose a directory you can write)`,
    );
  }
  if (opts.statsJsonPath !== undefined) {
    try {
      accessSync(dirname(opts.statsJsonPath), constants.W_OK);
    } catch (e) {
      throw new ServeSetupError(
        `--stats-json ${opts.statsJsonPath}: cannot write in ${dirname(opts.statsJsonPath)}: ${fileProblem(e)} (choose a file in a directory you can write)`,
      );
    }
  }
}

/** Starts a vfio-user server for `fn` at `slot`, listening on `<socket-dir>/<name>.sock`. */
function serveFunction(
  ctx: ServeContext,
  name: string,
  slot: number,
  fn: PciFunction,
  dma: DmaAddressSpace,
  extra: Omit<Served, "name" | "slot" | "bdf" | "server">,
): void {
  const bdf = slot << 3;
  fn.tracer = ctx.tracer;
  const socketPath = join(ctx.opts.socketDir, `${name}.sock`);
  rmSync(socketPath, { force: true });
  const server = new VfioUserDeviceServer({
    name,
    fn,
    socketPath,
    memory: ctx.memory,
    dma,
    requesterId: bdf,
    tracer: ctx.tracer,
    log: ctx.log,
  });
  server.listen();
  ctx.served.push({ name, slot, bdf, server, ...extra });
}

/** The virtio-iommu, served at IOMMU_SLOT. */
function serveIommu(ctx: ServeContext, pageSizeMask: bigint): VirtioIommuPci {
  const viommu = new VirtioIommuPci(ctx.memory, {
    name: "virtio-iommu",
    pageSizeMask,
    // VIRTIO 1.3 5.13.4.2 config.bypass: firmware (SeaBIOS drives virtio-blk and accepts
    // ACCESS_PLATFORM) must reach memory before the OS attaches endpoints, as with QEMU's
    // boot-bypass default. Linux attaches every endpoint it drives to a translated domain.
    bypassInitially: ctx.opts.iommuBootBypass,
    tracer: ctx.tracer,
  });
  const engine = viommu.engine;
  const pci = viommu;
  // The IOMMU's own queues are guest-physical (it is not behind itself).
  serveFunction(
    ctx,
    "virtio-iommu",
    IOMMU_SLOT,
    viommu.pci,
    new DmaAddressSpace(ctx.memory, IDENTITY, IOMMU_SLOT << 3),
    {
      iommu: false,
      stats: () => ({ pci: pci.stats(), engine: engine.stats() }),
    },
  );
  return viommu;
}

/** One --device/--disk/--rng at `slot`, behind `viommu` when it says iommu=on. */
function serveDevice(
  ctx: ServeContext,
  spec: DeviceSpec,
  name: string,
  slot: number,
  viommu: VirtioIommuPci | undefined,
): void {
  const bdf = slot << 3;
  let host: ObservedHostIommu | undefined;
  let dma: DmaAddressSpace;
  if (spec.iommu && viommu !== undefined) {
    if (spec.kind === "edu") host = new ObservedHostIommu(new VfioType1Container());
    // A plug through the framework's endpoint table (the one place endpoints come and go).
    dma = viommu.engine.viommu.plugOrThrow({
      vId: bdf,
      kind: host === undefined ? "emulated" : "assigned",
      options: host !== undefined ? { host } : {},
    });
  } else {
    dma = new DmaAddressSpace(ctx.memory, IDENTITY, bdf);
  }
  if (spec.kind === "edu") {
    const edu = new EduDevice({ name });
    serveFunction(ctx, name, slot, edu.pci, dma, { iommu: spec.iommu, host, stats: () => edu.stats() });
  } else if (spec.kind === "rng") {
    const rng = new VirtioRng({ name });
    const t = new VirtioPciTransport(rng, { accessPlatform: spec.iommu, tracer: ctx.tracer });
    serveFunction(ctx, name, slot, t.pci, dma, {
      iommu: spec.iommu,
      stats: () => ({ rng: rng.stats(), transport: t.stats() }),
    });
  } else {
    let blk: VirtioBlk;
    try {
      blk = new VirtioBlk({ path: spec.path!, readOnly: spec.readOnly, accessPlatform: spec.iommu, name });
    } catch (e) {
      throw new ServeSetupError(
        `--disk path=${spec.path}: ${fileProblem(e)} (give an existing disk image, e.g. one made by truncate -s 64M FILE${spec.readOnly ? "" : "; or add readonly=on if it is not writable"})`,
      );
    }
    serveFunction(ctx, name, slot, blk.pci, dma, {
      iommu: spec.iommu,
      stats: () => blk.stats(),
      close: () => blk.close(),
    });
  }
}

/**
 * Prints the QEMU arguments `line` and waits for SIGINT or SIGTERM; then logs the summary,
 * writes --stats-json and closes every server. Resolves with the exit code.
 */
function untilSignalled(
  ctx: ServeContext,
  viommu: VirtioIommuPci | undefined,
  line: string,
): Promise<number> {
  const { opts, log, served, memory } = ctx;
  return new Promise<number>((done) => {
    const stop = (signal: string) => {
      log(`${signal}: shutting down`);
      for (const line of formatServeSummary(served, memory, viommu)) log(line);
      if (opts.statsJsonPath === undefined) {
        log("every counter: --stats-json FILE");
      } else {
        try {
          writeFileSync(opts.statsJsonPath, `${JSON.stringify(serveStatsJson(served, memory), null, 1)}\n`);
          log(`every counter in ${opts.statsJsonPath}`);
        } catch (e) {
          log(`cannot write --stats-json ${opts.statsJsonPath}: ${(e as Error).message}`);
        }
      }
      for (const s of served) {
        s.server.close();
        s.close?.();
        rmSync(s.server.socketPath, { force: true });
      }
      done(0);
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
    // Only now say ready: a SIGTERM sent on seeing the line must find the handler installed, not
    // Node's default action (exit without the summary or removing the sockets).
    process.stdout.write(`${line}\n`);
    log(
      `ready: ${served
        .map(
          (s) =>
            `${s.name} at 00:${s.slot.toString(16)}.0${s.iommu ? " (iommu=on)" : ""} on ${s.server.socketPath}`,
        )
        .join(", ")}`,
    );
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  runServe(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`viommu serve: ${(e as Error).stack ?? e}\n`);
      process.exit(1);
    },
  );
}
