/**
 * virtio-iommu-pci: the virtio-iommu request engine (src/virtio-iommu/device.ts) behind the
 * virtio-pci transport. PCI 1af4:1057, class 00:ff as QEMU's virtio-iommu-pci (Linux binds by
 * vendor/device ID and finds the endpoints through ACPI VIOT, not the class).
 *
 * Queues (VIRTIO 1.3 5.13.2): 0 requestq, 1 eventq. The device's own queues are not behind
 * itself: the host connects this function's DMA to an IDENTITY space (guest-physical), and the
 * transport does not offer ACCESS_PLATFORM.
 *
 * requestq: each chain's device-readable bytes (at most 4 KiB are read: every request type is
 * smaller) form the request; its device-writable area (at most 64 KiB, the largest PROBE answer
 * for the largest probe_size the options allow) receives the answer; the engine returns the used
 * length. The writable area is checked before the request is performed: a request whose answer
 * could not be written is not performed, and the device sets DEVICE_NEEDS_RESET (VIRTIO 1.3
 * 2.1.2: the driver would otherwise wait for a status that never comes). An answer that still
 * fails to land after the request was performed (memory reached by messages that failed) also
 * sets DEVICE_NEEDS_RESET: the driver cannot learn what happened.
 * eventq: fault records queued by the engine are written into driver-posted buffers of at least
 * 24 bytes (5.13.6.9), when the driver posts buffers or the engine reports a new fault. With
 * no buffer available the records wait in the engine's bounded queue (which drops the excess,
 * as 5.13.6.9 allows). A buffer shorter than a record is returned with used length 0.
 *
 * DEVICE_NEEDS_RESET from the engine (`onNeedsReset`: a host IOMMU refused an unmap, so an
 * assigned device may still reach memory the guest unmapped, or an internal error) reaches the
 * guest through the transport's device status and a configuration change notification, on
 * every host that uses this class (`viommu run`, `viommu serve`).
 */
import { ACCESS_WRITE } from "../engine/access.ts";
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { GuestMemory } from "../engine/guest-memory.ts";
import type { VirtioDevice, VirtioDeviceContext } from "../virtio/device.ts";
import { VirtioPciTransport } from "../virtio/pci-transport.ts";
import { DescriptorChain, POP_CHAIN } from "../virtio/split-queue.ts";
import { VirtioIommu, type VirtioIommuOptions } from "../virtio-iommu/device.ts";
import { MAX_PROBE_SIZE_BYTES } from "../virtio-iommu/options.ts";
import {
  EVENT_QUEUE,
  FAULT_RECORD_BYTES,
  REQUEST_QUEUE,
  TAIL_SIZE_BYTES,
  VIRTIO_ID_IOMMU,
} from "../virtio-iommu/wire.ts";

const MAX_REQUEST_BYTES = 4096;
/** The largest answer: a PROBE with the largest probe_size (options.ts) and its tail. */
export const MAX_RESPONSE_BYTES = MAX_PROBE_SIZE_BYTES + TAIL_SIZE_BYTES;

export interface VirtioIommuPciStats {
  readonly requests: number;
  readonly requestDmaFaults: number;
  readonly eventsDelivered: number;
  readonly eventBuffersTooSmall: number;
  readonly requestsUnwritable: number;
}

class VirtioIommuDevice implements VirtioDevice {
  readonly name: string;
  readonly deviceType = VIRTIO_ID_IOMMU;
  readonly pciClassCode = 0x00ff00;
  readonly deviceFeatures: bigint;
  readonly queueCount = 2;
  readonly queueMaxSize: number;
  readonly configSizeBytes: number;
  readonly engine: VirtioIommu;
  private context: VirtioDeviceContext | undefined;
  private readonly chain = new DescriptorChain();
  // Events can be reported while a request is being serviced: they use their own chain.
  private readonly eventChain = new DescriptorChain();
  private readonly request = new Uint8Array(MAX_REQUEST_BYTES);
  private response = new Uint8Array(512);
  // Views of the scratch buffers by length: request sizes repeat, so no allocation per request.
  private readonly requestViews: (Uint8Array | undefined)[] = [];
  private readonly responseViews: (Uint8Array | undefined)[] = [];

  private delivering = false;
  private deliverAgain = false;
  requests = 0;
  requestDmaFaults = 0;
  /** Requests not performed because their answer could not be written (NEEDS_RESET set). */
  requestsUnwritable = 0;
  eventsDelivered = 0;
  eventBuffersTooSmall = 0;

  constructor(engine: VirtioIommu, name: string, queueSize: number) {
    this.engine = engine;
    this.name = name;
    this.queueMaxSize = queueSize;
    this.deviceFeatures = engine.deviceFeatures;
    this.configSizeBytes = engine.configSizeBytes;
    engine.onEvent = () => this.deliverEvents();
  }

  readConfig(offset: number, sizeBytes: 1 | 2 | 4): number {
    return this.engine.readConfig(offset, sizeBytes);
  }

  writeConfig(offset: number, sizeBytes: 1 | 2 | 4, value: number): void {
    this.engine.writeConfig(offset, sizeBytes, value);
  }

  acceptFeatures(features: bigint): boolean {
    this.engine.negotiate(features & this.deviceFeatures);
    return true;
  }

  activate(context: VirtioDeviceContext): void {
    this.context = context;
    this.deliverEvents();
  }

  queueNotify(index: number): void {
    if (index === REQUEST_QUEUE) this.serviceRequests();
    else if (index === EVENT_QUEUE) this.deliverEvents();
  }

  private serviceRequests(): void {
    const ctx = this.context;
    if (ctx === undefined) return;
    const q = ctx.queue(REQUEST_QUEUE);
    const dma = q.dma;
    if (dma === undefined) return;
    const chain = this.chain;
    let pushed = false;
    while (q.pop(chain) === POP_CHAIN) {
      this.requests++;
      const reqLen = Math.min(chain.readableBytes, MAX_REQUEST_BYTES);
      const respLen = Math.min(chain.writableBytes, MAX_RESPONSE_BYTES);
      if (this.response.length < respLen) {
        this.response = new Uint8Array(MAX_RESPONSE_BYTES);
        this.responseViews.length = 0;
      }
      const request = prefix(this.requestViews, this.request, reqLen);
      const response = prefix(this.responseViews, this.response, respLen);
      response.fill(0);
      let used = 0;
      const r = chain.read(dma, 0, request);
      if (typeof r !== "number") {
        this.requestDmaFaults++;
      } else if (!this.writable(dma, chain, respLen)) {
        // Not performed: its status could not be written.
        this.requestsUnwritable++;
        ctx.fail("virtio-iommu: a request's device-writable area is not writable");
      } else {
        used = this.engine.handleRequest(request, response);
        if (used > 0) {
          const w = chain.write(dma, 0, used === respLen ? response : response.subarray(0, used));
          if (typeof w !== "number") {
            this.requestDmaFaults++;
            used = 0;
            ctx.fail("virtio-iommu: a performed request's answer could not be written");
          }
        }
      }
      if (!q.pushUsed(chain.head, used)) break;
      pushed = true;
    }
    if (pushed) ctx.notifyUsed(REQUEST_QUEUE);
  }

  /** True when the first `length` bytes of the chain's writable part translate to RAM for writing. */
  private writable(dma: DmaAddressSpace, chain: DescriptorChain, length: number): boolean {
    let left = length;
    for (let i = chain.firstWritable; i < chain.count && left > 0; i++) {
      const n = Math.min(chain.lengths[i], left);
      if (!dma.accessible(chain.addrs[i], n, ACCESS_WRITE)) return false;
      left -= n;
    }
    return true;
  }

  /**
   * Delivers pending fault records. Re-entrant calls (a fault raised by another device while a
   * delivery waits on a DMA message, vfio-user) only ask the running delivery to loop again:
   * the event chain scratch is in use.
   */
  private deliverEvents(): void {
    if (this.delivering) {
      this.deliverAgain = true;
      return;
    }
    this.delivering = true;
    try {
      do {
        this.deliverAgain = false;
        this.deliverPending();
      } while (this.deliverAgain);
    } finally {
      this.delivering = false;
    }
  }

  private deliverPending(): void {
    const ctx = this.context;
    if (ctx === undefined) return;
    const q = ctx.queue(EVENT_QUEUE);
    const dma = q.dma;
    if (dma === undefined || !q.ready) return;
    const chain = this.eventChain;
    let pushed = false;
    // Check for a record before taking a buffer: a popped buffer cannot be given back.
    while (this.engine.pendingEvents > 0 && q.pop(chain) === POP_CHAIN) {
      if (chain.writableBytes < FAULT_RECORD_BYTES || chain.readableBytes > 0) {
        this.eventBuffersTooSmall++;
        if (!q.pushUsed(chain.head, 0)) break;
        pushed = true;
        continue;
      }
      const record = this.engine.takeEvent();
      if (record === undefined) break;
      const w = chain.write(dma, 0, record);
      const used = typeof w === "number" ? w : 0;
      if (used > 0) this.eventsDelivered++;
      if (!q.pushUsed(chain.head, used)) break;
      pushed = true;
    }
    if (pushed) ctx.notifyUsed(EVENT_QUEUE);
  }

  reset(): void {
    this.context = undefined;
    this.engine.reset();
  }
}

/** Lengths up to this get a cached view (every request and the common answers are shorter). */
const MAX_CACHED_VIEW_BYTES = 512;

/** `buffer.subarray(0, length)`, cached by length (an array lookup: no hashing on this path). */
function prefix(cache: (Uint8Array | undefined)[], buffer: Uint8Array, length: number): Uint8Array {
  const hit = length <= MAX_CACHED_VIEW_BYTES ? cache[length] : undefined;
  if (hit !== undefined) return hit;
  const view = buffer.subarray(0, length);
  if (length <= MAX_CACHED_VIEW_BYTES) cache[length] = view;
  return view;
}

export interface VirtioIommuPciOptions extends VirtioIommuOptions {
  readonly name?: string;
  /** Maximum size of each queue (default 256, as QEMU). */
  readonly queueSize?: number;
}

export class VirtioIommuPci {
  readonly engine: VirtioIommu;
  readonly transport: VirtioPciTransport;
  private readonly device: VirtioIommuDevice;

  constructor(memory: GuestMemory, options: VirtioIommuPciOptions = {}) {
    this.engine = new VirtioIommu(memory, options);
    this.device = new VirtioIommuDevice(
      this.engine,
      options.name ?? "virtio-iommu",
      options.queueSize ?? 256,
    );
    this.transport = new VirtioPciTransport(this.device, { accessPlatform: false, tracer: options.tracer });
    // VIRTIO 1.3 2.1.2 (5.13.6.4.2, 5.13.6.6.2 for assigned devices): DEVICE_NEEDS_RESET in the
    // device status and a configuration change notification.
    this.engine.onNeedsReset = (reason) => this.transport.fail(`virtio-iommu: ${reason}`);
  }

  get pci() {
    return this.transport.pci;
  }

  stats(): VirtioIommuPciStats {
    const d = this.device;
    return {
      requests: d.requests,
      requestDmaFaults: d.requestDmaFaults,
      eventsDelivered: d.eventsDelivered,
      eventBuffersTooSmall: d.eventBuffersTooSmall,
      requestsUnwritable: d.requestsUnwritable,
    };
  }
}
