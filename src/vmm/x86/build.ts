/**
 * The x86 machine built from a `MachineSpec` (machine-factory.ts): the isa-debug-exit ports
 * checked against the port map and the kernel classified before /dev/kvm is opened, COM1 input
 * from stdin if asked, the devices (the built-in guest's edu, VFIO devices opened), the machine,
 * then the guest loaded. A failure is one line (thrown) and leaves nothing open.
 * `checkX86Request` is the part without side effects, for front ends that check first.
 */
import { type DeviceChoice, devicesFor } from "../device-choice.ts";
import type { IommuRequest, MachineRequest, MachineSpec } from "../vmm-machine.ts";
import { bootKind } from "./boot-kind.ts";
import { builtinGuestImage } from "./builtin-guest.ts";
import { platformPortOverlap } from "./layout.ts";
import { Machine } from "./machine.ts";
import type { IommuChoice } from "./platform.ts";
import { SerialInput } from "./serial-input.ts";

/** QEMU's isa-debug-exit default ports. */
const DEFAULT_DEBUG_EXIT = { iobase: 0x501, iosize: 2 } as const;

/**
 * isa-debug-exit's ports: the user's (any iobase QEMU allows, but not on a range this platform
 * decodes itself), or QEMU's default. Throws one line naming the clash.
 */
export function debugExitPorts(request: Pick<MachineRequest, "debugExit">): {
  readonly iobase: number;
  readonly iosize: number;
} {
  if (request.debugExit === undefined) return DEFAULT_DEBUG_EXIT;
  const { iobase, iosize } = request.debugExit;
  const clash = platformPortOverlap(iobase, iosize);
  if (clash !== undefined) {
    throw new Error(
      `--debug-exit: ports 0x${iobase.toString(16)}-0x${(iobase + iosize - 1).toString(16)} overlap ${clash}`,
    );
  }
  return request.debugExit;
}

/**
 * What this machine refuses before anything is opened: isa-debug-exit on the platform's ports, a
 * kernel it cannot boot (the built-in guest is ours: Multiboot). Throws one line.
 */
export function checkX86Request(request: MachineRequest): void {
  debugExitPorts(request);
  if (request.kernel !== undefined) {
    bootKind(request.kernel.path, { image: request.kernel.image, modules: request.modules });
  }
}

function x86Iommu(iommu: IommuRequest): IommuChoice {
  // The factory refuses the SMMUv3 on x86 before this; the check keeps the type honest.
  if (iommu.kind === "smmuv3") throw new Error("--iommu smmuv3 needs an arm64 host");
  return iommu;
}

/** Closes the host devices opened for a machine that will not be built. */
function closeHostDevices(devices: readonly DeviceChoice[]): void {
  for (const d of devices) if (d.kind === "vfio") d.device.close();
}

export function buildX86Machine(spec: MachineSpec): Machine {
  const iommu = x86Iommu(spec.iommu);
  const debugExit = debugExitPorts(spec);
  // Host devices first: one that cannot be opened is the first thing said.
  const devices: DeviceChoice[] = devicesFor(spec);
  const image = spec.kernel?.image ?? builtinGuestImage();
  let kind: ReturnType<typeof bootKind>;
  try {
    kind = bootKind(spec.kernel?.path, { image, modules: spec.modules });
  } catch (e) {
    closeHostDevices(devices);
    throw e;
  }
  // COM1 input: stdin, when the output goes to the terminal (the options ask for both).
  const input = spec.stdin ? new SerialInput(0) : undefined;
  let machine: Machine;
  try {
    machine = new Machine({
      cpus: spec.cpus,
      memorySizeBytes: spec.memorySizeBytes,
      memoryFile: spec.memoryFile,
      serial: spec.serial,
      iommu,
      devices,
      debugExit,
      tracer: spec.tracer,
      serialInput: input,
    });
  } catch (e) {
    input?.close();
    closeHostDevices(devices);
    throw e;
  }
  try {
    if (kind === "multiboot") {
      const cmdline = spec.cmdline || (spec.kernel?.path ?? "builtin");
      const mb = machine.bootMultiboot(image, cmdline, spec.modules);
      for (const w of mb.warnings) machine.bootNotes.push(`warning: ${w}`);
    } else {
      // Not Multiboot: a Linux bzImage or PVH vmlinux; --initramfs is the initrd.
      const linux = machine.bootLinux({
        kernel: image,
        initrd: spec.modules[0]?.data,
        cmdline: spec.cmdline || "console=ttyS0",
      });
      machine.bootNotes.push(`Linux ${linux.protocol} boot, ACPI ${linux.acpiTables.join(" ")}`);
    }
  } catch (e) {
    machine.close();
    throw e;
  }
  machine.builtinGuest = spec.kernel === undefined;
  return machine;
}
