/**
 * Coverage-guided fuzz target (Jazzer.js, libFuzzer) for the virtio-iommu request decoder and
 * its request semantics: any bytes as a request chain's readable part, a writable area of any
 * size up to 64 KiB. The device must answer with a used length inside the writable area and
 * never hit its internal-error path (an exception caught at the request boundary).
 */
import { GuestMemory } from "../src/engine/guest-memory.ts";
import { VirtioIommu } from "../src/virtio-iommu/device.ts";

const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
const dev = new VirtioIommu(memory, { maxDomains: 64, maxMappingsPerDomain: 256, maxMappingsTotal: 1024 });
for (const ep of [0, 1, 8, 0x18]) dev.addEndpoint(ep);
dev.negotiate(dev.deviceFeatures);
const response = new Uint8Array(64 * 1024);

export function fuzz(data: Buffer): void {
  if (data.length < 2) return;
  // First two bytes: size of the writable area; the rest: the request.
  const writable = data.readUInt16LE(0);
  const request = new Uint8Array(data.buffer, data.byteOffset + 2, data.length - 2);
  const used = dev.handleRequest(request, response.subarray(0, writable));
  if (!(used >= 0 && used <= writable)) throw new Error(`used length ${used} outside a ${writable}-byte area`);
  if (dev.stats().internalErrors !== 0) throw new Error("internal error at the request boundary");
  // Keep the state small so the fuzzer explores requests, not a growing table.
  if (dev.stats().mappings > 512) dev.reset(), dev.negotiate(dev.deviceFeatures);
}
