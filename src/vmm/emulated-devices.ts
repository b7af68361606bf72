/**
 * The emulated PCI devices both machines offer (`--device edu|rng|disk`), built from one device
 * choice and placed on the machine's PCI bus. What only one machine has (an assigned VFIO device
 * on x86) is placed by that machine.
 */
import { EduDevice } from "../devices/edu.ts";
import { VirtioBlk } from "../devices/virtio-blk.ts";
import { VirtioRng } from "../devices/virtio-rng.ts";
import type { Tracer } from "../engine/trace.ts";
import type { PciBus, PlaceOptions } from "../pci/bus.ts";
import { VirtioPciTransport } from "../virtio/pci-transport.ts";
import type { DeviceChoice, PlacedDevice } from "./device-choice.ts";

export type EmulatedDeviceChoice = Extract<DeviceChoice, { kind: "edu" | "rng" | "disk" }>;

/** Builds the `index`th device choice `d` and adds it to `pci` at `place`. */
export function placeEmulatedDevice(
  pci: PciBus,
  d: EmulatedDeviceChoice,
  index: number,
  place: PlaceOptions,
  tracer: Tracer,
): PlacedDevice {
  if (d.kind === "edu") {
    const edu = new EduDevice({ name: `edu${index}` });
    const rid = pci.addFunction(edu.pci, place);
    return { kind: "edu", requesterId: rid, iommu: d.iommu, fn: edu.pci, stats: () => edu.stats() };
  }
  if (d.kind === "rng") {
    const rng = new VirtioRng({ name: `rng${index}` });
    const transport = new VirtioPciTransport(rng, { accessPlatform: d.iommu, tracer });
    const rid = pci.addFunction(transport.pci, place);
    return {
      kind: "rng",
      requesterId: rid,
      iommu: d.iommu,
      fn: transport.pci,
      stats: () => transport.stats(),
    };
  }
  const blk = new VirtioBlk({
    path: d.path,
    readOnly: d.readOnly,
    accessPlatform: d.iommu,
    name: `disk${index}`,
  });
  const rid = pci.addFunction(blk.pci, place);
  return {
    kind: "disk",
    requesterId: rid,
    iommu: d.iommu,
    fn: blk.pci,
    stats: () => blk.stats(),
    close: () => blk.close(),
  };
}
