/**
 * The arm64 machine built from a `MachineSpec` (machine-factory.ts): a Linux Image, its initrd
 * and the device tree laid out once before /dev/kvm is opened (a kernel that is not an arm64
 * Image, a command line too long or an initrd that does not fit is one line, and no VM is made),
 * then the machine with the guest loaded. A failure is one line (thrown).
 */
import { Arm64ImageError, parseArm64Image } from "../../boot/arm64-image.ts";
import { devicesFor } from "../device-choice.ts";
import type { IommuRequest, MachineSpec } from "../vmm-machine.ts";
import { Arm64Machine, dtIommuFor, kvmResetMpidr, layoutArm64Linux } from "./machine.ts";
import type { Arm64IommuChoice } from "./platform.ts";

function arm64Iommu(iommu: IommuRequest): Arm64IommuChoice {
  // The factory refuses VT-d on arm64 before this; the check keeps the type honest.
  if (iommu.kind === "intel") throw new Error("--iommu intel is an x86 IOMMU");
  return iommu;
}

export function buildArm64Machine(spec: MachineSpec): Arm64Machine {
  const cmdline = spec.cmdline || "console=ttyAMA0";
  if (spec.kernel === undefined) throw new Error("on arm64 --kernel (a Linux Image) is required");
  const { path, image: kernel } = spec.kernel;
  const iommu = arm64Iommu(spec.iommu);
  const initrd = spec.modules[0]?.data;
  try {
    parseArm64Image(kernel);
    if (spec.modules.length > 1) throw new Error("a Linux kernel takes one --initramfs");
    // The whole layout and device tree once before KVM: their errors leave no VM behind.
    const mpidrs = Array.from({ length: spec.cpus }, (_, id) => kvmResetMpidr(id));
    layoutArm64Linux({ kernel, initrd, cmdline }, spec.memorySizeBytes, dtIommuFor(iommu), mpidrs);
  } catch (e) {
    if (e instanceof Arm64ImageError) throw new Error(`${path}: ${e.message}`);
    throw e;
  }
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
