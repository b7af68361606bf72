/**
 * A virtio-iommu driver in this process for a virtio-iommu-pci served over vfio-user by ANOTHER
 * process, sending what QEMU 11's vfio-user client sends for a Linux guest (for benchmarks and
 * tests of the doorbell path, without QEMU):
 *
 * - guest RAM is a memfd shared with the server by DMA_MAP (QEMU's memory-backend-memfd,
 *   share=on), also mapped here, so the rings live in memory both processes see;
 * - configuration space accesses are synchronous REGION_READ/WRITE;
 * - BAR writes are posted (QEMU: `post_wr` on memory BARs, VFIO_USER_NO_REPLY unless
 *   x-no-posted-writes), so a doorbell is one message with no reply;
 * - like Linux's driver (drivers/iommu/virtio-iommu.c `__viommu_sync_req`), a request is
 *   kicked and its completion polled on the used ring; the request queue has no interrupt.
 *
 * Written from VIRTIO 1.3 4.1 / 2.7 / 5.13 and vfio-user.rst, not from the device code. Every
 * wait is bounded.
 */
import {
  closeFd,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  mapFile,
  mappingView,
  memfdCreate,
  type NativeMapping,
  PROT_READ,
  PROT_WRITE,
  unmapMapping,
} from "../../src/vfio-user/libc.ts";
import {
  CMD,
  CONFIG_REGION,
  DMA_READ_FLAG,
  DMA_WRITE_FLAG,
  expectOk,
  FLAG_NO_REPLY,
  VfioUserClient,
} from "./vfio-user-client.ts";
import { attachRequest, mapRequest, unmapRequest } from "./viommu-requests.ts";

/** Guest RAM the driver shares: rings and requests live in its first pages. */
export const REMOTE_RAM_BYTES = 4 << 20;
const QUEUE_SIZE = 16;
const DESC_GPA = 0x1000;
const AVAIL_GPA = 0x2000;
const USED_GPA = 0x3000;
const REQUEST_GPA = 0x4000;
const TAIL_GPA = 0x4800;

const F_VERSION_1 = 1n << 32n;
const F_MAP_UNMAP = 1n << 2n;
const F_INPUT_RANGE = 1n << 0n;
const F_DOMAIN_RANGE = 1n << 1n;
const F_BYPASS_CONFIG = 1n << 6n;
const VRING_AVAIL_F_NO_INTERRUPT = 1;
const VRING_DESC_F_NEXT = 1;
const VRING_DESC_F_WRITE = 2;
const VIRTIO_MSI_NO_VECTOR = 0xffff;
// Common configuration offsets (VIRTIO 1.3 4.1.4.3).
const DEVICE_FEATURE_SELECT = 0;
const DEVICE_FEATURE = 4;
const DRIVER_FEATURE_SELECT = 8;
const DRIVER_FEATURE = 12;
const DEVICE_STATUS = 20;
const QUEUE_SELECT = 22;
const QUEUE_SIZE_REG = 24;
const QUEUE_MSIX_VECTOR = 26;
const QUEUE_ENABLE = 28;
const QUEUE_NOTIFY_OFF = 30;
const QUEUE_DESC = 32;
const QUEUE_DRIVER = 40;
const QUEUE_DEVICE = 48;

export class RemoteViommuDriver {
  readonly client: VfioUserClient;
  private readonly memfd: number;
  private readonly mapping: NativeMapping;
  readonly ram: Uint8Array;
  private readonly ramView: DataView;
  private readonly used16: Uint16Array;
  private bar = 0;
  private common = 0;
  private notifyAt = 0;
  private availIdx = 0;
  /** The posted doorbell (REGION_WRITE, NO_REPLY), staged once. */
  private readonly doorbell = new Uint8Array(16 + 16 + 2);
  private nextId = 0x8000;
  /** Requests sent, and polls of the used index while waiting for them. */
  requests = 0;
  polls = 0;

  constructor(socketPath: string) {
    this.client = new VfioUserClient(socketPath, 1 << 16);
    // Sealable, as QEMU's memfd backend: the server maps only memory that cannot shrink.
    this.memfd = memfdCreate("remote-viommu-ram", REMOTE_RAM_BYTES, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    const m = mapFile(this.memfd, 0, REMOTE_RAM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED);
    if (m === null) throw new Error("cannot map the driver's guest RAM");
    this.mapping = m;
    this.ram = mappingView(m, 0, REMOTE_RAM_BYTES);
    this.ramView = new DataView(this.ram.buffer, this.ram.byteOffset, this.ram.byteLength);
    this.used16 = new Uint16Array(this.ram.buffer, this.ram.byteOffset + USED_GPA, 2);
  }

  /** VERSION, RAM shared at gpa 0, bus mastering, virtio bring-up with one request queue. */
  bringUp(): void {
    const c = this.client;
    c.negotiate();
    expectOk(
      c.dmaMap(0, REMOTE_RAM_BYTES, 0, DMA_READ_FLAG | DMA_WRITE_FLAG, [this.memfd]),
      "DMA_MAP of guest RAM",
    );
    expectOk(c.regionWrite(CONFIG_REGION, 4, 2, 0x6), "memory space + bus master");
    this.findCapabilities();
    this.w8(DEVICE_STATUS, 0);
    this.w8(DEVICE_STATUS, 1 | 2); // ACKNOWLEDGE | DRIVER
    this.w32(DEVICE_FEATURE_SELECT, 0);
    const low = BigInt(this.r32(DEVICE_FEATURE));
    this.w32(DEVICE_FEATURE_SELECT, 1);
    const offered = low | (BigInt(this.r32(DEVICE_FEATURE)) << 32n);
    const wanted = F_VERSION_1 | F_MAP_UNMAP | F_INPUT_RANGE | F_DOMAIN_RANGE | F_BYPASS_CONFIG;
    const features = offered & wanted;
    this.w32(DRIVER_FEATURE_SELECT, 0);
    this.w32(DRIVER_FEATURE, Number(features & 0xffffffffn));
    this.w32(DRIVER_FEATURE_SELECT, 1);
    this.w32(DRIVER_FEATURE, Number(features >> 32n));
    this.w8(DEVICE_STATUS, 1 | 2 | 8);
    if ((this.r8(DEVICE_STATUS) & 8) === 0) throw new Error("FEATURES_OK refused");
    // Request queue 0: no interrupt wanted (Linux gives it no callback: NO_VECTOR and
    // VRING_AVAIL_F_NO_INTERRUPT), completion is polled.
    this.w16(QUEUE_SELECT, 0);
    this.w16(QUEUE_SIZE_REG, QUEUE_SIZE);
    this.w64(QUEUE_DESC, DESC_GPA);
    this.w64(QUEUE_DRIVER, AVAIL_GPA);
    this.w64(QUEUE_DEVICE, USED_GPA);
    this.w16(QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
    this.ramView.setUint16(AVAIL_GPA, VRING_AVAIL_F_NO_INTERRUPT, true);
    const notifyOff = this.r16(QUEUE_NOTIFY_OFF);
    this.w16(QUEUE_ENABLE, 1);
    this.w8(DEVICE_STATUS, 1 | 2 | 8 | 4);
    // 4.1.4.4: the queue's notify address is cap.offset + queue_notify_off * multiplier.
    this.notifyAt += notifyOff * this.notifyMultiplier;
    const v = new DataView(this.doorbell.buffer);
    v.setUint16(2, CMD.REGION_WRITE, true);
    v.setUint32(4, this.doorbell.length, true);
    v.setUint32(8, FLAG_NO_REPLY, true);
    v.setBigUint64(16, BigInt(this.notifyAt), true);
    v.setUint32(24, this.bar, true);
    v.setUint32(28, 2, true);
    v.setUint16(32, 0, true); // the queue index
  }

  private notifyMultiplier = 0;

  /** Walks the capability list (PCI 3.0 6.7) for the virtio structures (VIRTIO 1.3 4.1.4). */
  private findCapabilities(): void {
    const cfg = expectOk(this.client.regionRead(CONFIG_REGION, 0, 256), "config space").payload.subarray(16);
    let at = cfg[0x34] & 0xfc;
    let found = 0;
    for (let guard = 0; at !== 0 && guard < 48; guard++) {
      if (cfg[at] === 0x09) {
        const v = new DataView(cfg.buffer, cfg.byteOffset + at);
        const type = v.getUint8(3);
        const offset = v.getUint32(8, true);
        if (type === 1) {
          this.bar = v.getUint8(4);
          this.common = offset;
          found |= 1;
        } else if (type === 2) {
          this.notifyAt = offset;
          this.notifyMultiplier = v.getUint32(16, true);
          found |= 2;
        }
      }
      at = cfg[at + 1] & 0xfc;
    }
    if (found !== 3) throw new Error("virtio common/notify capabilities not found");
  }

  /** Sends one request (device-readable `bytes`, 4-byte status tail) and returns the status. */
  request(bytes: Uint8Array, timeoutMs = 2000): number {
    const ram = this.ram;
    const v = this.ramView;
    ram.set(bytes, REQUEST_GPA);
    ram.fill(0xff, TAIL_GPA, TAIL_GPA + 4);
    // Two descriptors: 0 = request (readable), 1 = tail (writable) (VIRTIO 1.3 2.7.5).
    v.setBigUint64(DESC_GPA, BigInt(REQUEST_GPA), true);
    v.setUint32(DESC_GPA + 8, bytes.length, true);
    v.setUint16(DESC_GPA + 12, VRING_DESC_F_NEXT, true);
    v.setUint16(DESC_GPA + 14, 1, true);
    v.setBigUint64(DESC_GPA + 16, BigInt(TAIL_GPA), true);
    v.setUint32(DESC_GPA + 24, 4, true);
    v.setUint16(DESC_GPA + 28, VRING_DESC_F_WRITE, true);
    v.setUint16(DESC_GPA + 30, 0, true);
    v.setUint16(AVAIL_GPA + 4 + 2 * (this.availIdx % QUEUE_SIZE), 0, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    v.setUint16(AVAIL_GPA + 2, this.availIdx, true);
    // The doorbell: a posted REGION_WRITE (QEMU sends it and returns to the vCPU at once).
    new DataView(this.doorbell.buffer).setUint16(0, this.nextId, true);
    this.nextId = ((this.nextId + 1) & 0x7fff) | 0x8000;
    this.client.sendRaw(this.doorbell);
    this.requests++;
    // Poll used.idx (2.7.8) as Linux's driver does, bounded.
    const deadline = performance.now() + timeoutMs;
    for (let i = 0; ; i++) {
      this.polls++;
      if (Atomics.load(this.used16, 1) === this.availIdx) break;
      if ((i & 1023) === 1023 && performance.now() > deadline)
        throw new Error(`no used buffer within ${timeoutMs} ms`);
    }
    return ram[TAIL_GPA];
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

  close(): void {
    this.client.close();
    unmapMapping(this.mapping);
    closeFd(this.memfd);
  }

  // BAR accesses for set-up (synchronous: a read orders after earlier posted writes anyway).
  private w8(o: number, v: number): void {
    expectOk(this.client.regionWrite(this.bar, this.common + o, 1, v), "common config write");
  }
  private w16(o: number, v: number): void {
    expectOk(this.client.regionWrite(this.bar, this.common + o, 2, v), "common config write");
  }
  private w32(o: number, v: number): void {
    expectOk(this.client.regionWrite(this.bar, this.common + o, 4, v), "common config write");
  }
  private w64(o: number, v: number): void {
    this.w32(o, v % 2 ** 32);
    this.w32(o + 4, Math.floor(v / 2 ** 32));
  }
  private r(o: number, size: number): DataView {
    const m = expectOk(this.client.regionRead(this.bar, this.common + o, size), "common config read");
    return new DataView(m.payload.buffer, m.payload.byteOffset + 16, size);
  }
  private r8(o: number): number {
    return this.r(o, 1).getUint8(0);
  }
  private r16(o: number): number {
    return this.r(o, 2).getUint16(0, true);
  }
  private r32(o: number): number {
    return this.r(o, 4).getUint32(0, true);
  }
}
