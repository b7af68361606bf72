/**
 * One vfio-user connection's byte stream: message framing, descriptor passing, send queue.
 *
 * Receive (frame-reader.ts): one non-blocking recvmsg takes whatever the socket holds, and the
 * messages in it are dispatched one by one; a read that came back short means the socket was
 * empty, so the next read waits for libuv readiness (see libc.ts `watchFd`): a doorbell costs
 * one system call. A message larger than `maxMessageBytes` is discarded as it arrives and
 * reported as oversized (the server replies E2BIG); a header whose size is below 16 or whose
 * type is not command/reply means the stream cannot be trusted and the connection is closed.
 *
 * Round trips (`roundTrip`): the server's own requests (DMA_READ/WRITE) block until the reply
 * with their message ID arrives or a timeout passes (poll(2) on the socket); commands received
 * meanwhile are copied aside and dispatched afterwards, in order, before anything newer.
 * While it waits, the round trip also polls every other open channel of the process and serves
 * those that are idle (no handler of theirs on the stack, no round trip of their own, not
 * backlogged): one slow client never stalls the other clients' devices. Their handlers then run
 * nested inside the waiting device's call; a channel never runs nested inside itself, and a
 * device reached from another device's call (virtio-iommu fault events) guards itself. A
 * round trip started inside a handler receives into a second buffer (the handler's payload view
 * stays intact) and stages through its own buffer (the handler may be composing a reply in `tx`).
 *
 * Send: replies are staged in native memory and sent with sendmsg; whatever the socket does not
 * take at once is queued and flushed when it becomes writable, in order. Back-pressure: while
 * more than `MAX_QUEUED_OUT_BYTES` or `MAX_QUEUED_OUT_MESSAGES` replies wait for a client that
 * does not read them, no further requests are read, so a client cannot grow the server's memory
 * without bound (counting bytes alone let 32-byte replies pin ~90 MiB in per-reply objects).
 * The queue is dropped when the connection closes.
 *
 * Fairness: one readiness callback handles messages for at most `READ_SLICE_MS` (and 4096
 * messages), then yields to the event loop, so one chatty client never stalls the others.
 */
import { FRAME_BROKEN, FRAME_READY, FrameReader } from "./frame-reader.ts";
import {
  closeFd,
  ERRNO,
  type FdWatch,
  MAX_FDS_PER_MESSAGE,
  MsgScratch,
  NativeBuffer,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  POLLOUT,
  POLLRDHUP,
  pollFd,
  pollFds,
  watchFd,
} from "./libc.ts";
import {
  encodeHeader,
  FLAG_ERROR,
  FLAG_TYPE_MASK,
  HEADER_SIZE,
  type MessageHeader,
  TYPE_COMMAND,
  TYPE_REPLY,
} from "./protocol.ts";

/** Queued reply bytes above which the channel stops reading requests (back-pressure). */
export const MAX_QUEUED_OUT_BYTES = 8 << 20;
/** Queued replies above which the channel stops reading requests (back-pressure). */
export const MAX_QUEUED_OUT_MESSAGES = 1024;
/** Longest stretch of message handling for one channel before yielding to the event loop. */
export const READ_SLICE_MS = 4;

/** Every open channel of the process: a round trip serves the others while it waits. */
const openChannels = new Set<MessageChannel>();
/** Client requests buffered during one server round trip above which reading pauses. */
export const MAX_DEFERRED_BYTES = 8 << 20;

/** The outcome of a server-to-client request (`MessageChannel.roundTrip`). */
export type RoundTripResult = { ok: true; payload: Uint8Array; view: DataView } | { ok: false; why: string };

export interface ReceivedMessage {
  readonly header: MessageHeader;
  /** The body (after the header); a view into the receive buffer, valid during the callback only. */
  readonly payload: Uint8Array;
  readonly payloadView: DataView;
  /** Descriptors that arrived with the message; the handler owns them (must close or keep). */
  readonly fds: number[];
  /** True when the body exceeded the receive limit and was discarded (payload is empty). */
  readonly oversized: boolean;
}

export interface ChannelHandlers {
  onMessage(message: ReceivedMessage): void;
  onClose(reason: string): void;
}

export interface ChannelStats {
  readonly messagesIn: number;
  readonly messagesOut: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly fdsIn: number;
  readonly queuedSends: number;
  readonly queuedOutBytes: number;
  readonly peakQueuedOutBytes: number;
  readonly queuedOutMessages: number;
  readonly peakQueuedOutMessages: number;
  readonly yieldedSlices: number;
  /** Server-to-client requests (DMA_READ/WRITE) and those that got no reply in time. */
  readonly roundTrips: number;
  readonly roundTripTimeouts: number;
  /** Other channels served while this one's round trips waited. */
  readonly nestedServes: number;
}

export class MessageChannel {
  readonly fd: number;
  readonly maxMessageBytes: number;
  private readonly handlers: ChannelHandlers;
  private readonly scratch = new MsgScratch();
  /** Framing of the receive stream (its buffers; the one a handler reads is pinned there). */
  private readonly reader: FrameReader;
  /** Staging for server-to-client requests and for flushing queued sends (never `tx`). */
  readonly requestBuffer: NativeBuffer;
  readonly requestView: DataView;
  /** Messages that arrived during a round trip, dispatched afterwards in order. */
  private readonly deferred: ReceivedMessage[] = [];
  private deferredBytes = 0;
  private drainScheduled = false;
  /** The message ID a round trip waits for (-1: none) and its reply once it came. */
  private waitId = -1;
  private waitReply: RoundTripResult | null = null;
  private nextRequestId = 0;
  roundTrips = 0;
  roundTripTimeouts = 0;
  /** Staging area for outgoing messages, in native memory. */
  readonly tx: NativeBuffer;
  readonly txView: DataView;
  private readonly watch: FdWatch;
  private readonly pendingOut: Uint8Array[] = [];
  private pendingOutFds: number[][] = [];
  private pendingOutBytes = 0;
  peakQueuedOutBytes = 0;
  peakQueuedOutMessages = 0;
  /** Times message handling stopped at the end of its slice to let other clients run. */
  yieldedSlices = 0;
  private closed = false;
  /** Handlers of this channel on the stack (a nested dispatch never enters a busy channel). */
  private dispatchDepth = 0;
  /** Times this channel's round trip served other channels while waiting. */
  nestedServes = 0;

  messagesIn = 0;
  messagesOut = 0;
  bytesOut = 0;
  queuedSends = 0;

  constructor(fd: number, maxMessageBytes: number, handlers: ChannelHandlers) {
    this.fd = fd;
    this.maxMessageBytes = maxMessageBytes;
    this.handlers = handlers;
    this.reader = new FrameReader(fd, this.scratch, maxMessageBytes);
    this.requestBuffer = new NativeBuffer(maxMessageBytes);
    this.requestView = new DataView(
      this.requestBuffer.bytes.buffer,
      this.requestBuffer.bytes.byteOffset,
      maxMessageBytes,
    );
    this.tx = new NativeBuffer(maxMessageBytes);
    this.txView = new DataView(this.tx.bytes.buffer, this.tx.bytes.byteOffset, maxMessageBytes);
    this.watch = watchFd(fd, (readable, writable, hangup) => this.onReady(readable, writable, hangup));
    this.watch.start(true, false);
    openChannels.add(this);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Whether the peer closed (or shut down its sending side). Reads are batched, so the server
   * may still be working through requests read before the hang-up; this asks the socket now.
   */
  peerHungUp(): boolean {
    if (this.closed) return true;
    const r = pollFd(this.fd, POLLRDHUP, 0);
    return r < 0 || (r & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) !== 0;
  }

  private onReady(readable: boolean, writable: boolean, hangup: boolean): void {
    if (this.closed) return;
    if (writable) this.flush();
    if (hangup && this.backlogged) {
      this.close("peer hung up with replies unread");
      return;
    }
    if (readable || hangup) {
      this.reader.drained = false; // libuv saw bytes (or a hang-up) since the last short read
      this.readAvailable();
    }
  }

  private get backlogged(): boolean {
    return this.pendingOutBytes > MAX_QUEUED_OUT_BYTES || this.pendingOut.length > MAX_QUEUED_OUT_MESSAGES;
  }

  /** Reads and dispatches the complete messages available now (none while backlogged), for one slice. */
  private readAvailable(): void {
    // Bounded in count and time so one chatty client cannot starve the others.
    const start = performance.now();
    let round = 0;
    for (; round < 4096 && !this.closed && !this.backlogged; round++) {
      if ((round & 15) === 15 && performance.now() - start >= READ_SLICE_MS) {
        this.yieldedSlices++;
        this.scheduleDrain();
        return;
      }
      if (this.deferred.length > 0) {
        // Requests that arrived during a round trip come first, in arrival order.
        const m = this.deferred.shift()!;
        this.deferredBytes -= HEADER_SIZE + m.payload.length;
        this.deliver(m);
        continue;
      }
      if (this.nextMessage()) continue;
      // Nothing complete is buffered. A short read already emptied the socket: libuv says when
      // more comes (no read just to learn that it is empty).
      if (this.reader.drained || !this.fill()) return;
    }
    // More may be waiting in the socket, the buffer or the deferred list: continue on a later
    // turn (while backlogged, the writable callback resumes reading instead).
    if (!this.closed && !this.backlogged) this.scheduleDrain();
  }

  private scheduleDrain(): void {
    if (this.drainScheduled || this.closed) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      if (this.waitId < 0) this.readAvailable();
    });
  }

  /**
   * Sends the request staged in `requestBuffer[16, sizeBytes)` (header written here) and blocks
   * until the client's reply with the same message ID arrives or `timeoutMs` passes. Client
   * requests arriving meanwhile are buffered (copied) and dispatched afterwards in order; a
   * late reply to a timed-out request reaches the handler as an unexpected reply. Never throws.
   */
  roundTrip(command: number, sizeBytes: number, timeoutMs: number): RoundTripResult {
    if (this.closed) return { ok: false, why: "connection closed" };
    if (this.waitId >= 0) return { ok: false, why: "round trip already in progress" };
    this.roundTrips++;
    const id = this.nextRequestId;
    this.nextRequestId = (id + 1) & 0xffff;
    encodeHeader(this.requestView, 0, id, command, sizeBytes, TYPE_COMMAND, 0);
    this.messagesOut++;
    if (this.pendingOut.length > 0) {
      this.enqueue(this.requestBuffer.bytes.slice(0, sizeBytes), []);
    } else {
      const n = this.scratch.send(this.fd, this.requestBuffer, 0, sizeBytes, []);
      if (n < 0 && n !== -ERRNO.EAGAIN && n !== -ERRNO.EINTR) {
        this.close(`sendmsg failed (errno ${-n})`);
        return { ok: false, why: "connection closed" };
      }
      const sent = Math.max(n, 0);
      this.bytesOut += sent;
      if (sent < sizeBytes) this.enqueue(this.requestBuffer.bytes.slice(sent, sizeBytes), []);
    }
    // A handler may be reading its request's payload: the reader continues in its other buffer.
    this.waitId = id;
    this.waitReply = null;
    const deadline = performance.now() + timeoutMs;
    let result: RoundTripResult | null = null;
    while (result === null) {
      if (this.closed) {
        result = { ok: false, why: "connection closed" };
        break;
      }
      if (this.pendingOut.length > 0) this.flushOut();
      // Buffered messages are cut out first (bounded by the buffer); the socket is read while
      // the messages set aside stay under their bound.
      while (!this.closed && this.waitReply === null) {
        if (this.nextMessage()) continue;
        if (this.deferredBytes > MAX_DEFERRED_BYTES || !this.fill()) break;
      }
      if (this.waitReply !== null) {
        result = this.waitReply;
        break;
      }
      if (this.closed) continue;
      const left = deadline - performance.now();
      if (left <= 0) {
        this.roundTripTimeouts++;
        result = { ok: false, why: `no reply within ${timeoutMs} ms` };
        break;
      }
      const events =
        (this.deferredBytes <= MAX_DEFERRED_BYTES ? POLLIN : 0) | (this.pendingOut.length > 0 ? POLLOUT : 0);
      const r = this.pollServingOthers(events, left);
      if (r < 0 && r !== -ERRNO.EINTR && r !== -ERRNO.EAGAIN) {
        result = { ok: false, why: `poll failed (errno ${-r})` };
        break;
      }
      if (r > 0 && (r & (POLLHUP | POLLERR | POLLNVAL)) !== 0 && (events & POLLIN) === 0) {
        // Not reading (buffer full): a hang-up would otherwise wake poll until the deadline.
        result = { ok: false, why: "peer hung up" };
        break;
      }
    }
    this.waitId = -1;
    this.waitReply = null;
    // Requests set aside, or read along with the reply and not yet cut out, run on a later turn.
    if (this.deferred.length > 0 || this.reader.bufferedBytes > 0) this.scheduleDrain();
    return result;
  }

  /** One read from the socket; false when it had nothing now or the connection closed. */
  private fill(): boolean {
    const n = this.reader.fill();
    if (n < 0) {
      this.close(this.reader.error);
      return false;
    }
    return n > 0;
  }

  /** Cuts the next complete message out of the buffer and dispatches it; false when none. */
  private nextMessage(): boolean {
    const r = this.reader.next();
    if (r === FRAME_READY) {
      this.dispatch();
      return true;
    }
    if (r === FRAME_BROKEN) this.close(this.reader.error);
    return false;
  }

  private dispatch(): void {
    const f = this.reader;
    const header: MessageHeader = {
      id: f.id,
      command: f.command,
      sizeBytes: f.sizeBytes,
      flags: f.flags,
      error: f.errorReply,
    };
    const fds = f.frameFds;
    const oversized = f.oversized;
    this.messagesIn++;
    const len = f.payloadBytes;
    const bytes = f.frameBuffer.bytes;
    if (this.waitId >= 0) {
      // During a round trip: the awaited reply is taken, everything else waits its turn (copied).
      const payload = bytes.slice(f.payloadAt, f.payloadAt + len);
      const payloadView = new DataView(payload.buffer, payload.byteOffset, len);
      if ((header.flags & FLAG_TYPE_MASK) === TYPE_REPLY && header.id === this.waitId) {
        for (const fd of fds) closeFd(fd);
        if (oversized) this.waitReply = { ok: false, why: "reply larger than the receive limit" };
        else if ((header.flags & FLAG_ERROR) !== 0)
          this.waitReply = { ok: false, why: `client replied with error ${header.error}` };
        else this.waitReply = { ok: true, payload, view: payloadView };
        return;
      }
      this.deferred.push({ header, payload, payloadView, fds, oversized });
      this.deferredBytes += HEADER_SIZE + len;
      return;
    }
    const payload = bytes.subarray(f.payloadAt, f.payloadAt + len);
    const payloadView = new DataView(payload.buffer, payload.byteOffset, len);
    const pinnedBefore = f.pinned;
    f.pinned = f.frameBuffer;
    try {
      this.deliver({ header, payload, payloadView, fds, oversized });
    } finally {
      f.pinned = pinnedBefore;
    }
  }

  private deliver(m: ReceivedMessage): void {
    this.dispatchDepth++;
    try {
      this.handlers.onMessage(m);
    } finally {
      this.dispatchDepth--;
    }
  }

  /** Idle: a round trip of another channel may serve this one now. */
  private get servableNested(): boolean {
    return !this.closed && this.dispatchDepth === 0 && this.waitId < 0 && !this.backlogged;
  }

  /**
   * poll(2) on this channel's socket (`events`) and on every idle other channel; serves the
   * others that are ready (their handlers run here, nested). Returns this socket's revents, 0
   * on timeout, or -errno.
   */
  private pollServingOthers(events: number, timeoutMs: number): number {
    const fds = [this.fd];
    const wanted = [events];
    const others: MessageChannel[] = [];
    for (const c of openChannels) {
      if (c === this || !c.servableNested) continue;
      others.push(c);
      fds.push(c.fd);
      wanted.push(POLLIN | (c.pendingOut.length > 0 ? POLLOUT : 0));
    }
    const revents = new Array<number>(fds.length).fill(0);
    const r = pollFds(fds, wanted, revents, timeoutMs);
    if (r <= 0) return r;
    for (let i = 0; i < others.length; i++) {
      const rv = revents[i + 1];
      const c = others[i];
      // An earlier one may have changed it (closed, or started a round trip of its own).
      if (rv === 0 || !c.servableNested) continue;
      this.nestedServes++;
      c.onReady((rv & POLLIN) !== 0, (rv & POLLOUT) !== 0, (rv & (POLLHUP | POLLERR | POLLNVAL)) !== 0);
    }
    return revents[0];
  }

  /**
   * Sends `tx[0, sizeBytes)` (already staged by the caller) with optional descriptors. Never
   * throws; on a broken socket the connection is closed.
   */
  sendStaged(sizeBytes: number, fds: readonly number[] = []): void {
    if (this.closed) return;
    if (fds.length > MAX_FDS_PER_MESSAGE) {
      this.close("internal: too many descriptors in one message");
      return;
    }
    this.messagesOut++;
    if (this.pendingOut.length > 0) {
      this.enqueue(this.tx.bytes.slice(0, sizeBytes), [...fds]);
      return;
    }
    const n = this.scratch.send(this.fd, this.tx, 0, sizeBytes, fds);
    if (n === sizeBytes) {
      this.bytesOut += n;
      return;
    }
    if (n < 0 && n !== -ERRNO.EAGAIN && n !== -ERRNO.EINTR) {
      this.close(`sendmsg failed (errno ${-n})`);
      return;
    }
    const sent = Math.max(n, 0);
    this.bytesOut += sent;
    // Descriptors go with the first byte; once any byte went out they were delivered.
    this.enqueue(this.tx.bytes.slice(sent, sizeBytes), sent > 0 ? [] : [...fds]);
  }

  private enqueue(bytes: Uint8Array, fds: number[]): void {
    this.pendingOut.push(bytes);
    this.pendingOutFds.push(fds);
    this.pendingOutBytes += bytes.length;
    this.peakQueuedOutBytes = Math.max(this.peakQueuedOutBytes, this.pendingOutBytes);
    this.peakQueuedOutMessages = Math.max(this.peakQueuedOutMessages, this.pendingOut.length);
    this.queuedSends++;
    // While backlogged only writability is watched: requests stay in the socket (back-pressure).
    this.watch.start(!this.backlogged, true);
  }

  private flush(): void {
    this.flushOut();
    if (this.closed) return;
    if (this.pendingOut.length > 0) return;
    this.watch.start(true, false);
    // Requests that waited in the socket during the backlog are read now.
    this.readAvailable();
  }

  /**
   * Sends queued bytes until the socket is full; true when the queue emptied. Staged through
   * `requestBuffer`, never `tx` (a handler may be composing its reply there).
   */
  private flushOut(): boolean {
    while (this.pendingOut.length > 0 && !this.closed) {
      const chunk = this.pendingOut[0];
      const fds = this.pendingOutFds[0];
      const len = Math.min(chunk.length, this.maxMessageBytes);
      this.requestBuffer.bytes.set(chunk.subarray(0, len), 0);
      const n = this.scratch.send(this.fd, this.requestBuffer, 0, len, fds);
      if (n === -ERRNO.EAGAIN || n === -ERRNO.EINTR) return false;
      if (n < 0) {
        this.close(`sendmsg failed (errno ${-n})`);
        return false;
      }
      this.bytesOut += n;
      this.pendingOutBytes -= n;
      this.pendingOutFds[0] = [];
      if (n === chunk.length) {
        this.pendingOut.shift();
        this.pendingOutFds.shift();
      } else {
        this.pendingOut[0] = chunk.subarray(n);
      }
    }
    return this.pendingOut.length === 0 && !this.closed;
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    openChannels.delete(this);
    this.watch.close();
    this.reader.dropFds();
    for (const m of this.deferred) for (const fd of m.fds) closeFd(fd);
    this.deferred.length = 0;
    this.deferredBytes = 0;
    closeFd(this.fd);
    this.pendingOut.length = 0;
    this.pendingOutFds = [];
    this.pendingOutBytes = 0;
    // Native buffers are released after the handler ran (it may still read a payload view).
    queueMicrotask(() => {
      this.scratch.free();
      this.reader.free();
      this.requestBuffer.free();
      this.tx.free();
    });
    this.handlers.onClose(reason);
  }

  stats(): ChannelStats {
    return {
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
      bytesIn: this.reader.bytesIn,
      bytesOut: this.bytesOut,
      fdsIn: this.reader.fdsIn,
      queuedSends: this.queuedSends,
      queuedOutBytes: this.pendingOutBytes,
      peakQueuedOutBytes: this.peakQueuedOutBytes,
      queuedOutMessages: this.pendingOut.length,
      peakQueuedOutMessages: this.peakQueuedOutMessages,
      yieldedSlices: this.yieldedSlices,
      roundTrips: this.roundTrips,
      roundTripTimeouts: this.roundTripTimeouts,
      nestedServes: this.nestedServes,
    };
  }
}
