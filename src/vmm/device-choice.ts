/**
 * The PCI devices a machine gets, whatever its architecture: what the user asked for
 * (`DeviceRequest`, from `--device`, `--disk`, `--rng`), the same with a host device opened
 * (`DeviceChoice`), and a device once placed on the machine's PCI bus (`PlacedDevice`).
 */
import type { PciFunction } from "../pci/function.ts";
import { VfioPciDevice } from "../vfio/device.ts";

export type DeviceRequest =
  | { readonly kind: "edu" | "rng"; readonly iommu: boolean }
  | { readonly kind: "disk"; readonly iommu: boolean; readonly path: string; readonly readOnly: boolean }
  /** A host PCI device assigned through VFIO; `host` is its normalized BDF (DDDD:BB:DD.F). */
  | { readonly kind: "vfio"; readonly iommu: boolean; readonly host: string };

export type DeviceChoice =
  | { readonly kind: "edu"; readonly iommu: boolean }
  | { readonly kind: "rng"; readonly iommu: boolean }
  | { readonly kind: "disk"; readonly iommu: boolean; readonly path: string; readonly readOnly: boolean }
  /** A host device opened through VFIO; its container must know guest RAM (bindGuestRam). */
  | { readonly kind: "vfio"; readonly iommu: boolean; readonly device: VfioPciDevice };

export interface PlacedDevice {
  readonly kind: DeviceChoice["kind"];
  readonly requesterId: number;
  readonly iommu: boolean;
  readonly fn: PciFunction;
  readonly stats: () => object;
  readonly close?: () => void;
}

/**
 * The devices the machine gets: each request, with VFIO devices opened; without a kernel the
 * built-in guest runs, and it needs an edu (behind the IOMMU if there is one).
 */
export function devicesFor(
  o: {
    readonly devices: readonly DeviceRequest[];
    readonly kernel?: unknown;
    readonly iommu: { readonly kind: string };
  },
  openVfio: (bdf: string) => VfioPciDevice = (bdf) => VfioPciDevice.open(bdf),
): DeviceChoice[] {
  const devices: DeviceChoice[] = o.devices.map(
    (d): DeviceChoice =>
      d.kind === "disk"
        ? { kind: "disk", iommu: d.iommu, path: d.path, readOnly: d.readOnly }
        : d.kind === "vfio"
          ? { kind: "vfio", iommu: d.iommu, device: openVfio(d.host) }
          : { kind: d.kind, iommu: d.iommu },
  );
  if (o.kernel === undefined && !devices.some((d) => d.kind === "edu")) {
    devices.unshift({ kind: "edu", iommu: o.iommu.kind !== "none" });
  }
  return devices;
}

/** Each placed device's counters, for a machine's stats(). */
export function placedDeviceStats(devices: readonly PlacedDevice[]) {
  return devices.map((d) => ({ kind: d.kind, requesterId: d.requesterId, iommu: d.iommu, stats: d.stats() }));
}
