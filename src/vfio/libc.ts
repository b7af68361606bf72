/**
 * The libc calls the VFIO layer needs beyond the KVM ones: positioned reads and writes of a
 * device file descriptor's regions (config space, trapped BARs). Bound through koffi.
 */
import koffi from "koffi";

const libc = koffi.load("libc.so.6");

/** pread(2) into `buf` (its first `count` bytes); returns bytes read or -1. */
export const pread = libc.func("pread", "intptr_t", ["int", "void *", "size_t", "int64_t"]) as (
  fd: number,
  buf: Uint8Array,
  count: number,
  offset: number,
) => number;

/** pwrite(2) of `buf`'s first `count` bytes; returns bytes written or -1. */
export const pwrite = libc.func("pwrite", "intptr_t", ["int", "void *", "size_t", "int64_t"]) as (
  fd: number,
  buf: Uint8Array,
  count: number,
  offset: number,
) => number;

export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

/** eventfd(2); returns the descriptor or -1. */
export const eventfd = libc.func("int eventfd(unsigned int initval, int flags)") as (
  initval: number,
  flags: number,
) => number;

/** read(2) of `count` bytes into `buf`; returns bytes read or -1 (an empty non-blocking eventfd: EAGAIN). */
export const read = libc.func("read", "intptr_t", ["int", "void *", "size_t"]) as (
  fd: number,
  buf: Uint8Array,
  count: number,
) => number;
