/**
 * The one place that knows which architecture `viommu run` runs on: KVM runs guests of the
 * host's own instruction set, so the host picks the machine (src/vmm/x86/ or src/vmm/arm64/).
 * What only one architecture has is refused here, before anything is opened, as one line.
 */
import { type KvmArchitecture, kvmArchitecture } from "../kvm/system.ts";
import { buildArm64Machine } from "./arm64/build.ts";
import type { MachineSpec, VmmMachine } from "./vmm-machine.ts";
import { buildX86Machine } from "./x86/build.ts";

const BUILDERS: Readonly<Record<KvmArchitecture, (spec: MachineSpec) => VmmMachine>> = {
  x86_64: buildX86Machine,
  arm64: buildArm64Machine,
};

/** Options only one architecture has: the architecture, whether the spec uses it, and the line. */
const ARCHITECTURE_ONLY: readonly {
  readonly on: KvmArchitecture;
  readonly uses: (spec: MachineSpec) => boolean;
  readonly refusal: string;
}[] = [
  {
    on: "arm64",
    uses: (s) => s.iommu.kind === "smmuv3",
    refusal: "--iommu smmuv3 needs an arm64 host (the SMMUv3 is an Arm IOMMU)",
  },
  {
    on: "x86_64",
    uses: (s) => s.iommu.kind === "intel",
    refusal: "--iommu intel is an x86 IOMMU; on arm64 use --iommu smmuv3 or virtio",
  },
  {
    on: "x86_64",
    uses: (s) => s.kernel === undefined,
    refusal: "on arm64 --kernel (a Linux Image) is required: the built-in guest is x86 code",
  },
  {
    on: "x86_64",
    uses: (s) => s.debugExit !== undefined,
    refusal: "--debug-exit is an x86 I/O-port device; the arm64 machine has no port I/O",
  },
  {
    on: "x86_64",
    uses: (s) => s.stdin,
    refusal: "--stdin feeds COM1, an x86 device; the arm64 machine's PL011 takes no input yet",
  },
  {
    on: "x86_64",
    uses: (s) => s.devices.some((d) => d.kind === "vfio"),
    refusal: "--device vfio is not available on the arm64 machine yet (x86 hosts only)",
  },
];

/** A machine cannot be built for this spec here: one line for the user. */
export class MachineSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MachineSpecError";
  }
}

/**
 * Builds the host architecture's machine for `spec`, its guest loaded. `architecture` is the
 * host's; tests pass another to check one machine's refusals on any host (they come before
 * /dev/kvm is opened). Throws one line on a spec this architecture cannot run, a kernel it
 * cannot boot, or a KVM that is missing or refuses.
 */
export function createMachine(
  spec: MachineSpec,
  architecture: KvmArchitecture | "unsupported" = kvmArchitecture(),
): VmmMachine {
  if (architecture === "unsupported") {
    throw new MachineSpecError(`viommu run has machines for x86-64 and arm64 hosts, not ${process.arch}`);
  }
  for (const row of ARCHITECTURE_ONLY) {
    if (row.on !== architecture && row.uses(spec)) throw new MachineSpecError(row.refusal);
  }
  return BUILDERS[architecture](spec);
}
