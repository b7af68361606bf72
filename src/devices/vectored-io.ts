/**
 * File I/O into and out of scattered guest buffers with one preadv/pwritev per up to IOV_MAX
 * buffers, instead of one pread/pwrite per buffer: a 128 KiB request whose pages are scattered
 * (every page of a translated DMA is its own view) costs one system call, not 32.
 */
import { readvSync, writevSync } from "node:fs";

/** Linux's IOV_MAX: the most buffers one preadv/pwritev takes. */
const IOV_MAX = 1024;

/**
 * Calls `transfer` (preadv or pwritev) over `views` in batches of up to IOV_MAX, resuming after
 * short transfers, until every byte moved. A transfer that moves nothing hands the views not yet
 * done (the first one cut to its unmoved rest) and the file position to `onStall`, and stops.
 */
function transferViews(
  views: readonly Uint8Array[],
  position: number,
  transfer: (batch: Uint8Array[], position: number) => number,
  onStall: (rest: Uint8Array[], position: number) => void,
): void {
  let i = 0;
  let first: Uint8Array | null = null; // the unmoved rest of views[i] after a short transfer
  while (i < views.length) {
    const batch: Uint8Array[] = [first ?? views[i]];
    for (let k = i + 1; k < views.length && batch.length < IOV_MAX; k++) batch.push(views[k]);
    const n = transfer(batch, position);
    if (n <= 0) {
      onStall([first ?? views[i], ...views.slice(i + 1)], position);
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

/**
 * Fills `views`, in order, from the file at `position`. Bytes past the end of the file (a file
 * that shrank under the device) read as zeroes.
 */
export function readIntoViews(fd: number, views: readonly Uint8Array[], position: number): void {
  transferViews(
    views,
    position,
    (batch, at) => readvSync(fd, batch, at),
    (rest) => {
      for (const v of rest) v.fill(0);
    },
  );
}

/** Writes `views`, in order, to the file at `position`. */
export function writeFromViews(fd: number, views: readonly Uint8Array[], position: number): void {
  transferViews(
    views,
    position,
    (batch, at) => writevSync(fd, batch, at),
    (_rest, at) => {
      throw new Error(`pwritev at ${at} wrote nothing`);
    },
  );
}
