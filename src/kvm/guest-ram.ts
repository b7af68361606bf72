/**
 * Guest RAM as a host mapping: anonymous memory, or a shared mapping of a file (for example one
 * on hugetlbfs, so the guest is backed by huge pages and another process can map it too).
 * The same bytes are handed to KVM (by address) and to the device models (as a Uint8Array over
 * the mapping, zero-copy).
 */
import {
  close,
  errno,
  errnoName,
  externalView,
  ftruncate,
  isMapFailed,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  mmap,
  munmap,
  O_CLOEXEC,
  O_CREAT,
  O_RDWR,
  open,
  PROT_READ,
  PROT_WRITE,
  pointerAddress,
} from "./libc.ts";

export interface HostMapping {
  /** Host user-space address of the first byte (for KVM_SET_USER_MEMORY_REGION). */
  readonly hostAddress: bigint;
  readonly sizeBytes: number;
  /** The mapped bytes, aliasing the mapping. */
  readonly bytes: Uint8Array;
  readonly backing: string;
  unmap(): void;
}

export class GuestRamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestRamError";
  }
}

/** Maps `sizeBytes` of RAM: anonymous, or shared over `file` (created and sized if needed). */
export function mapGuestRam(sizeBytes: number, file?: string): HostMapping {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 4096 !== 0) {
    throw new GuestRamError(`guest RAM size ${sizeBytes} is not a positive multiple of 4 KiB`);
  }
  let fd = -1;
  let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  if (file !== undefined) {
    fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    if (fd < 0) {
      throw new GuestRamError(
        `cannot open memory file ${file}: ${errnoName(errno())} (--memory file= needs an existing directory you can write; ` +
          "for huge pages, mount hugetlbfs there first: mount -t hugetlbfs none /dev/hugepages)",
      );
    }
    if (ftruncate(fd, sizeBytes) < 0) {
      const err = errno();
      close(fd);
      throw new GuestRamError(
        `cannot size memory file ${file} to ${sizeBytes} bytes: ${errnoName(err)}` +
          " (on hugetlbfs the size must be a multiple of the huge page size)",
      );
    }
    flags = MAP_SHARED;
  }
  const ptr = mmap(null, sizeBytes, PROT_READ | PROT_WRITE, flags, fd, 0);
  const mapErr = errno();
  if (fd >= 0) close(fd);
  if (isMapFailed(ptr)) {
    throw new GuestRamError(
      `mmap of ${sizeBytes} bytes of guest RAM failed: ${errnoName(mapErr)}` +
        (file === undefined
          ? " (give a smaller --memory size)"
          : " (give a smaller --memory size; on hugetlbfs, reserve enough pages: /proc/sys/vm/nr_hugepages)"),
    );
  }
  const bytes = new Uint8Array(externalView(ptr, sizeBytes));
  let mapped = true;
  return {
    hostAddress: pointerAddress(ptr),
    sizeBytes,
    bytes,
    backing: file === undefined ? "anonymous" : `file ${file}`,
    unmap() {
      if (mapped) munmap(ptr, sizeBytes);
      mapped = false;
    },
  };
}
