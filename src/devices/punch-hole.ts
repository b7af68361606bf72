/**
 * Deallocating a range of a host file: fallocate(2) with FALLOC_FL_PUNCH_HOLE |
 * FALLOC_FL_KEEP_SIZE (Linux), bound with koffi because node:fs has no equivalent. After a
 * successful punch the range reads as zeroes and the file keeps its size.
 *
 * `punchHole` returns false when the call is unavailable (no libc, another OS) or fails (a file
 * system without hole punching returns EOPNOTSUPP); callers then fall back to writing zeroes.
 */
import koffi from "koffi";

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

type Fallocate = (fd: number, mode: number, offset: number, length: number) => number;
let fallocate: Fallocate | null | undefined;

function bind(): Fallocate | null {
  if (fallocate !== undefined) return fallocate;
  try {
    const lib = koffi.load("libc.so.6");
    fallocate = lib.func("int fallocate(int fd, int mode, int64_t offset, int64_t len)") as Fallocate;
  } catch {
    fallocate = null;
  }
  return fallocate;
}

/** Deallocates [offset, offset + lengthBytes) of `fd`; true when the range now reads as zeroes. */
export function punchHole(fd: number, offset: number, lengthBytes: number): boolean {
  const f = bind();
  if (f === null || lengthBytes <= 0) return false;
  return f(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, lengthBytes) === 0;
}
