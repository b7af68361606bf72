/**
 * The arm64 machine built from a `MachineSpec` (machine-factory.ts): a Linux Image, its initrd
 * and the device tree laid out once before /dev/kvm is opened (a kernel that is not an arm64
 * Image, a command line too long or an initrd that does not fit is one line, and no VM is made),
 * then the machine with the guest loaded. A failure is one line (thrown). `checkArm64Request` is
 * the part before KVM, for front ends that check first.
 */
import { Arm64ImageError, parseArm64Image } from "../../boot/arm64-image.ts";
import { devicesFor } from "../device-choice.ts";
import type { IommuRequest, MachineRequest, MachineSpec } from "../vmm-machine.ts";
import { Arm64Machine, dtIommuFor, kvmResetMpidr, layoutArm64Linux } from "./machine.ts";
import type { Arm64IommuChoice } from "./platform.ts";

function arm64Iommu(iommu: IommuRequest): Arm64IommuChoice {
  // The factory refuses VT-d on arm64 before this; the check keeps the type honest.
  if (iommu.kind === "intel") throw new Error("--iommu intel is an x86 IOMMU");
  return iommu;
}

/** The boot files and command line of an arm64 request: a Linux Image is required. */
function arm64Boot(request: MachineRequest): {
  readonly path: string;
  readonly kernel: Uint8Array;
  readonly initrd: Uint8Array | undefined;
  readonly cmdline: string;
} {
  if (request.kernel === undefined) throw new Error("on arm64 --kernel (a Linux Image) is required");
  const { path, image } = request.kernel;
  return {
    path,
    kernel: image,
    initrd: request.modules[0]?.data,
    cmdline: request.cmdline || "console=ttyAMA0",
  };
}

/**
 * What this machine refuses before /dev/kvm is opened: no kernel, one that is not an arm64
 * Image, more than one initrd, and any error of the boot layout or device tree (built whole
 * here once, so that they leave no VM behind). Throws one line.
 */
export function checkArm64Request(request: MachineRequest): void {
  const { path, kernel, initrd, cmdline } = arm64Boot(request);
  const iommu = arm64Iommu(request.iommu);
  try {
    parseArm64Image(kernel);
    if (request.modules.length > 1) throw new Error("a Linux kernel takes one --initramfs");
    const mpidrs = Array.from({ length: request.cpus }, (_, id) => kvmResetMpidr(id));
    layoutArm64Linux({ kernel, initrd, cmdline }, request.memorySizeBytes, dtIommuFor(iommu), mpidrs);
  } catch (e) {
    if (e instanceof Arm64ImageError) throw new Error(`${path}: ${e.message}`);
    throw e;
  }
}

export function buildArm64Machine(spec: MachineSpec): Arm64Machine {
  checkArm64Request(spec);
  const { kernel, initrd, cmdline } = arm64Boot(spec);
  const iommu = arm64Iommu(spec.iommu);
  const machine = new Arm64Machine({
    cpus: spec.cpus,
    memorySizeBytes: spec.memorySizeBytes,
    memoryFile: spec.memoryFile,
    serial: spec.serial,
    iommu,
    devices: devicesFor(spec),
    tracer: spec.tracer,
  });
  try {
    const plan = machine.bootLinux({ kernel, initrd, cmdline });
    machine.bootNotes.push(
      `arm64 Linux Image at 0x${plan.kernelGpa.toString(16)}, device tree at 0x${plan.dtbGpa.toString(16)}` +
        `${plan.initrdGpa !== null ? `, initrd at 0x${plan.initrdGpa.toString(16)}` : ""}`,
    );
  } catch (e) {
    machine.close();
    throw e;
  }
  return machine;
}
