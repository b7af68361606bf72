/**
 * Finding an assignable PCI device on the host: the BDF from `host=BDF` or Cloud Hypervisor's
 * `path=/sys/bus/pci/devices/BDF/`, and the checks VFIO needs before anything is opened (the
 * device exists, it is bound to vfio-pci, it has an IOMMU group, every device of the group is
 * bound to vfio-pci or to nothing). Each failure is one line that names the fix.
 */
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";

export class VfioSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VfioSetupError";
  }
}

const BDF_RE = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$/i;

/** "0000:00:03.0" from "00:03.0", "0000:00:03.0" or "/sys/bus/pci/devices/0000:00:03.0/". */
export function normalizeBdf(text: string): string {
  let t = text.trim();
  const sys = /^\/sys\/bus\/pci\/devices\/([^/]+)\/?$/.exec(t);
  if (sys !== null) t = sys[1];
  const m = BDF_RE.exec(t);
  if (m === null || Number.parseInt(m[3], 16) > 0x1f) {
    throw new VfioSetupError(
      `"${text}" is not a PCI address: give host=DDDD:BB:DD.F (as lspci -D prints) or path=/sys/bus/pci/devices/DDDD:BB:DD.F/`,
    );
  }
  return `${(m[1] ?? "0000").toLowerCase()}:${m[2].toLowerCase()}:${m[3].toLowerCase()}.${m[4]}`;
}

export interface HostPciDevice {
  readonly bdf: string;
  readonly sysfsPath: string;
  readonly group: number;
}

const BIND_HINT = (bdf: string) =>
  `modprobe vfio-pci; echo vfio-pci > /sys/bus/pci/devices/${bdf}/driver_override; echo ${bdf} > /sys/bus/pci/drivers_probe`;

function driverOf(sysfsPath: string): string | null {
  const link = join(sysfsPath, "driver");
  try {
    return basename(readlinkSync(link));
  } catch {
    return null;
  }
}

/** Drivers the kernel lets share a group with a vfio-pci device (vfio_dev_driver_allowed). */
const GROUP_SAFE_DRIVERS = new Set(["vfio-pci", "pci-stub", "pcieport"]);

/** Checks that `bdf` can be assigned through VFIO; throws VfioSetupError naming the fix. */
export function findAssignableDevice(bdf: string, sysfsRoot = "/sys"): HostPciDevice {
  const sysfsPath = join(sysfsRoot, "bus/pci/devices", bdf);
  if (!existsSync(sysfsPath)) {
    throw new VfioSetupError(`no PCI device ${bdf} on this host (lspci -D lists the addresses)`);
  }
  const driver = driverOf(sysfsPath);
  if (driver !== "vfio-pci") {
    const now = driver === null ? "bound to no driver" : `bound to ${driver}`;
    const unbind = driver === null ? "" : `echo ${bdf} > /sys/bus/pci/devices/${bdf}/driver/unbind; `;
    throw new VfioSetupError(`${bdf} is ${now}, not vfio-pci: ${unbind}${BIND_HINT(bdf)}`);
  }
  let group: number;
  try {
    group = Number(basename(readlinkSync(join(sysfsPath, "iommu_group"))));
  } catch {
    throw new VfioSetupError(
      `${bdf} has no IOMMU group: the host needs an IOMMU for it (intel_iommu=on, amd_iommu=on, or a virtio-iommu)`,
    );
  }
  const members = join(sysfsRoot, "kernel/iommu_groups", String(group), "devices");
  let names: string[] = [];
  try {
    names = readdirSync(members);
  } catch {
    names = [bdf];
  }
  for (const other of names) {
    if (other === bdf) continue;
    const d = driverOf(join(members, other));
    if (d !== null && !GROUP_SAFE_DRIVERS.has(d)) {
      throw new VfioSetupError(
        `IOMMU group ${group} of ${bdf} is not viable: ${other} is bound to ${d}; bind every device of the group to vfio-pci (${BIND_HINT(other)})`,
      );
    }
  }
  return { bdf, sysfsPath, group };
}
