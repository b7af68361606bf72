/**
 * Framing of one vfio-user byte stream (vfio-user.rst "Header"): messages are cut out of a
 * receive buffer that is filled with as many bytes as the socket holds, one recvmsg for
 * however many messages arrived (a doorbell costs one system call, not a header read, a body
 * read and a read that finds the socket empty).
 *
 * Descriptors (SCM_RIGHTS) belong to the message that contains the last byte of the read they
 * came with. Linux's af_unix stream receive ends a read right after the segment that carried
 * descriptors (unix_stream_read_generic), and a sender attaches them to the first segment of the
 * message they go with (QEMU sends each message with one sendmsg), so that message is the one
 * the read ended in. A sender that attaches descriptors elsewhere only gets them attributed to a
 * neighbouring message: the server then refuses or closes them, never leaks them.
 *
 * A message larger than `maxMessageBytes` is discarded as it arrives (its header is kept and
 * reported as oversized once the last byte went by); a header whose size is below 16 or whose
 * type is neither command nor reply means the stream cannot be trusted (`next` returns BROKEN).
 *
 * While a handler reads a payload out of the current buffer (`pinned`), the reader must not
 * move bytes there: a read then continues in the second buffer, carrying over the bytes not yet
 * parsed (`fill` does it).
 */
import { closeFd, ERRNO, type MsgScratch, NativeBuffer } from "./libc.ts";
import { FLAG_TYPE_MASK, HEADER_SIZE, TYPE_COMMAND, TYPE_REPLY } from "./protocol.ts";

/** `next` results. */
export const FRAME_NONE = 0;
export const FRAME_READY = 1;
export const FRAME_BROKEN = -1;

/** Below this much free space at the end of the buffer, parsed bytes are dropped from its start. */
const COMPACT_BELOW_BYTES = 64 << 10;

interface PendingFds {
  /** Stream offset just past the read the descriptors came with. */
  readonly end: number;
  readonly fds: number[];
}

export class FrameReader {
  private readonly fd: number;
  private readonly scratch: MsgScratch;
  readonly maxMessageBytes: number;
  /** The buffer being parsed and the spare one (swapped when a handler pins the current). */
  buffer: NativeBuffer;
  private view: DataView;
  private spare: NativeBuffer;
  private spareView: DataView;
  /** A buffer a handler is reading a payload from; never written while pinned. */
  pinned: NativeBuffer | null = null;
  /** Parse position and fill level in `buffer`; stream offset of `buffer[0]`. */
  private pos = 0;
  private have = 0;
  private base = 0;
  /** An oversized message being discarded: bytes still to skip, its stream end, skip finished. */
  private skipLeft = 0;
  private skipEnd = 0;
  private oversizedDone = false;
  private readonly pendingFds: PendingFds[] = [];
  /** True when the last read returned less than it asked for (the socket was drained then). */
  drained = false;
  /** Why the stream broke (FRAME_BROKEN, or fill() < 0). */
  error = "";
  /** Total bytes and descriptors received. */
  bytesIn = 0;
  fdsIn = 0;

  // The frame `next` returned (valid until the next call).
  id = 0;
  command = 0;
  sizeBytes = 0;
  flags = 0;
  errorReply = 0;
  /** Offset of the payload in `frameBuffer` and its length (0 when oversized). */
  payloadAt = 0;
  payloadBytes = 0;
  oversized = false;
  frameBuffer: NativeBuffer;
  frameView: DataView;
  frameFds: number[] = [];

  constructor(fd: number, scratch: MsgScratch, maxMessageBytes: number) {
    this.fd = fd;
    this.scratch = scratch;
    this.maxMessageBytes = maxMessageBytes;
    this.buffer = new NativeBuffer(maxMessageBytes);
    this.view = viewOf(this.buffer);
    this.spare = new NativeBuffer(maxMessageBytes);
    this.spareView = viewOf(this.spare);
    this.frameBuffer = this.buffer;
    this.frameView = this.view;
  }

  /** Bytes received and not yet handed out as messages. */
  get bufferedBytes(): number {
    return this.have - this.pos;
  }

  /**
   * Cuts the next complete message out of the buffer: FRAME_READY (fields above describe it),
   * FRAME_NONE (more bytes needed), FRAME_BROKEN (a malformed header: `error` says why).
   */
  next(): number {
    if (this.oversizedDone) {
      // The discarded message's last byte went by: report it (header kept, no payload).
      this.oversizedDone = false;
      this.setFrame(0, 0, true, this.skipEnd);
      return FRAME_READY;
    }
    if (this.skipLeft > 0) return FRAME_NONE;
    const avail = this.have - this.pos;
    if (avail < HEADER_SIZE) return FRAME_NONE;
    const v = this.view;
    const at = this.pos;
    const sizeBytes = v.getUint32(at + 4, true);
    const flags = v.getUint32(at + 8, true);
    const type = flags & FLAG_TYPE_MASK;
    if (sizeBytes < HEADER_SIZE || (type !== TYPE_COMMAND && type !== TYPE_REPLY)) {
      this.error = `malformed header (size ${sizeBytes}, type ${type})`;
      return FRAME_BROKEN;
    }
    this.id = v.getUint16(at, true);
    this.command = v.getUint16(at + 2, true);
    this.sizeBytes = sizeBytes;
    this.flags = flags;
    this.errorReply = v.getUint32(at + 12, true);
    if (sizeBytes > this.maxMessageBytes) {
      // Discard it as it arrives; reported once its last byte went by (`skipDone`).
      this.skipEnd = this.base + at + sizeBytes;
      this.skipLeft = sizeBytes - avail;
      this.pos = this.have;
      return FRAME_NONE;
    }
    if (avail < sizeBytes) return FRAME_NONE;
    this.pos = at + sizeBytes;
    this.setFrame(at + HEADER_SIZE, sizeBytes - HEADER_SIZE, false, this.base + this.pos);
    return FRAME_READY;
  }

  private setFrame(payloadAt: number, payloadBytes: number, oversized: boolean, end: number): void {
    this.payloadAt = payloadAt;
    this.payloadBytes = payloadBytes;
    this.oversized = oversized;
    this.frameBuffer = this.buffer;
    this.frameView = this.view;
    this.frameFds = this.takeFds(end);
  }

  /** Descriptors of reads that ended at or before stream offset `end`. */
  private takeFds(end: number): number[] {
    const p = this.pendingFds;
    if (p.length === 0 || p[0].end > end) return [];
    let fds = p.shift()!.fds;
    while (p.length > 0 && p[0].end <= end) fds = fds.concat(p.shift()!.fds);
    return fds;
  }

  /**
   * One non-blocking recvmsg into the buffer (or, while an oversized message is being skipped,
   * over the bytes being discarded). Returns the bytes read, 0 when the socket has none now, or
   * -1 when the stream ended or broke (`error` says why). A skipped message that ends here is
   * reported by the `next` call that follows as a ready, oversized frame.
   */
  fill(): number {
    if (this.buffer === this.pinned) this.switchBuffers();
    if (this.pos === this.have) {
      this.base += this.pos;
      this.pos = this.have = 0;
    } else if (this.buffer.sizeBytes - this.have < COMPACT_BELOW_BYTES && this.pos > 0) {
      this.buffer.bytes.copyWithin(0, this.pos, this.have);
      this.base += this.pos;
      this.have -= this.pos;
      this.pos = 0;
    }
    const skipping = this.skipLeft > 0;
    const room = skipping
      ? Math.min(this.skipLeft, this.buffer.sizeBytes - this.have)
      : this.buffer.sizeBytes - this.have;
    const fds: number[] = [];
    const n = this.scratch.recvInto(this.fd, this.buffer, this.have, room, fds);
    if (this.scratch.truncated) {
      for (const fd of fds) closeFd(fd);
      this.error = "a message carried more descriptors than max_msg_fds";
      return -1;
    }
    if (n <= 0) {
      for (const fd of fds) closeFd(fd);
      if (n === -ERRNO.EAGAIN || n === -ERRNO.EINTR) {
        this.drained = true;
        return 0;
      }
      this.error = n === 0 ? "peer closed the connection" : `recvmsg failed (errno ${-n})`;
      return -1;
    }
    this.bytesIn += n;
    this.drained = n < room;
    const end = this.base + this.have + n;
    if (fds.length > 0) {
      this.fdsIn += fds.length;
      this.pendingFds.push({ end, fds });
    }
    if (skipping) {
      // Discarded in place: the skipped bytes never become part of the buffer.
      this.skipLeft -= n;
      this.base += n;
      this.oversizedDone = this.skipLeft === 0;
      return n;
    }
    this.have += n;
    return n;
  }

  /** Continues in the spare buffer, carrying over the bytes not yet parsed. */
  private switchBuffers(): void {
    const rest = this.have - this.pos;
    this.spare.bytes.set(this.buffer.bytes.subarray(this.pos, this.have), 0);
    this.base += this.pos;
    this.pos = 0;
    this.have = rest;
    const b = this.buffer;
    const v = this.view;
    this.buffer = this.spare;
    this.view = this.spareView;
    this.spare = b;
    this.spareView = v;
  }

  /** Closes descriptors no message took; frees the buffers (after any handler finished). */
  free(): void {
    for (const p of this.pendingFds) for (const fd of p.fds) closeFd(fd);
    this.pendingFds.length = 0;
    this.buffer.free();
    this.spare.free();
  }

  /** Closes descriptors no message took (the connection is closing). */
  dropFds(): void {
    for (const p of this.pendingFds) for (const fd of p.fds) closeFd(fd);
    this.pendingFds.length = 0;
  }
}

function viewOf(b: NativeBuffer): DataView {
  return new DataView(b.bytes.buffer, b.bytes.byteOffset, b.sizeBytes);
}
