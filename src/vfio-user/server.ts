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
import { MessageChannel, type ReceivedMessage } from "./channel.ts";
import { type CommandContext, handleCommand, RequestError, type Session } from "./commands.ts";
import { IrqRouter } from "./irqs.ts";
import { acceptUnix, closeFd, ERRNO, errno, type FdWatch, listenUnix, watchFd } from "./libc.ts";
import {
  CMD,
  commandName,
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DMA_RW_SIZE,
  encodeHeader,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  FLAG_TYPE_MASK,
  HEADER_SIZE,
  REGION_RW_SIZE,
  readU64,
  TYPE_REPLY,
  writeU64,
} from "./protocol.ts";
import type { ClientDmaTable, DmaTransport, SharedGuestMemory } from "./shared-memory.ts";

/** Default bound on one DMA_READ/DMA_WRITE round trip. */
export const DEFAULT_DMA_TIMEOUT_MS = 2000;

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

export class VfioUserDeviceServer implements CommandContext {
  readonly name: string;
  readonly fn: PciFunction;
  readonly socketPath: string;
  readonly irqs: IrqRouter;
  private readonly memory: SharedGuestMemory;
  readonly tracer: Tracer | undefined;
  readonly log: (line: string) => void;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  readonly dmaTimeoutMs: number;
  private readonly maxMessageBytes: number;
  private listenFd = -1;
  private listenWatch: FdWatch | null = null;
  private session: Session | null = null;
  warnedFdless = false;

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
        replyLen = handleCommand(this, session, h.command, m);
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
