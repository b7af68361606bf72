/**
 * Parsing of `viommu run` arguments into a validated configuration. Every error is one line
 * that names the offending option (`RunOptionError`); nothing here touches KVM or files.
 *
 * The options are one table (`RUN_OPTIONS`) that drives both the parser and `RUN_USAGE`; the
 * values of `--iommu` and `--device` are tables of their own. Adding an option, an IOMMU or a
 * `--device` kind is adding a row.
 */
import { normalizeBdf, VfioSetupError } from "../vfio/sysfs.ts";
import type { DeviceRequest } from "../vmm/device-choice.ts";
import type { IommuRequest } from "../vmm/vmm-machine.ts";
import { parseVtdConfig, VtdConfigError } from "../vtd/config.ts";
import {
  formatUsage,
  type HelpLine,
  type OptionRow,
  parseOnOff,
  parseOptionTable,
  parseProperties,
  splitKind,
} from "./option-table.ts";
import { parsePageSizeMask } from "./serve.ts";

export interface RunOptions {
  readonly cpus: number;
  readonly memorySizeBytes: number;
  readonly memoryFile?: string;
  /** Path of a Multiboot kernel; undefined runs the built-in guest. */
  readonly kernel?: string;
  /** Multiboot modules ("path args"), in order. */
  readonly modules: readonly string[];
  readonly cmdline: string;
  readonly iommu: IommuRequest;
  readonly devices: readonly DeviceOption[];
  readonly serial:
    | { readonly kind: "tty" }
    | { readonly kind: "null" }
    | { readonly kind: "file"; readonly path: string };
  /**
   * isa-debug-exit's ports if --debug-exit was given (the machine checks them against its port
   * map); undefined leaves the machine's default (QEMU's 0x501, 2 bytes, on x86).
   */
  readonly debugExit?: { readonly iobase: number; readonly iosize: number };
  readonly timeoutSeconds: number;
  readonly trace?: string;
  /** Feed stdin to COM1 (with --serial tty). */
  readonly stdin: boolean;
  readonly help: boolean;
}

export type DeviceOption = DeviceRequest;

export class RunOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RunOptionError";
  }
}

export const DEVICES_WITH_IOMMU = ["edu", "rng", "disk"] as const;

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

const runError = (message: string): Error => new RunOptionError(message);

function props(text: string, what: string, allowed: readonly string[]): Map<string, string> {
  return parseProperties(text, what, allowed, runError);
}

/** An optional on/off property: absent is off, a bare key is on. */
function flagProp(p: Map<string, string>, key: string, what: string): boolean {
  const value = p.get(key);
  return value === undefined ? false : parseOnOff(value, what, runError);
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

/** "a, b or c" */
function alternatives(words: readonly string[]): string {
  return words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} or ${words[words.length - 1]}`;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
type RunState = Mutable<RunOptions> & { modules: string[]; devices: DeviceOption[] };

/** Translation stages an SMMUv3 offers (IDR0.S1P / S2P): one of them, or both ("nested"). */
export type SmmuStageOption = Extract<IommuRequest, { kind: "smmuv3" }>["stage"];

/** The values of `--iommu KIND[,props]`. */
interface IommuKindRow {
  readonly kind: RunOptions["iommu"]["kind"];
  readonly help: readonly HelpLine[];
  readonly parse: (props: string) => RunOptions["iommu"];
}

const IOMMU_KINDS: readonly IommuKindRow[] = [
  {
    kind: "virtio",
    help: [
      {
        synopsis: "--iommu virtio[,page-size-mask=M]",
        text: "virtio-iommu-pci at 00:01.0; page-size-mask: granules joined by ':'\n(4k, 2m, 1g; default all three) or a number",
      },
    ],
    parse: (rest) => {
      const p = props(rest, "--iommu virtio", ["page-size-mask"]);
      const mask = p.get("page-size-mask");
      if (mask === undefined) return { kind: "virtio" };
      try {
        return { kind: "virtio", pageSizeMask: parsePageSizeMask(mask) };
      } catch (e) {
        throw new RunOptionError(`--iommu virtio: ${(e as Error).message}`);
      }
    },
  },
  {
    kind: "intel",
    help: [
      {
        synopsis: "--iommu intel[,k=v,...]",
        text:
          "Intel VT-d at 0xFED90000 (QEMU intel-iommu properties:\n" +
          "intremap=on, eim=off, caching-mode=on, device-iotlb=on, aw-bits=48, ...)",
      },
    ],
    parse: (rest) => {
      try {
        parseVtdConfig(rest);
      } catch (e) {
        if (e instanceof VtdConfigError) throw new RunOptionError(`--iommu ${e.message}`);
        throw e;
      }
      return { kind: "intel", spec: rest };
    },
  },
  {
    kind: "smmuv3",
    help: [
      {
        synopsis: "--iommu smmuv3[,stage=1|2|nested][,instances=1|2]",
        text:
          "Arm SMMUv3 at 0x9050000 (arm64 hosts; QEMU virt's place): stage 1 (default),\n" +
          "stage 2, or both stages (nested); instances=2 adds a second SMMU at 0x9100000\n" +
          "(PCI slots alternate between them)",
      },
    ],
    parse: (rest) => {
      let stage: SmmuStageOption = "1";
      let instances = 1;
      for (const prop of rest === "" ? [] : rest.split(",")) {
        const m = /^(?:stage=(1|2|nested)|instances=([12]))$/.exec(prop);
        if (!m) {
          throw new RunOptionError(
            `--iommu smmuv3: unknown property "${prop}" (stage=1|2|nested, instances=1|2)`,
          );
        }
        if (m[1] !== undefined) stage = m[1] as SmmuStageOption;
        else instances = Number(m[2]);
      }
      return { kind: "smmuv3", stage, instances };
    },
  },
  { kind: "none", help: [], parse: () => ({ kind: "none" }) },
];

/** The values of `--device KIND[,props]`. */
interface DeviceKindRow {
  readonly kind: string;
  readonly help: readonly HelpLine[];
  readonly properties: readonly string[];
  /** `what` is "--device KIND", for error messages. */
  readonly build: (p: Map<string, string>, what: string) => DeviceOption;
}

const DEVICE_KINDS: readonly DeviceKindRow[] = [
  {
    kind: "edu",
    help: [{ synopsis: "--device edu[,iommu=on]", text: "QEMU's edu PCI device (repeatable)" }],
    properties: ["iommu"],
    build: (p, what) => ({ kind: "edu", iommu: flagProp(p, "iommu", `${what},iommu`) }),
  },
  {
    kind: "vfio",
    help: [
      {
        synopsis: "--device vfio,host=BDF[,iommu=on]",
        text:
          "assign host PCI device BDF (bound to vfio-pci) through VFIO;\n" +
          "iommu=on puts it behind --iommu (intel needs caching-mode=on)",
      },
      {
        synopsis: "--device path=/sys/bus/pci/devices/BDF/[,iommu=on]",
        text: "the same, in Cloud Hypervisor's syntax",
      },
    ],
    properties: ["host", "path", "iommu"],
    build: (p, what) => {
      const host = p.get("host");
      const path = p.get("path");
      if ((host === undefined) === (path === undefined) || (host ?? path) === "") {
        throw new RunOptionError(`${what} needs host=BDF or path=/sys/bus/pci/devices/BDF/ (one of them)`);
      }
      let bdf: string;
      try {
        bdf = normalizeBdf(host ?? path ?? "");
      } catch (e) {
        if (e instanceof VfioSetupError) throw new RunOptionError(`${what}: ${e.message}`);
        throw e;
      }
      return { kind: "vfio", host: bdf, iommu: flagProp(p, "iommu", `${what},iommu`) };
    },
  },
];

function parseMemory(s: RunState, v: string): void {
  if (!v.includes("=")) {
    s.memorySizeBytes = parseSize(v, "--memory");
  } else {
    const p = props(v, "--memory", ["size", "file"]);
    const size = p.get("size");
    if (size !== undefined) s.memorySizeBytes = parseSize(size, "--memory size");
    const file = p.get("file");
    if (file !== undefined) {
      if (file === "") throw new RunOptionError("--memory file= needs a path");
      s.memoryFile = file;
    }
  }
  if (s.memorySizeBytes < 16 * 1024 * 1024) throw new RunOptionError("--memory: at least 16M");
  if (s.memorySizeBytes % 4096 !== 0) throw new RunOptionError("--memory: size must be a multiple of 4K");
}

/** `iobase=P,iosize=N`, each defaulting to QEMU's isa-debug-exit property; any port range QEMU allows. */
function parseDebugExit(v: string): NonNullable<RunOptions["debugExit"]> {
  const p = props(v, "--debug-exit", ["iobase", "iosize"]);
  const base = p.get("iobase");
  const size = p.get("iosize");
  const iobase = base === undefined ? 0x501 : parseIntStrict(base, "--debug-exit iobase");
  const iosize = size === undefined ? 2 : parseIntStrict(size, "--debug-exit iosize");
  if (iobase > 0xffff || iosize < 1 || iosize > 4 || iobase + iosize > 0x10000) {
    throw new RunOptionError("--debug-exit: iobase must be a port (0..0xffff) and iosize 1..4");
  }
  return { iobase, iosize };
}

/** Every `viommu run` option, in help order. `v` is present whenever the arity says so. */
export const RUN_OPTIONS: readonly OptionRow<RunState>[] = [
  {
    names: ["--cpus"],
    arity: "value",
    help: [
      {
        synopsis: "--cpus N",
        text:
          "vCPUs, 1 to 16 (more than one: each in its own thread, devices on\n" +
          "the main thread; the built-in guest starts the others by INIT-SIPI)",
      },
    ],
    apply: (s, v = "") => {
      s.cpus = parseIntStrict(v, "--cpus");
      if (s.cpus < 1 || s.cpus > 16) throw new RunOptionError(`--cpus: ${s.cpus} is out of range 1..16`);
    },
  },
  {
    names: ["--memory"],
    arity: "value",
    help: [
      {
        synopsis: "--memory size=S[,file=F]",
        text:
          "guest RAM (K/M/G suffixes; default 256M); file=F maps F shared\n" +
          "(e.g. on hugetlbfs: file=/dev/hugepages/vm0)",
      },
    ],
    apply: (s, v = "") => parseMemory(s, v),
  },
  {
    names: ["--kernel"],
    arity: "value",
    help: [
      {
        synopsis: "--kernel K",
        text:
          "a Multiboot (v1) kernel, ELF32 or a.out-kludge, as QEMU's -kernel;\n" +
          "without --kernel the built-in guest runs",
      },
    ],
    apply: (s, v) => {
      s.kernel = v;
    },
  },
  {
    names: ["--initramfs"],
    arity: "value",
    repeatable: true,
    help: [
      {
        synopsis: "--initramfs M",
        text: 'a Multiboot module (repeatable; "path args" passes a command line)',
      },
    ],
    apply: (s, v = "") => {
      s.modules.push(v);
    },
  },
  {
    names: ["--cmdline"],
    arity: "value",
    help: [{ synopsis: "--cmdline C", text: "the kernel command line" }],
    apply: (s, v = "") => {
      s.cmdline = v;
    },
  },
  {
    names: ["--iommu"],
    arity: "value",
    help: IOMMU_KINDS.flatMap((k) => k.help),
    apply: (s, v = "") => {
      const { kind, rest } = splitKind(v);
      const row = IOMMU_KINDS.find((k) => k.kind === kind);
      if (row === undefined) {
        const known = alternatives(IOMMU_KINDS.map((k) => k.kind));
        throw new RunOptionError(`--iommu: unknown IOMMU "${kind}" (${known})`);
      }
      s.iommu = row.parse(rest);
    },
  },
  {
    names: ["--device"],
    arity: "value",
    repeatable: true,
    help: DEVICE_KINDS.flatMap((k) => k.help),
    apply: (s, v = "") => {
      // Cloud Hypervisor's form names no kind: "path=/sys/bus/pci/devices/BDF/[,iommu=on]".
      const { kind, rest } = v.startsWith("path=") ? { kind: "vfio", rest: v } : splitKind(v);
      const row = DEVICE_KINDS.find((k) => k.kind === kind);
      if (row === undefined) {
        const known = DEVICE_KINDS.map((k) => k.kind).join(", ");
        throw new RunOptionError(`--device: unknown device "${kind}" (${known}; virtio-rng is --rng)`);
      }
      const what = `--device ${kind}`;
      s.devices.push(row.build(props(rest, what, row.properties), what));
    },
  },
  {
    names: ["--rng"],
    arity: "optional-value",
    repeatable: true,
    help: [{ synopsis: "--rng [iommu=on]", text: "virtio-rng-pci" }],
    apply: (s, v = "") => {
      const p = props(v, "--rng", ["iommu"]);
      s.devices.push({ kind: "rng", iommu: flagProp(p, "iommu", "--rng iommu") });
    },
  },
  {
    names: ["--disk"],
    arity: "value",
    repeatable: true,
    help: [
      { synopsis: "--disk path=F[,iommu=on][,readonly=on]", text: "virtio-blk-pci over file F (repeatable)" },
    ],
    apply: (s, v = "") => {
      const p = props(v, "--disk", ["path", "iommu", "readonly"]);
      const path = p.get("path");
      if (path === undefined || path === "") throw new RunOptionError("--disk needs path=FILE");
      s.devices.push({
        kind: "disk",
        path,
        iommu: flagProp(p, "iommu", "--disk iommu"),
        readOnly: flagProp(p, "readonly", "--disk readonly"),
      });
    },
  },
  {
    names: ["--serial"],
    arity: "value",
    help: [{ synopsis: "--serial tty|file=F|null", text: "where COM1 output goes (default tty)" }],
    apply: (s, v = "") => {
      if (v === "tty" || v === "stdio") s.serial = { kind: "tty" };
      else if (v === "null" || v === "none") s.serial = { kind: "null" };
      else if (v.startsWith("file=") && v.length > 5) s.serial = { kind: "file", path: v.slice(5) };
      else throw new RunOptionError(`--serial: expected tty, null or file=PATH, got "${v}"`);
    },
  },
  {
    names: ["--debug-exit"],
    arity: "value",
    help: [
      {
        synopsis: "--debug-exit iobase=P,iosize=N",
        text: "isa-debug-exit port (default QEMU's 0x501, 2 bytes)",
      },
    ],
    apply: (s, v = "") => {
      s.debugExit = parseDebugExit(v);
    },
  },
  {
    names: ["--stdin"],
    arity: "flag",
    repeatable: true,
    help: [{ synopsis: "--stdin", text: "feed stdin to COM1's receiver (with --serial tty)" }],
    apply: (s) => {
      s.stdin = true;
    },
  },
  {
    names: ["--timeout"],
    arity: "value",
    help: [
      { synopsis: "--timeout S", text: "stop the guest after S seconds (exit status 124; default none)" },
    ],
    apply: (s, v = "") => {
      s.timeoutSeconds = parseIntStrict(v, "--timeout");
      if (s.timeoutSeconds < 1) throw new RunOptionError("--timeout: at least 1 second");
    },
  },
  {
    names: ["--trace"],
    arity: "value",
    help: [
      {
        synopsis: "--trace CATS",
        text:
          "trace events to stderr: map,unmap,attach,invalidate,fault,config,queue,irq,unclaimed or all;\n" +
          "help lists every declared trace point",
      },
    ],
    apply: (s, v) => {
      s.trace = v;
    },
  },
  {
    names: ["--help", "-h"],
    arity: "flag",
    repeatable: true,
    help: [{ synopsis: "--help, -h", text: "this text" }],
    apply: (s) => {
      s.help = true;
    },
  },
];

export const RUN_USAGE = formatUsage(
  "usage: viommu run [options]",
  RUN_OPTIONS,
  `Devices that accept iommu=on (DMA through the vIOMMU; otherwise they bypass it): ${DEVICES_WITH_IOMMU.join(", ")}.
The firmware tables name exactly the iommu=on devices: the VIOT (--iommu virtio) and the DMAR's
device scopes (--iommu intel; no INCLUDE_PCI_ALL), so the guest translates those and treats the
others as outside the IOMMU (untranslated DMA; with intremap=on their MSIs are not remapped).
Exit status: a guest write of v to isa-debug-exit ends the run with (v << 1) | 1, as QEMU; the
built-in guest's verdict maps to 0 (pass) or 1 (fail). 2: guest crash, 124: timeout,
130/143: stopped by SIGINT/SIGTERM (a second Ctrl-C terminates at once).`,
);

export function parseRunOptions(argv: readonly string[]): RunOptions {
  const initial: RunState = {
    cpus: 1,
    memorySizeBytes: 256 * 1024 * 1024,
    memoryFile: undefined,
    kernel: undefined,
    modules: [],
    cmdline: "",
    iommu: { kind: "none" },
    devices: [],
    serial: { kind: "tty" },
    debugExit: undefined,
    timeoutSeconds: 0,
    trace: undefined,
    stdin: false,
    help: false,
  };
  const s = parseOptionTable({ command: "viommu run", rows: RUN_OPTIONS, error: runError }, argv, initial);
  // Rules between options, checked once every option is known.
  if (s.devices.some((d) => d.iommu) && s.iommu.kind === "none") {
    throw new RunOptionError("a device has iommu=on but there is no --iommu");
  }
  const iommu = s.iommu;
  if (iommu.kind === "intel" && s.devices.some((d) => d.kind === "vfio" && d.iommu)) {
    // QEMU refuses the same: without CAP.CM the guest need not invalidate not-present -> present
    // changes, so its new mappings could never be replayed into VFIO (VT-d 6.1).
    if (!parseVtdConfig(iommu.spec).cachingMode) {
      throw new RunOptionError(
        "--device vfio,iommu=on behind --iommu intel needs caching-mode=on (device assignment is not allowed without it, as in QEMU)",
      );
    }
  }
  const hosts = s.devices.flatMap((d) => (d.kind === "vfio" ? [d.host] : []));
  const twice = hosts.find((h, i) => hosts.indexOf(h) !== i);
  if (twice !== undefined) throw new RunOptionError(`--device vfio: ${twice} is assigned twice`);
  if (s.kernel === undefined && s.modules.length > 0) throw new RunOptionError("--initramfs needs --kernel");
  if (s.stdin && s.serial.kind !== "tty") throw new RunOptionError("--stdin needs --serial tty");
  return s;
}
