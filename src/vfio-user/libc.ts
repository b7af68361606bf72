/**
 * The few libc calls the vfio-user server needs and Node does not offer: UNIX stream sockets
 * with SCM_RIGHTS descriptor passing (recvmsg/sendmsg), mmap of client memory, eventfd writes.
 *
 * Bound with koffi. Every call here is non-blocking (sockets are created O_NONBLOCK) and returns
 * the libc result; callers read `errno()` on failure. (File status comes from Node's fs.fstatSync.) Structures are laid out by hand for
 * x86-64 / aarch64 Linux (LP64): msghdr 56 bytes, iovec 16, cmsghdr 16, sockaddr_un 110.
 *
 * Event-loop integration: `watchFd` uses koffi's libuv poll handle (uv_poll_t), so readiness of
 * a raw descriptor is reported on Node's own event loop; the server then calls recvmsg or
 * accept4 non-blockingly. This keeps one thread, no busy polling, and no data ever read by Node
 * itself (a net.Socket over the fd would read() the stream and discard passed descriptors).
 */
import { readlinkSync } from "node:fs";
import koffi from "koffi";

const lib = koffi.load("libc.so.6");

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CTRUNC = 0x8;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;

export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ENOSYS: 38,
  E2BIG: 7,
  ENOTSUP: 95,
} as const;

const c = {
  socket: lib.func("int socket(int domain, int type, int protocol)"),
  bind: lib.func("int bind(int fd, const void *addr, uint32_t addrlen)"),
  listen: lib.func("int listen(int fd, int backlog)"),
  accept4: lib.func("int accept4(int fd, void *addr, void *addrlen, int flags)"),
  connect: lib.func("int connect(int fd, const void *addr, uint32_t addrlen)"),
  close: lib.func("int close(int fd)"),
  recvmsg: lib.func("intptr_t recvmsg(int fd, void *msg, int flags)"),
  sendmsg: lib.func("intptr_t sendmsg(int fd, const void *msg, int flags)"),
  write: lib.func("intptr_t write(int fd, const void *buf, uintptr_t count)"),
  read: lib.func("intptr_t read(int fd, void *buf, uintptr_t count)"),
  mmap: lib.func("void *mmap(void *addr, uintptr_t length, int prot, int flags, int fd, int64_t offset)"),
  munmap: lib.func("int munmap(void *addr, uintptr_t length)"),
  madvise: lib.func("int madvise(uintptr_t addr, uintptr_t length, int advice)"),
  eventfd: lib.func("int eventfd(unsigned int initval, int flags)"),
  memfdCreate: lib.func("int memfd_create(const char *name, unsigned int flags)"),
  ftruncate: lib.func("int ftruncate(int fd, int64_t length)"),
  socketpair: lib.func("int socketpair(int domain, int type, int protocol, _Out_ int *sv)"),
  poll: lib.func("int poll(void *fds, uint64_t nfds, int timeout)"),
  // fcntl is variadic; its third argument is an int for every command used here, which the
  // LP64 Linux calling conventions pass exactly as a fixed int parameter.
  fcntl: lib.func("int fcntl(int fd, int cmd, int arg)"),
};

export function errno(): number {
  return koffi.errno();
}

export function errnoName(e: number): string {
  for (const [k, v] of Object.entries(ERRNO)) if (v === e) return k;
  return `errno ${e}`;
}

/** A libc failure as an exception, for setup paths only (never for guest-driven paths). */
export class LibcError extends Error {
  readonly errno: number;
  constructor(what: string, e: number) {
    super(`${what}: ${errnoName(e)}`);
    this.name = "LibcError";
    this.errno = e;
  }
}

function sockaddrUn(path: string): Buffer {
  const enc = Buffer.from(path, "utf8");
  // sun_path is 108 bytes including the terminating NUL.
  if (enc.length > 107) throw new Error(`UNIX socket path too long (${enc.length} > 107 bytes): ${path}`);
  const sa = Buffer.alloc(110);
  sa.writeUInt16LE(AF_UNIX, 0);
  enc.copy(sa, 2);
  return sa;
}

/** A listening, non-blocking UNIX stream socket bound at `path`. */
export function listenUnix(path: string, backlog = 8): number {
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new LibcError("socket", errno());
  const sa = sockaddrUn(path);
  if ((c.bind(fd, sa, sa.length) as number) < 0) {
    const e = errno();
    c.close(fd);
    throw new LibcError(`bind ${path}`, e);
  }
  if ((c.listen(fd, backlog) as number) < 0) {
    const e = errno();
    c.close(fd);
    throw new LibcError("listen", e);
  }
  return fd;
}

/** Accepts one connection (non-blocking, close-on-exec); -1 with errno EAGAIN when none is pending. */
export function acceptUnix(listenFd: number): number {
  return c.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
}

/** A connected, non-blocking UNIX stream socket (used by tests and tools as a client). */
export function connectUnix(path: string): number {
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new LibcError("socket", errno());
  const sa = sockaddrUn(path);
  if ((c.connect(fd, sa, sa.length) as number) < 0) {
    const e = errno();
    c.close(fd);
    throw new LibcError(`connect ${path}`, e);
  }
  return fd;
}

export function closeFd(fd: number): void {
  if (fd >= 0) c.close(fd);
}

export function socketPair(): [number, number] {
  const sv = [0, 0];
  if ((c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) as number) < 0) {
    throw new LibcError("socketpair", errno());
  }
  return [sv[0], sv[1]];
}

export function createEventFd(nonBlocking = true): number {
  const fd = c.eventfd(0, EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0)) as number;
  if (fd < 0) throw new LibcError("eventfd", errno());
  return fd;
}

const eventOne = new BigUint64Array([1n]);
const eventBuf = new Uint8Array(eventOne.buffer);

/**
 * Adds 1 to an eventfd counter (the vfio-user interrupt signal): 1 when added, 0 when the
 * counter is full (EAGAIN on a non-blocking eventfd: the interrupt is already pending, nothing
 * is lost), -errno on any other failure.
 */
export function signalEventFd(fd: number): number {
  if ((c.write(fd, eventBuf, 8) as number) === 8) return 1;
  const e = errno();
  return e === ERRNO.EAGAIN ? 0 : -e;
}

/** True when `fd` is an eventfd (its /proc/self/fd link names the eventfd anonymous inode). */
export function isEventFd(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === "anon_inode:[eventfd]";
  } catch {
    return false;
  }
}

/** Sets O_NONBLOCK on a descriptor (its open file description); false on failure. */
export function setNonBlocking(fd: number): boolean {
  const flags = c.fcntl(fd, F_GETFL, 0) as number;
  if (flags < 0) return false;
  if ((flags & O_NONBLOCK) !== 0) return true;
  return (c.fcntl(fd, F_SETFL, flags | O_NONBLOCK) as number) === 0;
}

/** The memfd seals of `fd` (F_GET_SEALS), or -errno (EINVAL: not a file that supports seals). */
export function getSeals(fd: number): number {
  const r = c.fcntl(fd, F_GET_SEALS, 0) as number;
  return r < 0 ? -errno() : r;
}

/** Adds memfd seals (F_ADD_SEALS); 0 or -errno. */
export function addSeals(fd: number, seals: number): number {
  return (c.fcntl(fd, F_ADD_SEALS, seals) as number) < 0 ? -errno() : 0;
}

/** ftruncate(fd, sizeBytes); 0 or -errno (tests use it to shrink a client file). */
export function truncateFd(fd: number, sizeBytes: number): number {
  return (c.ftruncate(fd, sizeBytes) as number) < 0 ? -errno() : 0;
}

const eventRead = new Uint8Array(8);
/** Reads and clears an eventfd counter; returns the count, 0 when it was zero (non-blocking fd). */
export function drainEventFd(fd: number): number {
  const n = c.read(fd, eventRead, 8) as number;
  if (n !== 8) return 0;
  return Number(new DataView(eventRead.buffer).getBigUint64(0, true));
}

export function memfdCreate(name: string, sizeBytes: number, flags = MFD_CLOEXEC): number {
  const fd = c.memfdCreate(name, flags) as number;
  if (fd < 0) throw new LibcError("memfd_create", errno());
  if ((c.ftruncate(fd, sizeBytes) as number) < 0) {
    const e = errno();
    c.close(fd);
    throw new LibcError("ftruncate", e);
  }
  return fd;
}

/** A native mapping: its address and length (views are made per window: `mappingView`). */
export interface NativeMapping {
  readonly address: bigint;
  readonly sizeBytes: number;
  /** The koffi pointer value, for munmap. */
  readonly pointer: unknown;
}

/**
 * Largest zero-copy view made of native memory. koffi.view() of more than 4 GiB aborts the
 * process (it cannot make such an ArrayBuffer), so big mappings are viewed in windows.
 */
export const MAX_VIEW_BYTES = 2 ** 31;

/** mmap(fd, offset, sizeBytes); null with errno on failure. */
export function mapFile(
  fd: number,
  offset: number,
  sizeBytes: number,
  prot: number,
  flags: number,
): NativeMapping | null {
  const p = c.mmap(null, sizeBytes, prot, flags, fd, offset);
  const address = koffi.address(p);
  if (p === null || address === 0xffffffffffffffffn) return null;
  return { address, sizeBytes, pointer: p };
}

/** A zero-copy view of [offset, offset + sizeBytes) of a mapping (at most MAX_VIEW_BYTES). */
export function mappingView(m: NativeMapping, offset: number, sizeBytes: number): Uint8Array {
  if (offset < 0 || sizeBytes < 0 || offset + sizeBytes > m.sizeBytes || sizeBytes > MAX_VIEW_BYTES) {
    throw new RangeError(`view [${offset}, +${sizeBytes}) of a ${m.sizeBytes}-byte mapping`);
  }
  if (sizeBytes === 0) return new Uint8Array(0);
  return new Uint8Array(koffi.view(m.address + BigInt(offset), sizeBytes));
}

export function unmapMapping(m: NativeMapping): boolean {
  return (c.munmap(m.pointer, m.sizeBytes) as number) === 0;
}

/** madvise(2) advice values (Linux uapi asm-generic/mman-common.h). */
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;
/** errno of a memory-failure (hardware-poisoned) page. */
export const EHWPOISON = 133;

/**
 * madvise(advice) on [offset, offset + sizeBytes) of a mapping; `offset` must be page-aligned
 * (the kernel rounds the length up to pages). 0 or -errno.
 */
export function adviseMapping(m: NativeMapping, offset: number, sizeBytes: number, advice: number): number {
  if (offset < 0 || sizeBytes <= 0 || offset + sizeBytes > m.sizeBytes) return -ERRNO.EINVAL;
  return (c.madvise(Number(m.address) + offset, sizeBytes, advice) as number) < 0 ? -errno() : 0;
}

// --- recvmsg / sendmsg with SCM_RIGHTS --------------------------------------------------------

const CMSG_HDR_SIZE = 16;

/** Most descriptors one message may carry (our advertised max_msg_fds). */
export const MAX_FDS_PER_MESSAGE = 16;
const CONTROL_SIZE = CMSG_HDR_SIZE + MAX_FDS_PER_MESSAGE * 4; // CMSG_SPACE(64) = 80

/** A block of native (malloc'd) memory with a zero-copy Uint8Array over it. */
export class NativeBuffer {
  readonly pointer: unknown;
  readonly address: bigint;
  /** `address` as a number (user-space addresses are below 2^47): no BigInt on hot paths. */
  readonly addressNumber: number;
  readonly bytes: Uint8Array;
  readonly sizeBytes: number;

  constructor(sizeBytes: number) {
    this.sizeBytes = sizeBytes;
    this.pointer = koffi.alloc("uint8_t", sizeBytes);
    this.address = koffi.address(this.pointer);
    this.addressNumber = Number(this.address);
    this.bytes = new Uint8Array(koffi.view(this.pointer, sizeBytes));
  }

  free(): void {
    koffi.free(this.pointer);
  }
}

/** Writes a 64-bit little-endian field from a safe integer (two 32-bit halves, no BigInt). */
function setU64(v: DataView, at: number, value: number): void {
  v.setUint32(at, value >>> 0, true);
  v.setUint32(at + 4, Math.floor(value / 2 ** 32), true);
}

/**
 * Native scratch for one socket's recvmsg/sendmsg: msghdr, iovec and control buffers allocated
 * once in native memory, so a call allocates nothing on the JS heap and every pointer handed
 * to the kernel is stable (JS typed arrays may move; native memory does not).
 */
export class MsgScratch {
  private readonly arena = new NativeBuffer(128 + CONTROL_SIZE);
  private readonly view = new DataView(
    this.arena.bytes.buffer,
    this.arena.bytes.byteOffset,
    128 + CONTROL_SIZE,
  );
  // Layout inside the arena: msghdr at 0, iovec at 64, control at 128.
  private static readonly MSG = 0;
  private static readonly IOV = 64;
  private static readonly CTRL = 128;
  /** Whether the last `recvInto` lost descriptors for lack of control space (MSG_CTRUNC). */
  truncated = false;

  free(): void {
    this.arena.free();
  }

  /** struct msghdr (LP64): name 0, namelen 8, iov 16, iovlen 24, control 32, controllen 40, flags 48. */
  private setMsg(iovBase: number, iovLen: number, controlLen: number): void {
    const v = this.view;
    const base = this.arena.addressNumber;
    setU64(v, MsgScratch.MSG, 0); // msg_name
    setU64(v, MsgScratch.MSG + 8, 0); // msg_namelen and padding
    setU64(v, MsgScratch.MSG + 16, base + MsgScratch.IOV); // msg_iov
    setU64(v, MsgScratch.MSG + 24, 1); // msg_iovlen
    setU64(v, MsgScratch.MSG + 32, controlLen > 0 ? base + MsgScratch.CTRL : 0); // msg_control
    setU64(v, MsgScratch.MSG + 40, controlLen); // msg_controllen
    setU64(v, MsgScratch.MSG + 48, 0); // msg_flags and padding
    setU64(v, MsgScratch.IOV, iovBase);
    setU64(v, MsgScratch.IOV + 8, iovLen);
  }

  /**
   * recvmsg into `buf[offset, offset + len)`; received descriptors are appended to `fds`.
   * Returns the byte count (0 = peer closed) or -errno, and whether descriptors were dropped
   * for lack of control space (MSG_CTRUNC). `blocking` waits for data on a blocking socket
   * (tools and benchmarks only; the server never blocks).
   */
  recv(
    fd: number,
    buf: NativeBuffer,
    offset: number,
    len: number,
    fds: number[],
    blocking = false,
  ): { n: number; truncated: boolean } {
    const n = this.recvInto(fd, buf, offset, len, fds, blocking);
    return { n, truncated: this.truncated };
  }

  /** `recv` without a result object: the byte count or -errno; MSG_CTRUNC in `truncated`. */
  recvInto(
    fd: number,
    buf: NativeBuffer,
    offset: number,
    len: number,
    fds: number[],
    blocking = false,
  ): number {
    this.setMsg(buf.addressNumber + offset, len, CONTROL_SIZE);
    const n = c.recvmsg(fd, this.arena.pointer, (blocking ? 0 : MSG_DONTWAIT) | MSG_CMSG_CLOEXEC) as number;
    this.truncated = false;
    if (n < 0) return -errno();
    const v = this.view;
    const flags = v.getInt32(MsgScratch.MSG + 48, true);
    // The kernel rewrites msg_controllen with the bytes of control data it delivered.
    const controlLen = v.getUint32(MsgScratch.MSG + 40, true);
    let off = 0;
    while (off + CMSG_HDR_SIZE <= controlLen) {
      const at = MsgScratch.CTRL + off;
      const cmsgLen = v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32;
      const level = v.getInt32(at + 8, true);
      const type = v.getInt32(at + 12, true);
      if (cmsgLen < CMSG_HDR_SIZE || off + cmsgLen > controlLen) break;
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        const count = Math.floor((cmsgLen - CMSG_HDR_SIZE) / 4);
        for (let i = 0; i < count; i++) fds.push(v.getInt32(at + CMSG_HDR_SIZE + 4 * i, true));
      }
      off += (cmsgLen + 7) & ~7;
    }
    this.truncated = (flags & MSG_CTRUNC) !== 0;
    return n;
  }

  /** sendmsg of `buf[offset, offset + len)` with `fds` attached. Returns bytes sent or -errno. */
  send(fd: number, buf: NativeBuffer, offset: number, len: number, fds: readonly number[] = []): number {
    if (fds.length > MAX_FDS_PER_MESSAGE) return -ERRNO.E2BIG;
    const controlLen = fds.length > 0 ? CMSG_HDR_SIZE + ((fds.length * 4 + 7) & ~7) : 0;
    this.setMsg(buf.addressNumber + offset, len, controlLen);
    if (fds.length > 0) {
      const v = this.view;
      setU64(v, MsgScratch.CTRL, CMSG_HDR_SIZE + fds.length * 4);
      v.setInt32(MsgScratch.CTRL + 8, SOL_SOCKET, true);
      v.setInt32(MsgScratch.CTRL + 12, SCM_RIGHTS, true);
      for (let i = 0; i < fds.length; i++) v.setInt32(MsgScratch.CTRL + CMSG_HDR_SIZE + 4 * i, fds[i], true);
    }
    const n = c.sendmsg(fd, this.arena.pointer, MSG_DONTWAIT | MSG_NOSIGNAL) as number;
    return n < 0 ? -errno() : n;
  }
}

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;
/** Linux: the peer closed or shut down its writing side. */
export const POLLRDHUP = 0x2000;

// struct pollfd { int fd; short events; short revents; } in native memory (created on first use).
let pollScratch: NativeBuffer | null = null;

/**
 * Blocks the calling thread (and so Node's event loop) until `fd` reports one of `events` or
 * `timeoutMs` passes. Returns the revents bits, 0 on timeout, or -errno. Only for the server's
 * synchronous DMA_READ/DMA_WRITE round trips (a bounded wait).
 */
export function pollFd(fd: number, events: number, timeoutMs: number): number {
  pollScratch ??= new NativeBuffer(8);
  const pollScratchView = new DataView(pollScratch.bytes.buffer, pollScratch.bytes.byteOffset, 8);
  pollScratchView.setInt32(0, fd, true);
  pollScratchView.setInt16(4, events, true);
  pollScratchView.setInt16(6, 0, true);
  const n = c.poll(pollScratch.pointer, 1, Math.max(0, Math.min(Math.ceil(timeoutMs), 0x7fffffff))) as number;
  if (n < 0) return -errno();
  if (n === 0) return 0;
  return pollScratchView.getUint16(6, true);
}

/**
 * poll(2) on several descriptors: waits until one reports one of its `events[i]` or `timeoutMs`
 * passes; fills `revents[i]` (0 when nothing happened) and returns how many are ready, 0 on
 * timeout, or -errno. Blocks the thread (the server's DMA round trips only). Re-entrant: its
 * native scratch is per call.
 */
export function pollFds(
  fds: readonly number[],
  events: readonly number[],
  revents: number[],
  timeoutMs: number,
): number {
  const n = fds.length;
  const buf = new NativeBuffer(Math.max(8, 8 * n));
  try {
    const v = new DataView(buf.bytes.buffer, buf.bytes.byteOffset, 8 * n);
    for (let i = 0; i < n; i++) {
      v.setInt32(8 * i, fds[i], true);
      v.setInt16(8 * i + 4, events[i], true);
      v.setInt16(8 * i + 6, 0, true);
    }
    const r = c.poll(buf.pointer, n, Math.max(0, Math.min(Math.ceil(timeoutMs), 0x7fffffff))) as number;
    if (r < 0) return -errno();
    for (let i = 0; i < n; i++) revents[i] = r === 0 ? 0 : v.getUint16(8 * i + 6, true);
    return r;
  } finally {
    buf.free();
  }
}

/** Readiness watching of a raw descriptor on Node's event loop (koffi's uv_poll_t). */
export interface FdWatch {
  /** (Re)arms the watch for the given conditions; hang-ups are always reported. */
  start(readable: boolean, writable: boolean): void;
  stop(): void;
  close(): void;
}

interface PollEvents {
  readable: boolean;
  writable: boolean;
  disconnect: boolean;
}

type ReadyCallback = (readable: boolean, writable: boolean, hangup: boolean) => void;

/**
 * Watches `fd`. koffi calls back with (status, events) (its .d.ts shows only the events): a
 * negative libuv status is an error on the descriptor, reported here as a hang-up.
 */
export function watchFd(fd: number, onReady: ReadyCallback): FdWatch {
  const cb = (status: number, ev: PollEvents) => {
    if (status < 0) onReady(false, false, true);
    else onReady(ev.readable, ev.writable, ev.disconnect);
  };
  const poll = koffi.node.poll as unknown as (
    fd: number,
    opts: { readable: boolean; writable: boolean; disconnect: boolean },
    callback: typeof cb,
  ) => { start(o: object, c: typeof cb): void; stop(): void; close(): void };
  const handle = poll(fd, { readable: false, writable: false, disconnect: true }, cb);
  return {
    start(readable: boolean, writable: boolean): void {
      handle.start({ readable, writable, disconnect: true }, cb);
    },
    stop(): void {
      handle.stop();
    },
    close(): void {
      handle.close();
    },
  };
}
