/**
 * A floor for the guest's VFIO map and unmap over vfio-user: `viommu serve --iommu virtio
 * --device edu,iommu=on` (edu at 00:12.0, as the side-by-side bench lays it out), except that
 * the virtio-iommu answers MAP and UNMAP requests OK at once, without the IOMMU model: nothing
 * is mapped, checked or propagated. Everything else is ours as served: socket wake-up, framing,
 * dispatch, the virtio-pci transport, the request queue (pop, the writable-area check, the used
 * ring). So the guest's map+unmap rate against it bounds what cutting the model's work could
 * give, and the rest of the gap to QEMU is the round trip and the guest itself.
 *
 * Only for bench/vfio-user-vs-qemu.ts: the guest it serves must not DMA through the IOMMU (edu's
 * DMA would go through mappings that were never made). `--disk FILE` adds a virtio-blk at 00:11.0
 * outside the IOMMU, so the guest can run the same reads as against `viommu serve` before its
 * maps (the same guest state when the maps run; the reads' figures mean nothing here).
 *
 *   node --import tsx bench/support/floor-serve.ts --socket-dir DIR [--disk FILE]
 * stdout: one line of QEMU arguments, as `viommu serve` prints.
 */
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildVirtioPciIommuViot } from "../../src/acpi/viot.ts";
import { qemuArgsLine } from "../../src/cli/serve.ts";
import { EduDevice } from "../../src/devices/edu.ts";
import { VirtioBlk } from "../../src/devices/virtio-blk.ts";
import { VirtioIommuPci } from "../../src/devices/virtio-iommu-pci.ts";
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import type { PciFunction } from "../../src/pci/function.ts";
import { VfioUserDeviceServer } from "../../src/vfio-user/server.ts";
import { SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";

const REQ_MAP = 3;
const REQ_UNMAP = 4;
const IOMMU_SLOT = 0x10;
const DISK_SLOT = 0x11;
const EDU_SLOT = 0x12;

const dirArg = process.argv.indexOf("--socket-dir");
if (dirArg < 0 || process.argv[dirArg + 1] === undefined) {
  console.error("usage: floor-serve.ts --socket-dir DIR");
  process.exit(2);
}
const socketDir = process.argv[dirArg + 1];
const diskArg = process.argv.indexOf("--disk");
const diskPath = diskArg < 0 ? undefined : process.argv[diskArg + 1];
const memory = new SharedGuestMemory();
const viommu = new VirtioIommuPci(memory, {
  name: "virtio-iommu",
  pageSizeMask: (1n << 12n) | (1n << 21n) | (1n << 30n),
  bypassInitially: true,
});
// The floor: MAP and UNMAP get a zeroed answer (status S_OK in the tail, VIRTIO 1.3 5.13.6.1),
// every other request (ATTACH, PROBE at driver start-up) the model's.
const modelAnswer = viommu.engine.handleRequest.bind(viommu.engine);
let shortcuts = 0;
viommu.engine.handleRequest = (request: Uint8Array, response: Uint8Array): number => {
  const type = request.length > 0 ? request[0] : 0;
  if ((type === REQ_MAP || type === REQ_UNMAP) && response.length >= 4) {
    shortcuts++;
    return 4;
  }
  return modelAnswer(request, response);
};

const servers: VfioUserDeviceServer[] = [];
const slots: number[] = [];
function serveFunction(name: string, slot: number, fn: PciFunction, dma: DmaAddressSpace): void {
  const socketPath = join(socketDir, `${name}.sock`);
  rmSync(socketPath, { force: true });
  const server = new VfioUserDeviceServer({
    name,
    fn,
    socketPath,
    memory,
    dma,
    requesterId: slot << 3,
    log: (line) => process.stderr.write(`floor-serve: ${line}\n`),
  });
  server.listen();
  servers.push(server);
  slots.push(slot);
}

serveFunction("virtio-iommu", IOMMU_SLOT, viommu.pci, new DmaAddressSpace(memory, IDENTITY, IOMMU_SLOT << 3));
// edu is an endpoint of the IOMMU (plugged, so ATTACH finds it; the VIOT names it, so Linux gives
// it an IOMMU group and VFIO uses the virtio-iommu); the bench starts no DMA of its.
serveFunction(
  "edu0",
  EDU_SLOT,
  new EduDevice({ name: "edu0" }).pci,
  viommu.engine.viommu.plugOrThrow({ vId: EDU_SLOT << 3, kind: "emulated", options: {} }),
);
const disk = diskPath === undefined ? undefined : new VirtioBlk({ path: diskPath, name: "disk0" });
if (disk !== undefined)
  serveFunction("disk0", DISK_SLOT, disk.pci, new DmaAddressSpace(memory, IDENTITY, DISK_SLOT << 3));
const viotPath = join(socketDir, "viot.bin");
writeFileSync(
  viotPath,
  buildVirtioPciIommuViot({
    iommuBdf: IOMMU_SLOT << 3,
    endpointBdfs: [EDU_SLOT << 3],
    coverWholeSlots: true,
  }),
);
const stop = () => {
  process.stderr.write(`floor-serve: ${shortcuts} MAP/UNMAP answered without the model\n`);
  for (const s of servers) {
    s.close();
    rmSync(s.socketPath, { force: true });
  }
  disk?.close();
  process.exit(0);
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
process.stdout.write(
  `${qemuArgsLine(
    1024,
    servers.map((s, i) => ({ slot: slots[i], socketPath: s.socketPath })),
    viotPath,
  )}\n`,
);
