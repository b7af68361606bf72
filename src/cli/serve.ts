/**
 * `viommu serve`: our PCI devices as vfio-user servers, one UNIX socket per device, for QEMU's
 * vfio-user-pci client (QEMU 10.1+).
 *
 *   viommu serve --socket-dir DIR [--device edu[,iommu=on]]... [--guest-ram-mib N]
 *
 * All devices share one device platform and one guest memory view built from the DMA regions
 * the clients register (see src/vfio-user/shared-memory.ts). Each device DMAs through its own
 * address space: identity, or (iommu=on) an endpoint of the virtual IOMMU served alongside.
 *
 * stdout: one line of QEMU arguments to append (shared guest RAM backend, one
 * `-device {"driver":"vfio-user-pci",...}` per device with the slot we assigned, and
 * `-acpitable file=DIR/viot.bin` when an IOMMU is served). stderr: a "ready" line when every
 * socket listens, client events, and a stats summary on SIGINT/SIGTERM.
 *
 * This module exports `runServe(argv)`; src/cli/main.ts dispatches the `serve` subcommand to it.
 * It can also be run directly: `node --import tsx src/cli/serve.ts --socket-dir DIR ...`.
 */
import { mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { EduDevice } from "../devices/edu.ts";
import { VirtioRng } from "../devices/virtio-rng.ts";
import { DmaAddressSpace, IDENTITY } from "../engine/dma-space.ts";
import { formatTraceEvent, Tracer } from "../engine/trace.ts";
import type { PciFunction } from "../pci/function.ts";
import { VfioUserDeviceServer } from "../vfio-user/server.ts";
import { SharedGuestMemory } from "../vfio-user/shared-memory.ts";
import { VirtioPciTransport } from "../virtio/pci-transport.ts";

export type DeviceKind = "edu" | "rng";

export interface DeviceSpec {
  readonly kind: DeviceKind;
  readonly iommu: boolean;
}

export interface ServeOptions {
  readonly socketDir: string;
  readonly devices: readonly DeviceSpec[];
  readonly guestRamMiB: number;
}

export const USAGE = `usage: viommu serve --socket-dir DIR [--device edu[,iommu=on|off]]... [--rng [iommu=on|off]]... [--guest-ram-mib N]
  --socket-dir DIR      where the vfio-user sockets are created (one per device)
  --device edu          QEMU's edu device (PCI 1234:11e8)
  --rng                 virtio-rng (virtio-pci modern, MSI-X)
  --guest-ram-mib N     guest RAM size for the printed memory backend (default 1024; pass the same -m to QEMU)`;

/** First PCI slot we assign on the client's root bus (low slots are the machine's own). */
export const FIRST_SLOT = 0x10;

function parseBool(v: string | undefined, what: string): boolean {
  if (v === undefined || v === "on" || v === "true" || v === "1") return true;
  if (v === "off" || v === "false" || v === "0") return false;
  throw new Error(`${what}: expected on or off, got "${v}"`);
}

function parseDevice(spec: string): DeviceSpec {
  const [kind, ...props] = spec.split(",");
  if (kind !== "edu" && kind !== "rng")
    throw new Error(`--device: unknown device "${kind}" (available: edu, rng)`);
  let iommu = false;
  for (const p of props) {
    const [k, v] = p.split("=", 2);
    if (k === "iommu") iommu = parseBool(v, "iommu");
    else throw new Error(`--device ${kind}: unknown property "${k}"`);
  }
  return { kind, iommu };
}

export function parseServeArgs(argv: readonly string[]): ServeOptions {
  let socketDir: string | undefined;
  let guestRamMiB = 1024;
  const devices: DeviceSpec[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--socket-dir") socketDir = value();
    else if (a === "--device") devices.push(parseDevice(value()));
    else if (a === "--rng") {
      const next = argv[i + 1];
      const props = next !== undefined && !next.startsWith("--") ? argv[++i] : "";
      devices.push(parseDevice(props === "" ? "rng" : `rng,${props}`));
    } else if (a === "--guest-ram-mib") {
      guestRamMiB = Number(value());
      if (!Number.isInteger(guestRamMiB) || guestRamMiB < 16)
        throw new Error("--guest-ram-mib must be an integer >= 16");
    } else throw new Error(`unknown argument "${a}"`);
  }
  if (socketDir === undefined) throw new Error("--socket-dir is required");
  if (devices.length === 0) throw new Error("nothing to serve: give at least one --device");
  if (devices.some((d) => d.iommu))
    throw new Error(
      "iommu=on needs a virtual IOMMU served alongside (--iommu), which this build does not offer",
    );
  if (FIRST_SLOT + devices.length > 0x1f) throw new Error("too many devices for one bus");
  return { socketDir: resolve(socketDir), devices, guestRamMiB };
}

/** Builds the PCI function of one device (the device platform's models, unchanged). */
function createDevice(
  spec: DeviceSpec,
  name: string,
  tracer: Tracer,
): { fn: PciFunction; stats: () => unknown } {
  if (spec.kind === "edu") {
    const edu = new EduDevice({ name });
    return { fn: edu.pci, stats: () => edu.stats() };
  }
  const rng = new VirtioRng({ name });
  const transport = new VirtioPciTransport(rng, { accessPlatform: spec.iommu, tracer });
  return { fn: transport.pci, stats: () => ({ rng: rng.stats(), transport: transport.stats() }) };
}

interface Served {
  readonly name: string;
  readonly slot: number;
  readonly bdf: number;
  readonly server: VfioUserDeviceServer;
  readonly stats: () => unknown;
}

/** The QEMU arguments for the served devices, as one shell-quoted line. */
export function qemuArgsLine(
  opts: ServeOptions,
  served: readonly { slot: number; socketPath: string }[],
): string {
  const parts = [
    `-object memory-backend-memfd,id=viommu-ram,size=${opts.guestRamMiB}M,share=on`,
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
  return parts.join(" ");
}

export async function runServe(argv: string[]): Promise<number> {
  let opts: ServeOptions;
  try {
    opts = parseServeArgs(argv);
  } catch (e) {
    process.stderr.write(`viommu serve: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  mkdirSync(opts.socketDir, { recursive: true });
  const tracer = Tracer.fromSpec(process.env.VIOMMU_TRACE);
  tracer.listen((e) => process.stderr.write(`trace ${formatTraceEvent(e)}\n`), []);
  const log = (line: string) => process.stderr.write(`viommu serve: ${line}\n`);
  const memory = new SharedGuestMemory();
  const served: Served[] = [];
  let slot = FIRST_SLOT;
  for (const [i, spec] of opts.devices.entries()) {
    const name = `${spec.kind}${i}`;
    const bdf = slot << 3;
    const { fn, stats } = createDevice(spec, name, tracer);
    fn.tracer = tracer;
    const socketPath = join(opts.socketDir, `${name}.sock`);
    rmSync(socketPath, { force: true });
    const server = new VfioUserDeviceServer({
      name,
      fn,
      socketPath,
      memory,
      dma: new DmaAddressSpace(memory, IDENTITY, bdf),
      requesterId: bdf,
      tracer,
      log,
    });
    server.listen();
    served.push({ name, slot, bdf, server, stats });
    slot++;
  }
  process.stdout.write(
    `${qemuArgsLine(
      opts,
      served.map((s) => ({ slot: s.slot, socketPath: s.server.socketPath })),
    )}\n`,
  );
  log(
    `ready: ${served.map((s) => `${s.name} at 00:${s.slot.toString(16)}.0 on ${s.server.socketPath}`).join(", ")}`,
  );

  return await new Promise<number>((done) => {
    const stop = (signal: string) => {
      log(`${signal}: shutting down`);
      const summary = {
        memory: memory.stats(),
        devices: served.map((s) => ({
          slot: s.slot,
          server: s.server.stats(),
          device: s.stats(),
          pci: s.server.fn.stats(),
        })),
      };
      process.stderr.write(`viommu serve stats ${JSON.stringify(summary)}\n`);
      for (const s of served) {
        s.server.close();
        rmSync(s.server.socketPath, { force: true });
      }
      done(0);
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
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
