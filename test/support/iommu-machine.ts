/**
 * A test machine with a virtio-iommu-pci at 00:01.0 driven through its queues by a guest-side
 * driver (VIRTIO 1.3 5.13), plus helpers to place iommu=on devices behind it.
 *
 * Guest RAM layout used by the helpers: the virtio-iommu driver's rings and requests in
 * [1 MiB, 4 MiB) (guest-physical: the IOMMU is not behind itself); DMA buffers of translated
 * devices in [4 MiB, 12 MiB), which `mapDmaWindow` maps at IOVA = gpa + DMA_IOVA_OFFSET.
 */
import { VirtioIommuPci } from "../../src/devices/virtio-iommu-pci.ts";
import type { PciFunction } from "../../src/pci/function.ts";
import { TestMachine } from "./machine.ts";
import type { Bdf } from "./pci-driver.ts";
import { attachRequest, decodeFault, type FaultRecord, mapRequest, unmapRequest } from "./viommu-requests.ts";
import { GuestAllocator, VIRTIO_F_VERSION_1, VirtioPciDriver } from "./virtio-driver.ts";

export const VIOMMU_BDF: Bdf = { bus: 0, device: 1, fn: 0 };
export const DMA_WINDOW_GPA = 4 << 20;
export const DMA_WINDOW_BYTES = 8 << 20;
// Below 2^28 so that edu (28-bit DMA mask) can use the same window.
export const DMA_IOVA_OFFSET = 0x0800_0000;

const F_MAP_UNMAP = 1n << 2n;
const F_INPUT_RANGE = 1n << 0n;
const F_DOMAIN_RANGE = 1n << 1n;
const F_PROBE = 1n << 4n;
const F_BYPASS_CONFIG = 1n << 6n;

export class IommuMachine extends TestMachine {
  readonly viommu: VirtioIommuPci;
  readonly viommuDriver: VirtioPciDriver;
  readonly dmaAllocator = new GuestAllocator(DMA_WINDOW_GPA, DMA_WINDOW_GPA + DMA_WINDOW_BYTES);
  private readonly eventBuffers: number[] = [];

  constructor() {
    super();
    this.viommu = new VirtioIommuPci(this.memory);
    this.add(this.viommu.pci, 1); // IDENTITY: the IOMMU's own queues are guest-physical
    this.viommuDriver = new VirtioPciDriver(this, VIOMMU_BDF, new GuestAllocator(1 << 20, 4 << 20));
    this.viommuDriver.bringUp(
      VIRTIO_F_VERSION_1 | F_MAP_UNMAP | F_INPUT_RANGE | F_DOMAIN_RANGE | F_PROBE | F_BYPASS_CONFIG,
      2,
      64,
    );
  }

  /** Places `fn` at `device` as an endpoint of the virtio-iommu (endpoint ID = BDF). */
  addBehindIommu(fn: PciFunction, device: number): number {
    return this.add(fn, device, (rid) => this.viommu.engine.addEndpoint(rid));
  }

  /** Sends one request on the requestq and returns the status byte of its tail. */
  request(bytes: Uint8Array): number {
    const d = this.viommuDriver;
    const req = d.allocator.alloc(bytes.length);
    const tail = d.allocator.alloc(4);
    this.memory.write(req, bytes);
    this.memory.fill(tail, 4, 0xff);
    const q = d.queues[0];
    q.add([
      { gpa: req, len: bytes.length, writable: false },
      { gpa: tail, len: 4, writable: true },
    ]);
    d.kick(0);
    const used = q.takeUsed();
    if (used.length !== 1) throw new Error(`expected one used request, got ${used.length}`);
    return this.memory.readU8(tail);
  }

  attach(domain: number, endpoint: number): number {
    return this.request(attachRequest(domain, endpoint));
  }
  map(domain: number, iova: number, sizeBytes: number, gpa: number, flags = 3): number {
    return this.request(mapRequest(domain, iova, iova + sizeBytes - 1, gpa, flags));
  }
  unmap(domain: number, iova: number, sizeBytes: number): number {
    return this.request(unmapRequest(domain, iova, iova + sizeBytes - 1));
  }

  /** Attaches `endpoint` to `domain` and maps the whole DMA window at gpa + DMA_IOVA_OFFSET. */
  mapDmaWindow(domain: number, endpoint: number): void {
    if (this.attach(domain, endpoint) !== 0) throw new Error("attach failed");
    if (this.map(domain, DMA_WINDOW_GPA + DMA_IOVA_OFFSET, DMA_WINDOW_BYTES, DMA_WINDOW_GPA) !== 0) {
      throw new Error("map failed");
    }
  }

  /** Posts `count` 64-byte device-writable buffers on the eventq. */
  postEventBuffers(count: number): void {
    const d = this.viommuDriver;
    for (let i = 0; i < count; i++) {
      const buf = d.allocator.alloc(64);
      this.memory.fill(buf, 64, 0);
      const head = d.queues[1].add([{ gpa: buf, len: 64, writable: true }]);
      this.eventBuffers[head] = buf;
    }
    d.kick(1);
  }

  /** Fault records the device returned on the eventq since the last call. */
  takeFaults(): FaultRecord[] {
    const q = this.viommuDriver.queues[1];
    return q.takeUsed().map((u) => {
      const buf = this.eventBuffers[u.id];
      if (u.len < 24) throw new Error(`short fault record (${u.len} bytes)`);
      return decodeFault(this.memory.view(buf, 24));
    });
  }
}
