/**
 * The virtio-pci modern transport (VIRTIO 1.3 4.1) around a `VirtioDevice`.
 *
 * PCI identity: vendor 0x1AF4, device 0x1040 + device type, revision 1, subsystem vendor
 * 0x1AF4 and subsystem ID 0x40+ (4.1.2.1: non-transitional devices). One 64-bit memory BAR
 * (BAR0, 32 KiB) holds every structure:
 *   0x0000 common configuration (64 bytes)      0x3000 notify area (queue i at 4 * i)
 *   0x1000 ISR status (read clears)              0x4000 MSI-X table (queues + 1 vectors)
 *   0x2000 device-specific configuration         0x5000 MSI-X PBA
 * Capabilities: MSI-X, then virtio_pci_cap COMMON, NOTIFY (notify_off_multiplier 4), ISR,
 * DEVICE and PCI_CFG (the configuration-space window onto the BARs, 4.1.4.9).
 *
 * Features: the device's own bits plus VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX, and
 * ACCESS_PLATFORM when `accessPlatform` is set (a device behind an IOMMU: its DMA address space
 * translates). FEATURES_OK is refused (left clear, 3.1.1) when the driver accepts a bit not
 * offered, does not accept VERSION_1, does not accept an offered ACCESS_PLATFORM (6.1: the
 * device cannot work with untranslated addresses), or the device refuses.
 *
 * All queue DMA uses the PCI function's DMA space (bus-master gated). Errors in the rings set
 * DEVICE_NEEDS_RESET and send a configuration change notification (2.1.2); nothing throws.
 *
 * About 630 lines, kept whole on purpose: common configuration, notify, ISR, the PCI_CFG window
 * and device status all read and write the same per-transport state (selected queue, feature
 * words, status, queues), and the notify path keeps its constants module-local (below).
 */
import type { Tracer } from "../engine/trace.ts";
import { BarRegions } from "../pci/bar-regions.ts";
import { PCI_CAP_ID_VENDOR } from "../pci/config-space.ts";
import { PciFunction } from "../pci/function.ts";
import { MsixCapability } from "../pci/msix.ts";
import type { AccessSize } from "../platform/bus.ts";
import * as C from "./constants.ts";
import type { VirtioDevice, VirtioDeviceContext } from "./device.ts";
import { SplitQueue } from "./split-queue.ts";

// Module-local copies of the constants: under tsx, imported bindings are read through getter
// calls, measurable on the notify path.
const COMMON_CFG_SIZE = C.COMMON_CFG_SIZE;
const COMMON_CONFIG_GENERATION = C.COMMON_CONFIG_GENERATION;
const COMMON_DEVICE_FEATURE = C.COMMON_DEVICE_FEATURE;
const COMMON_DEVICE_FEATURE_SELECT = C.COMMON_DEVICE_FEATURE_SELECT;
const COMMON_DEVICE_STATUS = C.COMMON_DEVICE_STATUS;
const COMMON_DRIVER_FEATURE = C.COMMON_DRIVER_FEATURE;
const COMMON_DRIVER_FEATURE_SELECT = C.COMMON_DRIVER_FEATURE_SELECT;
const COMMON_MSIX_CONFIG = C.COMMON_MSIX_CONFIG;
const COMMON_NUM_QUEUES = C.COMMON_NUM_QUEUES;
const COMMON_QUEUE_DESC = C.COMMON_QUEUE_DESC;
const COMMON_QUEUE_DEVICE = C.COMMON_QUEUE_DEVICE;
const COMMON_QUEUE_ENABLE = C.COMMON_QUEUE_ENABLE;
const COMMON_QUEUE_MSIX_VECTOR = C.COMMON_QUEUE_MSIX_VECTOR;
const COMMON_QUEUE_NOTIFY_OFF = C.COMMON_QUEUE_NOTIFY_OFF;
const COMMON_QUEUE_SELECT = C.COMMON_QUEUE_SELECT;
const COMMON_QUEUE_SIZE = C.COMMON_QUEUE_SIZE;
const F_ACCESS_PLATFORM = C.F_ACCESS_PLATFORM;
const F_RING_EVENT_IDX = C.F_RING_EVENT_IDX;
const F_RING_INDIRECT_DESC = C.F_RING_INDIRECT_DESC;
const F_VERSION_1 = C.F_VERSION_1;
const ISR_CONFIG = C.ISR_CONFIG;
const ISR_QUEUE = C.ISR_QUEUE;
const PCI_CAP_COMMON_CFG = C.PCI_CAP_COMMON_CFG;
const PCI_CAP_DEVICE_CFG = C.PCI_CAP_DEVICE_CFG;
const PCI_CAP_ISR_CFG = C.PCI_CAP_ISR_CFG;
const PCI_CAP_NOTIFY_CFG = C.PCI_CAP_NOTIFY_CFG;
const PCI_CAP_PCI_CFG = C.PCI_CAP_PCI_CFG;
const STATUS_DEVICE_NEEDS_RESET = C.STATUS_DEVICE_NEEDS_RESET;
const STATUS_DRIVER_OK = C.STATUS_DRIVER_OK;
const STATUS_FEATURES_OK = C.STATUS_FEATURES_OK;
const VIRTIO_MSI_NO_VECTOR = C.VIRTIO_MSI_NO_VECTOR;
const VIRTIO_PCI_MODERN_DEVICE_ID_BASE = C.VIRTIO_PCI_MODERN_DEVICE_ID_BASE;
const VIRTIO_PCI_VENDOR_ID = C.VIRTIO_PCI_VENDOR_ID;

export const VIRTIO_BAR_INDEX = 0;
export const VIRTIO_BAR_SIZE = 0x8000;
export const COMMON_CFG_OFFSET = 0x0000;
export const ISR_OFFSET = 0x1000;
export const DEVICE_CFG_OFFSET = 0x2000;
export const NOTIFY_OFFSET = 0x3000;
export const MSIX_TABLE_OFFSET = 0x4000;
export const MSIX_PBA_OFFSET = 0x5000;
export const NOTIFY_OFF_MULTIPLIER = 4;

export interface VirtioPciOptions {
  /** Offer VIRTIO_F_ACCESS_PLATFORM (the device's DMA is translated by an IOMMU). */
  readonly accessPlatform: boolean;
  readonly tracer?: Tracer;
}

export interface VirtioPciStats {
  readonly status: number;
  readonly negotiatedFeatures: string;
  readonly featuresRefused: number;
  readonly resets: number;
  readonly notifications: number;
  readonly queueInterrupts: number;
  readonly configInterrupts: number;
  readonly needsReset: number;
  readonly lastError: string | null;
  readonly queues: ReturnType<SplitQueue["stats"]>[];
}

interface QueueConfig {
  size: number;
  msixVector: number;
  enabled: boolean;
  /** desc, driver, device as lo/hi pairs. */
  readonly addrs: Uint32Array;
}

export class VirtioPciTransport {
  readonly pci: PciFunction;
  readonly device: VirtioDevice;
  readonly msix: MsixCapability;
  readonly offeredFeatures: bigint;
  readonly queues: SplitQueue[];
  private readonly queueConfig: QueueConfig[];
  private readonly tracer: Tracer | undefined;

  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private driverFeatures = 0n;
  private negotiated = 0n;
  private status = 0;
  private configGeneration = 0;
  private queueSelect = 0;
  private configVector = VIRTIO_MSI_NO_VECTOR;
  private isr = 0;
  private active = false;
  private readonly pciCfgOffset: number;
  private readonly context: VirtioDeviceContext;

  featuresRefused = 0;
  resets = 0;
  notifications = 0;
  queueInterrupts = 0;
  configInterrupts = 0;
  needsReset = 0;
  lastError: string | null = null;

  constructor(device: VirtioDevice, options: VirtioPciOptions) {
    this.device = device;
    this.tracer = options.tracer;
    this.offeredFeatures =
      device.deviceFeatures |
      F_VERSION_1 |
      F_RING_INDIRECT_DESC |
      F_RING_EVENT_IDX |
      (options.accessPlatform ? F_ACCESS_PLATFORM : 0n);
    if (device.queueCount < 1 || device.queueCount > 255) throw new Error(`${device.name}: 1..255 queues`);
    if (device.configSizeBytes > 0x1000) throw new Error(`${device.name}: config too large`);
    this.pci = new PciFunction({
      name: device.name,
      vendorId: VIRTIO_PCI_VENDOR_ID,
      deviceId: VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device.deviceType,
      classCode: device.pciClassCode,
      revisionId: 1,
      subsystemVendorId: VIRTIO_PCI_VENDOR_ID,
      subsystemId: 0x40 + device.deviceType,
      interruptPin: 1,
    });
    this.pci.tracer = options.tracer;
    this.queues = [];
    this.queueConfig = [];
    for (let i = 0; i < device.queueCount; i++) {
      this.queues.push(new SplitQueue(i, device.queueMaxSize));
      this.queueConfig.push({
        size: 0,
        msixVector: VIRTIO_MSI_NO_VECTOR,
        enabled: false,
        addrs: new Uint32Array(6),
      });
    }
    this.resetQueueConfig();

    const bar = new BarRegions(VIRTIO_BAR_SIZE);
    this.msix = new MsixCapability(this.pci, {
      vectors: device.queueCount + 1,
      tableBar: VIRTIO_BAR_INDEX,
      tableOffset: MSIX_TABLE_OFFSET,
      pbaBar: VIRTIO_BAR_INDEX,
      pbaOffset: MSIX_PBA_OFFSET,
    });
    bar.add(COMMON_CFG_OFFSET, 64, {
      read: (o, s) => this.commonRead(o, s),
      write: (o, s, v) => this.commonWrite(o, s, v),
    });
    bar.add(ISR_OFFSET, 4, { read: (o, s) => this.isrRead(o, s), write: () => {} });
    if (device.configSizeBytes > 0) {
      bar.add(DEVICE_CFG_OFFSET, device.configSizeBytes, {
        read: (o, s) => (s === 8 ? 0 : device.readConfig(o, s)),
        write: (o, s, v) => {
          if (s !== 8) device.writeConfig(o, s, v);
        },
      });
    }
    bar.add(NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER * device.queueCount, {
      read: () => 0,
      write: (o) => this.notify(Math.floor(o / NOTIFY_OFF_MULTIPLIER)),
    });
    bar.add(MSIX_TABLE_OFFSET, this.msix.tableSizeBytes, this.msix.tableHandler);
    bar.add(MSIX_PBA_OFFSET, this.msix.pbaSizeBytes, this.msix.pbaHandler);
    this.pci.addBar(VIRTIO_BAR_INDEX, {
      kind: "mem64",
      sizeBytes: VIRTIO_BAR_SIZE,
      handler: bar,
      name: `${device.name} BAR0`,
    });

    this.addVirtioCap(PCI_CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_SIZE);
    const notifyCap = this.addVirtioCap(
      PCI_CAP_NOTIFY_CFG,
      NOTIFY_OFFSET,
      NOTIFY_OFF_MULTIPLIER * device.queueCount,
      4,
    );
    this.pci.config.setU32(notifyCap + 16, NOTIFY_OFF_MULTIPLIER);
    this.addVirtioCap(PCI_CAP_ISR_CFG, ISR_OFFSET, 1);
    if (device.configSizeBytes > 0)
      this.addVirtioCap(PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, device.configSizeBytes);
    this.pciCfgOffset = this.addPciCfgCap();
    this.pci.onReset = () => this.resetDevice();
    this.context = this.makeContext();
  }

  /** Adds a virtio_pci_cap (4.1.4): cap_len, cfg_type, bar, id, offset, length [+ extra]. */
  private addVirtioCap(cfgType: number, offset: number, length: number, extraBytes = 0): number {
    const size = 16 + extraBytes;
    const c = this.pci.config;
    const at = c.addCapability(PCI_CAP_ID_VENDOR, size);
    c.setU8(at + 2, size);
    c.setU8(at + 3, cfgType);
    c.setU8(at + 4, VIRTIO_BAR_INDEX);
    c.setU8(at + 5, 0);
    c.setU32(at + 8, offset);
    c.setU32(at + 12, length);
    return at;
  }

  /** 4.1.4.9: virtio_pci_cfg_cap: bar, offset, length writable; pci_cfg_data at +16 is a window. */
  private addPciCfgCap(): number {
    const c = this.pci.config;
    const at = c.addCapability(PCI_CAP_ID_VENDOR, 20, {
      beforeRead: (o, s) => {
        if (o < 20 && o + s > 16) this.pciCfgAccess(false);
      },
      afterWrite: (o, s) => {
        if (o < 20 && o + s > 16) this.pciCfgAccess(true);
      },
    });
    c.setU8(at + 2, 20);
    c.setU8(at + 3, PCI_CAP_PCI_CFG);
    c.setWritable(at + 4, 1, 0xff);
    c.setWritable(at + 8, 4, 0xffffffff);
    c.setWritable(at + 12, 4, 0xffffffff);
    c.setWritable(at + 16, 4, 0xffffffff);
    return at;
  }

  /**
   * 4.1.4.9.1: a read of pci_cfg_data reads cap.length bytes at cap.offset in BAR cap.bar into
   * it; a write writes its first cap.length bytes there. Lengths other than 1, 2, 4, offsets
   * not a multiple of the length, and BARs we do not have are ignored.
   */
  private pciCfgAccess(isWrite: boolean): void {
    const c = this.pci.config;
    const at = this.pciCfgOffset;
    const barIndex = c.u8(at + 4);
    const offset = c.u32(at + 8);
    const length = c.u32(at + 12);
    if ((length !== 1 && length !== 2 && length !== 4) || offset % length !== 0) return;
    const bar = barIndex < 6 ? this.pci.bars[barIndex] : undefined;
    if (bar === undefined || offset + length > bar.sizeBytes) return;
    if (isWrite) {
      const data = c.u32(at + 16);
      bar.handler.write(offset, length, length === 4 ? data : data & (2 ** (8 * length) - 1));
    } else {
      const v = bar.handler.read(offset, length);
      for (let i = 0; i < length; i++) c.setU8(at + 16 + i, Math.floor(v / 2 ** (8 * i)) & 0xff);
    }
  }

  get negotiatedFeatures(): bigint {
    return this.negotiated;
  }

  get deviceStatus(): number {
    return this.status;
  }

  // ---- common configuration -------------------------------------------------------------

  private selectedQueue(): QueueConfig | undefined {
    return this.queueConfig[this.queueSelect];
  }

  private commonField(offset: number): number {
    const q = this.selectedQueue();
    switch (offset) {
      case COMMON_DEVICE_FEATURE_SELECT:
        return this.deviceFeatureSelect;
      case COMMON_DEVICE_FEATURE:
        return featureWord(this.offeredFeatures, this.deviceFeatureSelect);
      case COMMON_DRIVER_FEATURE_SELECT:
        return this.driverFeatureSelect;
      case COMMON_DRIVER_FEATURE:
        return featureWord(this.driverFeatures, this.driverFeatureSelect);
      case COMMON_MSIX_CONFIG:
        return this.configVector;
      case COMMON_NUM_QUEUES:
        return this.device.queueCount;
      case COMMON_DEVICE_STATUS:
        return this.status;
      case COMMON_CONFIG_GENERATION:
        return this.configGeneration;
      case COMMON_QUEUE_SELECT:
        return this.queueSelect;
      // 4.1.4.3.1: a queue_select beyond num_queues reads queue_size 0 (unavailable).
      case COMMON_QUEUE_SIZE:
        return q?.size ?? 0;
      case COMMON_QUEUE_MSIX_VECTOR:
        return q?.msixVector ?? VIRTIO_MSI_NO_VECTOR;
      case COMMON_QUEUE_ENABLE:
        return q?.enabled === true ? 1 : 0;
      case COMMON_QUEUE_NOTIFY_OFF:
        return q === undefined ? 0 : this.queueSelect;
      default:
        if (offset >= COMMON_QUEUE_DESC && offset < COMMON_QUEUE_DEVICE + 8 && q !== undefined) {
          return q.addrs[(offset - COMMON_QUEUE_DESC) / 4];
        }
        return 0; // queue_notify_data, queue_reset (features not offered), padding
    }
  }

  /** Width of the field at `offset` (4.1.3.1: accessed with its natural width). */
  private static fieldWidth(offset: number): number {
    if (offset < COMMON_MSIX_CONFIG) return 4;
    if (offset === COMMON_DEVICE_STATUS || offset === COMMON_CONFIG_GENERATION) return 1;
    if (offset >= COMMON_QUEUE_DESC && offset < COMMON_QUEUE_DEVICE + 8) return 4;
    return 2;
  }

  private commonRead(offset: number, sizeBytes: AccessSize): number {
    if (
      sizeBytes === 8 &&
      offset >= COMMON_QUEUE_DESC &&
      offset < COMMON_QUEUE_DEVICE + 8 &&
      offset % 8 === 0
    ) {
      return (this.commonField(offset + 4) & 0x1fffff) * 2 ** 32 + this.commonField(offset);
    }
    if (offset % 2 !== 0 && offset !== COMMON_CONFIG_GENERATION) return 0;
    if (VirtioPciTransport.fieldWidth(offset) !== sizeBytes) return 0;
    return this.commonField(offset) >>> 0;
  }

  private commonWrite(offset: number, sizeBytes: AccessSize, value: number): void {
    if (!Number.isFinite(value)) return;
    const v = Math.trunc(value);
    if (
      sizeBytes === 8 &&
      offset >= COMMON_QUEUE_DESC &&
      offset < COMMON_QUEUE_DEVICE + 8 &&
      offset % 8 === 0
    ) {
      this.commonWrite(offset, 4, v % 2 ** 32);
      this.commonWrite(offset + 4, 4, Math.floor(v / 2 ** 32));
      return;
    }
    if (
      (offset % 2 !== 0 && offset !== COMMON_CONFIG_GENERATION) ||
      VirtioPciTransport.fieldWidth(offset) !== sizeBytes
    ) {
      return;
    }
    const q = this.selectedQueue();
    const u32 = v >>> 0;
    switch (offset) {
      case COMMON_DEVICE_FEATURE_SELECT:
        this.deviceFeatureSelect = u32;
        return;
      case COMMON_DRIVER_FEATURE_SELECT:
        this.driverFeatureSelect = u32;
        return;
      case COMMON_DRIVER_FEATURE: {
        // 3.1.1: features are fixed once FEATURES_OK is set.
        if ((this.status & STATUS_FEATURES_OK) !== 0 || this.driverFeatureSelect > 1) return;
        const shift = BigInt(32 * this.driverFeatureSelect);
        this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(u32) << shift);
        return;
      }
      case COMMON_MSIX_CONFIG:
        this.configVector = this.validVector(u32 & 0xffff);
        return;
      case COMMON_DEVICE_STATUS:
        this.writeStatus(u32 & 0xff);
        return;
      case COMMON_QUEUE_SELECT:
        this.queueSelect = u32 & 0xffff;
        return;
      case COMMON_QUEUE_SIZE:
        // The driver may only lower the size, to a power of two, before enabling (4.1.4.3.2).
        if (q === undefined || q.enabled) return;
        if ((u32 & 0xffff) === 0 || (u32 & 0xffff) > this.device.queueMaxSize || (u32 & (u32 - 1)) !== 0)
          return;
        q.size = u32 & 0xffff;
        return;
      case COMMON_QUEUE_MSIX_VECTOR:
        if (q !== undefined) q.msixVector = this.validVector(u32 & 0xffff);
        return;
      case COMMON_QUEUE_ENABLE:
        // 4.1.4.3.2: the driver MUST NOT write 0; only 1 on a disabled queue has an effect.
        if (q !== undefined && (u32 & 0xffff) === 1 && !q.enabled) q.enabled = true;
        return;
      default:
        if (
          offset >= COMMON_QUEUE_DESC &&
          offset < COMMON_QUEUE_DEVICE + 8 &&
          q !== undefined &&
          !q.enabled
        ) {
          q.addrs[(offset - COMMON_QUEUE_DESC) / 4] = u32;
        }
        return;
    }
  }

  /** 4.1.5.1.2.1: a vector the device cannot use reads back as NO_VECTOR. */
  private validVector(vector: number): number {
    return vector < this.msix.vectors ? vector : VIRTIO_MSI_NO_VECTOR;
  }

  private writeStatus(value: number): void {
    if (value === 0) {
      this.resetDevice();
      return;
    }
    const old = this.status;
    // The device keeps DEVICE_NEEDS_RESET until reset; the driver cannot clear it.
    let next = value | (old & STATUS_DEVICE_NEEDS_RESET);
    if ((next & STATUS_FEATURES_OK) !== 0 && (old & STATUS_FEATURES_OK) === 0) {
      if (!this.featuresAcceptable(this.driverFeatures)) {
        this.featuresRefused++;
        next &= ~STATUS_FEATURES_OK;
      } else {
        this.negotiated = this.driverFeatures;
      }
    }
    this.status = next;
    if (this.tracer?.on("config")) {
      this.tracer.emit("config", this.device.name, "status", { old, new: next });
    }
    if ((next & STATUS_DRIVER_OK) !== 0 && (old & STATUS_DRIVER_OK) === 0) this.driverOk();
  }

  private featuresAcceptable(features: bigint): boolean {
    if ((features & ~this.offeredFeatures) !== 0n) return false;
    if ((features & F_VERSION_1) === 0n) return false;
    // 6.1: a device that offers ACCESS_PLATFORM cannot operate with untranslated addresses.
    if ((this.offeredFeatures & F_ACCESS_PLATFORM) !== 0n && (features & F_ACCESS_PLATFORM) === 0n)
      return false;
    return this.device.acceptFeatures(features);
  }

  private driverOk(): void {
    if ((this.status & STATUS_FEATURES_OK) === 0) {
      this.fail("DRIVER_OK without FEATURES_OK");
      return;
    }
    const eventIdx = (this.negotiated & F_RING_EVENT_IDX) !== 0n;
    const indirect = (this.negotiated & F_RING_INDIRECT_DESC) !== 0n;
    for (let i = 0; i < this.queues.length; i++) {
      const c = this.queueConfig[i];
      if (!c.enabled) continue;
      const a = c.addrs;
      const err = this.queues[i].start(
        this.pci.dma,
        c.size,
        addr64(a[0], a[1]),
        addr64(a[2], a[3]),
        addr64(a[4], a[5]),
        eventIdx,
        indirect,
      );
      if (err !== null) {
        this.fail(err);
        return;
      }
    }
    this.active = true;
    this.device.activate(this.context);
  }

  private makeContext(): VirtioDeviceContext {
    const transport = this;
    return {
      get features(): bigint {
        return transport.negotiated;
      },
      queue: (index) => this.queues[index],
      notifyUsed: (index) => this.notifyUsed(index),
      configChanged: () => this.configChanged(),
      fail: (reason) => this.fail(reason),
    };
  }

  /** BAR0 offset of queue `index`'s notify address (for hosts that bind an ioeventfd to it). */
  notifyOffsetInBar(index: number): number {
    return NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * index;
  }

  /**
   * A driver notification for queue `queueIndex` (4.1.5.2): what a write to its notify address
   * does. Hosts that receive notifications another way (an ioeventfd) call this directly.
   */
  notify(queueIndex: number): void {
    this.notifications++;
    if (!this.active || (this.status & STATUS_DEVICE_NEEDS_RESET) !== 0) return;
    const q = this.queues[queueIndex];
    if (q === undefined || !q.ready) return;
    if (this.tracer?.on("queue"))
      this.tracer.emit("queue", this.device.name, "notify", { queue: queueIndex });
    this.device.queueNotify(queueIndex);
    if (q.brokenReason !== null) this.fail(q.brokenReason);
  }

  /** Used buffer notification for queue `index` (4.1.4.5 / 4.1.5.4), if the driver wants one. */
  notifyUsed(index: number): void {
    const q = this.queues[index];
    if (q === undefined) return;
    if (!q.needsInterrupt()) {
      if (q.brokenReason !== null) this.fail(q.brokenReason);
      return;
    }
    this.queueInterrupts++;
    if (this.msix.enabled) {
      const vector = this.queueConfig[index].msixVector;
      if (vector !== VIRTIO_MSI_NO_VECTOR) this.pci.notifyVector(vector);
      return;
    }
    this.isr |= ISR_QUEUE;
    this.pci.setIntx(true);
  }

  /** 4.1.4.5.1: set the ISR configuration bit, then notify by msix_config or INTx. */
  private sendConfigInterrupt(): void {
    this.configInterrupts++;
    this.isr |= ISR_CONFIG;
    if (this.msix.enabled) {
      if (this.configVector !== VIRTIO_MSI_NO_VECTOR) this.pci.notifyVector(this.configVector);
      return;
    }
    this.pci.setIntx(true);
  }

  configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) & 0xff;
    if ((this.status & STATUS_DRIVER_OK) !== 0) this.sendConfigInterrupt();
  }

  /** 2.1.2: an error the device cannot recover from: DEVICE_NEEDS_RESET and a config notification. */
  fail(reason: string): void {
    if ((this.status & STATUS_DEVICE_NEEDS_RESET) !== 0) return;
    this.needsReset++;
    this.lastError = reason;
    this.status |= STATUS_DEVICE_NEEDS_RESET;
    if (this.tracer?.on("queue")) this.tracer.emit("queue", this.device.name, "needs-reset", { reason });
    this.sendConfigInterrupt();
  }

  /** 4.1.4.5: reading ISR status returns and clears it, and deasserts INTx. */
  private isrRead(offset: number, _sizeBytes: AccessSize): number {
    if (offset !== 0) return 0;
    const v = this.isr;
    this.isr = 0;
    this.pci.setIntx(false);
    return v;
  }

  private resetQueueConfig(): void {
    for (const c of this.queueConfig) {
      c.size = this.device.queueMaxSize;
      c.msixVector = VIRTIO_MSI_NO_VECTOR;
      c.enabled = false;
      c.addrs.fill(0);
    }
  }

  /** 2.4 / 4.1.4.3.1: device reset; status, features, queues and ISR back to initial values. */
  private resetDevice(): void {
    this.resets++;
    this.active = false;
    this.device.reset();
    for (const q of this.queues) q.reset();
    this.resetQueueConfig();
    this.status = 0;
    this.deviceFeatureSelect = 0;
    this.driverFeatureSelect = 0;
    this.driverFeatures = 0n;
    this.negotiated = 0n;
    this.queueSelect = 0;
    this.configVector = VIRTIO_MSI_NO_VECTOR;
    this.isr = 0;
    this.pci.setIntx(false);
  }

  stats(): VirtioPciStats {
    return {
      status: this.status,
      negotiatedFeatures: `0x${this.negotiated.toString(16)}`,
      featuresRefused: this.featuresRefused,
      resets: this.resets,
      notifications: this.notifications,
      queueInterrupts: this.queueInterrupts,
      configInterrupts: this.configInterrupts,
      needsReset: this.needsReset,
      lastError: this.lastError,
      queues: this.queues.map((q) => q.stats()),
    };
  }
}

function featureWord(features: bigint, select: number): number {
  if (select > 1) return 0;
  return Number((features >> BigInt(32 * select)) & 0xffffffffn);
}

/** A 64-bit guest address as a number, or -1 when it is not below 2^53. */
function addr64(lo: number, hi: number): number {
  return hi >= 0x200000 ? -1 : hi * 2 ** 32 + lo;
}
