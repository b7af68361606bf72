/**
 * Parsing of `viommu run` arguments into a validated configuration. Every error is one line
 * that names the offending option (`RunOptionError`); nothing here touches KVM or files.
 */
import { parseVtdConfig, VtdConfigError } from "../vtd/config.ts";

export interface RunOptions {
  readonly cpus: number;
  readonly memorySizeBytes: number;
  readonly memoryFile?: string;
  /** Path of a Multiboot kernel; undefined runs the built-in guest. */
  readonly kernel?: string;
  /** Multiboot modules ("path args"), in order. */
  readonly modules: readonly string[];
  readonly cmdline: string;
  readonly iommu:
    | { readonly kind: "none" }
    | { readonly kind: "virtio" }
    | { readonly kind: "intel"; readonly spec: string };
  readonly devices: readonly DeviceOption[];
  readonly serial:
    | { readonly kind: "tty" }
    | { readonly kind: "null" }
    | { readonly kind: "file"; readonly path: string };
  readonly debugExit: { readonly iobase: number; readonly iosize: number };
  readonly timeoutSeconds: number;
  readonly trace?: string;
  /** Feed stdin to COM1 (with --serial tty). */
  readonly stdin: boolean;
  readonly help: boolean;
}

export type DeviceOption =
  | { readonly kind: "edu" | "rng"; readonly iommu: boolean }
  | { readonly kind: "disk"; readonly iommu: boolean; readonly path: string; readonly readOnly: boolean };

export class RunOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RunOptionError";
  }
}

export const DEVICES_WITH_IOMMU = ["edu", "rng", "disk"] as const;

export const RUN_USAGE = `usage: viommu run [options]
  --cpus N                       vCPUs, 1 to 16 (more than one: each in its own thread, devices on
                                 the main thread; the built-in guest starts the others by INIT-SIPI)
  --memory size=S[,file=F]       guest RAM (K/M/G suffixes; default 256M); file=F maps F shared
                                 (e.g. on hugetlbfs: file=/dev/hugepages/vm0)
  --kernel K                     a Multiboot (v1) kernel, ELF32 or a.out-kludge, as QEMU's -kernel;
                                 without --kernel the built-in guest runs
  --initramfs M                  a Multiboot module (repeatable; "path args" passes a command line)
  --cmdline C                    the kernel command line
  --iommu virtio                 virtio-iommu-pci at 00:01.0
  --iommu intel[,k=v,...]        Intel VT-d at 0xFED90000 (QEMU intel-iommu properties:
                                 intremap=on, eim=off, caching-mode=on, device-iotlb=on, aw-bits=48, ...)
  --device edu[,iommu=on]        QEMU's edu PCI device (repeatable)
  --rng [iommu=on]               virtio-rng-pci
  --disk path=F[,iommu=on][,readonly=on]  virtio-blk-pci over file F (repeatable)
  --serial tty|file=F|null       where COM1 output goes (default tty)
  --debug-exit iobase=P,iosize=N isa-debug-exit port (default QEMU's 0x501, 2 bytes)
  --stdin                        feed stdin to COM1's receiver (with --serial tty)
  --timeout S                    stop the guest after S seconds (exit status 124; default none)
  --trace CATS                   trace events to stderr: map,unmap,attach,invalidate,fault,config,queue,irq or all
Devices that accept iommu=on (DMA through the vIOMMU; otherwise they bypass it): ${DEVICES_WITH_IOMMU.join(", ")}.
Exit status: a guest write of v to isa-debug-exit ends the run with (v << 1) | 1, as QEMU; the
built-in guest's verdict maps to 0 (pass) or 1 (fail). 2: guest crash, 124: timeout,
130/143: stopped by SIGINT/SIGTERM (a second Ctrl-C terminates at once).`;

const SIZE_RE = /^(\d+)([KMGT]?)(i?B)?$/i;

export function parseSize(text: string, what: string): number {
  const m = SIZE_RE.exec(text.trim());
  if (m === null) throw new RunOptionError(`${what}: "${text}" is not a size (examples: 512M, 2G, 65536K)`);
  const unit = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[m[2].toUpperCase()] ?? 1;
  // A bare number is MiB, as QEMU's -m.
  const bytes = Number(m[1]) * (m[2] === "" ? 1024 ** 2 : unit);
  if (!Number.isSafeInteger(bytes)) throw new RunOptionError(`${what}: ${text} is too large`);
  return bytes;
}

function parseProps(text: string, what: string, allowed: readonly string[]): Map<string, string> {
  const props = new Map<string, string>();
  for (const item of text.split(",")) {
    if (item === "") continue;
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? "" : item.slice(eq + 1);
    if (!allowed.includes(key))
      throw new RunOptionError(`${what}: unknown property "${key}" (known: ${allowed.join(", ")})`);
    if (props.has(key)) throw new RunOptionError(`${what}: ${key} given twice`);
    props.set(key, value);
  }
  return props;
}

function parseOnOff(value: string | undefined, what: string): boolean {
  if (value === undefined || value === "on" || value === "true" || value === "yes") return true;
  if (value === "off" || value === "false" || value === "no") return false;
  throw new RunOptionError(`${what}: expected on or off, got "${value}"`);
}

function parseIntStrict(text: string, what: string): number {
  const n = /^0x[0-9a-f]+$/i.test(text)
    ? Number.parseInt(text, 16)
    : /^\d+$/.test(text)
      ? Number(text)
      : Number.NaN;
  if (!Number.isSafeInteger(n)) throw new RunOptionError(`${what}: "${text}" is not an integer`);
  return n;
}

export function parseRunOptions(argv: readonly string[]): RunOptions {
  let cpus = 1;
  let memorySizeBytes = 256 * 1024 * 1024;
  let memoryFile: string | undefined;
  let kernel: string | undefined;
  const modules: string[] = [];
  let cmdline = "";
  let iommu: RunOptions["iommu"] = { kind: "none" };
  const devices: DeviceOption[] = [];
  let serial: RunOptions["serial"] = { kind: "tty" };
  let debugExit = { iobase: 0x501, iosize: 2 };
  let timeoutSeconds = 0;
  let trace: string | undefined;
  let help = false;
  let stdin = false;
  const seen = new Set<string>();

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    const inline = arg.startsWith("--") && eq > 0 ? arg.slice(eq + 1) : undefined;
    const value = (optional = false): string | undefined => {
      if (inline !== undefined) return inline;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) {
        if (optional) return undefined;
        throw new RunOptionError(`${name} needs a value`);
      }
      i++;
      return next;
    };
    const once = () => {
      if (seen.has(name)) throw new RunOptionError(`${name} given twice`);
      seen.add(name);
    };
    switch (name) {
      case "--help":
      case "-h":
        help = true;
        break;
      case "--cpus": {
        once();
        cpus = parseIntStrict(value() as string, "--cpus");
        if (cpus < 1 || cpus > 16) throw new RunOptionError(`--cpus: ${cpus} is out of range 1..16`);
        break;
      }
      case "--memory": {
        once();
        const v = value() as string;
        if (!v.includes("=")) {
          memorySizeBytes = parseSize(v, "--memory");
        } else {
          const p = parseProps(v, "--memory", ["size", "file"]);
          if (p.has("size")) memorySizeBytes = parseSize(p.get("size") as string, "--memory size");
          if (p.has("file")) {
            memoryFile = p.get("file");
            if (memoryFile === "") throw new RunOptionError("--memory file= needs a path");
          }
        }
        if (memorySizeBytes < 16 * 1024 * 1024) throw new RunOptionError("--memory: at least 16M");
        if (memorySizeBytes % 4096 !== 0) throw new RunOptionError("--memory: size must be a multiple of 4K");
        break;
      }
      case "--kernel":
        once();
        kernel = value();
        break;
      case "--initramfs":
        modules.push(value() as string);
        break;
      case "--cmdline":
        once();
        cmdline = value() as string;
        break;
      case "--iommu": {
        once();
        const v = value() as string;
        const comma = v.indexOf(",");
        const kind = comma < 0 ? v : v.slice(0, comma);
        const rest = comma < 0 ? "" : v.slice(comma + 1);
        if (kind === "virtio") {
          if (rest !== "") throw new RunOptionError(`--iommu virtio takes no properties (got "${rest}")`);
          iommu = { kind: "virtio" };
        } else if (kind === "intel") {
          try {
            parseVtdConfig(rest);
          } catch (e) {
            if (e instanceof VtdConfigError) throw new RunOptionError(`--iommu ${e.message}`);
            throw e;
          }
          iommu = { kind: "intel", spec: rest };
        } else if (kind === "none") {
          iommu = { kind: "none" };
        } else {
          throw new RunOptionError(`--iommu: unknown IOMMU "${kind}" (virtio, intel or none)`);
        }
        break;
      }
      case "--device": {
        const v = value() as string;
        const comma = v.indexOf(",");
        const kind = comma < 0 ? v : v.slice(0, comma);
        if (kind !== "edu")
          throw new RunOptionError(`--device: unknown device "${kind}" (edu; virtio-rng is --rng)`);
        const p = parseProps(comma < 0 ? "" : v.slice(comma + 1), "--device edu", ["iommu"]);
        devices.push({
          kind: "edu",
          iommu: p.has("iommu") ? parseOnOff(p.get("iommu") || undefined, "--device edu,iommu") : false,
        });
        break;
      }
      case "--rng": {
        const v = value(true) ?? "";
        const p = parseProps(v, "--rng", ["iommu"]);
        devices.push({
          kind: "rng",
          iommu: p.has("iommu") ? parseOnOff(p.get("iommu") || undefined, "--rng iommu") : false,
        });
        break;
      }
      case "--disk": {
        const p = parseProps(value() as string, "--disk", ["path", "iommu", "readonly"]);
        const path = p.get("path");
        if (path === undefined || path === "") throw new RunOptionError("--disk needs path=FILE");
        devices.push({
          kind: "disk",
          path,
          iommu: p.has("iommu") ? parseOnOff(p.get("iommu") || undefined, "--disk iommu") : false,
          readOnly: p.has("readonly") ? parseOnOff(p.get("readonly") || undefined, "--disk readonly") : false,
        });
        break;
      }
      case "--serial": {
        once();
        const v = value() as string;
        if (v === "tty" || v === "stdio") serial = { kind: "tty" };
        else if (v === "null" || v === "none") serial = { kind: "null" };
        else if (v.startsWith("file=") && v.length > 5) serial = { kind: "file", path: v.slice(5) };
        else throw new RunOptionError(`--serial: expected tty, null or file=PATH, got "${v}"`);
        break;
      }
      case "--debug-exit": {
        once();
        const p = parseProps(value() as string, "--debug-exit", ["iobase", "iosize"]);
        const iobase = p.has("iobase")
          ? parseIntStrict(p.get("iobase") as string, "--debug-exit iobase")
          : 0x501;
        const iosize = p.has("iosize") ? parseIntStrict(p.get("iosize") as string, "--debug-exit iosize") : 2;
        if (iobase > 0xffff || iosize < 1 || iosize > 4 || iobase + iosize > 0x10000) {
          throw new RunOptionError("--debug-exit: iobase must be a port (0..0xffff) and iosize 1..4");
        }
        debugExit = { iobase, iosize };
        break;
      }
      case "--timeout": {
        once();
        timeoutSeconds = parseIntStrict(value() as string, "--timeout");
        if (timeoutSeconds < 1) throw new RunOptionError("--timeout: at least 1 second");
        break;
      }
      case "--stdin":
        stdin = true;
        break;
      case "--trace":
        once();
        trace = value();
        break;
      default:
        throw new RunOptionError(`unknown argument "${arg}" (see viommu run --help)`);
    }
  }
  if (devices.some((d) => d.iommu) && iommu.kind === "none") {
    throw new RunOptionError("a device has iommu=on but there is no --iommu");
  }
  if (kernel === undefined && modules.length > 0) throw new RunOptionError("--initramfs needs --kernel");
  if (stdin && serial.kind !== "tty") throw new RunOptionError("--stdin needs --serial tty");
  return {
    cpus,
    memorySizeBytes,
    memoryFile,
    kernel,
    modules,
    cmdline,
    iommu,
    devices,
    serial,
    debugExit,
    timeoutSeconds,
    trace,
    stdin,
    help,
  };
}
