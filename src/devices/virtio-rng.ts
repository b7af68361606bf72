/**
 * virtio-rng, the entropy device (VIRTIO 1.3 5.4): one requestq of device-writable buffers that
 * the device fills with random bytes from node:crypto (the host's CSPRNG). No feature bits, no
 * configuration space.
 *
 * 5.4.6.1: the device MUST place one or more random bytes into the buffer, but MAY use less than
 * the entire buffer length: each buffer is filled up to `maxBytesPerRequest` (64 KiB). A chain
 * with device-readable buffers is answered with used length 0 (5.4.6: the driver MUST NOT place
 * driver-readable buffers into the queue), as is a chain whose buffer faults.
 */
import { randomFillSync } from "node:crypto";
import { VIRTIO_ID_ENTROPY } from "../virtio/constants.ts";
import type { VirtioDevice, VirtioDeviceContext } from "../virtio/device.ts";
import { DescriptorChain, POP_CHAIN } from "../virtio/split-queue.ts";

export interface VirtioRngStats {
  readonly requests: number;
  readonly bytes: number;
  readonly rejectedChains: number;
  readonly dmaFaults: number;
}

export class VirtioRng implements VirtioDevice {
  readonly name: string;
  readonly deviceType = VIRTIO_ID_ENTROPY;
  readonly pciClassCode = 0x00ff00; // QEMU virtio-rng-pci: PCI_CLASS_OTHERS
  readonly deviceFeatures = 0n;
  readonly queueCount = 1;
  readonly queueMaxSize: number;
  readonly configSizeBytes = 0;
  readonly maxBytesPerRequest = 64 * 1024;
  private context: VirtioDeviceContext | undefined;
  private readonly chain = new DescriptorChain();
  private readonly entropy = new Uint8Array(64 * 1024);

  requests = 0;
  bytes = 0;
  rejectedChains = 0;
  dmaFaults = 0;

  constructor(options: { name?: string; queueSize?: number } = {}) {
    this.name = options.name ?? "virtio-rng";
    this.queueMaxSize = options.queueSize ?? 256;
  }

  readConfig(): number {
    return 0;
  }
  writeConfig(): void {}

  acceptFeatures(): boolean {
    return true;
  }

  activate(context: VirtioDeviceContext): void {
    this.context = context;
  }

  queueNotify(index: number): void {
    const ctx = this.context;
    if (ctx === undefined || index !== 0) return;
    const q = ctx.queue(0);
    const dma = q.dma;
    if (dma === undefined) return;
    const chain = this.chain;
    let pushed = false;
    while (q.pop(chain) === POP_CHAIN) {
      let used = 0;
      if (chain.readableBytes > 0 || chain.writableBytes === 0) {
        this.rejectedChains++;
      } else {
        const n = Math.min(chain.writableBytes, this.maxBytesPerRequest);
        const bytes = this.entropy.subarray(0, n);
        randomFillSync(bytes);
        const r = chain.write(dma, 0, bytes);
        if (typeof r === "number") {
          used = r;
          this.bytes += r;
        } else {
          this.dmaFaults++;
        }
        this.requests++;
      }
      if (!q.pushUsed(chain.head, used)) break;
      pushed = true;
    }
    if (pushed) ctx.notifyUsed(0);
  }

  reset(): void {
    this.context = undefined;
  }

  stats(): VirtioRngStats {
    return {
      requests: this.requests,
      bytes: this.bytes,
      rejectedChains: this.rejectedChains,
      dmaFaults: this.dmaFaults,
    };
  }
}
