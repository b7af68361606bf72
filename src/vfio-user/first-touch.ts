/**
 * First touches of a client's shared guest RAM, made cheap: the first DMA that reaches a 2 MiB
 * chunk of a mapped region populates the whole chunk's page tables with one
 * `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+; `MADV_POPULATE_READ` for a read-only region,
 * which is mapped private and must not be copied on write).
 *
 * Why: our process maps QEMU's memfd itself, so each 4 KiB page it reaches for the first time
 * costs a page fault, even when QEMU already has the page. Measured on the development machine
 * (a paravirtualized VM where every fault exits to the hypervisor; C program, 64 MiB memfd):
 * 11-12 us per 4 KiB page by touching it, 1.1-1.2 us per page by populating 2 MiB at once when
 * nobody had allocated the pages yet, 0.3 us per page when they already existed. A virtio-blk
 * read into fresh guest buffers otherwise spends most of its time in those faults.
 *
 * Cost: a chunk is committed as a whole when DMA first reaches any byte of it, so the memory a
 * guest's DMA commits is rounded up to 2 MiB chunks (as QEMU's own RAM is with transparent huge
 * pages), never all of guest RAM up front. Chunks are aligned to the file offset (so they match
 * huge pages of the file) and clipped to the region.
 *
 * Failure: the populate call tells what a plain access would do. EFAULT ("a SIGBUS would have been
 * generated": a hugetlb file whose pool ran out, a page lost to a memory failure) and EHWPOISON
 * make the chunk unreachable: DMA there is a fault for the device (`ready` false), never a
 * signal that kills the server. The whole chunk is refused even if only part of it failed.
 * Any other error (ENOMEM, EINTR) leaves the chunk to ordinary page faults; EINVAL (a kernel
 * without the advice) turns population off for the process.
 */
import {
  adviseMapping,
  EHWPOISON,
  ERRNO,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  type NativeMapping,
} from "./libc.ts";

/** The chunk populated at once: the x86-64 and arm64 (4 KiB granule) huge page size. */
export const TOUCH_CHUNK_BYTES = 2 * 1024 * 1024;
const PAGE_BYTES = 4096;

const CHUNK_NEW = 0;
const CHUNK_READY = 1;
const CHUNK_UNREACHABLE = 2;

/** `adviseMapping`'s signature: 0 or -errno. Injectable so tests can make it fail. */
export type PopulateCall = (m: NativeMapping, offset: number, sizeBytes: number, advice: number) => number;

export interface FirstTouchStats {
  /** False when the kernel does not know the advice (or population was turned off). */
  readonly enabled: boolean;
  readonly populatedChunks: number;
  readonly populatedBytes: number;
  /** Time spent in the populate calls, in milliseconds. */
  readonly populateMs: number;
  /** Populate calls that failed (any errno), and the chunks refused because of it. */
  readonly populateFailures: number;
  readonly unreachableChunks: number;
  /** DMA refused because it reached an unreachable chunk. */
  readonly unreachableAccesses: number;
  readonly lastErrno: number;
}

/** The process-wide switch, the populate call and the counters every region shares. */
export class FirstTouchPolicy {
  enabled: boolean;
  readonly populate: PopulateCall;
  populatedChunks = 0;
  populatedBytes = 0;
  populateMs = 0;
  populateFailures = 0;
  unreachableChunks = 0;
  unreachableAccesses = 0;
  lastErrno = 0;

  constructor(populate: PopulateCall = adviseMapping, enabled = true) {
    this.populate = populate;
    this.enabled = enabled;
  }

  stats(): FirstTouchStats {
    return {
      enabled: this.enabled,
      populatedChunks: this.populatedChunks,
      populatedBytes: this.populatedBytes,
      populateMs: this.populateMs,
      populateFailures: this.populateFailures,
      unreachableChunks: this.unreachableChunks,
      unreachableAccesses: this.unreachableAccesses,
      lastErrno: this.lastErrno,
    };
  }
}

/** One mapped region's chunks: populated on first access, or refused. */
export class FirstTouch {
  private readonly policy: FirstTouchPolicy;
  private readonly mapping: NativeMapping;
  /** Region offset 0 lies `head` bytes into the mapping (the mapping starts on a page). */
  private readonly head: number;
  /** Region offset 0 lies `skew` bytes into its chunk (chunks are aligned to the file offset). */
  private readonly skew: number;
  private readonly sizeBytes: number;
  private readonly advice: number;
  private readonly states: Uint8Array;

  /**
   * `mapping` holds the region's `sizeBytes` from `head` bytes in; the region starts at
   * `fileOffset` in the file; `shared`: a shared writable mapping (else private, read-only).
   */
  constructor(
    policy: FirstTouchPolicy,
    mapping: NativeMapping,
    head: number,
    fileOffset: number,
    sizeBytes: number,
    shared: boolean,
  ) {
    this.policy = policy;
    this.mapping = mapping;
    this.head = head;
    this.skew = fileOffset % TOUCH_CHUNK_BYTES;
    this.sizeBytes = sizeBytes;
    this.advice = shared ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
    this.states = new Uint8Array(Math.max(1, Math.ceil((this.skew + sizeBytes) / TOUCH_CHUNK_BYTES)));
  }

  /**
   * Whether [off, off + sizeBytes) of the region may be accessed, populating the chunks it
   * reaches for the first time. False: part of it is unreachable (a DMA fault). The caller has
   * checked the range lies inside the region.
   */
  ready(off: number, sizeBytes: number): boolean {
    const s = this.states;
    const first = Math.floor((this.skew + off) / TOUCH_CHUNK_BYTES);
    const last = sizeBytes <= 1 ? first : Math.floor((this.skew + off + sizeBytes - 1) / TOUCH_CHUNK_BYTES);
    for (let c = first; c <= last; c++) {
      let state = s[c];
      if (state === CHUNK_READY) continue;
      if (state === CHUNK_NEW) state = this.populateChunk(c);
      if (state === CHUNK_UNREACHABLE) {
        this.policy.unreachableAccesses++;
        return false;
      }
    }
    return true;
  }

  private populateChunk(chunk: number): number {
    const p = this.policy;
    if (!p.enabled) {
      this.states[chunk] = CHUNK_READY;
      return CHUNK_READY;
    }
    // The chunk's bytes in the mapping, clipped to the region, from the page holding its start.
    const regionStart = Math.max(0, chunk * TOUCH_CHUNK_BYTES - this.skew);
    const regionEnd = Math.min(this.sizeBytes, (chunk + 1) * TOUCH_CHUNK_BYTES - this.skew);
    const from = this.head + regionStart - ((this.head + regionStart) % PAGE_BYTES);
    const sizeBytes = this.head + regionEnd - from;
    const t0 = performance.now();
    const r = p.populate(this.mapping, from, sizeBytes, this.advice);
    p.populateMs += performance.now() - t0;
    let state = CHUNK_READY;
    if (r === 0) {
      p.populatedChunks++;
      p.populatedBytes += sizeBytes;
    } else {
      p.populateFailures++;
      p.lastErrno = -r;
      if (-r === ERRNO.EFAULT || -r === EHWPOISON) {
        state = CHUNK_UNREACHABLE;
        p.unreachableChunks++;
      } else if (-r === ERRNO.EINVAL) {
        p.enabled = false;
      }
    }
    this.states[chunk] = state;
    return state;
  }
}
