/**
 * The one place that knows which architecture `viommu run` runs on: KVM runs guests of the
 * host's own instruction set, so the host picks the machine (src/vmm/x86/ or src/vmm/arm64/).
 * What only one architecture has is refused here, before anything is opened, as one line; what
 * one machine refuses of a request (its port map, its kernel formats, its boot layout) its own
 * module checks, reached through `checkMachineRequest` by front ends that know no architecture.
 */
import { type KvmArchitecture, kvmArchitecture } from "../kvm/system.ts";
import { buildArm64Machine, checkArm64Request } from "./arm64/build.ts";
import type { MachineRequest, MachineSpec, VmmMachine } from "./vmm-machine.ts";
import { buildX86Machine, checkX86Request } from "./x86/build.ts";

/** Each architecture's machine: its checks without side effects, and its builder (which checks too). */
const MACHINES: Readonly<
  Record<
    KvmArchitecture,
    { readonly check: (request: MachineRequest) => void; readonly build: (spec: MachineSpec) => VmmMachine }
  >
> = {
  x86_64: { check: checkX86Request, build: buildX86Machine },
  arm64: { check: checkArm64Request, build: buildArm64Machine },
};

/** Options only one architecture has: the architecture, whether the spec uses it, and the line. */
const ARCHITECTURE_ONLY: readonly {
  readonly on: KvmArchitecture;
  readonly uses: (spec: MachineRequest) => boolean;
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

/** The architecture, once it has a machine and nothing of `request` belongs to the other one. */
function supportedFor(
  request: MachineRequest,
  architecture: KvmArchitecture | "unsupported",
): KvmArchitecture {
  if (architecture === "unsupported") {
    throw new MachineSpecError(`viommu run has machines for x86-64 and arm64 hosts, not ${process.arch}`);
  }
  for (const row of ARCHITECTURE_ONLY) {
    if (row.on !== architecture && row.uses(request)) throw new MachineSpecError(row.refusal);
  }
  return architecture;
}

/**
 * Everything `createMachine` would refuse of `request` before opening anything (its files are
 * already read), for a front end that must know before it starts a run elsewhere (the KVM lab's:
 * tools/guest-lab/kvm-lab-cli.ts). Throws the same one line `createMachine` would.
 */
export function checkMachineRequest(
  request: MachineRequest,
  architecture: KvmArchitecture | "unsupported" = kvmArchitecture(),
): void {
  MACHINES[supportedFor(request, architecture)].check(request);
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
  return MACHINES[supportedFor(spec, architecture)].build(spec);
}
