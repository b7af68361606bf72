/**
 * Guest memory built from the DMA regions vfio-user clients register.
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
 * When the last reference goes, the range leaves guest memory at once (later DMA to it faults as
 * not-RAM) and its mapping is replaced in place by private anonymous pages (MAP_FIXED), so a
 * view a device still holds can never reach the client's memory again nor fault the process
 * ("the server must release all references to that DMA region before replying").
 *
 * A region registered without a descriptor is message-backed (vfio-user.rst "VFIO_USER_DMA_MAP":
 * the server accesses it with VFIO_USER_DMA_READ/WRITE): it takes part in the same newest-wins
 * lookup, `isRam`/`contiguousBytesAt` report it as RAM, and `read`/`write`/`fill` and the
 * scalar accessors go through the registering client's `DmaTransport` (a blocking round trip,
 * split at max_data_xfer_size; see server.ts). A transport failure (timeout, error reply,
 * disconnect) throws `GuestMemoryError`, which `DmaAddressSpace` turns into a DMA fault.
 * `view()` of such a range throws `GuestMemoryError` (there are no bytes to alias): devices that
 * need views (virtio rings fall back to scalar reads, virtio-blk data) get a fault or a device
 * error. A device write to a region registered without the write flag is dropped, as for a
 * read-only shared region. `viommu serve` prints a QEMU command line with a shared memory
 * backend, so in practice only QEMU's `pc.bios` region comes without a descriptor.
 *
 * This class extends the engine's `GuestMemory` so models and address spaces take it as is;
 * it overrides every public method to read its own, changeable region list.
 */
import { GuestMemory, GuestMemoryError, type RamRegion } from "../engine/guest-memory.ts";
import {
  closeFd,
  ERRNO,
  fileIdentity,
  MAP_PRIVATE,
  MAP_SHARED,
  mapFile,
  type NativeMapping,
  PROT_READ,
  PROT_WRITE,
  quarantineMapping,
} from "./libc.ts";

export interface DmaMapRequest {
  readonly iova: number;
  readonly sizeBytes: number;
  readonly fileOffset: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** -1 when the client sent no descriptor. */
  readonly fd: number;
}

export type MapResult = { ok: true } | { ok: false; errno: number; why: string };

/** DMA by messages to the client that registered a region without a descriptor. */
export interface DmaTransport {
  /** Reads [gpa, gpa + dest.length) into `dest`; null on success, else why it failed. */
  read(gpa: number, dest: Uint8Array): string | null;
  /** Writes `src` at `gpa`; null on success, else why it failed. */
  write(gpa: number, src: Uint8Array): string | null;
}

interface Backing {
  readonly gpa: number;
  readonly sizeBytes: number;
  readonly dev: bigint;
  readonly ino: bigint;
  readonly fileOffset: number;
  readonly writable: boolean;
  /** Null for a message-backed region (`transport` set, `bytes` empty). */
  readonly mapping: NativeMapping | null;
  readonly transport: DmaTransport | null;
  /** The region's bytes (the mapping minus any head below a page-aligned file offset). */
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly end: number;
  refs: number;
}

/** One client's registration (what its DMA_UNMAP must match). */
interface ClientRegion {
  readonly iova: number;
  readonly sizeBytes: number;
  readonly backing: Backing | null;
}

export interface SharedMemoryStats {
  /** Shared (descriptor-backed) regions; message-backed ones are counted in `fdlessRegions`. */
  readonly regions: number;
  readonly mappedBytes: number;
  readonly fdlessRegions: number;
  /** DMA by VFIO_USER_DMA_READ/WRITE to message-backed regions (completed, bytes, failed). */
  readonly messageReads: number;
  readonly messageWrites: number;
  readonly messageBytes: number;
  readonly messageFailures: number;
  readonly droppedReadOnlyWrites: number;
  readonly maps: number;
  readonly unmaps: number;
  readonly sharedMaps: number;
  readonly refusedMaps: number;
  readonly crossClientOverlaps: number;
  readonly quarantinedBytes: number;
}

const PAGE_SIZE = 4096;
const PLACEHOLDER: RamRegion = { gpa: 0, sizeBytes: 1, bytes: new Uint8Array(1), name: "placeholder" };
const NO_BYTES = new Uint8Array(0);
/** Largest staging buffer `fill` uses per message. */
const FILL_CHUNK = 64 * 1024;

export class SharedGuestMemory extends GuestMemory {
  private backings: Backing[] = [];
  private lastHit: Backing | null = null;
  /** Bumped whenever the region set changes. */
  generation = 0;
  maps = 0;
  unmaps = 0;
  sharedMaps = 0;
  refusedMaps = 0;
  quarantinedBytes = 0;
  /** Maps that overlapped another client's live region (transient re-layouts). */
  crossClientOverlaps = 0;
  private fdless = 0;
  messageReads = 0;
  messageWrites = 0;
  messageBytes = 0;
  messageFailures = 0;
  droppedReadOnlyWrites = 0;
  private readonly scratch8 = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch8.buffer);

  constructor() {
    // The base class needs one region; every method below ignores it.
    super([PLACEHOLDER]);
  }

  /** Per-client registration table; each connection owns one. */
  createClientTable(maxRegions: number, transport: DmaTransport | null = null): ClientDmaTable {
    return new ClientDmaTable(this, maxRegions, transport);
  }

  /** Finds a backing that exactly matches (same file, offset, range). */
  private findExact(
    gpa: number,
    sizeBytes: number,
    dev: bigint,
    ino: bigint,
    fileOffset: number,
  ): Backing | undefined {
    return this.backings.find(
      (b) =>
        b.mapping !== null &&
        b.gpa === gpa &&
        b.sizeBytes === sizeBytes &&
        b.dev === dev &&
        b.ino === ino &&
        b.fileOffset === fileOffset,
    );
  }

  private overlapping(gpa: number, sizeBytes: number): Backing | undefined {
    return this.backings.find((b) => gpa < b.end && b.gpa < gpa + sizeBytes);
  }

  /** Takes a reference on (or creates) the backing for a mapped region. Consumes `req.fd`. */
  acquire(req: DmaMapRequest): { ok: true; backing: Backing } | { ok: false; errno: number; why: string } {
    const id = fileIdentity(req.fd);
    if (id === null) {
      closeFd(req.fd);
      return { ok: false, errno: ERRNO.EBADF, why: "descriptor cannot be stat'ed" };
    }
    const existing = this.findExact(req.iova, req.sizeBytes, id.dev, id.ino, req.fileOffset);
    if (existing !== undefined) {
      closeFd(req.fd);
      existing.refs++;
      this.sharedMaps++;
      this.maps++;
      return { ok: true, backing: existing };
    }
    if (this.overlapping(req.iova, req.sizeBytes) !== undefined) this.crossClientOverlaps++;
    // A read-only region is mapped private and writable: a device write to it lands in a private
    // copy-on-write page (dropped, as a DMA write to ROM is) instead of faulting the process.
    // mmap needs a page-aligned file offset: map from the page below and skip the head.
    const head = req.fileOffset % PAGE_SIZE;
    const mapped = mapFile(
      req.fd,
      req.fileOffset - head,
      head + req.sizeBytes,
      PROT_READ | PROT_WRITE,
      req.writable ? MAP_SHARED : MAP_PRIVATE,
    );
    closeFd(req.fd); // the mapping keeps the file alive
    if (mapped === null) {
      this.refusedMaps++;
      return { ok: false, errno: ERRNO.EINVAL, why: "mmap of the region failed" };
    }
    const mapping = mapped;
    const bytes = mapped.bytes.subarray(head, head + req.sizeBytes);
    const b: Backing = {
      gpa: req.iova,
      sizeBytes: req.sizeBytes,
      dev: id.dev,
      ino: id.ino,
      fileOffset: req.fileOffset,
      writable: req.writable,
      mapping,
      transport: null,
      bytes,
      view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      end: req.iova + req.sizeBytes,
      refs: 1,
    };
    // Newest last; lookups search from the end (see the file comment).
    this.backings.push(b);
    this.lastHit = null;
    this.generation++;
    this.maps++;
    return { ok: true, backing: b };
  }

  /** Adds a message-backed region (registered without a descriptor); newest wins, as above. */
  acquireMessageBacked(req: DmaMapRequest, transport: DmaTransport): Backing {
    if (this.overlapping(req.iova, req.sizeBytes) !== undefined) this.crossClientOverlaps++;
    const b: Backing = {
      gpa: req.iova,
      sizeBytes: req.sizeBytes,
      dev: -1n,
      ino: -1n,
      fileOffset: 0,
      writable: req.writable,
      mapping: null,
      transport,
      bytes: NO_BYTES,
      view: new DataView(NO_BYTES.buffer),
      end: req.iova + req.sizeBytes,
      refs: 1,
    };
    this.backings.push(b);
    this.lastHit = null;
    this.generation++;
    this.maps++;
    this.fdless++;
    return b;
  }

  /** A descriptor-less region recorded without a transport (not RAM). */
  noteFdless(delta: number): void {
    this.fdless += delta;
  }

  release(b: Backing): void {
    this.unmaps++;
    b.refs--;
    if (b.refs > 0) return;
    this.backings = this.backings.filter((x) => x !== b);
    if (this.lastHit === b) this.lastHit = null;
    this.generation++;
    if (b.mapping === null) this.fdless--;
    else if (quarantineMapping(b.mapping)) this.quarantinedBytes += b.sizeBytes;
  }

  // --- GuestMemory interface over the changeable region list ----------------------------------

  private findBacking(gpa: number, sizeBytes: number): Backing | undefined {
    const l = this.lastHit;
    if (l !== null && gpa >= l.gpa && gpa + sizeBytes <= l.end) return l;
    const list = this.backings;
    for (let i = list.length - 1; i >= 0; i--) {
      const b = list[i];
      if (gpa >= b.gpa && gpa + sizeBytes <= b.end) {
        this.lastHit = b;
        return b;
      }
    }
    return undefined;
  }

  private backingOrThrow(gpa: number, sizeBytes: number): Backing {
    const b = this.findBacking(gpa, sizeBytes);
    if (b === undefined || !(sizeBytes >= 0))
      throw new GuestMemoryError(gpa, sizeBytes, "not inside a client DMA region");
    return b;
  }

  /** The shared (descriptor-backed) regions; message-backed ones have no bytes to expose. */
  override get regions(): readonly RamRegion[] {
    return this.backings
      .filter((b) => b.mapping !== null)
      .map((b) => ({
        gpa: b.gpa,
        sizeBytes: b.sizeBytes,
        bytes: b.bytes,
        name: b.writable ? "client-ram" : "client-rom",
      }));
  }

  override get totalBytes(): number {
    let t = 0;
    for (const b of this.backings) if (b.mapping !== null) t += b.sizeBytes;
    return t;
  }

  override isRam(gpa: number, sizeBytes: number): boolean {
    return sizeBytes >= 0 && this.findBacking(gpa, sizeBytes) !== undefined;
  }

  override contiguousBytesAt(gpa: number): number {
    const b = this.findBacking(gpa, 1);
    return b === undefined ? 0 : b.end - gpa;
  }

  override view(gpa: number, sizeBytes: number): Uint8Array {
    const b = this.backingOrThrow(gpa, sizeBytes);
    if (b.transport !== null)
      throw new GuestMemoryError(gpa, sizeBytes, "message-backed region (no shared memory to view)");
    const off = gpa - b.gpa;
    return b.bytes.subarray(off, off + sizeBytes);
  }

  /** One message-backed read; throws GuestMemoryError when the client does not deliver. */
  private messageRead(b: Backing, gpa: number, dest: Uint8Array): void {
    const why = (b.transport as DmaTransport).read(gpa, dest);
    if (why !== null) {
      this.messageFailures++;
      throw new GuestMemoryError(gpa, dest.length, `DMA_READ failed: ${why}`);
    }
    this.messageReads++;
    this.messageBytes += dest.length;
  }

  /** One message-backed write (dropped for a region the client did not make writable). */
  private messageWrite(b: Backing, gpa: number, src: Uint8Array): void {
    if (!b.writable) {
      this.droppedReadOnlyWrites++;
      return;
    }
    const why = (b.transport as DmaTransport).write(gpa, src);
    if (why !== null) {
      this.messageFailures++;
      throw new GuestMemoryError(gpa, src.length, `DMA_WRITE failed: ${why}`);
    }
    this.messageWrites++;
    this.messageBytes += src.length;
  }

  override read(gpa: number, dest: Uint8Array): void {
    const b = this.backingOrThrow(gpa, dest.length);
    if (b.transport !== null) {
      if (dest.length > 0) this.messageRead(b, gpa, dest);
      return;
    }
    const off = gpa - b.gpa;
    dest.set(b.bytes.subarray(off, off + dest.length));
  }

  override write(gpa: number, src: Uint8Array): void {
    const b = this.backingOrThrow(gpa, src.length);
    if (b.transport !== null) {
      if (src.length > 0) this.messageWrite(b, gpa, src);
      return;
    }
    const off = gpa - b.gpa;
    b.bytes.set(src, off);
  }

  override fill(gpa: number, sizeBytes: number, value: number): void {
    const b = this.backingOrThrow(gpa, sizeBytes);
    if (b.transport !== null) {
      const chunk = new Uint8Array(Math.min(sizeBytes, FILL_CHUNK)).fill(value);
      for (let done = 0; done < sizeBytes; done += chunk.length) {
        this.messageWrite(b, gpa + done, chunk.subarray(0, Math.min(chunk.length, sizeBytes - done)));
      }
      return;
    }
    const off = gpa - b.gpa;
    b.bytes.fill(value, off, off + sizeBytes);
  }

  /** Scalar read of a message-backed range into the scratch (little-endian view). */
  private scalarRead(b: Backing, gpa: number, sizeBytes: number): DataView {
    this.messageRead(b, gpa, this.scratch8.subarray(0, sizeBytes));
    return this.scratchView;
  }

  override readU8(gpa: number): number {
    const b = this.backingOrThrow(gpa, 1);
    if (b.transport !== null) return this.scalarRead(b, gpa, 1).getUint8(0);
    return b.view.getUint8(gpa - b.gpa);
  }
  override readU16(gpa: number): number {
    const b = this.backingOrThrow(gpa, 2);
    if (b.transport !== null) return this.scalarRead(b, gpa, 2).getUint16(0, true);
    return b.view.getUint16(gpa - b.gpa, true);
  }
  override readU32(gpa: number): number {
    const b = this.backingOrThrow(gpa, 4);
    if (b.transport !== null) return this.scalarRead(b, gpa, 4).getUint32(0, true);
    return b.view.getUint32(gpa - b.gpa, true);
  }
  override readU64(gpa: number): bigint {
    const b = this.backingOrThrow(gpa, 8);
    if (b.transport !== null) return this.scalarRead(b, gpa, 8).getBigUint64(0, true);
    return b.view.getBigUint64(gpa - b.gpa, true);
  }
  override writeU8(gpa: number, value: number): void {
    const b = this.backingOrThrow(gpa, 1);
    if (b.transport !== null) {
      this.scratchView.setUint8(0, value);
      this.messageWrite(b, gpa, this.scratch8.subarray(0, 1));
      return;
    }
    b.view.setUint8(gpa - b.gpa, value);
  }
  override writeU16(gpa: number, value: number): void {
    const b = this.backingOrThrow(gpa, 2);
    if (b.transport !== null) {
      this.scratchView.setUint16(0, value, true);
      this.messageWrite(b, gpa, this.scratch8.subarray(0, 2));
      return;
    }
    b.view.setUint16(gpa - b.gpa, value, true);
  }
  override writeU32(gpa: number, value: number): void {
    const b = this.backingOrThrow(gpa, 4);
    if (b.transport !== null) {
      this.scratchView.setUint32(0, value, true);
      this.messageWrite(b, gpa, this.scratch8.subarray(0, 4));
      return;
    }
    b.view.setUint32(gpa - b.gpa, value, true);
  }
  override writeU64(gpa: number, value: bigint): void {
    const b = this.backingOrThrow(gpa, 8);
    if (b.transport !== null) {
      this.scratchView.setBigUint64(0, value, true);
      this.messageWrite(b, gpa, this.scratch8);
      return;
    }
    b.view.setBigUint64(gpa - b.gpa, value, true);
  }

  override describe(): string {
    if (this.backings.length === 0) return "no client DMA regions";
    return this.backings
      .map(
        (b) =>
          `${b.transport !== null ? "msg-" : ""}${b.writable ? "ram" : "rom"} [0x${b.gpa.toString(16)}, 0x${b.end.toString(16)}) refs=${b.refs}`,
      )
      .join(", ");
  }

  private messageBacked(): number {
    let n = 0;
    for (const b of this.backings) if (b.mapping === null) n++;
    return n;
  }

  stats(): SharedMemoryStats {
    return {
      regions: this.backings.length - this.messageBacked(),
      mappedBytes: this.totalBytes,
      fdlessRegions: this.fdless,
      messageReads: this.messageReads,
      messageWrites: this.messageWrites,
      messageBytes: this.messageBytes,
      messageFailures: this.messageFailures,
      droppedReadOnlyWrites: this.droppedReadOnlyWrites,
      maps: this.maps,
      unmaps: this.unmaps,
      sharedMaps: this.sharedMaps,
      refusedMaps: this.refusedMaps,
      crossClientOverlaps: this.crossClientOverlaps,
      quarantinedBytes: this.quarantinedBytes,
    };
  }
}

/** The DMA regions one client registered, for exact-match unmap and cleanup on disconnect. */
export class ClientDmaTable {
  private readonly memory: SharedGuestMemory;
  private readonly maxRegions: number;
  private readonly regions: ClientRegion[] = [];

  private readonly transport: DmaTransport | null;

  /** `transport`: how this client's descriptor-less regions are reached (null: never RAM). */
  constructor(memory: SharedGuestMemory, maxRegions: number, transport: DmaTransport | null) {
    this.memory = memory;
    this.maxRegions = maxRegions;
    this.transport = transport;
  }

  get count(): number {
    return this.regions.length;
  }

  /** VFIO_USER_DMA_MAP. Consumes `req.fd` in every case. */
  map(req: DmaMapRequest): MapResult {
    const fail = (errno: number, why: string): MapResult => {
      if (req.fd >= 0) closeFd(req.fd);
      return { ok: false, errno, why };
    };
    if (req.sizeBytes <= 0 || req.iova < 0 || req.iova + req.sizeBytes > Number.MAX_SAFE_INTEGER) {
      return fail(ERRNO.EINVAL, "address or size out of range");
    }
    if (!req.readable && !req.writable) return fail(ERRNO.EINVAL, "region neither readable nor writable");
    if (req.fd >= 0 && (req.fileOffset < 0 || req.fileOffset + req.sizeBytes > Number.MAX_SAFE_INTEGER)) {
      return fail(ERRNO.EINVAL, "file offset out of range");
    }
    for (const r of this.regions) {
      if (req.iova < r.iova + r.sizeBytes && r.iova < req.iova + req.sizeBytes) {
        return fail(ERRNO.EEXIST, `overlaps this client's region at 0x${r.iova.toString(16)}`);
      }
    }
    if (this.regions.length >= this.maxRegions) return fail(ERRNO.ENOSPC, "max_dma_maps reached");
    if (req.fd < 0) {
      const backing = this.transport === null ? null : this.memory.acquireMessageBacked(req, this.transport);
      if (backing === null) this.memory.noteFdless(1);
      this.regions.push({ iova: req.iova, sizeBytes: req.sizeBytes, backing });
      return { ok: true };
    }
    const r = this.memory.acquire(req);
    if (!r.ok) return r;
    this.regions.push({ iova: req.iova, sizeBytes: req.sizeBytes, backing: r.backing });
    return { ok: true };
  }

  /** VFIO_USER_DMA_UNMAP: address and size must match a previous map exactly. */
  unmap(iova: number, sizeBytes: number): MapResult {
    const i = this.regions.findIndex((r) => r.iova === iova && r.sizeBytes === sizeBytes);
    if (i < 0) return { ok: false, errno: ERRNO.ENOENT, why: "no region with that address and size" };
    this.drop(i);
    return { ok: true };
  }

  private drop(i: number): void {
    const [r] = this.regions.splice(i, 1);
    if (r.backing !== null) this.memory.release(r.backing);
    else this.memory.noteFdless(-1);
  }

  /** Client disconnect: every region is released. */
  clear(): void {
    while (this.regions.length > 0) this.drop(this.regions.length - 1);
  }
}
