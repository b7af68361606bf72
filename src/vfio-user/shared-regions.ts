/**
 * The guest-memory backing built from the DMA regions vfio-user clients register
 * (`SharedRegions`, a `MemoryBacking`; `SharedGuestMemory` in shared-memory.ts is the
 * `GuestMemory` over it).
 *
 * QEMU sends every device's connection the same guest RAM map (VFIO_USER_DMA_MAP per RAM
 * section, each with a descriptor of the shared memory backend). All devices of one `serve`
 * instance share one `SharedGuestMemory`: the first client to map a range mmaps it; another
 * client mapping the same range of the same file (same st_dev/st_ino and offset) only takes a
 * reference, and its descriptor is closed at once. Within one client a map over one of its
 * live regions fails with EEXIST (vfio-user.rst "VFIO_USER_DMA_MAP"); an unmap must match one of
 * its earlier maps exactly.
 *
 * Across clients, overlaps are expected and accepted: when the guest re-lays its memory (PAM
 * changes during firmware boot), QEMU sends every connection its unmaps and maps, and our server
 * reads the connections in whatever order they become readable, so one client's new layout
 * briefly coexists with another's old one. The view then resolves an address to the most
 * recently mapped region that contains it; every region in the view is one some client
 * registered, so DMA never reaches memory outside the clients' DMA regions.
 *
 * How a region is backed (mapped in windows, pread/pwrite on an unsealable file, or messages),
 * what it costs and how it is given back: region-backing.ts. When the last reference goes, the
 * range leaves guest memory at once (later DMA to it faults as not-RAM; "the server must release
 * all references to that DMA region before replying") and its mapping or descriptor is given back
 * from the event loop shortly after, in bounded slices.
 *
 * A region registered without a descriptor is message-backed (vfio-user.rst "VFIO_USER_DMA_MAP":
 * the server accesses it with VFIO_USER_DMA_READ/WRITE): it takes part in the same newest-wins
 * lookup, `isRam`/`contiguousBytesAt` report it as RAM, and `read`/`write`/`fill` (and so
 * `GuestMemory`'s scalar accessors, which stage through them) go through the registering
 * client's `DmaTransport` (a blocking round trip, split at max_data_xfer_size; see server.ts). A
 * transport failure (timeout, error reply, disconnect) is a `GuestMemoryError`, which
 * `DmaAddressSpace` turns into a DMA fault.
 * `view()` of such a range fails with `GuestMemoryError` (there are no bytes to alias): devices that
 * need views (virtio rings fall back to scalar reads, virtio-blk data) get a fault or a device
 * error. A device write to a region registered without the write flag is dropped, as for a
 * read-only shared region. `viommu serve` prints a QEMU command line with a shared memory
 * backend, so in practice only QEMU's `pc.bios` region comes without a descriptor.
 *
 * Every accessor of guest memory is `GuestMemory`'s: this backing only answers where an access
 * lands (`locate`: a mapped window's DataView) and copies for the rest.
 */
import { fstatSync, readSync, writeSync } from "node:fs";
import { GuestMemoryError, type MemoryBacking, type RamRegion } from "../engine/memory-backing.ts";
import { ClientDmaTable } from "./client-dma-table.ts";
import { type FirstTouch, FirstTouchPolicy, type FirstTouchStats } from "./first-touch.ts";
import { closeFd } from "./libc.ts";
import {
  BACKING_FILE_IO,
  BACKING_MAPPED,
  BACKING_MESSAGE,
  type Backing,
  type BackingResult,
  createFileBacking,
  createMessageBacking,
  type DmaTransport,
  type FileRegionRequest,
  fileRegionKey,
  ReleaseQueue,
  type ResourceBudget,
  regularFileIdentity,
  WINDOW_BYTES,
} from "./region-backing.ts";

export interface SharedMemoryStats {
  /** Descriptor-backed regions (mapped or file-io); message-backed ones are in `fdlessRegions`. */
  readonly regions: number;
  readonly mappedBytes: number;
  /** Regions reached by pread/pwrite (their file could not be sealed against shrinking). */
  readonly fileIoRegions: number;
  readonly fdlessRegions: number;
  /** DMA by VFIO_USER_DMA_READ/WRITE to message-backed regions (completed, bytes, failed). */
  readonly messageReads: number;
  readonly messageWrites: number;
  readonly messageBytes: number;
  readonly messageFailures: number;
  /** pread/pwrite DMA that found the file shorter than the region (the client shrank it). */
  readonly fileIoFailures: number;
  readonly droppedReadOnlyWrites: number;
  readonly maps: number;
  readonly unmaps: number;
  readonly sharedMaps: number;
  readonly refusedMaps: number;
  readonly crossClientOverlaps: number;
  /** Memory mappings and descriptors held for regions, and their caps (see ResourceBudget). */
  readonly budget: { mappings: number; maxMappings: number; files: number; maxFiles: number };
  /** Released regions whose mapping or descriptor is still to be given back, and given back. */
  readonly pendingReleaseBytes: number;
  readonly releasedBytes: number;
  readonly longestReleaseSliceMs: number;
  /** Page-table population of mapped regions on first DMA, 2 MiB at a time (first-touch.ts). */
  readonly firstTouch: FirstTouchStats;
}

/** Largest staging buffer `fill` uses per message or pwrite. */
const FILL_CHUNK = 64 * 1024;

export class SharedRegions implements MemoryBacking {
  /** Bumped by every map and unmap that changes what is RAM (see MemoryBacking). */
  generation = 0;
  offset = 0;
  /** Every backing, oldest first; released ones stay as tombstones (`live` false) until compaction. */
  private backings: Backing[] = [];
  private deadBackings = 0;
  private readonly byFile = new Map<string, Backing>();
  private lastHit: Backing | null = null;
  private readonly tables = new Set<ClientDmaTable>();
  readonly budget: ResourceBudget;
  /** How mapped regions' chunks are populated on first DMA, and the counters. */
  readonly firstTouch: FirstTouchPolicy;
  private readonly releases: ReleaseQueue;
  maps = 0;
  unmaps = 0;
  sharedMaps = 0;
  refusedMaps = 0;
  /** Maps that overlapped another client's live region (transient re-layouts). */
  crossClientOverlaps = 0;
  private fdless = 0;
  private fileIo = 0;
  messageReads = 0;
  messageWrites = 0;
  messageBytes = 0;
  messageFailures = 0;
  fileIoFailures = 0;
  droppedReadOnlyWrites = 0;

  /** `budget`: caps on mappings and descriptors; `firstTouch`: population of mapped regions. */
  constructor(budget: ResourceBudget, firstTouch: FirstTouchPolicy = new FirstTouchPolicy()) {
    this.budget = budget;
    this.firstTouch = firstTouch;
    this.releases = new ReleaseQueue(budget);
  }

  /** Per-client registration table; each connection owns one (and closes it on disconnect). */
  createClientTable(maxRegions: number, transport: DmaTransport | null = null): ClientDmaTable {
    const t = new ClientDmaTable(this, maxRegions, transport);
    this.tables.add(t);
    return t;
  }

  /** @internal ClientDmaTable.close: its message-backed regions are out of guest memory now. */
  tableClosed(t: ClientDmaTable): void {
    this.tables.delete(t);
    this.lastHit = null;
    this.generation++;
  }

  private noteOverlaps(owner: ClientDmaTable, gpa: number, sizeBytes: number): void {
    for (const t of this.tables) {
      if (t !== owner && t.overlaps(gpa, sizeBytes)) {
        this.crossClientOverlaps++;
        return;
      }
    }
  }

  private add(b: Backing): void {
    // Newest last; lookups search from the end (see the file comment).
    this.backings.push(b);
    this.lastHit = null;
    this.generation++;
    this.maps++;
  }

  /** @internal Takes a reference on (or creates) the backing for a region. Consumes `req.fd`. */
  acquire(owner: ClientDmaTable, req: FileRegionRequest): BackingResult {
    const id = regularFileIdentity(req.fd);
    if ("why" in id) {
      closeFdQuietly(req.fd);
      this.refusedMaps++;
      return { ok: false, errno: id.errno, why: id.why };
    }
    const key = fileRegionKey(req.iova, req.sizeBytes, id.dev, id.ino, req.fileOffset);
    const existing = this.byFile.get(key);
    if (existing?.live && existing.writable === req.writable) {
      closeFdQuietly(req.fd);
      existing.refs++;
      this.sharedMaps++;
      this.maps++;
      return { ok: true, backing: existing };
    }
    this.noteOverlaps(owner, req.iova, req.sizeBytes);
    const r = createFileBacking(req, id, this.budget, this.firstTouch);
    if (!r.ok) {
      this.refusedMaps++;
      return r;
    }
    if (r.backing.kind === BACKING_FILE_IO) this.fileIo++;
    this.byFile.set(key, r.backing);
    this.add(r.backing);
    return r;
  }

  /** @internal A message-backed region (registered without a descriptor); newest wins, as above. */
  acquireMessageBacked(owner: ClientDmaTable, req: FileRegionRequest, transport: DmaTransport): Backing {
    this.noteOverlaps(owner, req.iova, req.sizeBytes);
    const b = createMessageBacking(req, transport, owner);
    this.add(b);
    this.fdless++;
    return b;
  }

  /** A descriptor-less region recorded without a transport (not RAM). */
  noteFdless(delta: number): void {
    this.fdless += delta;
  }

  /** @internal Drops one reference; the last one takes the region out of guest memory. O(1) amortized. */
  release(b: Backing): void {
    this.unmaps++;
    b.refs--;
    if (b.refs > 0 || !b.live) return;
    b.live = false;
    this.deadBackings++;
    if (this.lastHit === b) this.lastHit = null;
    this.generation++;
    if (b.kind === BACKING_MESSAGE) this.fdless--;
    else {
      if (b.kind === BACKING_FILE_IO) this.fileIo--;
      if (this.byFile.get(b.key) === b) this.byFile.delete(b.key);
      this.releases.add(b);
    }
    // Compaction when tombstones outnumber live entries: O(1) amortized per release.
    if (this.deadBackings > 32 && this.deadBackings * 2 > this.backings.length) {
      this.backings = this.backings.filter((x) => x.live);
      this.deadBackings = 0;
    }
  }

  /** Gives released mappings back at once (tests, shutdown); never while device code runs. */
  drainReleases(): void {
    this.releases.drainNow();
  }

  // --- MemoryBacking over the changeable region list -------------------------------------------

  private findBacking(gpa: number, sizeBytes: number): Backing | undefined {
    const l = this.lastHit;
    if (l !== null && gpa >= l.gpa && gpa + sizeBytes <= l.end) return l;
    const list = this.backings;
    for (let i = list.length - 1; i >= 0; i--) {
      const b = list[i];
      if (gpa >= b.gpa && gpa + sizeBytes <= b.end && b.live && (b.owner === null || !b.owner.closed)) {
        this.lastHit = b;
        return b;
      }
    }
    return undefined;
  }

  /** The region holding [gpa, gpa + sizeBytes), or why there is none. */
  private backingFor(gpa: number, sizeBytes: number): Backing | GuestMemoryError {
    const b = this.findBacking(gpa, sizeBytes);
    if (b === undefined || !(sizeBytes >= 0))
      return new GuestMemoryError(gpa, sizeBytes, "not inside a client DMA region");
    return b;
  }

  /** The mapped regions, one entry per window; file-io and message-backed ones have no bytes. */
  get regions(): readonly RamRegion[] {
    const out: RamRegion[] = [];
    for (const b of this.backings) {
      if (!b.live || b.kind !== BACKING_MAPPED) continue;
      const name = b.writable ? "client-ram" : "client-rom";
      for (let i = 0; i < b.windows.length; i++) {
        const w = b.windows[i];
        out.push({ gpa: b.gpa + i * WINDOW_BYTES, sizeBytes: w.length, bytes: w, name });
      }
    }
    return out;
  }

  get totalBytes(): number {
    let t = 0;
    for (const b of this.backings) if (b.live && b.kind !== BACKING_MESSAGE) t += b.sizeBytes;
    return t;
  }

  isRam(gpa: number, sizeBytes: number): boolean {
    return sizeBytes >= 0 && this.findBacking(gpa, sizeBytes) !== undefined;
  }

  /** Bytes up to the end of the region, or of its window for a mapped one (one view each). */
  contiguousBytesAt(gpa: number): number {
    const b = this.findBacking(gpa, 1);
    if (b === undefined) return 0;
    if (b.kind !== BACKING_MAPPED) return b.end - gpa;
    const off = gpa - b.gpa;
    const w = Math.floor(off / WINDOW_BYTES);
    return b.windows[w].length - (off - w * WINDOW_BYTES);
  }

  view(gpa: number, sizeBytes: number): Uint8Array | GuestMemoryError {
    const b = this.backingFor(gpa, sizeBytes);
    if (b instanceof GuestMemoryError) return b;
    if (b.kind !== BACKING_MAPPED)
      return new GuestMemoryError(gpa, sizeBytes, "region without shared memory to view");
    const off = gpa - b.gpa;
    const w = Math.floor(off / WINDOW_BYTES);
    const at = off - w * WINDOW_BYTES;
    const win = b.windows[w];
    if (at + sizeBytes > win.length) return new GuestMemoryError(gpa, sizeBytes, "view across a window");
    if (!(b.touch as FirstTouch).ready(off, sizeBytes)) return unreachable(gpa, sizeBytes);
    return win.subarray(at, at + sizeBytes);
  }

  /** A mapped region's window holding all of the access (scalars: GuestMemory stages the rest). */
  locate(gpa: number, sizeBytes: number): DataView | null {
    const b = this.findBacking(gpa, sizeBytes);
    if (b === undefined || b.kind !== BACKING_MAPPED) return null;
    const off = gpa - b.gpa;
    // An unreachable chunk: null, and the staged read or write that follows reports the fault.
    if (!(b.touch as FirstTouch).ready(off, sizeBytes)) return null;
    if (off + sizeBytes <= b.windows[0].length) {
      this.offset = off;
      return b.windowViews[0];
    }
    const w = Math.floor(off / WINDOW_BYTES);
    const at = off - w * WINDOW_BYTES;
    if (at + sizeBytes > b.windows[w].length) return null;
    this.offset = at;
    return b.windowViews[w];
  }

  /** Copies between a mapped region and `buf`, across windows. */
  private copyMapped(b: Backing, gpa: number, buf: Uint8Array, toRegion: boolean): GuestMemoryError | null {
    let off = gpa - b.gpa;
    if (!(b.touch as FirstTouch).ready(off, buf.length)) return unreachable(gpa, buf.length);
    let done = 0;
    while (done < buf.length) {
      const w = Math.floor(off / WINDOW_BYTES);
      const at = off - w * WINDOW_BYTES;
      const win = b.windows[w];
      const n = Math.min(buf.length - done, win.length - at);
      if (toRegion) win.set(n === buf.length ? buf : buf.subarray(done, done + n), at);
      else buf.set(win.subarray(at, at + n), done);
      done += n;
      off += n;
    }
    return null;
  }

  /** pread of a file-io region; a short read (the client shrank the file) is a DMA fault. */
  private fileRead(b: Backing, gpa: number, dest: Uint8Array): GuestMemoryError | null {
    const position = b.fileOffset + (gpa - b.gpa);
    let done = 0;
    while (done < dest.length) {
      let n: number;
      try {
        n = readSync(b.fd, dest, done, dest.length - done, position + done);
      } catch {
        n = -1;
      }
      if (n <= 0) {
        this.fileIoFailures++;
        return new GuestMemoryError(gpa, dest.length, "past the end of the client's file");
      }
      done += n;
    }
    return null;
  }

  /** pwrite of a file-io region; never past the file's current end (that would grow it). */
  private fileWrite(b: Backing, gpa: number, src: Uint8Array): GuestMemoryError | null {
    const position = b.fileOffset + (gpa - b.gpa);
    let ok = false;
    try {
      ok = position + src.length <= Number(fstatSync(b.fd).size);
      let done = 0;
      while (ok && done < src.length) {
        const n = writeSync(b.fd, src, done, src.length - done, position + done);
        if (n <= 0) ok = false;
        done += n;
      }
    } catch {
      ok = false;
    }
    if (ok) return null;
    this.fileIoFailures++;
    return new GuestMemoryError(gpa, src.length, "past the end of the client's file");
  }

  /** One message-backed read; the error when the client does not deliver. */
  private messageRead(b: Backing, gpa: number, dest: Uint8Array): GuestMemoryError | null {
    const why = (b.transport as DmaTransport).read(gpa, dest);
    if (why !== null) {
      this.messageFailures++;
      return new GuestMemoryError(gpa, dest.length, `DMA_READ failed: ${why}`);
    }
    this.messageReads++;
    this.messageBytes += dest.length;
    return null;
  }

  /** One message-backed write. */
  private messageWrite(b: Backing, gpa: number, src: Uint8Array): GuestMemoryError | null {
    const why = (b.transport as DmaTransport).write(gpa, src);
    if (why !== null) {
      this.messageFailures++;
      return new GuestMemoryError(gpa, src.length, `DMA_WRITE failed: ${why}`);
    }
    this.messageWrites++;
    this.messageBytes += src.length;
    return null;
  }

  read(gpa: number, dest: Uint8Array): GuestMemoryError | null {
    const b = this.backingFor(gpa, dest.length);
    if (b instanceof GuestMemoryError) return b;
    if (dest.length === 0) return null;
    if (b.kind === BACKING_MAPPED) return this.copyMapped(b, gpa, dest, false);
    if (b.kind === BACKING_FILE_IO) return this.fileRead(b, gpa, dest);
    return this.messageRead(b, gpa, dest);
  }

  write(gpa: number, src: Uint8Array): GuestMemoryError | null {
    const b = this.backingFor(gpa, src.length);
    if (b instanceof GuestMemoryError) return b;
    if (src.length === 0) return null;
    if (b.kind === BACKING_MAPPED) return this.copyMapped(b, gpa, src, true);
    if (!b.writable) this.droppedReadOnlyWrites++;
    else if (b.kind === BACKING_FILE_IO) return this.fileWrite(b, gpa, src);
    else return this.messageWrite(b, gpa, src);
    return null;
  }

  fill(gpa: number, sizeBytes: number, value: number): GuestMemoryError | null {
    const b = this.backingFor(gpa, sizeBytes);
    if (b instanceof GuestMemoryError) return b;
    if (b.kind !== BACKING_MAPPED) {
      const chunk = new Uint8Array(Math.min(sizeBytes, FILL_CHUNK)).fill(value);
      for (let done = 0; done < sizeBytes; done += chunk.length) {
        const e = this.write(gpa + done, chunk.subarray(0, Math.min(chunk.length, sizeBytes - done)));
        if (e !== null) return e;
      }
      return null;
    }
    let off = gpa - b.gpa;
    if (!(b.touch as FirstTouch).ready(off, sizeBytes)) return unreachable(gpa, sizeBytes);
    let left = sizeBytes;
    while (left > 0) {
      const w = Math.floor(off / WINDOW_BYTES);
      const at = off - w * WINDOW_BYTES;
      const n = Math.min(left, b.windows[w].length - at);
      b.windows[w].fill(value, at, at + n);
      left -= n;
      off += n;
    }
    return null;
  }

  describe(): string {
    const live = this.backings.filter((b) => b.live);
    if (live.length === 0) return "no client DMA regions";
    const kind = ["", "file-", "msg-"];
    return live
      .map(
        (b) =>
          `${kind[b.kind]}${b.writable ? "ram" : "rom"} [0x${b.gpa.toString(16)}, 0x${b.end.toString(16)}) refs=${b.refs}`,
      )
      .join(", ");
  }

  stats(): SharedMemoryStats {
    let regions = 0;
    for (const b of this.backings) if (b.live && b.kind !== BACKING_MESSAGE) regions++;
    const r = this.releases;
    return {
      regions,
      mappedBytes: this.totalBytes,
      fileIoRegions: this.fileIo,
      fdlessRegions: this.fdless,
      messageReads: this.messageReads,
      messageWrites: this.messageWrites,
      messageBytes: this.messageBytes,
      messageFailures: this.messageFailures,
      fileIoFailures: this.fileIoFailures,
      droppedReadOnlyWrites: this.droppedReadOnlyWrites,
      maps: this.maps,
      unmaps: this.unmaps,
      sharedMaps: this.sharedMaps,
      refusedMaps: this.refusedMaps,
      crossClientOverlaps: this.crossClientOverlaps,
      budget: {
        mappings: this.budget.mappings,
        maxMappings: this.budget.maxMappings,
        files: this.budget.files,
        maxFiles: this.budget.maxFiles,
      },
      pendingReleaseBytes: r.pendingBytes,
      releasedBytes: r.releasedBytes,
      longestReleaseSliceMs: r.longestSliceMs,
      firstTouch: this.firstTouch.stats(),
    };
  }
}

/** DMA to a chunk whose pages cannot be populated (a plain access would raise SIGBUS). */
function unreachable(gpa: number, sizeBytes: number): GuestMemoryError {
  return new GuestMemoryError(gpa, sizeBytes, "in client memory that cannot be populated");
}

function closeFdQuietly(fd: number): void {
  if (fd >= 0) closeFd(fd);
}
