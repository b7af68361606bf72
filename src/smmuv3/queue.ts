/**
 * Circular queue pointers (SMMUv3 3.5.1, 6.3.26-6.3.29): a pointer register holds an index in
 * bits [log2size-1:0] and a wrap bit at bit log2size. The queue is empty when both pointers are
 * equal (index and wrap), full when the indices are equal and the wrap bits differ.
 */

/** Index and wrap bit of a pointer value for a queue of 2^log2size entries. */
export function ptrMask(log2size: number): number {
  return (2 ** (log2size + 1) - 1) >>> 0;
}

export function ptrIndex(ptr: number, log2size: number): number {
  return ptr & ((1 << log2size) - 1);
}

export function ptrWrap(ptr: number, log2size: number): number {
  return (ptr >>> log2size) & 1;
}

export function queueEmpty(prod: number, cons: number, log2size: number): boolean {
  const m = ptrMask(log2size);
  return (prod & m) === (cons & m);
}

export function queueFull(prod: number, cons: number, log2size: number): boolean {
  return (
    ptrIndex(prod, log2size) === ptrIndex(cons, log2size) &&
    ptrWrap(prod, log2size) !== ptrWrap(cons, log2size)
  );
}

/** The pointer one entry on, wrapping the index and toggling the wrap bit. */
export function ptrIncrement(ptr: number, log2size: number): number {
  return (((ptr & ptrMask(log2size)) + 1) & ptrMask(log2size)) >>> 0;
}

/** Number of entries between cons and prod (0 .. 2^log2size). */
export function queueUsed(prod: number, cons: number, log2size: number): number {
  const size = 1 << log2size;
  const p = prod & ptrMask(log2size);
  const c = cons & ptrMask(log2size);
  return (p - c + 2 * size) % (2 * size);
}

/** A queue base register decoded: ADDR 51:5 aligned to the queue size, LOG2SIZE 4:0. */
export interface QueueGeometry {
  readonly baseGpa: number;
  readonly log2size: number;
  readonly entryBytes: number;
}

/**
 * Decodes CMDQ_BASE / EVENTQ_BASE (6.3.25, 6.3.27). LOG2SIZE above the implemented maximum
 * behaves as the maximum. The base must be aligned to the queue size; low bits below that
 * alignment are treated as zero.
 */
export function decodeQueueBase(lo: number, hi: number, log2max: number, entryBytes: number): QueueGeometry {
  const log2size = Math.min(lo & 0x1f, log2max);
  const addr = (hi & 0xfffff) * 2 ** 32 + (lo - (lo % 32));
  const align = Math.max(32, (1 << log2size) * entryBytes);
  return { baseGpa: addr - (addr % align), log2size, entryBytes };
}
