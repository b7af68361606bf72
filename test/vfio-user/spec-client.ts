/**
 * A minimal vfio-user client written from QEMU docs/interop/vfio-user.rst for tests: framing,
 * descriptor passing, request/reply matching by message ID. It shares no code with the
 * server's codec (only the raw libc socket calls).
 */
import { closeFd, connectUnix, MsgScratch, NativeBuffer, watchFd } from "../../src/vfio-user/libc.ts";

export interface Reply {
  id: number;
  command: number;
  flags: number;
  error: number;
  payload: Uint8Array;
  view: DataView;
}

const HDR = 16;

export class SpecClient {
  readonly fd: number;
  private readonly scratch = new MsgScratch();
  private readonly rx = new NativeBuffer(4 << 20);
  private readonly tx = new NativeBuffer(4 << 20);
  private have = 0;
  private nextId = 1;
  private readonly waiting = new Map<number, (r: Reply) => void>();
  private readonly watch;
  closed = false;
  /** Called for every request the server sends (DMA_READ/DMA_WRITE); unanswered if unset. */
  onRequest: ((request: Reply) => void) | null = null;
  private closeWaiters: (() => void)[] = [];

  constructor(path: string) {
    this.fd = connectUnix(path);
    this.watch = watchFd(this.fd, () => this.onReadable());
    this.watch.start(true, false);
  }

  private onReadable(): void {
    for (;;) {
      const fds: number[] = [];
      const r = this.scratch.recv(this.fd, this.rx, this.have, this.rx.sizeBytes - this.have, fds);
      for (const fd of fds) closeFd(fd);
      if (r.n === 0 || (r.n < 0 && r.n !== -11)) {
        this.markClosed();
        return;
      }
      if (r.n < 0) break;
      this.have += r.n;
    }
    const v = new DataView(this.rx.bytes.buffer, this.rx.bytes.byteOffset, this.rx.sizeBytes);
    while (this.have >= HDR) {
      const size = v.getUint32(4, true);
      if (size < HDR || this.have < size) break;
      const reply: Reply = {
        id: v.getUint16(0, true),
        command: v.getUint16(2, true),
        flags: v.getUint32(8, true),
        error: v.getUint32(12, true),
        payload: this.rx.bytes.slice(HDR, size),
        view: new DataView(new ArrayBuffer(0)),
      };
      reply.view = new DataView(reply.payload.buffer, reply.payload.byteOffset, reply.payload.length);
      this.rx.bytes.copyWithin(0, size, this.have);
      this.have -= size;
      if ((reply.flags & 0xf) === 0) {
        // A request from the server (type Command), not a reply.
        this.onRequest?.(reply);
        continue;
      }
      const w = this.waiting.get(reply.id);
      if (w !== undefined) {
        this.waiting.delete(reply.id);
        w(reply);
      }
    }
  }

  private markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.watch.close();
    for (const w of this.closeWaiters) w();
    this.closeWaiters = [];
  }

  /** Resolves when the server closes the connection (or after `timeoutMs`, with false). */
  waitClosed(timeoutMs = 2000): Promise<boolean> {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.closeWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /**
   * Sends raw bytes (possibly malformed) with descriptors. The server runs on the same event
   * loop, so a full socket buffer is waited out asynchronously.
   */
  async sendRaw(bytes: Uint8Array, fds: number[] = []): Promise<void> {
    this.tx.bytes.set(bytes, 0);
    let off = 0;
    while (off < bytes.length) {
      const n = this.scratch.send(this.fd, this.tx, off, bytes.length - off, off === 0 ? fds : []);
      if (n === -11) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      if (n <= 0) throw new Error(`send failed ${n}`);
      off += n;
    }
  }

  /** Builds a command message: header (id, command, size, flags) + payload. */
  message(
    command: number,
    payload: Uint8Array,
    flags = 0,
    id = this.nextId++ & 0xffff,
  ): { id: number; bytes: Uint8Array } {
    const bytes = new Uint8Array(HDR + payload.length);
    const v = new DataView(bytes.buffer);
    v.setUint16(0, id, true);
    v.setUint16(2, command, true);
    v.setUint32(4, bytes.length, true);
    v.setUint32(8, flags, true);
    bytes.set(payload, HDR);
    return { id, bytes };
  }

  /** Sends a reply (type Reply, same ID and command) to a server request. */
  reply(request: Reply, body: Uint8Array, error = 0): Promise<void> {
    const m = this.message(request.command, body, error === 0 ? 0x1 : 0x21, request.id);
    if (error !== 0) new DataView(m.bytes.buffer).setUint32(12, error, true);
    return this.sendRaw(m.bytes);
  }

  request(
    command: number,
    payload: Uint8Array = new Uint8Array(0),
    fds: number[] = [],
    flags = 0,
  ): Promise<Reply> {
    const m = this.message(command, payload, flags);
    const p = new Promise<Reply>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no reply to command ${command}`)), 3000);
      this.waiting.set(m.id, (r) => {
        clearTimeout(t);
        resolve(r);
      });
    });
    void this.sendRaw(m.bytes, fds);
    return p;
  }

  close(): void {
    if (!this.closed) {
      this.markClosed();
      closeFd(this.fd);
    }
  }
}

/** Little-endian payload builder. */
export function payload(fields: [number, 1 | 2 | 4 | 8][]): Uint8Array {
  const size = fields.reduce((a, [, s]) => a + s, 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const [value, s] of fields) {
    if (s === 1) v.setUint8(at, value);
    else if (s === 2) v.setUint16(at, value, true);
    else if (s === 4) v.setUint32(at, value >>> 0, true);
    else v.setBigUint64(at, BigInt(value), true);
    at += s;
  }
  return out;
}
