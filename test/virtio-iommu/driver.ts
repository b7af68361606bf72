/**
 * A minimal driver-side harness for the virtio-iommu tests: builds a device over anonymous RAM,
 * negotiates features, sends requests and returns their status (or "unanswered" for used length 0).
 */
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { VirtioIommu, type VirtioIommuOptions } from "../../src/virtio-iommu/device.ts";
import {
  encodeAttach,
  encodeDetach,
  encodeMap,
  encodeProbe,
  encodeUnmap,
} from "../../src/virtio-iommu/requests.ts";
import { S_OK, STATUS_NAMES } from "../../src/virtio-iommu/wire.ts";

export { prng } from "../support/prng.ts";

export const RAM_BYTES = 16 << 20;

export function makeMemory(sizeBytes = RAM_BYTES): GuestMemory {
  return GuestMemory.anonymous([{ gpa: 0, sizeBytes }]);
}

export interface Rig {
  readonly memory: GuestMemory;
  readonly dev: VirtioIommu;
}

/** A device with endpoints `endpointIds` declared and every offered feature negotiated. */
export function makeRig(
  options: VirtioIommuOptions = {},
  endpointIds: number[] = [8],
  negotiate = true,
): Rig {
  const memory = makeMemory();
  const dev = new VirtioIommu(memory, options);
  for (const id of endpointIds) dev.addEndpoint(id);
  if (negotiate) dev.negotiate(dev.deviceFeatures | (1n << 32n));
  return { memory, dev };
}

/** Sends a non-PROBE request with a 4-byte writable tail; returns the status name or "unanswered". */
export function send(dev: VirtioIommu, request: Uint8Array, writableBytes = 4): string {
  const response = new Uint8Array(writableBytes).fill(0xee);
  const used = dev.handleRequest(request, response);
  if (used === 0) {
    if (response.some((b) => b !== 0xee))
      throw new Error("device wrote a buffer it returned with used length 0");
    return "unanswered";
  }
  if (used !== 4) throw new Error(`unexpected used length ${used}`);
  if (response[1] !== 0 || response[2] !== 0 || response[3] !== 0) throw new Error("tail reserved not zero");
  return STATUS_NAMES[response[0]] ?? `status ${response[0]}`;
}

export function attach(dev: VirtioIommu, domainId: number, endpointId: number, flags = 0): string {
  return send(dev, encodeAttach(domainId, endpointId, flags));
}

export function detach(dev: VirtioIommu, domainId: number, endpointId: number): string {
  return send(dev, encodeDetach(domainId, endpointId));
}

export function map(
  dev: VirtioIommu,
  domainId: number,
  virtStart: number | bigint,
  virtEnd: number | bigint,
  physStart: number | bigint,
  flags = 3,
): string {
  return send(dev, encodeMap(domainId, virtStart, virtEnd, physStart, flags));
}

export function unmap(
  dev: VirtioIommu,
  domainId: number,
  virtStart: number | bigint,
  virtEnd: number | bigint,
): string {
  return send(dev, encodeUnmap(domainId, virtStart, virtEnd));
}

export interface ProbeAnswer {
  readonly used: number;
  readonly status: string;
  readonly response: Uint8Array;
}

/** Sends PROBE with `writableBytes` of device-writable space (default probe_size + 4). */
export function probe(dev: VirtioIommu, endpointId: number, writableBytes?: number): ProbeAnswer {
  const probeSize = dev.readConfig(32, 4);
  const response = new Uint8Array(writableBytes ?? probeSize + 4).fill(0xee);
  const used = dev.handleRequest(encodeProbe(endpointId), response);
  if (used === 0) return { used, status: "unanswered", response };
  const tail = used - 4;
  return { used, status: STATUS_NAMES[response[tail]] ?? `status ${response[tail]}`, response };
}

export function ok(status: string): boolean {
  return status === STATUS_NAMES[S_OK];
}
