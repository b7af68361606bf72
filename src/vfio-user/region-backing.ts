/**
 * How one vfio-user DMA region is backed in the server, and what it costs.
 *
 * A region a client shares with a descriptor becomes one of:
 *   - "mapped": mmap of the client's file, viewed in windows of at most MAX_VIEW_BYTES (a view of
 *     more than 4 GiB would abort the process; a 64 GiB guest is 32 windows of one mapping).
 *     Only for files that cannot shrink under the mapping: a memfd sealed with F_SEAL_SHRINK
 *     (QEMU's memory-backend-memfd seals by default; we add the seal when the memfd allows it).
 *     A shrink would make device DMA past the new end raise SIGBUS, which kills the process.
 *     The first DMA to each 2 MiB chunk populates the chunk's page tables at once
 *     (first-touch.ts): a page fault per 4 KiB page costs ten times more here.
 *   - "file-io": any other regular file (a tmpfs or hugetlbfs file, an unsealable memfd), and a
 *     read-only region of a hugetlb memfd. It is never mapped; device DMA is pread/pwrite on
 *     the descriptor, so a shrink makes later DMA past the end fail (a DMA fault), never a
 *     signal. No views: devices copy (slower).
 * A region shared without a descriptor is "message": DMA by VFIO_USER_DMA_READ/WRITE.
 *
 * Every map is refused (with a reply) when the file is not a regular file or the region extends
 * past the end of the file.
 *
 * Budget: each mapped region costs one memory mapping of the process, each file-io region one
 * open descriptor. Linux limits both (vm.max_map_count, RLIMIT_NOFILE); running out makes any
 * later mmap or malloc in the process fail, including Node's own, which crashes it. `ResourceBudget`
 * derives caps from the real limits minus what the process already uses and a headroom, shared
 * by every client of the process.
 *
 * Release: a region that leaves guest memory is unmapped (or its descriptor closed) later, from
 * the event loop, never inside the call that released it: device code on the stack then may still
 * hold a view of it (a DMA_READ round trip can run other clients' commands, a disconnect can
 * happen inside one). Views are only kept across event-loop turns by virtio ring windows, which
 * revalidate on `SharedGuestMemory.generation`. `ReleaseQueue` does the unmaps in slices of a few
 * milliseconds, so a disconnect with 60,000 regions never stalls the other clients for long.
 */
import { fstatSync, readdirSync, readFileSync } from "node:fs";
import { FirstTouch, type FirstTouchPolicy } from "./first-touch.ts";
import {
  addSeals,
  closeFd,
  ERRNO,
  F_SEAL_SHRINK,
  getSeals,
  MAP_PRIVATE,
  MAP_SHARED,
  MAX_VIEW_BYTES,
  mapFile,
  mappingView,
  type NativeMapping,
  PROT_READ,
  PROT_WRITE,
  unmapMapping,
} from "./libc.ts";

export const BACKING_MAPPED = 0;
export const BACKING_FILE_IO = 1;
export const BACKING_MESSAGE = 2;
export type BackingKind = typeof BACKING_MAPPED | typeof BACKING_FILE_IO | typeof BACKING_MESSAGE;

/** Window size of mapped regions (a power of two, at most 4 GiB). */
export const WINDOW_BYTES = MAX_VIEW_BYTES;
const PAGE_SIZE = 4096;

/** DMA by messages to the client that registered a region without a descriptor. */
export interface DmaTransport {
  /** Reads [gpa, gpa + dest.length) into `dest`; null on success, else why it failed. */
  read(gpa: number, dest: Uint8Array): string | null;
  /** Writes `src` at `gpa`; null on success, else why it failed. */
  write(gpa: number, src: Uint8Array): string | null;
}

export interface Backing {
  readonly kind: BackingKind;
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly end: number;
  readonly dev: bigint;
  readonly ino: bigint;
  readonly fileOffset: number;
  readonly writable: boolean;
  /** mapped: the mapping (from the page below fileOffset) and its windows of region bytes. */
  readonly mapping: NativeMapping | null;
  readonly windows: readonly Uint8Array[];
  readonly windowViews: readonly DataView[];
  /** mapped: population of the region's 2 MiB chunks on first DMA (first-touch.ts); else null. */
  readonly touch: FirstTouch | null;
  /** file-io: the descriptor kept for pread/pwrite (-1 otherwise). */
  readonly fd: number;
  readonly transport: DmaTransport | null;
  /**
   * message: the client table that registered it; the region leaves guest memory the moment
   * that client disconnects, before its references are dropped (in slices). Null otherwise.
   */
  readonly owner: { readonly closed: boolean } | null;
  /** Dedup key of a descriptor-backed region (file, offset, range); "" for message-backed. */
  readonly key: string;
  refs: number;
  /** False once released (it stays in lookup arrays as a tombstone until compaction). */
  live: boolean;
}

export interface FileRegionRequest {
  readonly iova: number;
  readonly sizeBytes: number;
  readonly fileOffset: number;
  readonly writable: boolean;
  readonly fd: number;
}

export type BackingResult = { ok: true; backing: Backing } | { ok: false; errno: number; why: string };

function readNumber(path: string, fallback: number): number {
  try {
    const n = Number(readFileSync(path, "utf8").trim());
    return Number.isSafeInteger(n) && n > 0 ? n : fallback;
  } catch {
    return fallback;
  }
}

function countLines(path: string): number {
  try {
    const text = readFileSync(path, "utf8");
    let n = 0;
    for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) n++;
    return n;
  } catch {
    return 0;
  }
}

function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    if (m !== null) return Number(m[1]);
  } catch {
    // fall through
  }
  return 1024;
}

function openFdCount(): number {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return 0;
  }
}

/** Caps on what client regions may consume of the process's mappings and descriptors. */
export class ResourceBudget {
  readonly maxMappings: number;
  readonly maxFiles: number;
  mappings = 0;
  files = 0;
  refusedMappings = 0;
  refusedFiles = 0;

  constructor(maxMappings: number, maxFiles: number) {
    this.maxMappings = Math.max(0, Math.floor(maxMappings));
    this.maxFiles = Math.max(0, Math.floor(maxFiles));
  }

  /**
   * From the real limits: vm.max_map_count minus the mappings the process has now and a headroom
   * of an eighth of the limit (at least 4,096) for Node, V8 and later connections; RLIMIT_NOFILE
   * minus open descriptors and 256, and at most half of the limit.
   */
  static fromSystem(): ResourceBudget {
    const maxMapCount = readNumber("/proc/sys/vm/max_map_count", 65530);
    const mapsNow = countLines("/proc/self/maps");
    const mapHeadroom = Math.max(4096, Math.floor(maxMapCount / 8));
    const fileLimit = openFileLimit();
    const files = Math.min(Math.floor(fileLimit / 2), fileLimit - openFdCount() - 256);
    return new ResourceBudget(maxMapCount - mapsNow - mapHeadroom, files);
  }

  takeMapping(): boolean {
    if (this.mappings >= this.maxMappings) {
      this.refusedMappings++;
      return false;
    }
    this.mappings++;
    return true;
  }

  takeFile(): boolean {
    if (this.files >= this.maxFiles) {
      this.refusedFiles++;
      return false;
    }
    this.files++;
    return true;
  }
}

/** Windows of `sizeBytes` region bytes starting `head` bytes into `mapping`. */
function windowsOf(mapping: NativeMapping, head: number, sizeBytes: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < sizeBytes; at += WINDOW_BYTES) {
    out.push(mappingView(mapping, head + at, Math.min(WINDOW_BYTES, sizeBytes - at)));
  }
  return out;
}

/** True when the file cannot shrink any more (F_SEAL_SHRINK present, or added now). */
function sealedAgainstShrink(fd: number): boolean {
  const seals = getSeals(fd);
  if (seals < 0) return false; // not a memfd
  if ((seals & F_SEAL_SHRINK) !== 0) return true;
  return addSeals(fd, F_SEAL_SHRINK) === 0;
}

/**
 * The page size a mapping of the file must be aligned to: its block size when that is a power of
 * two between 4 KiB and 1 GiB (hugetlbfs reports its huge page size), else 4 KiB.
 */
function mappingPageBytes(blockBytes: number): number {
  const isPowerOfTwo = Number.isInteger(Math.log2(blockBytes));
  return isPowerOfTwo && blockBytes > PAGE_SIZE && blockBytes <= 2 ** 30 ? blockBytes : PAGE_SIZE;
}

function roundUp(x: number, to: number): number {
  return Math.ceil(x / to) * to;
}

/**
 * Backs a region shared with a descriptor. Consumes `req.fd` (closed, or kept by a file-io
 * backing). `identity` is the file's (st_dev, st_ino) as found by the caller.
 */
export function createFileBacking(
  req: FileRegionRequest,
  identity: FileIdentity,
  budget: ResourceBudget,
  firstTouch: FirstTouchPolicy,
): BackingResult {
  const fail = (errno: number, why: string): BackingResult => {
    closeFd(req.fd);
    return { ok: false, errno, why };
  };
  // A region past the end of the file: device DMA there would raise SIGBUS.
  if (req.fileOffset + req.sizeBytes > identity.sizeBytes) {
    return fail(
      ERRNO.EINVAL,
      `region [+0x${req.fileOffset.toString(16)}, +0x${req.sizeBytes.toString(16)}) extends past the end of the file (0x${identity.sizeBytes.toString(16)} bytes)`,
    );
  }
  const base = {
    gpa: req.iova,
    sizeBytes: req.sizeBytes,
    end: req.iova + req.sizeBytes,
    dev: identity.dev,
    ino: identity.ino,
    fileOffset: req.fileOffset,
    writable: req.writable,
    transport: null,
    owner: null,
    key: fileRegionKey(req.iova, req.sizeBytes, identity.dev, identity.ino, req.fileOffset),
    refs: 1,
    live: true,
  };
  const pageBytes = mappingPageBytes(identity.blockBytes);
  // A read-only region is mapped private (below); a private mapping of a hugetlb file reserves
  // huge pages for copies on write, which a guest's whole pool (QEMU reserves it) leaves none
  // of: such a region (QEMU's read-only PAM and ROM areas) is reached by pread instead.
  if (!sealedAgainstShrink(req.fd) || (!req.writable && pageBytes > PAGE_SIZE)) {
    if (!budget.takeFile()) return fail(ERRNO.ENOMEM, "no descriptors left for client regions");
    return {
      ok: true,
      backing: {
        ...base,
        kind: BACKING_FILE_IO,
        mapping: null,
        windows: [],
        windowViews: [],
        touch: null,
        fd: req.fd,
      },
    };
  }
  if (!budget.takeMapping()) return fail(ERRNO.ENOMEM, "no memory mappings left for client regions");
  // A read-only region is mapped private and writable: a device write to it lands in a private
  // copy-on-write page (dropped, as a DMA write to ROM is) instead of faulting the process.
  // mmap needs a page-aligned file offset: map from the page below and skip the head. A
  // hugetlb memfd (QEMU's memory-backend-memfd,hugetlb=on) has pages of its block size: its
  // mapping must start on one, and its length is a whole number of them (munmap needs it), so
  // the mapping is widened to the huge pages the region touches (inside the file, whose size is
  // a multiple of them). A shared mapping reserves its huge pages at mmap, so running out of
  // them is a refused map, not a SIGBUS at the first DMA.
  const head = req.fileOffset % pageBytes;
  const mapBytes =
    pageBytes === PAGE_SIZE
      ? head + req.sizeBytes
      : Math.min(identity.sizeBytes - (req.fileOffset - head), roundUp(head + req.sizeBytes, pageBytes));
  const mapping = mapFile(
    req.fd,
    req.fileOffset - head,
    mapBytes,
    PROT_READ | PROT_WRITE,
    req.writable ? MAP_SHARED : MAP_PRIVATE,
  );
  closeFd(req.fd); // the mapping keeps the file alive
  if (mapping === null) {
    budget.mappings--;
    return { ok: false, errno: ERRNO.EINVAL, why: "mmap of the region failed" };
  }
  const windows = windowsOf(mapping, head, req.sizeBytes);
  return {
    ok: true,
    backing: {
      ...base,
      kind: BACKING_MAPPED,
      mapping,
      windows,
      windowViews: windows.map((w) => new DataView(w.buffer, w.byteOffset, w.byteLength)),
      touch: new FirstTouch(firstTouch, mapping, head, req.fileOffset, req.sizeBytes, req.writable),
      fd: -1,
    },
  };
}

export interface FileIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
  readonly sizeBytes: number;
  /** st_blksize: the page size of a hugetlbfs file, 4 KiB for a memfd or tmpfs file. */
  readonly blockBytes: number;
}

/** The (st_dev, st_ino, size, block size) of a regular file, or why it cannot back a region. */
export function regularFileIdentity(fd: number): FileIdentity | { why: string; errno: number } {
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) return { errno: ERRNO.EINVAL, why: "descriptor is not a regular file" };
    return { dev: st.dev, ino: st.ino, sizeBytes: Number(st.size), blockBytes: Number(st.blksize) };
  } catch {
    return { errno: ERRNO.EBADF, why: "descriptor cannot be stat'ed" };
  }
}

export function createMessageBacking(
  req: FileRegionRequest,
  transport: DmaTransport,
  owner: { readonly closed: boolean },
): Backing {
  return {
    kind: BACKING_MESSAGE,
    gpa: req.iova,
    sizeBytes: req.sizeBytes,
    end: req.iova + req.sizeBytes,
    dev: -1n,
    ino: -1n,
    fileOffset: 0,
    writable: req.writable,
    mapping: null,
    windows: [],
    windowViews: [],
    touch: null,
    fd: -1,
    transport,
    owner,
    key: "",
    refs: 1,
    live: true,
  };
}

/** Two maps of the same range of the same file share one backing. */
export function fileRegionKey(
  gpa: number,
  sizeBytes: number,
  dev: bigint,
  ino: bigint,
  offset: number,
): string {
  return `${gpa}:${sizeBytes}:${dev}:${ino}:${offset}`;
}

/**
 * Released mappings and descriptors, given back to the system from the event loop in slices of
 * at most `sliceMs` milliseconds each (see the file comment).
 */
export class ReleaseQueue {
  private readonly pending: Backing[] = [];
  private head = 0;
  private scheduled = false;
  private readonly budget: ResourceBudget;
  private readonly sliceMs: number;
  pendingBytes = 0;
  releasedBytes = 0;
  released = 0;
  unmapFailures = 0;
  /** Longest slice so far, in milliseconds. */
  longestSliceMs = 0;

  constructor(budget: ResourceBudget, sliceMs = 2) {
    this.budget = budget;
    this.sliceMs = sliceMs;
  }

  get length(): number {
    return this.pending.length - this.head;
  }

  add(b: Backing): void {
    if (b.kind === BACKING_MESSAGE) return;
    this.pending.push(b);
    this.pendingBytes += b.sizeBytes;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.run());
    }
  }

  private run(): void {
    this.scheduled = false;
    const start = performance.now();
    let n = 0;
    while (this.head < this.pending.length) {
      this.releaseOne(this.pending[this.head++]);
      // Checking the clock every 64 releases keeps its cost out of the loop.
      if ((++n & 63) === 0 && performance.now() - start >= this.sliceMs) break;
    }
    this.longestSliceMs = Math.max(this.longestSliceMs, performance.now() - start);
    if (this.head < this.pending.length) {
      this.scheduled = true;
      setImmediate(() => this.run());
    } else {
      this.pending.length = 0;
      this.head = 0;
    }
  }

  private releaseOne(b: Backing): void {
    if (b.kind === BACKING_MAPPED && b.mapping !== null) {
      if (unmapMapping(b.mapping)) this.budget.mappings--;
      else this.unmapFailures++;
    } else if (b.kind === BACKING_FILE_IO && b.fd >= 0) {
      closeFd(b.fd);
      this.budget.files--;
    }
    this.pendingBytes -= b.sizeBytes;
    this.releasedBytes += b.sizeBytes;
    this.released++;
  }

  /** Gives back everything now (shutdown, tests). Only safe when no device code is running. */
  drainNow(): void {
    while (this.head < this.pending.length) this.releaseOne(this.pending[this.head++]);
    this.pending.length = 0;
    this.head = 0;
  }
}
