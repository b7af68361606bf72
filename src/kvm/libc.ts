/**
 * The few libc calls the VMM needs, bound through koffi (no native addon).
 *
 * Every wrapper returns the raw result; callers turn failures into named errors with
 * `errnoName`. Pointers come back as opaque koffi values: `koffi.address` gives the numeric
 * user-space address (for KVM_SET_USER_MEMORY_REGION) and `koffi.view` an ArrayBuffer over them.
 */
import koffi from "koffi";

const libc = koffi.load("libc.so.6");

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const EINTR = 4;
export const EAGAIN = 11;

export const open = libc.func("int open(const char *path, int flags, int mode)") as (
  path: string,
  flags: number,
  mode: number,
) => number;
export const close = libc.func("int close(int fd)") as (fd: number) => number;
export const ftruncate = libc.func("int ftruncate(int fd, int64_t length)") as (
  fd: number,
  length: number,
) => number;

/** ioctl with an integer argument (or none). */
export const ioctlValue = libc.func("ioctl", "int", ["int", "unsigned long", "unsigned long"]) as (
  fd: number,
  request: number,
  arg: number,
) => number;

/** ioctl with a pointer to a caller-owned buffer (read and written in place by the kernel). */
export const ioctlBuffer = libc.func("ioctl", "int", ["int", "unsigned long", "void *"]) as (
  fd: number,
  request: number,
  arg: Uint8Array,
) => number;

export const mmap = libc.func(
  "void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)",
) as (addr: null, length: number, prot: number, flags: number, fd: number, offset: number) => unknown;
export const munmap = libc.func("int munmap(void *addr, size_t length)") as (
  addr: unknown,
  length: number,
) => number;

/** Arms (or with 0 cancels) the process's SIGALRM timer, in whole seconds. */
export const alarm = libc.func("unsigned int alarm(unsigned int seconds)") as (seconds: number) => number;

export function errno(): number {
  return koffi.errno();
}

/** The numeric user-space address of a pointer koffi returned (for structures passed to KVM). */
export function pointerAddress(ptr: unknown): bigint {
  return koffi.address(ptr);
}

/** An ArrayBuffer over external memory (no copy): the bytes are the mapping itself. */
export function externalView(ptr: unknown, sizeBytes: number): ArrayBuffer {
  return koffi.view(ptr, sizeBytes);
}

/**
 * A small anonymous mapping whose user-space address is known, for ioctl structures that carry
 * pointers (kvm_one_reg.addr). Kept for the life of the process: callers allocate it once.
 */
export function scratchMemory(sizeBytes: number): { address: bigint; bytes: Uint8Array } {
  const length = Math.max(4096, Math.ceil(sizeBytes / 4096) * 4096);
  const ptr = mmap(null, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (isMapFailed(ptr)) throw new Error(`mmap of ${length} scratch bytes failed: ${errnoName(errno())}`);
  return { address: koffi.address(ptr), bytes: new Uint8Array(externalView(ptr, length), 0, sizeBytes) };
}

/** True when mmap failed (MAP_FAILED is (void *)-1). */
export function isMapFailed(ptr: unknown): boolean {
  return ptr === null || koffi.address(ptr) === 0xffff_ffff_ffff_ffffn;
}

const namesByNumber = new Map<number, string>();
for (const [name, value] of Object.entries(koffi.os.errno)) {
  if (!namesByNumber.has(value)) namesByNumber.set(value, name);
}

/** "EINVAL (22)" for 22. */
export function errnoName(err: number): string {
  return `${namesByNumber.get(err) ?? "errno"} (${err})`;
}

/** The calling thread's kernel thread id. */
export const gettid = libc.func("int gettid(void)") as () => number;
export const getpid = libc.func("int getpid(void)") as () => number;
/** Sends `signal` to thread `tid` of process `tgid`. */
export const tgkill = libc.func("int tgkill(int tgid, int tid, int sig)") as (
  tgid: number,
  tid: number,
  sig: number,
) => number;
