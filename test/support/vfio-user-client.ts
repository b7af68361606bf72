/**
 * A blocking vfio-user client for tests that drive a server in ANOTHER process, written from
 * QEMU docs/interop/vfio-user.rst (it shares no code with the server's codec; only the raw libc
 * socket calls). Every wait is bounded by a deadline; nothing here waits forever.
 *
 * It can behave well (answer the server's DMA_READ/DMA_WRITE from a local buffer) or badly:
 * never answer, never read replies, send malformed bytes, hold descriptors. Hostile scenarios
 * built on it live in hostile-client.ts.
 */
import {
  closeFd,
  connectUnix,
  ERRNO,
  MsgScratch,
  NativeBuffer,
  POLLIN,
  POLLOUT,
  pollFd,
} from "../../src/vfio-user/libc.ts";

export const HDR = 16;
export const CMD = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
} as const;
export const FLAG_REPLY = 0x1;
export const FLAG_NO_REPLY = 0x10;
export const FLAG_ERROR = 0x20;
export const DMA_READ_FLAG = 1;
export const DMA_WRITE_FLAG = 2;
export const CONFIG_REGION = 7;

export interface Message {
  id: number;
  command: number;
  flags: number;
  error: number;
  payload: Uint8Array;
  view: DataView;
}

/** What the client does with a server request (DMA_READ/DMA_WRITE) it receives while waiting. */
export type ServerRequestHandler = (request: Message, client: VfioUserClient) => void;

export class ClientTimeout extends Error {}

export class VfioUserClient {
  readonly fd: number;
  private readonly scratch = new MsgScratch();
  private readonly rx: NativeBuffer;
  private readonly tx: NativeBuffer;
  private have = 0;
  private nextId = 1;
  private readonly replies = new Map<number, Message>();
  closed = false;
  /** Server requests seen; answered by `onServerRequest` when set. */
  serverRequests = 0;
  onServerRequest: ServerRequestHandler | null = null;

  constructor(socketPath: string, bufferBytes = 2 << 20) {
    this.fd = connectUnix(socketPath);
    this.rx = new NativeBuffer(bufferBytes);
    this.tx = new NativeBuffer(bufferBytes);
  }

  /** Sends bytes with descriptors, waiting (bounded) while the socket is full. */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = [], timeoutMs = 5000): void {
    if (bytes.length > this.tx.sizeBytes) throw new Error("message larger than the client buffer");
    this.tx.bytes.set(bytes, 0);
    const deadline = performance.now() + timeoutMs;
    let off = 0;
    while (off < bytes.length) {
      const n = this.scratch.send(this.fd, this.tx, off, bytes.length - off, off === 0 ? fds : []);
      if (n === -ERRNO.EAGAIN) {
        const left = deadline - performance.now();
        if (left <= 0) throw new ClientTimeout("send: socket full until the deadline");
        // Answer the server meanwhile: it may be waiting for a DMA reply before reading more.
        this.pump(Math.min(left, 20));
        pollFd(this.fd, POLLOUT, Math.min(left, 20));
        continue;
      }
      if (n <= 0) throw new Error(`send failed (${n})`);
      off += n;
    }
  }

  /** Tries to send without waiting; returns bytes sent (0 when the socket is full). */
  trySend(bytes: Uint8Array, fds: readonly number[] = []): number {
    this.tx.bytes.set(bytes, 0);
    const n = this.scratch.send(this.fd, this.tx, 0, bytes.length, fds);
    return Math.max(n, 0);
  }

  message(
    command: number,
    payload: Uint8Array,
    flags = 0,
    id = this.nextId++ & 0xffff,
  ): Message & { bytes: Uint8Array } {
    const bytes = new Uint8Array(HDR + payload.length);
    const v = new DataView(bytes.buffer);
    v.setUint16(0, id, true);
    v.setUint16(2, command, true);
    v.setUint32(4, bytes.length, true);
    v.setUint32(8, flags, true);
    bytes.set(payload, HDR);
    return { id, command, flags, error: 0, payload, view: new DataView(payload.buffer), bytes };
  }

  /**
   * Reads whatever the socket has within `waitMs` and dispatches it: replies are stored by ID,
   * server requests go to `onServerRequest`. Returns false once the server closed the socket.
   */
  pump(waitMs: number): boolean {
    if (this.closed) return false;
    const r = pollFd(this.fd, POLLIN, Math.max(0, waitMs));
    if (r <= 0) return true;
    for (;;) {
      const fds: number[] = [];
      if (this.have === this.rx.sizeBytes) throw new Error("client receive buffer full");
      const got = this.scratch.recv(this.fd, this.rx, this.have, this.rx.sizeBytes - this.have, fds);
      for (const fd of fds) closeFd(fd);
      if (got.n === 0 || (got.n < 0 && got.n !== -ERRNO.EAGAIN && got.n !== -ERRNO.EINTR)) {
        this.closed = true;
        break;
      }
      if (got.n < 0) break;
      this.have += got.n;
    }
    this.parse();
    return !this.closed;
  }

  private parse(): void {
    const v = new DataView(this.rx.bytes.buffer, this.rx.bytes.byteOffset, this.rx.sizeBytes);
    let at = 0;
    while (this.have - at >= HDR) {
      const size = v.getUint32(at + 4, true);
      if (size < HDR) throw new Error(`server sent a header with size ${size}`);
      if (this.have - at < size) break;
      const payload = this.rx.bytes.slice(at + HDR, at + size);
      const m: Message = {
        id: v.getUint16(at, true),
        command: v.getUint16(at + 2, true),
        flags: v.getUint32(at + 8, true),
        error: v.getUint32(at + 12, true),
        payload,
        view: new DataView(payload.buffer),
      };
      at += size;
      if ((m.flags & 0xf) === 0) {
        this.serverRequests++;
        this.onServerRequest?.(m, this);
      } else this.replies.set(m.id, m);
    }
    this.rx.bytes.copyWithin(0, at, this.have);
    this.have -= at;
  }

  /** Waits for the reply to message `id` (bounded); throws ClientTimeout, or Error on close. */
  waitReply(id: number, timeoutMs = 5000): Message {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const r = this.replies.get(id);
      if (r !== undefined) {
        this.replies.delete(id);
        return r;
      }
      if (this.closed) throw new Error("server closed the connection");
      const left = deadline - performance.now();
      if (left <= 0) throw new ClientTimeout(`no reply to message ${id} within ${timeoutMs} ms`);
      this.pump(left);
    }
  }

  request(
    command: number,
    payload: Uint8Array = new Uint8Array(0),
    fds: readonly number[] = [],
    timeoutMs = 5000,
  ): Message {
    const m = this.message(command, payload);
    this.sendRaw(m.bytes, fds, timeoutMs);
    return this.waitReply(m.id, timeoutMs);
  }

  /** Replies to a server request (same ID and command). */
  reply(request: Message, body: Uint8Array, error = 0): void {
    const m = this.message(
      request.command,
      body,
      error === 0 ? FLAG_REPLY : FLAG_REPLY | FLAG_ERROR,
      request.id,
    );
    if (error !== 0) new DataView(m.bytes.buffer).setUint32(12, error, true);
    this.sendRaw(m.bytes);
  }

  negotiate(caps: object = { max_msg_fds: 16, max_data_xfer_size: 1 << 20 }): Message {
    const json = Buffer.from(`${JSON.stringify({ capabilities: caps })}\0`);
    const p = new Uint8Array(4 + json.length);
    new DataView(p.buffer).setUint16(2, 1, true);
    p.set(json, 4);
    return expectOk(this.request(CMD.VERSION, p), "VERSION");
  }

  dmaMap(
    iova: number,
    sizeBytes: number,
    fileOffset: number,
    flags: number,
    fds: readonly number[] = [],
  ): Message {
    return this.request(
      CMD.DMA_MAP,
      le([
        [32, 4],
        [flags, 4],
        [fileOffset, 8],
        [iova, 8],
        [sizeBytes, 8],
      ]),
      fds,
    );
  }

  dmaUnmap(iova: number, sizeBytes: number, flags = 0): Message {
    return this.request(
      CMD.DMA_UNMAP,
      le([
        [24, 4],
        [flags, 4],
        [iova, 8],
        [sizeBytes, 8],
      ]),
    );
  }

  regionRead(region: number, offset: number, count: number, timeoutMs = 5000): Message {
    return this.request(
      CMD.REGION_READ,
      le([
        [offset, 8],
        [region, 4],
        [count, 4],
      ]),
      [],
      timeoutMs,
    );
  }

  regionWrite(
    region: number,
    offset: number,
    count: 1 | 2 | 4 | 8,
    value: number | bigint,
    timeoutMs = 5000,
  ): Message {
    const p = new Uint8Array(16 + count);
    const v = new DataView(p.buffer);
    v.setBigUint64(0, BigInt(offset), true);
    v.setUint32(8, region, true);
    v.setUint32(12, count, true);
    if (count === 8) v.setBigUint64(16, BigInt(value), true);
    else if (count === 4) v.setUint32(16, Number(value) >>> 0, true);
    else if (count === 2) v.setUint16(16, Number(value), true);
    else v.setUint8(16, Number(value));
    return this.request(CMD.REGION_WRITE, p, [], timeoutMs);
  }

  /** SET_IRQS ACTION_TRIGGER | DATA_EVENTFD for `fds` at index/start. */
  setIrqEventfds(index: number, start: number, fds: readonly number[]): Message {
    return this.request(
      CMD.DEVICE_SET_IRQS,
      le([
        [20, 4],
        [0x20 | 0x4, 4],
        [index, 4],
        [start, 4],
        [fds.length, 4],
      ]),
      fds,
    );
  }

  close(): void {
    if (this.fd >= 0 && !this.closedByUs) {
      this.closedByUs = true;
      closeFd(this.fd);
    }
    this.closed = true;
    this.scratch.free();
    this.rx.free();
    this.tx.free();
  }
  private closedByUs = false;
}

/** Answers DMA_READ/DMA_WRITE from `memory`, which stands for guest RAM at `base`. */
export function answerFromBuffer(base: number, memory: Uint8Array): ServerRequestHandler {
  return (req, c) => {
    const address = Number(req.view.getBigUint64(0, true));
    const count = Number(req.view.getBigUint64(8, true));
    const off = address - base;
    if (off < 0 || off + count > memory.length) {
      c.reply(req, new Uint8Array(0), ERRNO.EINVAL);
      return;
    }
    if (req.command === CMD.DMA_READ) {
      const body = new Uint8Array(16 + count);
      body.set(req.payload.subarray(0, 16), 0);
      body.set(memory.subarray(off, off + count), 16);
      c.reply(req, body);
    } else if (req.command === CMD.DMA_WRITE) {
      memory.set(req.payload.subarray(16, 16 + count), off);
      c.reply(req, req.payload.slice(0, 16));
    } else c.reply(req, new Uint8Array(0), ERRNO.ENOSYS);
  };
}

export function expectOk(m: Message, what: string): Message {
  if ((m.flags & FLAG_ERROR) !== 0) throw new Error(`${what}: error reply, errno ${m.error}`);
  return m;
}

/** Little-endian payload from [value, size] fields. */
export function le(fields: [number | bigint, 1 | 2 | 4 | 8][]): Uint8Array {
  const size = fields.reduce((a, [, s]) => a + s, 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const [value, s] of fields) {
    if (s === 1) v.setUint8(at, Number(value));
    else if (s === 2) v.setUint16(at, Number(value), true);
    else if (s === 4) v.setUint32(at, Number(value) >>> 0, true);
    else v.setBigUint64(at, BigInt(value), true);
    at += s;
  }
  return out;
}

/** edu (QEMU docs/specs/edu.rst) BAR0 DMA: src, dst, count, then the command; waits for the reply. */
export function eduDma(
  c: VfioUserClient,
  src: number,
  dst: number,
  count: number,
  toRam: boolean,
  timeoutMs = 5000,
): Message {
  expectOk(c.regionWrite(0, 0x80, 8, src, timeoutMs), "edu src");
  expectOk(c.regionWrite(0, 0x88, 8, dst, timeoutMs), "edu dst");
  expectOk(c.regionWrite(0, 0x90, 8, count, timeoutMs), "edu count");
  return c.regionWrite(0, 0x98, 8, 1 | (toRam ? 2 : 0), timeoutMs);
}

/** edu's internal DMA buffer address (edu.rst). */
export const EDU_BUFFER = 0x40000;
