/**
 * Host input for COM1 without blocking the vCPU loop: a worker thread reads the input file
 * descriptor (stdin) into a shared ring and sends the process SIGUSR2, which interrupts
 * KVM_RUN (EINTR); the run loop then drains the ring into the UART's receive FIFO. Bytes that
 * do not fit in the ring wait in the worker (it blocks on the ring, never drops). With --cpus > 1
 * the device thread sleeps on its doorbell instead of in KVM_RUN: the worker rings that too, so
 * typed input is polled at once (vcpu-threads.ts).
 */
import { Worker } from "node:worker_threads";

/** Ring layout: Int32 [0] write count, [1] read count, then RING_BYTES of data. */
const RING_BYTES = 4096;
const HEADER_BYTES = 8;

const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const fs = require("node:fs");
const ctl = new Int32Array(workerData.sab, 0, 2);
const ring = new Uint8Array(workerData.sab, ${HEADER_BYTES}, ${RING_BYTES});
const doorbell = workerData.doorbell ? new Int32Array(workerData.doorbell) : null;
const buf = Buffer.alloc(256);
for (;;) {
  let n = 0;
  try { n = fs.readSync(workerData.fd, buf, 0, buf.length, null); }
  catch (e) { if (e.code === "EAGAIN") { Atomics.wait(ctl, 1, Atomics.load(ctl, 1), 20); continue; } break; }
  if (n === 0) break;
  for (let i = 0; i < n; i++) {
    while (Atomics.load(ctl, 0) - Atomics.load(ctl, 1) >= ${RING_BYTES}) Atomics.wait(ctl, 1, Atomics.load(ctl, 1), 50);
    const w = Atomics.load(ctl, 0);
    ring[w % ${RING_BYTES}] = buf[i];
    Atomics.store(ctl, 0, w + 1);
  }
  if (doorbell) { Atomics.add(doorbell, 0, 1); Atomics.notify(doorbell, 0); }
  process.kill(process.pid, "SIGUSR2");
}
`;

export class SerialInput {
  private readonly sab = new SharedArrayBuffer(HEADER_BYTES + RING_BYTES);
  private readonly ctl = new Int32Array(this.sab, 0, 2);
  private readonly ring = new Uint8Array(this.sab, HEADER_BYTES, RING_BYTES);
  private worker: Worker | null = null;
  private closed = false;
  private readonly scratch = new Uint8Array(RING_BYTES);

  private readonly onSignal = () => {};

  private readonly fd: number;

  /** Reads nothing until `start`: the machine that owns the device thread's doorbell starts it. */
  constructor(fd = 0) {
    this.fd = fd;
  }

  /** Starts the reader; each chunk read rings `deviceDoorbell` (Int32 [0]) when given. */
  start(deviceDoorbell?: SharedArrayBuffer): void {
    if (this.worker !== null || this.closed) return;
    // The listener must exist before the worker can signal: SIGUSR2's default action terminates.
    process.on("SIGUSR2", this.onSignal);
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { sab: this.sab, fd: this.fd, doorbell: deviceDoorbell },
    });
    this.worker.unref();
  }

  /** Up to `maxBytes` received bytes (a view of an internal buffer, valid until the next call). */
  take(maxBytes: number): Uint8Array {
    const w = Atomics.load(this.ctl, 0);
    const r = Atomics.load(this.ctl, 1);
    const n = Math.max(0, Math.min(w - r, RING_BYTES, maxBytes));
    if (n === 0) return this.scratch.subarray(0, 0);
    for (let i = 0; i < n; i++) this.scratch[i] = this.ring[(r + i) % RING_BYTES];
    Atomics.store(this.ctl, 1, r + n);
    Atomics.notify(this.ctl, 1);
    return this.scratch.subarray(0, n);
  }

  /** Stops the reader. The SIGUSR2 listener stays (a late signal from the exiting worker must not kill the process; the listener does not keep Node alive). */
  close(): void {
    this.closed = true;
    if (this.worker !== null) void this.worker.terminate();
  }
}
