/**
 * A vfio-user server for one PCI function on one UNIX socket (QEMU docs/interop/vfio-user.rst).
 *
 * One client at a time (the protocol dedicates a socket to a client/server pair; a second
 * connection while one is live is closed at once). Commands are processed in arrival order,
 * synchronously, and each gets its reply before the next is read ("Command Concurrency").
 * Every request is validated before it touches the device: a bad request gets an error reply
 * (header only, Error flag and errno), a stream that cannot be framed is closed; nothing a client
 * sends can throw out of here. On disconnect the client's DMA regions are released and its
 * eventfds closed; device state is kept ("Client Disconnection").
 *
 * Regions: BAR0-5 as the function declares them (read/write by message, no mmap: the device
 * registers are emulated, there is no memory to share), ROM and VGA absent (size 0), config
 * space 256 bytes (conventional PCI: the client then does not look for PCIe capabilities).
 *
 * DMA to a region the client registered without a descriptor is done with VFIO_USER_DMA_READ /
 * VFIO_USER_DMA_WRITE requests to that client (vfio-user.rst "VFIO_USER_DMA_MAP"). Device code
 * is synchronous, so each is a blocking round trip on the socket (`MessageChannel.roundTrip`):
 * client requests arriving meanwhile are buffered and processed afterwards in order; data is
 * split at the smaller of the two max_data_xfer_size values; a reply that does not come within
 * `dmaTimeoutMs` (or an error reply) fails the DMA (the device sees a DMA fault) and the
 * connection is kept (a late reply is counted as unexpected and dropped).
 */
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { Tracer } from "../engine/trace.ts";
import type { PciFunction } from "../pci/function.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import { MessageChannel, type ReceivedMessage } from "./channel.ts";
import { IrqRouter } from "./irqs.ts";
import {
  acceptUnix,
  closeFd,
  ERRNO,
  errno,
  type FdWatch,
  listenUnix,
  MAX_FDS_PER_MESSAGE,
  watchFd,
} from "./libc.ts";
import {
  CMD,
  commandName,
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DEVICE_INFO_SIZE,
  DMA_FLAG_READ,
  DMA_FLAG_WRITE,
  DMA_MAP_SIZE,
  DMA_RW_SIZE,
  DMA_UNMAP_SIZE,
  encodeHeader,
  encodeVersion,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  FLAG_TYPE_MASK,
  HEADER_SIZE,
  IRQ_INFO_SIZE,
  IRQ_SET_SIZE,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  parseVersion,
  REGION_INFO_SIZE,
  REGION_RW_SIZE,
  readU64,
  TYPE_REPLY,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  writeU64,
} from "./protocol.ts";
import type { ClientDmaTable, DmaTransport, SharedGuestMemory } from "./shared-memory.ts";

/** Default bound on one DMA_READ/DMA_WRITE round trip. */
export const DEFAULT_DMA_TIMEOUT_MS = 2000;

/** Config space exposed to the client: the conventional 256-byte header and capabilities. */
export const CONFIG_REGION_SIZE = 256;
const WRITE_MULTI_ENTRY_SIZE = 24;
/** <linux/vfio.h> vfio_iommu_type1_dma_unmap flag: unmap everything. */
export const VFIO_DMA_UNMAP_FLAG_ALL = 2;

export interface DeviceServerOptions {
  readonly name: string;
  readonly fn: PciFunction;
  readonly socketPath: string;
  readonly memory: SharedGuestMemory;
  /** The function's DMA address space (IDENTITY or an IOMMU endpoint) over `memory`. */
  readonly dma: DmaAddressSpace;
  /** PCI requester ID (BDF) the function is known by (IOMMU endpoint ID). */
  readonly requesterId: number;
  readonly tracer?: Tracer;
  readonly log?: (line: string) => void;
  readonly maxDataXferSize?: number;
  readonly maxDmaMaps?: number;
  /** Bound on one DMA_READ/DMA_WRITE round trip (default DEFAULT_DMA_TIMEOUT_MS). */
  readonly dmaTimeoutMs?: number;
}

export interface DeviceServerStats {
  readonly name: string;
  readonly connected: boolean;
  readonly connections: number;
  readonly rejectedConnections: number;
  readonly commands: Readonly<Record<string, number>>;
  readonly errors: Readonly<Record<string, number>>;
  readonly regionReads: number;
  readonly regionWrites: number;
  readonly regionBytes: number;
  readonly dmaMaps: number;
  readonly dmaUnmaps: number;
  readonly dmaRegions: number;
  readonly unexpectedReplies: number;
  readonly internalErrors: number;
  /** DMA_READ/DMA_WRITE round trips sent, and those that failed (timeout, error, bad reply). */
  readonly dmaMessages: number;
  readonly dmaMessageFailures: number;
  readonly longestCleanupMs: number;
  /** The current connection's byte stream (absent while no client is attached). */
  readonly channel?: ReturnType<MessageChannel["stats"]>;
  readonly irqs: ReturnType<IrqRouter["stats"]>;
}

interface Session {
  readonly channel: MessageChannel;
  readonly dma: ClientDmaTable;
  negotiated: boolean;
  maxFdsToClient: number;
  /** The client's max_data_xfer_size (what one DMA_READ/WRITE may carry to or from it). */
  clientMaxDataXferSize: number;
}

class RequestError {
  readonly errno: number;
  readonly why: string;
  constructor(errno: number, why: string) {
    this.errno = errno;
    this.why = why;
  }
}

export class VfioUserDeviceServer {
  readonly name: string;
  readonly fn: PciFunction;
  readonly socketPath: string;
  readonly irqs: IrqRouter;
  private readonly memory: SharedGuestMemory;
  private readonly tracer: Tracer | undefined;
  private readonly log: (line: string) => void;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  readonly dmaTimeoutMs: number;
  private readonly maxMessageBytes: number;
  private listenFd = -1;
  private listenWatch: FdWatch | null = null;
  private session: Session | null = null;
  private warnedFdless = false;

  connections = 0;
  rejectedConnections = 0;
  regionReads = 0;
  regionWrites = 0;
  regionBytes = 0;
  dmaMaps = 0;
  dmaUnmaps = 0;
  unexpectedReplies = 0;
  /** Exceptions from device models, caught at the command boundary (a bug if non-zero). */
  internalErrors = 0;
  dmaMessages = 0;
  dmaMessageFailures = 0;
  /** Longest stretch of disconnect cleanup in one event-loop turn, in milliseconds. */
  private longestCleanupMs = 0;
  /** Tables of recent disconnects (still releasing in slices, see client-dma-table.ts). */
  private readonly closedTables: ClientDmaTable[] = [];
  private readonly commandCounts: Record<string, number> = {};
  private readonly errorCounts: Record<string, number> = {};

  constructor(options: DeviceServerOptions) {
    this.name = options.name;
    this.fn = options.fn;
    this.socketPath = options.socketPath;
    this.memory = options.memory;
    this.tracer = options.tracer;
    this.log = options.log ?? (() => {});
    this.maxDataXferSize = options.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE;
    this.maxDmaMaps = options.maxDmaMaps ?? DEFAULT_MAX_DMA_MAPS;
    this.dmaTimeoutMs = options.dmaTimeoutMs ?? DEFAULT_DMA_TIMEOUT_MS;
    // Largest legal message: a REGION_WRITE of max_data_xfer_size bytes.
    this.maxMessageBytes = HEADER_SIZE + REGION_RW_SIZE + this.maxDataXferSize;
    this.irqs = new IrqRouter(this.fn);
    this.fn.connect({ requesterId: options.requesterId, interrupts: this.irqs, dma: options.dma });
  }

  /** Binds and listens on the socket path. */
  listen(): void {
    this.listenFd = listenUnix(this.socketPath);
    this.listenWatch = watchFd(this.listenFd, (readable) => {
      if (readable) this.acceptPending();
    });
    this.listenWatch.start(true, false);
  }

  get connected(): boolean {
    return this.session !== null;
  }

  private acceptPending(): void {
    for (;;) {
      const fd = acceptUnix(this.listenFd);
      if (fd < 0) {
        const e = errno();
        if (e !== ERRNO.EAGAIN && e !== ERRNO.EINTR) this.log(`${this.name}: accept failed (errno ${e})`);
        return;
      }
      this.serveConnection(fd);
    }
  }

  /**
   * Serves a connected stream socket (an accepted connection, or one end of a socketpair for
   * tools and fuzzing); the server owns `fd` from now on. False (and `fd` closed) when a client
   * is already attached: one client per socket (vfio-user.rst "Socket"). A client that hung up
   * is no longer attached, even if requests it sent before are still being worked through.
   */
  serveConnection(fd: number): boolean {
    const attached = this.session;
    if (attached?.channel.peerHungUp()) attached.channel.close("peer hung up (a new client connected)");
    if (this.session !== null) {
      this.rejectedConnections++;
      closeFd(fd);
      this.log(`${this.name}: refused a second connection while a client is attached`);
      return false;
    }
    this.connections++;
    const channel = new MessageChannel(fd, this.maxMessageBytes, {
      onMessage: (m) => this.onMessage(session, m),
      onClose: (why) => this.onClose(session, why),
    });
    const transport: DmaTransport = {
      read: (gpa, dest) => this.dmaByMessage(session, gpa, dest, false),
      write: (gpa, src) => this.dmaByMessage(session, gpa, src, true),
    };
    const session: Session = {
      channel,
      dma: this.memory.createClientTable(this.maxDmaMaps, transport),
      negotiated: false,
      maxFdsToClient: 1,
      clientMaxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE,
    };
    this.session = session;
    this.log(`${this.name}: client connected`);
    return true;
  }

  /**
   * Device DMA to a descriptor-less region of this session's client: VFIO_USER_DMA_READ (data
   * into `data`) or VFIO_USER_DMA_WRITE (data from `data`), in pieces of at most the smaller
   * max_data_xfer_size. Null on success, else why it failed. Never throws.
   */
  private dmaByMessage(session: Session, gpa: number, data: Uint8Array, write: boolean): string | null {
    const ch = session.channel;
    if (this.session !== session || ch.isClosed) return "client disconnected";
    const piece = Math.max(1, Math.min(this.maxDataXferSize, session.clientMaxDataXferSize));
    const command = write ? CMD.DMA_WRITE : CMD.DMA_READ;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(piece, data.length - done);
      const at = gpa + done;
      const v = ch.requestView;
      writeU64(v, HEADER_SIZE, at);
      writeU64(v, HEADER_SIZE + 8, n);
      let size = HEADER_SIZE + DMA_RW_SIZE;
      if (write) {
        ch.requestBuffer.bytes.set(data.subarray(done, done + n), size);
        size += n;
      }
      this.dmaMessages++;
      const r = ch.roundTrip(command, size, this.dmaTimeoutMs);
      let why: string | null = null;
      if (!r.ok) why = r.why;
      else if (r.payload.length < DMA_RW_SIZE || readU64(r.view, 0) !== at || readU64(r.view, 8) !== n)
        why = "reply does not echo the request's address and count";
      else if (!write && r.payload.length < DMA_RW_SIZE + n) why = "DMA_READ reply shorter than count";
      if (why !== null) {
        this.dmaMessageFailures++;
        const what = `${commandName(command)} [0x${at.toString(16)}, +0x${n.toString(16)}): ${why}`;
        this.log(`${this.name}: ${what}`);
        if (this.tracer?.on("fault"))
          this.tracer.emit("fault", "vfio-user", "dma-message-failed", { device: this.name, what });
        return why;
      }
      if (r.ok && !write) data.set(r.payload.subarray(DMA_RW_SIZE, DMA_RW_SIZE + n), done);
      done += n;
    }
    return null;
  }

  private onClose(session: Session, why: string): void {
    if (this.session !== session) return;
    this.session = null;
    const start = performance.now();
    session.dma.close();
    this.irqs.closeAll();
    this.longestCleanupMs = Math.max(this.longestCleanupMs, performance.now() - start);
    this.closedTables.push(session.dma);
    if (this.closedTables.length > 8) this.closedTables.shift();
    this.log(`${this.name}: client disconnected (${why})`);
  }

  /** Closes the listener and any client connection. */
  close(): void {
    this.session?.channel.close("server shutting down");
    this.listenWatch?.close();
    this.listenWatch = null;
    if (this.listenFd >= 0) closeFd(this.listenFd);
    this.listenFd = -1;
  }

  // --- dispatch -------------------------------------------------------------------------------

  private onMessage(session: Session, m: ReceivedMessage): void {
    const h = m.header;
    if ((h.flags & FLAG_TYPE_MASK) === TYPE_REPLY) {
      // Replies to DMA_READ/WRITE are taken by the round trip waiting for them; one that gets
      // here answers a request that already timed out (or none at all).
      this.unexpectedReplies++;
      for (const fd of m.fds) closeFd(fd);
      return;
    }
    const name = commandName(h.command);
    this.commandCounts[name] = (this.commandCounts[name] ?? 0) + 1;
    const noReply = (h.flags & FLAG_NO_REPLY) !== 0;
    let replyLen = 0;
    let err: RequestError | null = null;
    try {
      if (m.oversized) {
        err = new RequestError(
          ERRNO.E2BIG,
          `message of ${h.sizeBytes} bytes exceeds ${this.maxMessageBytes}`,
        );
      } else if (!session.negotiated && h.command !== CMD.VERSION) {
        err = new RequestError(ERRNO.EINVAL, `${name} before VFIO_USER_VERSION`);
      } else {
        replyLen = this.handle(session, h.command, m);
      }
    } catch (e) {
      if (e instanceof RequestError) err = e;
      else {
        // A device model bug must not take the server down: answer EIO and log it.
        this.internalErrors++;
        err = new RequestError(ERRNO.EIO, `internal error: ${(e as Error).message}`);
        this.log(`${this.name}: ${name}: ${(e as Error).stack ?? e}`);
      }
    } finally {
      for (const fd of m.fds) if (fd >= 0) closeFd(fd);
    }
    if (session.channel.isClosed) return;
    if (err !== null) {
      this.errorCounts[name] = (this.errorCounts[name] ?? 0) + 1;
      if (this.tracer?.on("config")) {
        this.tracer.emit("config", "vfio-user", "error", {
          device: this.name,
          command: name,
          errno: err.errno,
          why: err.why,
        });
      }
      if (noReply) return;
      const tx = session.channel.txView;
      encodeHeader(tx, 0, h.id, h.command, HEADER_SIZE, TYPE_REPLY | FLAG_ERROR, err.errno);
      session.channel.sendStaged(HEADER_SIZE);
      return;
    }
    if (replyLen < 0) return; // the handler closed the connection
    if (noReply) return;
    encodeHeader(session.channel.txView, 0, h.id, h.command, HEADER_SIZE + replyLen, TYPE_REPLY, 0);
    session.channel.sendStaged(HEADER_SIZE + replyLen);
  }

  /**
   * Runs one command; the reply payload is written at tx[16...]. Returns the payload length
   * (-1 when the connection was closed), or throws RequestError for an error reply.
   * Descriptors the handler keeps are set to -1 in `m.fds`; the rest are closed by the caller.
   */
  private handle(session: Session, command: number, m: ReceivedMessage): number {
    switch (command) {
      case CMD.VERSION:
        return this.onVersion(session, m);
      case CMD.DMA_MAP:
        return this.onDmaMap(session, m);
      case CMD.DMA_UNMAP:
        return this.onDmaUnmap(session, m);
      case CMD.DEVICE_GET_INFO:
        return this.onGetInfo(session, m);
      case CMD.DEVICE_GET_REGION_INFO:
        return this.onGetRegionInfo(session, m);
      case CMD.DEVICE_GET_IRQ_INFO:
        return this.onGetIrqInfo(session, m);
      case CMD.DEVICE_SET_IRQS:
        return this.onSetIrqs(m);
      case CMD.REGION_READ:
        return this.onRegionRead(session, m);
      case CMD.REGION_WRITE:
        return this.onRegionWrite(session, m);
      case CMD.REGION_WRITE_MULTI:
        return this.onRegionWriteMulti(session, m);
      case CMD.DEVICE_RESET:
        this.fn.reset();
        return 0;
      default:
        // GET_REGION_IO_FDS, DEVICE_FEATURE (migration), MIG_DATA_*: not offered by this server.
        throw new RequestError(ERRNO.ENOSYS, `${commandName(command)} is not supported`);
    }
  }

  private onVersion(session: Session, m: ReceivedMessage): number {
    if (session.negotiated) throw new RequestError(ERRNO.EINVAL, "VFIO_USER_VERSION sent twice");
    const v = parseVersion(m.payload);
    if (!v.ok) throw new RequestError(ERRNO.EINVAL, v.why);
    if (v.major !== PROTOCOL_MAJOR) {
      // "closes the connection if it cannot support the advertised version"
      this.log(`${this.name}: client proposed protocol ${v.major}.${v.minor}; closing`);
      session.channel.close(`unsupported major version ${v.major}`);
      return -1;
    }
    session.negotiated = true;
    session.maxFdsToClient = v.caps.maxMsgFds;
    session.clientMaxDataXferSize = v.caps.maxDataXferSize;
    // The reply's capability list is a subset of the proposal's names; twin-socket and migration
    // are never offered (absent), write_multiple only when the client proposed it.
    const proposed = (v.raw as { capabilities?: Record<string, unknown> } | null)?.capabilities ?? {};
    const caps: Record<string, unknown> = {};
    if ("max_msg_fds" in proposed) caps.max_msg_fds = MAX_FDS_PER_MESSAGE;
    if ("max_data_xfer_size" in proposed) caps.max_data_xfer_size = this.maxDataXferSize;
    if ("max_dma_maps" in proposed) caps.max_dma_maps = this.maxDmaMaps;
    if ("pgsizes" in proposed) caps.pgsizes = 4096;
    if (proposed.write_multiple === true) caps.write_multiple = true;
    const body = encodeVersion(PROTOCOL_MAJOR, Math.min(v.minor, PROTOCOL_MINOR), caps);
    if (HEADER_SIZE + body.length > session.channel.maxMessageBytes)
      throw new RequestError(ERRNO.E2BIG, "reply too large");
    session.channel.tx.bytes.set(body, HEADER_SIZE);
    return body.length;
  }

  private onDmaMap(session: Session, m: ReceivedMessage): number {
    const p = m.payloadView;
    if (m.payload.length < DMA_MAP_SIZE)
      throw new RequestError(ERRNO.EINVAL, "DMA_MAP payload shorter than 32 bytes");
    const argsz = p.getUint32(0, true);
    const flags = p.getUint32(4, true);
    const fileOffset = readU64(p, 8);
    const iova = readU64(p, 16);
    const sizeBytes = readU64(p, 24);
    if (argsz < DMA_MAP_SIZE) throw new RequestError(ERRNO.EINVAL, "DMA_MAP argsz below 32");
    if ((flags & ~(DMA_FLAG_READ | DMA_FLAG_WRITE)) !== 0)
      throw new RequestError(ERRNO.EINVAL, "unknown DMA_MAP flags");
    if (fileOffset < 0 || iova < 0 || sizeBytes <= 0)
      throw new RequestError(ERRNO.EINVAL, "DMA_MAP field beyond 2^53 or size 0");
    if (m.fds.length > 1) throw new RequestError(ERRNO.EINVAL, "DMA_MAP with more than one descriptor");
    const fd = m.fds.length === 1 ? m.fds[0] : -1;
    if (fd >= 0) m.fds[0] = -1; // the table owns it now (closes it on every path)
    const r = session.dma.map({
      iova,
      sizeBytes,
      fileOffset,
      readable: (flags & DMA_FLAG_READ) !== 0,
      writable: (flags & DMA_FLAG_WRITE) !== 0,
      fd,
    });
    if (!r.ok) throw new RequestError(r.errno, r.why);
    this.dmaMaps++;
    if (fd < 0 && !this.warnedFdless) {
      this.warnedFdless = true;
      this.log(
        `${this.name}: client shared [0x${iova.toString(16)}, +0x${sizeBytes.toString(16)}) without a descriptor: device DMA there goes by DMA_READ/DMA_WRITE messages (slow; give QEMU a shared memory backend, share=on)`,
      );
    }
    if (this.tracer?.on("map")) {
      this.tracer.emit("map", "vfio-user", "dma-map", {
        device: this.name,
        iova,
        sizeBytes,
        flags,
        shared: fd >= 0,
      });
    }
    return 0;
  }

  private onDmaUnmap(session: Session, m: ReceivedMessage): number {
    const p = m.payloadView;
    if (m.payload.length < DMA_UNMAP_SIZE)
      throw new RequestError(ERRNO.EINVAL, "DMA_UNMAP payload shorter than 24 bytes");
    const flags = p.getUint32(4, true);
    const iova = readU64(p, 8);
    const sizeBytes = readU64(p, 16);
    // The spec leaves flags unused; QEMU's client sends VFIO_DMA_UNMAP_FLAG_ALL (2, as in
    // <linux/vfio.h>) with iova = size = 0 when its whole address space goes away. Other flags
    // (dirty bitmap, vaddr) are refused.
    if (flags === VFIO_DMA_UNMAP_FLAG_ALL) {
      if (iova !== 0 || sizeBytes !== 0)
        throw new RequestError(ERRNO.EINVAL, "unmap-all needs iova and size 0");
      this.dmaUnmaps += session.dma.count;
      session.dma.clear();
    } else {
      if (flags !== 0)
        throw new RequestError(ERRNO.EINVAL, `DMA_UNMAP flags 0x${flags.toString(16)} not supported`);
      if (iova < 0 || sizeBytes <= 0)
        throw new RequestError(ERRNO.EINVAL, "DMA_UNMAP address or size invalid");
      const r = session.dma.unmap(iova, sizeBytes);
      if (!r.ok) throw new RequestError(r.errno, r.why);
      this.dmaUnmaps++;
    }
    if (this.tracer?.on("unmap"))
      this.tracer.emit("unmap", "vfio-user", "dma-unmap", { device: this.name, iova, sizeBytes });
    // "The server responds with the original DMA entry in the request."
    session.channel.tx.bytes.set(m.payload.subarray(0, DMA_UNMAP_SIZE), HEADER_SIZE);
    return DMA_UNMAP_SIZE;
  }

  private onGetInfo(session: Session, m: ReceivedMessage): number {
    if (m.payload.length < 4) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_INFO payload too short");
    const argsz = m.payloadView.getUint32(0, true);
    if (argsz < DEVICE_INFO_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_INFO argsz below 16");
    const tx = session.channel.txView;
    tx.setUint32(HEADER_SIZE, DEVICE_INFO_SIZE, true);
    tx.setUint32(HEADER_SIZE + 4, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, true);
    tx.setUint32(HEADER_SIZE + 8, VFIO_PCI_NUM_REGIONS, true);
    tx.setUint32(HEADER_SIZE + 12, VFIO_PCI_NUM_IRQS, true);
    return DEVICE_INFO_SIZE;
  }

  /** Size and access flags of region `index`. */
  private region(index: number): { sizeBytes: number; flags: number } {
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return { sizeBytes: CONFIG_REGION_SIZE, flags: rw };
    if (index >= 0 && index < 6) {
      const bar = this.fn.bars[index];
      if (bar !== undefined && bar.index === index) return { sizeBytes: bar.sizeBytes, flags: rw };
    }
    return { sizeBytes: 0, flags: 0 };
  }

  private onGetRegionInfo(session: Session, m: ReceivedMessage): number {
    if (m.payload.length < 12)
      throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_REGION_INFO payload too short");
    const argsz = m.payloadView.getUint32(0, true);
    const index = m.payloadView.getUint32(8, true);
    if (argsz < REGION_INFO_SIZE)
      throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_REGION_INFO argsz below 32");
    if (index >= VFIO_PCI_NUM_REGIONS) throw new RequestError(ERRNO.EINVAL, `no region ${index}`);
    const r = this.region(index);
    const tx = session.channel.txView;
    tx.setUint32(HEADER_SIZE, REGION_INFO_SIZE, true);
    tx.setUint32(HEADER_SIZE + 4, r.flags, true);
    tx.setUint32(HEADER_SIZE + 8, index, true);
    tx.setUint32(HEADER_SIZE + 12, 0, true); // cap_offset: no capabilities
    writeU64(tx, HEADER_SIZE + 16, r.sizeBytes);
    writeU64(tx, HEADER_SIZE + 24, 0); // offset: only meaningful for mmap-able regions
    return REGION_INFO_SIZE;
  }

  private onGetIrqInfo(session: Session, m: ReceivedMessage): number {
    if (m.payload.length < 12) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_IRQ_INFO payload too short");
    const argsz = m.payloadView.getUint32(0, true);
    const index = m.payloadView.getUint32(8, true);
    if (argsz < IRQ_INFO_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_IRQ_INFO argsz below 16");
    const info = this.irqs.info(index);
    if (info === undefined) throw new RequestError(ERRNO.EINVAL, `no IRQ index ${index}`);
    const tx = session.channel.txView;
    tx.setUint32(HEADER_SIZE, IRQ_INFO_SIZE, true);
    tx.setUint32(HEADER_SIZE + 4, info.flags, true);
    tx.setUint32(HEADER_SIZE + 8, index, true);
    tx.setUint32(HEADER_SIZE + 12, info.count, true);
    return IRQ_INFO_SIZE;
  }

  private onSetIrqs(m: ReceivedMessage): number {
    const p = m.payloadView;
    if (m.payload.length < IRQ_SET_SIZE)
      throw new RequestError(ERRNO.EINVAL, "DEVICE_SET_IRQS payload shorter than 20 bytes");
    const argsz = p.getUint32(0, true);
    const flags = p.getUint32(4, true);
    const index = p.getUint32(8, true);
    const start = p.getUint32(12, true);
    const count = p.getUint32(16, true);
    if (argsz < IRQ_SET_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_SET_IRQS argsz below 20");
    let bools: Uint8Array | null = null;
    if ((flags & VFIO_IRQ_SET_DATA_BOOL) !== 0) {
      if (m.payload.length < IRQ_SET_SIZE + count)
        throw new RequestError(ERRNO.EINVAL, "DATA_BOOL array shorter than count");
      bools = m.payload.slice(IRQ_SET_SIZE, IRQ_SET_SIZE + count);
    }
    const fds = m.fds.slice();
    m.fds.fill(-1); // the router owns them now (closes them on error)
    const e = this.irqs.set({ flags, index, start, count, bools, fds });
    if (e !== 0) throw new RequestError(e, "SET_IRQS refused");
    if (this.tracer?.on("irq"))
      this.tracer.emit("irq", "vfio-user", "set-irqs", {
        device: this.name,
        index,
        start,
        count,
        flags,
        fds: fds.length,
      });
    return 0;
  }

  /** Validates a region access and returns the handler-side view of it. */
  private checkRegionAccess(index: number, offset: number, count: number): void {
    if (count > this.maxDataXferSize)
      throw new RequestError(ERRNO.E2BIG, `count ${count} above max_data_xfer_size`);
    const r = this.region(index);
    if (r.sizeBytes === 0) throw new RequestError(ERRNO.EINVAL, `region ${index} does not exist`);
    if (offset < 0 || count === 0 || offset + count > r.sizeBytes) {
      throw new RequestError(
        ERRNO.EINVAL,
        `access [${offset}, +${count}) outside region ${index} of ${r.sizeBytes} bytes`,
      );
    }
  }

  private onRegionRead(session: Session, m: ReceivedMessage): number {
    if (m.payload.length < REGION_RW_SIZE)
      throw new RequestError(ERRNO.EINVAL, "REGION_READ payload shorter than 16 bytes");
    const p = m.payloadView;
    const offset = readU64(p, 0);
    const index = p.getUint32(8, true);
    const count = p.getUint32(12, true);
    this.checkRegionAccess(index, offset, count);
    const tx = session.channel.txView;
    const dataAt = HEADER_SIZE + REGION_RW_SIZE;
    regionAccess(this.fn, index, offset, count, tx, dataAt, false);
    writeU64(tx, HEADER_SIZE, offset);
    tx.setUint32(HEADER_SIZE + 8, index, true);
    tx.setUint32(HEADER_SIZE + 12, count, true);
    this.regionReads++;
    this.regionBytes += count;
    return REGION_RW_SIZE + count;
  }

  private onRegionWrite(session: Session, m: ReceivedMessage): number {
    if (m.payload.length < REGION_RW_SIZE)
      throw new RequestError(ERRNO.EINVAL, "REGION_WRITE payload shorter than 16 bytes");
    const p = m.payloadView;
    const offset = readU64(p, 0);
    const index = p.getUint32(8, true);
    const count = p.getUint32(12, true);
    if (m.payload.length < REGION_RW_SIZE + count)
      throw new RequestError(ERRNO.EINVAL, "REGION_WRITE data shorter than count");
    this.checkRegionAccess(index, offset, count);
    regionAccess(this.fn, index, offset, count, p, REGION_RW_SIZE, true);
    this.regionWrites++;
    this.regionBytes += count;
    const tx = session.channel.txView;
    writeU64(tx, HEADER_SIZE, offset);
    tx.setUint32(HEADER_SIZE + 8, index, true);
    tx.setUint32(HEADER_SIZE + 12, count, true);
    return REGION_RW_SIZE;
  }

  private onRegionWriteMulti(session: Session, m: ReceivedMessage): number {
    const p = m.payloadView;
    if (m.payload.length < 8) throw new RequestError(ERRNO.EINVAL, "REGION_WRITE_MULTI payload too short");
    const n = readU64(p, 0);
    if (n < 0 || m.payload.length < 8 + n * WRITE_MULTI_ENTRY_SIZE) {
      throw new RequestError(ERRNO.EINVAL, "REGION_WRITE_MULTI count exceeds the message");
    }
    // Validate every write before performing any.
    for (let i = 0; i < n; i++) {
      const at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
      const count = p.getUint32(at + 12, true);
      if (count > 8) throw new RequestError(ERRNO.EINVAL, "REGION_WRITE_MULTI entry larger than 8 bytes");
      this.checkRegionAccess(p.getUint32(at + 8, true), readU64(p, at), count);
    }
    for (let i = 0; i < n; i++) {
      const at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
      const count = p.getUint32(at + 12, true);
      regionAccess(this.fn, p.getUint32(at + 8, true), readU64(p, at), count, p, at + 16, true);
      this.regionWrites++;
      this.regionBytes += count;
    }
    writeU64(session.channel.txView, HEADER_SIZE, n);
    return 8;
  }

  stats(): DeviceServerStats {
    return {
      name: this.name,
      connected: this.connected,
      connections: this.connections,
      rejectedConnections: this.rejectedConnections,
      commands: { ...this.commandCounts },
      errors: { ...this.errorCounts },
      regionReads: this.regionReads,
      regionWrites: this.regionWrites,
      regionBytes: this.regionBytes,
      dmaMaps: this.dmaMaps,
      dmaUnmaps: this.dmaUnmaps,
      dmaRegions: this.session?.dma.count ?? 0,
      unexpectedReplies: this.unexpectedReplies,
      internalErrors: this.internalErrors,
      dmaMessages: this.dmaMessages,
      dmaMessageFailures: this.dmaMessageFailures,
      longestCleanupMs: this.closedTables.reduce(
        (m, t) => Math.max(m, t.longestSliceMs),
        this.longestCleanupMs,
      ),
      channel: this.session?.channel.stats(),
      irqs: this.irqs.stats(),
    };
  }
}

/**
 * Performs a region access of `count` bytes at `offset`, split into naturally aligned pieces of
 * 8, 4, 2 or 1 bytes (config space: at most 4), moving data to/from `buf` at `bufAt`.
 */
function regionAccess(
  fn: PciFunction,
  index: number,
  offset: number,
  count: number,
  buf: DataView,
  bufAt: number,
  write: boolean,
): void {
  const config = index === VFIO_PCI_CONFIG_REGION_INDEX;
  const handler: IoHandler | undefined = config ? undefined : fn.bars[index]?.handler;
  let done = 0;
  while (done < count) {
    const at = offset + done;
    const left = count - done;
    // Largest naturally aligned piece that fits (config space: at most 4 bytes).
    let size: AccessSize = 1;
    if (!config && left >= 8 && at % 8 === 0) size = 8;
    else if (left >= 4 && at % 4 === 0) size = 4;
    else if (left >= 2 && at % 2 === 0) size = 2;
    const b = bufAt + done;
    if (write) {
      let value: number;
      if (size === 8) value = buf.getUint32(b + 4, true) * 2 ** 32 + buf.getUint32(b, true);
      else if (size === 4) value = buf.getUint32(b, true);
      else if (size === 2) value = buf.getUint16(b, true);
      else value = buf.getUint8(b);
      if (config) fn.writeConfig(at, size, value);
      else handler?.write(at, size, value);
    } else {
      const value = config
        ? fn.readConfig(at, size)
        : (handler?.read(at, size) ?? 2 ** (8 * Math.min(size, 4)) - 1);
      if (size === 8) {
        buf.setUint32(b, value >>> 0, true);
        buf.setUint32(b + 4, Math.floor(value / 2 ** 32) >>> 0, true);
      } else if (size === 4) buf.setUint32(b, value >>> 0, true);
      else if (size === 2) buf.setUint16(b, value & 0xffff, true);
      else buf.setUint8(b, value & 0xff);
    }
    done += size;
  }
}
