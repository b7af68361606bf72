/**
 * File I/O into and out of scattered guest buffers with one preadv/pwritev per up to IOV_MAX
 * buffers, instead of one pread/pwrite per buffer: a 128 KiB request whose pages are scattered
 * (every page of a translated DMA is its own view) costs one system call, not 32.
 */
import { readvSync, writevSync } from "node:fs";

/** Linux's IOV_MAX: the most buffers one preadv/pwritev takes. */
const IOV_MAX = 1024;

/**
 * Fills `views`, in order, from the file at `position`. Bytes past the end of the file (a file
 * that shrank under the device) read as zeroes.
 */
export function readIntoViews(fd: number, views: readonly Uint8Array[], position: number): void {
  let i = 0;
  let first: Uint8Array | null = null; // the unfilled rest of views[i] after a short read
  while (i < views.length) {
    const batch: Uint8Array[] = [first ?? views[i]];
    for (let k = i + 1; k < views.length && batch.length < IOV_MAX; k++) batch.push(views[k]);
    const n = readvSync(fd, batch, position);
    if (n <= 0) {
      (first ?? views[i]).fill(0);
      for (let k = i + 1; k < views.length; k++) views[k].fill(0);
      return;
    }
    position += n;
    let left = n;
    for (const b of batch) {
      if (left >= b.length) {
        left -= b.length;
        i++;
        first = null;
        continue;
      }
      first = b.subarray(left);
      break;
    }
  }
}

/** Writes `views`, in order, to the file at `position`. */
export function writeFromViews(fd: number, views: readonly Uint8Array[], position: number): void {
  let i = 0;
  let first: Uint8Array | null = null;
  while (i < views.length) {
    const batch: Uint8Array[] = [first ?? views[i]];
    for (let k = i + 1; k < views.length && batch.length < IOV_MAX; k++) batch.push(views[k]);
    const n = writevSync(fd, batch, position);
    if (n <= 0) throw new Error(`pwritev at ${position} wrote nothing`);
    position += n;
    let left = n;
    for (const b of batch) {
      if (left >= b.length) {
        left -= b.length;
        i++;
        first = null;
        continue;
      }
      first = b.subarray(left);
      break;
    }
  }
}
