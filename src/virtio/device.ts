/**
 * What a virtio device model implements, independent of the transport (virtio-pci here).
 *
 * The transport owns feature negotiation, the status state machine, the queues and interrupts;
 * the device owns its feature bits, its configuration space and what it does with buffers.
 * Devices never throw on guest input: a malformed request gets the device's architected status;
 * a broken ring is the queue's business (see split-queue.ts).
 */
import type { SplitQueue } from "./split-queue.ts";

/** What the transport gives a device once the driver set DRIVER_OK. */
export interface VirtioDeviceContext {
  /** The negotiated features (device-specific and reserved bits). */
  readonly features: bigint;
  queue(index: number): SplitQueue;
  /** Sends a used buffer notification for `queueIndex` if the driver wants one now. */
  notifyUsed(queueIndex: number): void;
  /** The device configuration changed: bump config_generation and notify the driver. */
  configChanged(): void;
  /** An unrecoverable device error: DEVICE_NEEDS_RESET and a configuration notification. */
  fail(reason: string): void;
}

export interface VirtioDevice {
  readonly name: string;
  /** Virtio device ID (5: 2 block, 4 entropy, 23 IOMMU). */
  readonly deviceType: number;
  /** PCI class code (24 bits) for the transport. */
  readonly pciClassCode: number;
  /** Device-specific feature bits offered (the transport adds the reserved ones it implements). */
  readonly deviceFeatures: bigint;
  readonly queueCount: number;
  /** Largest size of each queue (a power of two). */
  readonly queueMaxSize: number;
  readonly configSizeBytes: number;
  readConfig(offset: number, sizeBytes: 1 | 2 | 4): number;
  writeConfig(offset: number, sizeBytes: 1 | 2 | 4, value: number): void;
  /** FEATURES_OK: false refuses the feature set (the transport then leaves FEATURES_OK clear). */
  acceptFeatures(features: bigint): boolean;
  /** DRIVER_OK: the queues are configured and the device may use them. */
  activate(context: VirtioDeviceContext): void;
  /** The driver notified queue `index` (only after activate). */
  queueNotify(index: number): void;
  /** Device reset (status 0 or PCI reset): back to the initial state, queues forgotten. */
  reset(): void;
}
