/**
 * /dev/kvm: opening it, checking the API version and capabilities, creating VMs.
 */
import {
  ioctlName,
  KVM_API_VERSION,
  KVM_CHECK_EXTENSION,
  KVM_CREATE_VM,
  KVM_GET_API_VERSION,
  KVM_GET_VCPU_MMAP_SIZE,
  KvmError,
} from "./ioctls.ts";
import { close, EINTR, errno, errnoName, ioctlValue, O_CLOEXEC, O_RDWR, open } from "./libc.ts";

export const KVM_DEVICE_PATH = "/dev/kvm";

/** /dev/kvm is missing or cannot be opened: a one-line explanation for the user. */
export class KvmUnavailableError extends Error {
  readonly errno: number;
  constructor(path: string, err: number) {
    const why =
      err === 2
        ? "does not exist (no KVM on this host: enable virtualization or load kvm_intel/kvm_amd)"
        : err === 13
          ? "is not accessible (add the user to the kvm group)"
          : `cannot be opened: ${errnoName(err)}`;
    super(`${path} ${why}`);
    this.name = "KvmUnavailableError";
    this.errno = err;
  }
}

/**
 * Calls an ioctl with an integer argument and throws a named `KvmError` when it fails. One that a
 * signal interrupted (EINTR: V8's profiler samples with SIGPROF, KVM_CREATE_VM gives up on a
 * pending signal) is made again; KVM_RUN does not come here (its loops handle EINTR).
 */
export function kvmIoctl(fd: number, request: number, arg = 0): number {
  for (let attempt = 0; ; attempt++) {
    const r = ioctlValue(fd, request, arg);
    if (r >= 0) return r;
    const err = errno();
    if (err !== EINTR || attempt >= 1000) throw new KvmError(ioctlName(request), err);
  }
}

export class Kvm {
  readonly fd: number;
  readonly vcpuMmapSizeBytes: number;

  private constructor(fd: number) {
    this.fd = fd;
    const version = kvmIoctl(fd, KVM_GET_API_VERSION);
    if (version !== KVM_API_VERSION) {
      close(fd);
      throw new Error(`KVM API version ${version}, expected ${KVM_API_VERSION}`);
    }
    this.vcpuMmapSizeBytes = kvmIoctl(fd, KVM_GET_VCPU_MMAP_SIZE);
  }

  static open(path = KVM_DEVICE_PATH): Kvm {
    const fd = open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) throw new KvmUnavailableError(path, errno());
    return new Kvm(fd);
  }

  /** True when KVM can be opened here (for tests that skip without it). */
  static available(path = KVM_DEVICE_PATH): boolean {
    const fd = open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return false;
    close(fd);
    return true;
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value. */
  checkExtension(cap: number): number {
    return kvmIoctl(this.fd, KVM_CHECK_EXTENSION, cap);
  }

  /** KVM_CREATE_VM (machine type 0); returns the VM file descriptor. */
  createVmFd(): number {
    return kvmIoctl(this.fd, KVM_CREATE_VM, 0);
  }

  close(): void {
    close(this.fd);
  }
}

/** The instruction set KVM virtualizes here: the host's (KVM runs guests of its own architecture). */
export type KvmArchitecture = "x86_64" | "arm64";

export function kvmArchitecture(): KvmArchitecture | "unsupported" {
  if (process.arch === "x64") return "x86_64";
  if (process.arch === "arm64") return "arm64";
  return "unsupported";
}
