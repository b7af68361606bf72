/**
 * virtio-blk on a host file (VIRTIO 1.3 5.2), one request queue, synchronous node:fs I/O.
 *
 * Requests complete in the order the driver made them available, inside the notify that
 * announced them; the used ring is written only by `serviceQueue`. Every data byte moves
 * between the file and guest RAM through zero-copy views of the request's buffers, obtained by
 * translating all data buffers through the device's DMA address space first: if any of them
 * faults, the request fails with IOERR and no byte of guest memory or of the file changes.
 *
 * Features: SEG_MAX, BLK_SIZE, FLUSH, DISCARD, WRITE_ZEROES, and RO for a read-only disk.
 * Configuration (5.2.4): capacity (512-byte sectors), seg_max, blk_size, max_discard_sectors,
 * max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
 * write_zeroes_may_unmap.
 *
 * Request answers (5.2.6):
 *   IN / OUT: data length a multiple of 512 and inside the capacity, else IOERR; more data
 *     segments than seg_max: IOERR. OUT on a read-only disk: IOERR, nothing written (5.2.6.2).
 *   FLUSH: fsync of the file (the data reaches the disk before the status is written). Without
 *     FLUSH negotiated the device is write-through: every OUT is followed by an fsync.
 *   GET_ID: the serial, up to 20 bytes, NUL-padded when shorter (5.2.6).
 *   DISCARD / WRITE_ZEROES: segments of {sector le64, num_sectors le32, flags le32}; an unknown
 *     flag: UNSUPP; DISCARD with the unmap flag: UNSUPP (5.2.6.2); more segments than the
 *     max_*_seg limit: UNSUPP (as QEMU); a segment beyond num_sectors limits or the capacity:
 *     IOERR; read-only disk: IOERR. All segments are validated before anything changes.
 *     DISCARD deallocates the ranges by punching holes in the file where the host file system
 *     can (reads then return zeroes); where it cannot, nothing changes, which 5.2.6.2 allows
 *     ("the device MAY deallocate"). WRITE_ZEROES with the unmap flag punches holes, falling
 *     back to writing zeroes; without it, writes zeroes (write_zeroes_may_unmap = 1).
 *   Used length (2.7.8): data bytes written + 1 for the status byte (Firecracker counts the same
 *   way; QEMU reports the whole writable length even when no data was written).
 *   DISCARD / WRITE_ZEROES without their feature negotiated, and any other type: UNSUPP. A chain without a 16-byte header or a status byte cannot be
 *   answered: the device sets DEVICE_NEEDS_RESET (as QEMU).
 */
import { closeSync, fstatSync, fsyncSync, openSync, writeSync } from "node:fs";
import { ACCESS_READ, ACCESS_WRITE, type Access } from "../engine/access.ts";
import { type DmaAddressSpace, SgList } from "../engine/dma-space.ts";
import { GuestMemoryError } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import { VIRTIO_ID_BLOCK } from "../virtio/constants.ts";
import type { VirtioDevice, VirtioDeviceContext } from "../virtio/device.ts";
import { VirtioPciTransport } from "../virtio/pci-transport.ts";
import { DescriptorChain, POP_CHAIN } from "../virtio/split-queue.ts";
import { punchHole } from "./punch-hole.ts";
import { readIntoViews, writeFromViews } from "./vectored-io.ts";

export const SECTOR_BYTES = 512;
export const BLK_F_SEG_MAX = 1n << 2n;
export const BLK_F_RO = 1n << 5n;
export const BLK_F_BLK_SIZE = 1n << 6n;
export const BLK_F_FLUSH = 1n << 9n;
export const BLK_F_DISCARD = 1n << 13n;
export const BLK_F_WRITE_ZEROES = 1n << 14n;

export const BLK_T_IN = 0;
export const BLK_T_OUT = 1;
export const BLK_T_FLUSH = 4;
export const BLK_T_GET_ID = 8;
export const BLK_T_DISCARD = 11;
export const BLK_T_WRITE_ZEROES = 13;

export const BLK_S_OK = 0;
export const BLK_S_IOERR = 1;
export const BLK_S_UNSUPP = 2;

export const BLK_ID_BYTES = 20;
const HEADER_BYTES = 16;
const SEGMENT_BYTES = 16;
const DWZ_FLAG_UNMAP = 1;
export const BLK_CONFIG_SIZE = 60;

export interface VirtioBlkOptions {
  readonly path: string;
  readonly readOnly?: boolean;
  /** Serial returned by GET_ID (ASCII, at most 20 bytes used). */
  readonly serial?: string;
  readonly name?: string;
  /** Queue size (default 256). */
  readonly queueSize?: number;
  /** Offer ACCESS_PLATFORM: the device is behind an IOMMU (iommu=on). */
  readonly accessPlatform?: boolean;
  readonly maxDiscardSectors?: number;
  readonly maxDiscardSegments?: number;
  readonly maxWriteZeroesSectors?: number;
  readonly maxWriteZeroesSegments?: number;
  /** Receives `queue` events for requests answered IOERR or UNSUPP, and the transport's events. */
  readonly tracer?: Tracer;
}

export interface VirtioBlkStats {
  readonly requests: Readonly<Record<string, number>>;
  readonly status: { readonly ok: number; readonly ioerr: number; readonly unsupp: number };
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly fsyncs: number;
  readonly dmaFaults: number;
  /** Host I/O errors answered with IOERR. */
  readonly hostErrors: number;
  /** Bytes deallocated by DISCARD or WRITE_ZEROES with unmap (holes punched). */
  readonly deallocatedBytes: number;
}

class VirtioBlkDevice implements VirtioDevice {
  readonly name: string;
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly pciClassCode = 0x010000; // mass storage, SCSI (QEMU's virtio-blk-pci)
  readonly deviceFeatures: bigint;
  readonly queueCount = 1;
  readonly queueMaxSize: number;
  readonly configSizeBytes = BLK_CONFIG_SIZE;
  readonly readOnly: boolean;
  readonly capacitySectors: number;
  readonly segMax: number;
  private readonly fd: number;
  private readonly serial: Uint8Array;
  private readonly config = new Uint8Array(BLK_CONFIG_SIZE);
  private readonly maxDiscardSectors: number;
  private readonly maxDiscardSegments: number;
  private readonly maxWriteZeroesSectors: number;
  private readonly maxWriteZeroesSegments: number;
  private context: VirtioDeviceContext | undefined;
  private readonly tracer: Tracer | undefined;
  private currentType = 0;
  private currentSector = 0;
  private writeback = false;
  private discardNegotiated = false;
  private writeZeroesNegotiated = false;
  private readonly chain = new DescriptorChain();
  private readonly header = new Uint8Array(HEADER_BYTES);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly statusByte = new Uint8Array(1);
  private readonly sg = new SgList(16);
  private readonly zeroes = new Uint8Array(64 * 1024);

  readonly requestCounts: Record<string, number> = {
    in: 0,
    out: 0,
    flush: 0,
    getId: 0,
    discard: 0,
    writeZeroes: 0,
    unknown: 0,
  };
  statusOk = 0;
  statusIoerr = 0;
  statusUnsupp = 0;
  bytesRead = 0;
  bytesWritten = 0;
  fsyncs = 0;
  dmaFaults = 0;
  hostErrors = 0;
  deallocatedBytes = 0;

  constructor(options: VirtioBlkOptions) {
    this.name = options.name ?? "virtio-blk";
    this.readOnly = options.readOnly === true;
    this.tracer = options.tracer;
    this.fd = openSync(options.path, this.readOnly ? "r" : "r+");
    this.capacitySectors = Math.floor(fstatSync(this.fd).size / SECTOR_BYTES);
    this.queueMaxSize = options.queueSize ?? 256;
    // 2 descriptors of a request are header and status (5.2.4: seg_max counts data segments).
    this.segMax = this.queueMaxSize - 2;
    this.serial = new TextEncoder().encode(options.serial ?? "").subarray(0, BLK_ID_BYTES);
    this.maxDiscardSectors = options.maxDiscardSectors ?? 0x3fffff;
    this.maxDiscardSegments = options.maxDiscardSegments ?? 1;
    this.maxWriteZeroesSectors = options.maxWriteZeroesSectors ?? 0x3fffff;
    this.maxWriteZeroesSegments = options.maxWriteZeroesSegments ?? 1;
    this.deviceFeatures =
      BLK_F_SEG_MAX |
      BLK_F_BLK_SIZE |
      BLK_F_FLUSH |
      BLK_F_DISCARD |
      BLK_F_WRITE_ZEROES |
      (this.readOnly ? BLK_F_RO : 0n);
    const v = new DataView(this.config.buffer);
    v.setBigUint64(0, BigInt(this.capacitySectors), true);
    v.setUint32(12, this.segMax, true);
    v.setUint32(20, SECTOR_BYTES, true);
    v.setUint32(36, this.maxDiscardSectors, true);
    v.setUint32(40, this.maxDiscardSegments, true);
    v.setUint32(44, 1, true);
    v.setUint32(48, this.maxWriteZeroesSectors, true);
    v.setUint32(52, this.maxWriteZeroesSegments, true);
    v.setUint8(56, 1); // write_zeroes_may_unmap
  }

  close(): void {
    closeSync(this.fd);
  }

  readConfig(offset: number, sizeBytes: 1 | 2 | 4): number {
    if (!Number.isInteger(offset) || offset < 0 || offset + sizeBytes > BLK_CONFIG_SIZE) return 0;
    let value = 0;
    for (let i = sizeBytes - 1; i >= 0; i--) value = value * 256 + this.config[offset + i];
    return value;
  }

  /** The configuration space is read-only without CONFIG_WCE (not offered). */
  writeConfig(): void {}

  acceptFeatures(): boolean {
    return true;
  }

  activate(context: VirtioDeviceContext): void {
    this.context = context;
    this.writeback = (context.features & BLK_F_FLUSH) !== 0n;
    this.discardNegotiated = (context.features & BLK_F_DISCARD) !== 0n;
    this.writeZeroesNegotiated = (context.features & BLK_F_WRITE_ZEROES) !== 0n;
  }

  queueNotify(index: number): void {
    if (index === 0) this.serviceQueue();
  }

  reset(): void {
    this.context = undefined;
  }

  private serviceQueue(): void {
    const ctx = this.context;
    if (ctx === undefined) return;
    const q = ctx.queue(0);
    const dma = q.dma;
    if (dma === undefined) return;
    const chain = this.chain;
    let pushed = false;
    while (q.pop(chain) === POP_CHAIN) {
      if (chain.readableBytes < HEADER_BYTES || chain.writableBytes < 1) {
        if (pushed) ctx.notifyUsed(0);
        ctx.fail("virtio-blk request without header or status byte");
        return;
      }
      const used = this.handle(dma, chain);
      if (!q.pushUsed(chain.head, used)) break;
      pushed = true;
    }
    if (pushed) ctx.notifyUsed(0);
  }

  /** Handles one request; a host I/O error (EIO, ENOSPC) is answered IOERR. */
  private handle(dma: DmaAddressSpace, chain: DescriptorChain): number {
    this.currentType = -1; // until the header is read
    this.currentSector = -1;
    try {
      return this.dispatch(dma, chain);
    } catch {
      this.hostErrors++;
      return this.finish(dma, chain, BLK_S_IOERR, 0);
    }
  }

  /** Decodes and performs one request; returns the used length (data written + status byte). */
  private dispatch(dma: DmaAddressSpace, chain: DescriptorChain): number {
    if (typeof chain.read(dma, 0, this.header) !== "number") {
      this.dmaFaults++;
      return this.finish(dma, chain, BLK_S_IOERR, 0);
    }
    const type = this.headerView.getUint32(0, true);
    const sectorHi = this.headerView.getUint32(12, true);
    const sector = sectorHi >= 0x200000 ? -1 : sectorHi * 2 ** 32 + this.headerView.getUint32(8, true);
    this.currentType = type;
    this.currentSector = sector;
    switch (type) {
      case BLK_T_IN:
        this.requestCounts.in++;
        return this.readData(dma, chain, sector);
      case BLK_T_OUT:
        this.requestCounts.out++;
        return this.finish(dma, chain, this.writeData(dma, chain, sector), 0);
      case BLK_T_FLUSH:
        this.requestCounts.flush++;
        if (!this.readOnly) this.fsync();
        return this.finish(dma, chain, BLK_S_OK, 0);
      case BLK_T_GET_ID:
        this.requestCounts.getId++;
        return this.getId(dma, chain);
      case BLK_T_DISCARD:
        this.requestCounts.discard++;
        if (!this.discardNegotiated) return this.finish(dma, chain, BLK_S_UNSUPP, 0);
        return this.finish(dma, chain, this.discardOrZero(dma, chain, false), 0);
      case BLK_T_WRITE_ZEROES:
        this.requestCounts.writeZeroes++;
        if (!this.writeZeroesNegotiated) return this.finish(dma, chain, BLK_S_UNSUPP, 0);
        return this.finish(dma, chain, this.discardOrZero(dma, chain, true), 0);
      default:
        this.requestCounts.unknown++;
        return this.finish(dma, chain, BLK_S_UNSUPP, 0);
    }
  }

  /** Writes the status byte (the last writable byte) and returns the used length. */
  private finish(dma: DmaAddressSpace, chain: DescriptorChain, status: number, dataBytes: number): number {
    if (status === BLK_S_OK) this.statusOk++;
    else {
      if (status === BLK_S_IOERR) this.statusIoerr++;
      else this.statusUnsupp++;
      if (this.tracer?.on("queue")) {
        this.tracer.emit("queue", this.name, "request-error", {
          type: this.currentType,
          sector: this.currentSector,
          status: status === BLK_S_IOERR ? "IOERR" : "UNSUPP",
        });
      }
    }
    this.statusByte[0] = status;
    if (typeof chain.write(dma, chain.writableBytes - 1, this.statusByte) !== "number") {
      this.dmaFaults++;
      return 0;
    }
    return dataBytes + 1;
  }

  /**
   * Zero-copy views of [offset, offset + length) of the chain's readable (or writable) part,
   * after translating all of it; null when any byte faults (nothing has been touched then).
   */
  private views(
    dma: DmaAddressSpace,
    chain: DescriptorChain,
    writable: boolean,
    offset: number,
    length: number,
  ): Uint8Array[] | null {
    const out: Uint8Array[] = [];
    const access: Access = writable ? ACCESS_WRITE : ACCESS_READ;
    const first = writable ? chain.firstWritable : 0;
    const end = writable ? chain.count : chain.firstWritable;
    let skip = offset;
    let remaining = length;
    for (let i = first; i < end && remaining > 0; i++) {
      const len = chain.lengths[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, remaining);
      if (dma.translateRange(chain.addrs[i] + skip, n, access, this.sg) !== null) {
        this.dmaFaults++;
        return null;
      }
      let views: Uint8Array[];
      try {
        views = dma.views(this.sg);
      } catch (e) {
        // RAM without bytes to view (vfio-user memory reached by messages): a device error.
        if (!(e instanceof GuestMemoryError)) throw e;
        this.dmaFaults++;
        return null;
      }
      for (const v of views) out.push(v);
      remaining -= n;
      skip = 0;
    }
    return out;
  }

  /** Data segments of the request (descriptors other than header and status). */
  private dataSegments(chain: DescriptorChain): number {
    return Math.max(0, chain.count - 2);
  }

  private rangeOk(sector: number, bytes: number): boolean {
    return sector >= 0 && bytes % SECTOR_BYTES === 0 && sector + bytes / SECTOR_BYTES <= this.capacitySectors;
  }

  private readData(dma: DmaAddressSpace, chain: DescriptorChain, sector: number): number {
    const bytes = chain.writableBytes - 1;
    if (!this.rangeOk(sector, bytes) || this.dataSegments(chain) > this.segMax) {
      return this.finish(dma, chain, BLK_S_IOERR, 0);
    }
    const views = this.views(dma, chain, true, 0, bytes);
    if (views === null) return this.finish(dma, chain, BLK_S_IOERR, 0);
    // One preadv for the whole request; a file that shrank under us reads as zeroes.
    readIntoViews(this.fd, views, sector * SECTOR_BYTES);
    this.bytesRead += bytes;
    return this.finish(dma, chain, BLK_S_OK, bytes);
  }

  private writeData(dma: DmaAddressSpace, chain: DescriptorChain, sector: number): number {
    if (this.readOnly) return BLK_S_IOERR; // 5.2.6.2: IOERR and no data written
    const bytes = chain.readableBytes - HEADER_BYTES;
    if (!this.rangeOk(sector, bytes) || this.dataSegments(chain) > this.segMax) return BLK_S_IOERR;
    const views = this.views(dma, chain, false, HEADER_BYTES, bytes);
    if (views === null) return BLK_S_IOERR;
    writeFromViews(this.fd, views, sector * SECTOR_BYTES);
    this.bytesWritten += bytes;
    if (!this.writeback) this.fsync();
    return BLK_S_OK;
  }

  private fsync(): void {
    fsyncSync(this.fd);
    this.fsyncs++;
  }

  private getId(dma: DmaAddressSpace, chain: DescriptorChain): number {
    const id = new Uint8Array(BLK_ID_BYTES);
    id.set(this.serial);
    const room = Math.min(BLK_ID_BYTES, chain.writableBytes - 1);
    const w = chain.write(dma, 0, id.subarray(0, room));
    if (typeof w !== "number") {
      this.dmaFaults++;
      return this.finish(dma, chain, BLK_S_IOERR, 0);
    }
    return this.finish(dma, chain, BLK_S_OK, room);
  }

  private discardOrZero(dma: DmaAddressSpace, chain: DescriptorChain, zero: boolean): number {
    if (this.readOnly) return BLK_S_IOERR;
    const bytes = chain.readableBytes - HEADER_BYTES;
    const maxSegments = zero ? this.maxWriteZeroesSegments : this.maxDiscardSegments;
    const maxSectors = zero ? this.maxWriteZeroesSectors : this.maxDiscardSectors;
    if (bytes === 0 || bytes % SEGMENT_BYTES !== 0) return BLK_S_IOERR;
    const count = bytes / SEGMENT_BYTES;
    if (count > maxSegments) return BLK_S_UNSUPP;
    const segs = new Uint8Array(bytes);
    if (typeof chain.read(dma, HEADER_BYTES, segs) !== "number") {
      this.dmaFaults++;
      return BLK_S_IOERR;
    }
    const v = new DataView(segs.buffer);
    // Validate every segment before changing anything.
    for (let i = 0; i < count; i++) {
      const o = i * SEGMENT_BYTES;
      const flags = v.getUint32(o + 12, true);
      if ((flags & ~DWZ_FLAG_UNMAP) !== 0) return BLK_S_UNSUPP;
      if (!zero && (flags & DWZ_FLAG_UNMAP) !== 0) return BLK_S_UNSUPP;
      const hi = v.getUint32(o + 4, true);
      const sector = hi >= 0x200000 ? -1 : hi * 2 ** 32 + v.getUint32(o, true);
      const n = v.getUint32(o + 8, true);
      if (n > maxSectors || !this.rangeOk(sector, n * SECTOR_BYTES)) return BLK_S_IOERR;
    }
    for (let i = 0; i < count; i++) {
      const o = i * SEGMENT_BYTES;
      let position = (v.getUint32(o + 4, true) * 2 ** 32 + v.getUint32(o, true)) * SECTOR_BYTES;
      let remaining = v.getUint32(o + 8, true) * SECTOR_BYTES;
      const unmap = !zero || (v.getUint32(o + 12, true) & DWZ_FLAG_UNMAP) !== 0;
      if (unmap && punchHole(this.fd, position, remaining)) {
        this.deallocatedBytes += remaining;
        continue;
      }
      if (!zero) continue; // DISCARD: deallocation is optional (5.2.6.2)
      while (remaining > 0) {
        const n = writeSync(this.fd, this.zeroes, 0, Math.min(remaining, this.zeroes.length), position);
        position += n;
        remaining -= n;
      }
    }
    if (!this.writeback) this.fsync();
    return BLK_S_OK;
  }

  stats(): VirtioBlkStats {
    return {
      requests: { ...this.requestCounts },
      status: { ok: this.statusOk, ioerr: this.statusIoerr, unsupp: this.statusUnsupp },
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      fsyncs: this.fsyncs,
      dmaFaults: this.dmaFaults,
      hostErrors: this.hostErrors,
      deallocatedBytes: this.deallocatedBytes,
    };
  }
}

export class VirtioBlk {
  readonly transport: VirtioPciTransport;
  private readonly device: VirtioBlkDevice;

  constructor(options: VirtioBlkOptions) {
    this.device = new VirtioBlkDevice(options);
    this.transport = new VirtioPciTransport(this.device, {
      accessPlatform: options.accessPlatform === true,
      tracer: options.tracer,
    });
  }

  get pci() {
    return this.transport.pci;
  }

  get capacitySectors(): number {
    return this.device.capacitySectors;
  }

  /** Closes the backing file (the device must not be used afterwards). */
  close(): void {
    this.device.close();
  }

  stats(): VirtioBlkStats {
    return this.device.stats();
  }
}
