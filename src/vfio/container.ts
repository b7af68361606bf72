/**
 * A real VFIO type1 (v2) container: the second backend of the engine's host-propagation
 * contract (`HostIommu`, behind `HostNotifier`), next to the in-memory `VfioType1Container`.
 *
 * `map(iova, gpa, ...)` becomes VFIO_IOMMU_MAP_DMA with the host virtual address of that guest
 * RAM (set by `bindGuestRam`; a gpa that is not RAM is EINVAL, as QEMU's "iommu map to non memory
 * area"); `unmap` becomes VFIO_IOMMU_UNMAP_DMA. The kernel's answers (ENOSPC at dma_entry_limit,
 * EEXIST, EINVAL, ENOMEM over RLIMIT_MEMLOCK) come back as refusals with those errno names.
 * The argument structs are allocated once: no allocation per map or unmap.
 */
import type { HostErrno, HostIommu, HostResult } from "../engine/host-iommu.ts";
import { close, errno, errnoName, ioctlBuffer, ioctlValue, O_CLOEXEC, O_RDWR, open } from "../kvm/libc.ts";
import { VfioSetupError } from "./sysfs.ts";
import {
  DMA_MAP_BYTES,
  DMA_UNMAP_BYTES,
  IOMMU_TYPE1_INFO_BYTES,
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
} from "./uapi.ts";

/** Host virtual address of guest RAM [gpa, gpa + sizeBytes), or -1 when it is not all RAM. */
export type GuestRamAddress = (gpa: number, sizeBytes: number) => number;

/** Writes a safe integer as a little-endian u64 without a BigInt. */
function setU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 0x1_0000_0000, true);
  view.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
}

const ERRNO_NAMES: Readonly<Record<number, HostErrno>> = {
  1: "EPERM",
  2: "ENOENT",
  12: "ENOMEM",
  17: "EEXIST",
  22: "EINVAL",
  28: "ENOSPC",
};

export interface VfioContainerInfo {
  /** Page sizes the container's IOMMU domains support (bit n = 2^n bytes). */
  readonly iovaPageSizes: bigint;
  /** Valid IOVA ranges (inclusive ends), when the kernel reports them. */
  readonly iovaRanges: readonly { readonly start: bigint; readonly last: bigint }[];
  /** DMA entries still available (dma_entry_limit minus live entries), when reported. */
  readonly dmaAvailable: number | null;
}

export class VfioContainer implements HostIommu {
  readonly fd: number;
  private iommuSet = false;
  private hostAddressOf: GuestRamAddress | null = null;
  private readonly mapBytes = new Uint8Array(DMA_MAP_BYTES);
  private readonly mapView = new DataView(this.mapBytes.buffer);
  private readonly unmapBytes = new Uint8Array(DMA_UNMAP_BYTES);
  private readonly unmapView = new DataView(this.unmapBytes.buffer);
  maps = 0;
  unmaps = 0;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Opens /dev/vfio/vfio and checks the API version and type1 v2 support. */
  static open(path = "/dev/vfio/vfio"): VfioContainer {
    const fd = open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
      throw new VfioSetupError(`cannot open ${path}: ${errnoName(errno())} (modprobe vfio-pci; run as root)`);
    }
    const c = new VfioContainer(fd);
    if (ioctlValue(fd, VFIO_GET_API_VERSION, 0) !== VFIO_API_VERSION) {
      c.close();
      throw new VfioSetupError(`${path}: unknown VFIO API version`);
    }
    if (ioctlValue(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) {
      c.close();
      throw new VfioSetupError(
        `${path}: the kernel lacks the VFIO type1 v2 IOMMU (modprobe vfio_iommu_type1)`,
      );
    }
    return c;
  }

  /** Adds an opened group; the first one selects the type1 v2 IOMMU (VFIO_SET_IOMMU). */
  attachGroup(groupFd: number, groupName: string): void {
    const arg = new Uint8Array(4);
    new DataView(arg.buffer).setInt32(0, this.fd, true);
    if (ioctlBuffer(groupFd, VFIO_GROUP_SET_CONTAINER, arg) < 0) {
      throw new VfioSetupError(`${groupName}: VFIO_GROUP_SET_CONTAINER failed: ${errnoName(errno())}`);
    }
    if (this.iommuSet) return;
    if (ioctlValue(this.fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
      const err = errno();
      const hint =
        err === 1
          ? " (no interrupt remapping on this host: load vfio_iommu_type1 with allow_unsafe_interrupts=1)"
          : "";
      throw new VfioSetupError(`${groupName}: VFIO_SET_IOMMU(type1 v2) failed: ${errnoName(err)}${hint}`);
    }
    this.iommuSet = true;
  }

  /** Gives the container the host addresses of guest RAM (needed before any map). */
  bindGuestRam(hostAddressOf: GuestRamAddress): void {
    this.hostAddressOf = hostAddressOf;
  }

  /** VFIO_IOMMU_GET_INFO with its capability chain. */
  info(): VfioContainerInfo {
    let buf = new Uint8Array(IOMMU_TYPE1_INFO_BYTES);
    let view = new DataView(buf.buffer);
    view.setUint32(0, buf.length, true);
    if (ioctlBuffer(this.fd, VFIO_IOMMU_GET_INFO, buf) < 0) {
      throw new VfioSetupError(`VFIO_IOMMU_GET_INFO failed: ${errnoName(errno())}`);
    }
    const needed = view.getUint32(0, true);
    if ((view.getUint32(4, true) & VFIO_IOMMU_INFO_CAPS) !== 0 && needed > buf.length && needed < 1 << 20) {
      // The capabilities did not fit: the kernel raised argsz; ask again with room for them.
      buf = new Uint8Array(needed);
      view = new DataView(buf.buffer);
      view.setUint32(0, needed, true);
      if (ioctlBuffer(this.fd, VFIO_IOMMU_GET_INFO, buf) < 0) {
        throw new VfioSetupError(`VFIO_IOMMU_GET_INFO failed: ${errnoName(errno())}`);
      }
    }
    const iovaPageSizes = view.getBigUint64(8, true);
    const iovaRanges: { start: bigint; last: bigint }[] = [];
    let dmaAvailable: number | null = null;
    let at = (view.getUint32(4, true) & VFIO_IOMMU_INFO_CAPS) !== 0 ? view.getUint32(16, true) : 0;
    for (let hops = 0; at !== 0 && at + 8 <= buf.length && hops < 64; hops++) {
      const id = view.getUint16(at, true);
      if (id === VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE && at + 16 <= buf.length) {
        const n = view.getUint32(at + 8, true);
        for (let i = 0; i < n && at + 32 + 16 * i <= buf.length; i++) {
          iovaRanges.push({
            start: view.getBigUint64(at + 16 + 16 * i, true),
            last: view.getBigUint64(at + 24 + 16 * i, true),
          });
        }
      } else if (id === VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL && at + 12 <= buf.length) {
        dmaAvailable = view.getUint32(at + 8, true);
      }
      at = view.getUint32(at + 4, true);
    }
    return { iovaPageSizes, iovaRanges, dmaAvailable };
  }

  /** The smallest IOMMU page of the container (map arguments must be aligned to it). */
  minPageBytes(): number {
    const sizes = this.info().iovaPageSizes;
    if (sizes === 0n) return 4096;
    let bit = 0;
    while (((sizes >> BigInt(bit)) & 1n) === 0n) bit++;
    return 2 ** bit;
  }

  map(iova: number, gpa: number, sizeBytes: number, perms: number): HostResult {
    const vaddr = this.hostAddressOf === null ? -1 : this.hostAddressOf(gpa, sizeBytes);
    if (vaddr < 0) {
      return {
        ok: false,
        errno: "EINVAL",
        message: `gpa 0x${gpa.toString(16)} +0x${sizeBytes.toString(16)} is not guest RAM`,
      };
    }
    const v = this.mapView;
    v.setUint32(0, DMA_MAP_BYTES, true);
    v.setUint32(
      4,
      (perms & 1 ? VFIO_DMA_MAP_FLAG_READ : 0) | (perms & 2 ? VFIO_DMA_MAP_FLAG_WRITE : 0),
      true,
    );
    setU64(v, 8, vaddr);
    setU64(v, 16, iova);
    setU64(v, 24, sizeBytes);
    if (ioctlBuffer(this.fd, VFIO_IOMMU_MAP_DMA, this.mapBytes) < 0)
      return this.refusal("VFIO_IOMMU_MAP_DMA");
    this.maps++;
    return { ok: true, bytes: sizeBytes };
  }

  unmap(iova: number, sizeBytes: number): HostResult {
    const v = this.unmapView;
    v.setUint32(0, DMA_UNMAP_BYTES, true);
    v.setUint32(4, 0, true);
    setU64(v, 8, iova);
    setU64(v, 16, sizeBytes);
    if (ioctlBuffer(this.fd, VFIO_IOMMU_UNMAP_DMA, this.unmapBytes) < 0) {
      return this.refusal("VFIO_IOMMU_UNMAP_DMA");
    }
    this.unmaps++;
    // The kernel writes back how many bytes it unmapped.
    return { ok: true, bytes: v.getUint32(20, true) * 0x1_0000_0000 + v.getUint32(16, true) };
  }

  private refusal(what: string): HostResult {
    const err = errno();
    return { ok: false, errno: ERRNO_NAMES[err] ?? "EINVAL", message: `${what}: ${errnoName(err)}` };
  }

  close(): void {
    close(this.fd);
  }
}
