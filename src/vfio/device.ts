/**
 * One PCI device opened through VFIO (container + group, type1 v2): its regions (config space,
 * BARs), positioned reads and writes of them, and reset.
 *
 * Open order (Documentation/driver-api/vfio.rst): container (API version, type1 v2), group
 * (/dev/vfio/N, must be VIABLE), GROUP_SET_CONTAINER, SET_IOMMU, GROUP_GET_DEVICE_FD, then
 * DEVICE_GET_INFO (a vfio-pci device has FLAGS_PCI) and one GET_REGION_INFO per region.
 */
import {
  close,
  errno,
  errnoName,
  ioctlBuffer,
  ioctlValue,
  isMapFailed,
  MAP_SHARED,
  mmap,
  munmap,
  O_CLOEXEC,
  O_RDWR,
  open,
  PROT_READ,
  PROT_WRITE,
  pointerAddress,
} from "../kvm/libc.ts";
import { VfioContainer } from "./container.ts";
import { pread, pwrite } from "./libc.ts";
import { findAssignableDevice, normalizeBdf, VfioSetupError } from "./sysfs.ts";
import {
  DEVICE_INFO_BYTES,
  GROUP_STATUS_BYTES,
  IRQ_INFO_BYTES,
  IRQ_SET_HEADER_BYTES,
  REGION_INFO_BYTES,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_SET_IRQS,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
} from "./uapi.ts";

export interface VfioRegion {
  readonly index: number;
  readonly flags: number;
  readonly sizeBytes: number;
  /** Where the region starts in the device file descriptor. */
  readonly offset: number;
  /**
   * The parts that may be mmapped ([offset, offset + sizeBytes) inside the region): the whole
   * region with FLAG_MMAP, the sparse-mmap capability's areas when it has one, none otherwise.
   */
  readonly mmapAreas?: readonly { readonly offset: number; readonly sizeBytes: number }[];
}

/** A region's sparse-mmap areas from its info capability chain (VFIO_REGION_INFO_CAP_SPARSE_MMAP). */
export function sparseMmapAreas(info: Uint8Array): { offset: number; sizeBytes: number }[] | null {
  const v = new DataView(info.buffer, info.byteOffset, info.byteLength);
  let at = v.getUint32(12, true);
  for (let hops = 0; at >= REGION_INFO_BYTES && at + 8 <= info.length && hops < 16; hops++) {
    if (v.getUint16(at, true) === VFIO_REGION_INFO_CAP_SPARSE_MMAP && at + 16 <= info.length) {
      const areas: { offset: number; sizeBytes: number }[] = [];
      const n = v.getUint32(at + 8, true);
      for (let i = 0; i < n && at + 16 + 16 * (i + 1) <= info.length; i++) {
        const o = at + 16 + 16 * i;
        areas.push({
          offset: Number(v.getBigUint64(o, true)),
          sizeBytes: Number(v.getBigUint64(o + 8, true)),
        });
      }
      return areas;
    }
    at = v.getUint32(at + 4, true);
  }
  return null;
}

export interface VfioDeviceStats {
  readonly regionReads: number;
  readonly regionWrites: number;
  /** Reads or writes the kernel refused (the guest got all-ones, or the write was dropped). */
  readonly regionErrors: number;
  readonly resets: number;
  readonly resetsUnavailable: number;
  /** Region mmaps the kernel (or our checks) refused: those parts stay trapped. */
  readonly mmapErrors: number;
}

/** VFIO_DEVICE_GET_REGION_INFO for regions 0..count-1 (a region the kernel refuses reads as size 0). */
function readRegions(fd: number, count: number): VfioRegion[] {
  const regions: VfioRegion[] = [];
  const ri = new Uint8Array(REGION_INFO_BYTES);
  const rv = new DataView(ri.buffer);
  for (let index = 0; index < count; index++) {
    ri.fill(0);
    rv.setUint32(0, REGION_INFO_BYTES, true);
    rv.setUint32(8, index, true);
    if (ioctlBuffer(fd, VFIO_DEVICE_GET_REGION_INFO, ri) < 0) {
      regions.push({ index, flags: 0, sizeBytes: 0, offset: 0 });
      continue;
    }
    const flags = rv.getUint32(4, true);
    const sizeBytes = Number(rv.getBigUint64(16, true));
    const mmappable = (flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0;
    let mmapAreas = mmappable ? [{ offset: 0, sizeBytes }] : [];
    const needed = rv.getUint32(0, true);
    if (
      mmappable &&
      (flags & VFIO_REGION_INFO_FLAG_CAPS) !== 0 &&
      needed > REGION_INFO_BYTES &&
      needed <= 65536
    ) {
      // The capability chain did not fit: ask again with the size the kernel said it needs.
      const full = new Uint8Array(needed);
      const fv = new DataView(full.buffer);
      fv.setUint32(0, needed, true);
      fv.setUint32(8, index, true);
      if (ioctlBuffer(fd, VFIO_DEVICE_GET_REGION_INFO, full) >= 0)
        mmapAreas = sparseMmapAreas(full) ?? mmapAreas;
    }
    regions.push({ index, flags, sizeBytes, offset: Number(rv.getBigUint64(24, true)), mmapAreas });
  }
  return regions;
}

export class VfioPciDevice {
  readonly bdf: string;
  readonly group: number;
  readonly container: VfioContainer;
  readonly groupFd: number;
  readonly fd: number;
  readonly flags: number;
  readonly regions: readonly VfioRegion[];
  readonly numIrqs: number;
  private readonly io = new Uint8Array(8);
  private readonly ioView = new DataView(this.io.buffer);
  private regionReads = 0;
  private regionWrites = 0;
  private regionErrors = 0;
  private resets = 0;
  private resetsUnavailable = 0;
  private mmapErrors = 0;
  private readonly mappings: { ptr: unknown; sizeBytes: number }[] = [];

  private constructor(
    bdf: string,
    group: number,
    container: VfioContainer,
    groupFd: number,
    fd: number,
    flags: number,
    regions: VfioRegion[],
    numIrqs: number,
  ) {
    this.bdf = bdf;
    this.group = group;
    this.container = container;
    this.groupFd = groupFd;
    this.fd = fd;
    this.flags = flags;
    this.regions = regions;
    this.numIrqs = numIrqs;
  }

  /**
   * Opens the device named by `spec` (a BDF, or /sys/bus/pci/devices/BDF/) in its own container.
   * Every failure is a VfioSetupError of one line naming the fix.
   */
  static open(spec: string, sysfsRoot = "/sys", devVfio = "/dev/vfio"): VfioPciDevice {
    const host = findAssignableDevice(normalizeBdf(spec), sysfsRoot);
    const container = VfioContainer.open(`${devVfio}/vfio`);
    const groupPath = `${devVfio}/${host.group}`;
    const groupFd = open(groupPath, O_RDWR | O_CLOEXEC, 0);
    if (groupFd < 0) {
      const err = errno();
      container.close();
      const hint = err === 16 ? " (another process, e.g. a VMM, holds the group)" : "";
      throw new VfioSetupError(`cannot open ${groupPath} for ${host.bdf}: ${errnoName(err)}${hint}`);
    }
    const fail = (message: string): never => {
      close(groupFd);
      container.close();
      throw new VfioSetupError(message);
    };
    const status = new Uint8Array(GROUP_STATUS_BYTES);
    const sv = new DataView(status.buffer);
    sv.setUint32(0, GROUP_STATUS_BYTES, true);
    if (ioctlBuffer(groupFd, VFIO_GROUP_GET_STATUS, status) < 0) {
      fail(`${groupPath}: VFIO_GROUP_GET_STATUS failed: ${errnoName(errno())}`);
    }
    if ((sv.getUint32(4, true) & VFIO_GROUP_FLAGS_VIABLE) === 0) {
      fail(
        `IOMMU group ${host.group} of ${host.bdf} is not viable: bind every device of the group to vfio-pci`,
      );
    }
    try {
      container.attachGroup(groupFd, groupPath);
    } catch (e) {
      fail((e as Error).message);
    }
    const name = new TextEncoder().encode(`${host.bdf}\0`);
    const fd = ioctlBuffer(groupFd, VFIO_GROUP_GET_DEVICE_FD, name);
    if (fd < 0) fail(`${groupPath}: VFIO_GROUP_GET_DEVICE_FD(${host.bdf}) failed: ${errnoName(errno())}`);
    const info = new Uint8Array(DEVICE_INFO_BYTES);
    const iv = new DataView(info.buffer);
    iv.setUint32(0, DEVICE_INFO_BYTES, true);
    if (ioctlBuffer(fd, VFIO_DEVICE_GET_INFO, info) < 0) {
      close(fd);
      fail(`${host.bdf}: VFIO_DEVICE_GET_INFO failed: ${errnoName(errno())}`);
    }
    const flags = iv.getUint32(4, true);
    if ((flags & VFIO_DEVICE_FLAGS_PCI) === 0) {
      close(fd);
      fail(`${host.bdf}: VFIO says this is not a PCI device`);
    }
    const numRegions = Math.min(iv.getUint32(8, true), 64);
    const regions = readRegions(fd, numRegions);
    if (
      regions.length <= VFIO_PCI_CONFIG_REGION_INDEX ||
      regions[VFIO_PCI_CONFIG_REGION_INDEX].sizeBytes < 256
    ) {
      close(fd);
      fail(`${host.bdf}: VFIO reports no config space region`);
    }
    return new VfioPciDevice(
      host.bdf,
      host.group,
      container,
      groupFd,
      fd,
      flags,
      regions,
      iv.getUint32(12, true),
    );
  }

  /** Reads 1, 2 or 4 bytes of region `index` at `offset`; all-ones when the kernel refuses. */
  regionRead(index: number, offset: number, sizeBytes: 1 | 2 | 4): number {
    const r = this.regions[index];
    this.regionReads++;
    if (r === undefined || offset < 0 || offset + sizeBytes > r.sizeBytes) {
      this.regionErrors++;
      return sizeBytes === 4 ? 0xffffffff : (1 << (8 * sizeBytes)) - 1;
    }
    if (pread(this.fd, this.io, sizeBytes, r.offset + offset) !== sizeBytes) {
      this.regionErrors++;
      return sizeBytes === 4 ? 0xffffffff : (1 << (8 * sizeBytes)) - 1;
    }
    const v = this.ioView;
    return sizeBytes === 1 ? v.getUint8(0) : sizeBytes === 2 ? v.getUint16(0, true) : v.getUint32(0, true);
  }

  /** Writes 1, 2 or 4 bytes of region `index` at `offset`; a refused write is dropped (counted). */
  regionWrite(index: number, offset: number, sizeBytes: 1 | 2 | 4, value: number): void {
    const r = this.regions[index];
    this.regionWrites++;
    if (r === undefined || offset < 0 || offset + sizeBytes > r.sizeBytes) {
      this.regionErrors++;
      return;
    }
    const v = this.ioView;
    if (sizeBytes === 1) v.setUint8(0, value & 0xff);
    else if (sizeBytes === 2) v.setUint16(0, value & 0xffff, true);
    else v.setUint32(0, value >>> 0, true);
    if (pwrite(this.fd, this.io, sizeBytes, r.offset + offset) !== sizeBytes) this.regionErrors++;
  }

  readConfig(offset: number, sizeBytes: 1 | 2 | 4): number {
    return this.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, offset, sizeBytes);
  }

  writeConfig(offset: number, sizeBytes: 1 | 2 | 4, value: number): void {
    this.regionWrite(VFIO_PCI_CONFIG_REGION_INDEX, offset, sizeBytes, value);
  }

  /**
   * mmaps [offset, offset + sizeBytes) of region `index` (inside one of its mmap areas; page
   * aligned) shared, read/write; returns the host address, or null when the kernel refuses
   * (counted). Unmapped at close.
   */
  mmapRegion(index: number, offset: number, sizeBytes: number): bigint | null {
    const r = this.regions[index];
    const inArea = r?.mmapAreas?.some(
      (a) => offset >= a.offset && offset + sizeBytes <= a.offset + a.sizeBytes,
    );
    if (
      r === undefined ||
      inArea !== true ||
      offset % 4096 !== 0 ||
      sizeBytes % 4096 !== 0 ||
      sizeBytes === 0
    ) {
      this.mmapErrors++;
      return null;
    }
    const ptr = mmap(null, sizeBytes, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, r.offset + offset);
    if (isMapFailed(ptr)) {
      this.mmapErrors++;
      return null;
    }
    this.mappings.push({ ptr, sizeBytes });
    return pointerAddress(ptr);
  }

  /** VFIO_DEVICE_GET_IRQ_INFO: how many vectors interrupt index `index` has (0: none). */
  irqCount(index: number): number {
    const buf = new Uint8Array(IRQ_INFO_BYTES);
    const v = new DataView(buf.buffer);
    v.setUint32(0, IRQ_INFO_BYTES, true);
    v.setUint32(8, index, true);
    if (ioctlBuffer(this.fd, VFIO_DEVICE_GET_IRQ_INFO, buf) < 0) return 0;
    return v.getUint32(12, true);
  }

  /**
   * VFIO_DEVICE_SET_IRQS, DATA_EVENTFD | ACTION_TRIGGER: vectors 0..fds.length-1 of `index`
   * signal these eventfds (enables the index). Returns the errno name on failure, or null.
   */
  setIrqEventfds(index: number, fds: readonly number[]): string | null {
    const buf = new Uint8Array(IRQ_SET_HEADER_BYTES + 4 * fds.length);
    const v = new DataView(buf.buffer);
    v.setUint32(0, buf.length, true);
    v.setUint32(4, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, true);
    v.setUint32(8, index, true);
    v.setUint32(12, 0, true);
    v.setUint32(16, fds.length, true);
    fds.forEach((fd, i) => {
      v.setInt32(IRQ_SET_HEADER_BYTES + 4 * i, fd, true);
    });
    return ioctlBuffer(this.fd, VFIO_DEVICE_SET_IRQS, buf) < 0 ? errnoName(errno()) : null;
  }

  /**
   * VFIO_DEVICE_SET_IRQS, DATA_NONE | ACTION_UNMASK of vector 0 of `index`: vfio-pci masks INTx
   * itself when it fires (AUTOMASKED); this lets it fire again (at once, if the line is still
   * asserted). False when the kernel refused.
   */
  unmaskIrq(index: number): boolean {
    const buf = new Uint8Array(IRQ_SET_HEADER_BYTES);
    const v = new DataView(buf.buffer);
    v.setUint32(0, IRQ_SET_HEADER_BYTES, true);
    v.setUint32(4, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, true);
    v.setUint32(8, index, true);
    v.setUint32(12, 0, true);
    v.setUint32(16, 1, true);
    return ioctlBuffer(this.fd, VFIO_DEVICE_SET_IRQS, buf) >= 0;
  }

  /** VFIO_DEVICE_SET_IRQS, DATA_NONE | ACTION_TRIGGER with count 0: disables index `index`. */
  disableIrq(index: number): void {
    const buf = new Uint8Array(IRQ_SET_HEADER_BYTES);
    const v = new DataView(buf.buffer);
    v.setUint32(0, IRQ_SET_HEADER_BYTES, true);
    v.setUint32(4, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, true);
    v.setUint32(8, index, true);
    ioctlBuffer(this.fd, VFIO_DEVICE_SET_IRQS, buf);
  }

  /** VFIO_DEVICE_RESET (FLR or what the PCI core picks); false when the device has no reset. */
  reset(): boolean {
    if ((this.flags & VFIO_DEVICE_FLAGS_RESET) === 0) {
      this.resetsUnavailable++;
      return false;
    }
    if (ioctlValue(this.fd, VFIO_DEVICE_RESET, 0) < 0) {
      this.resetsUnavailable++;
      return false;
    }
    this.resets++;
    return true;
  }

  get canReset(): boolean {
    return (this.flags & VFIO_DEVICE_FLAGS_RESET) !== 0;
  }

  stats(): VfioDeviceStats {
    return {
      regionReads: this.regionReads,
      regionWrites: this.regionWrites,
      regionErrors: this.regionErrors,
      resets: this.resets,
      resetsUnavailable: this.resetsUnavailable,
      mmapErrors: this.mmapErrors,
    };
  }

  close(): void {
    for (const m of this.mappings) munmap(m.ptr, m.sizeBytes);
    this.mappings.length = 0;
    close(this.fd);
    close(this.groupFd);
    this.container.close();
  }
}
