/**
 * Eventfds the VMM must hear about while its thread is blocked in KVM_RUN (an assigned device's
 * INTx: VFIO signals it, and under the split irqchip KVM cannot inject a level interrupt into
 * our userspace IOAPIC by itself). A worker thread blocks reading the eventfd, counts each
 * signal in shared memory and sends the process SIGUSR2, which interrupts KVM_RUN (EINTR, as
 * `serial-input.ts` does for COM1); the run loop then calls `poll()`, which reports the new
 * signals. With --cpus > 1 the VMM's device thread is not in KVM_RUN but asleep on the vCPU
 * threads' doorbell (vcpu-threads.ts), so the worker also rings that doorbell when it is given
 * one: the device thread wakes at once instead of at its wait's timeout. Nothing is allocated
 * per signal on the VMM's side.
 */
import { writeSync } from "node:fs";
import { Worker } from "node:worker_threads";

/**
 * Shared Int32 [0] signals counted by the worker, [1] stop request. The doorbell (optional) is
 * rung as a vCPU thread rings it (vcpu-worker.ts): add, then notify its waiter.
 */
const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const fs = require("node:fs");
const ctl = new Int32Array(workerData.sab);
const doorbell = workerData.doorbell ? new Int32Array(workerData.doorbell) : null;
const buf = Buffer.alloc(8);
for (;;) {
  try { fs.readSync(workerData.fd, buf, 0, 8, null); }
  catch (e) { if (e.code === "EAGAIN" || e.code === "EINTR") continue; break; }
  if (Atomics.load(ctl, 1) !== 0) break;
  Atomics.add(ctl, 0, 1);
  if (doorbell !== null) { Atomics.add(doorbell, 0, 1); Atomics.notify(doorbell, 0); }
  process.kill(process.pid, "SIGUSR2");
}
`;

export class EventfdWatch {
  readonly fd: number;
  private readonly sab = new SharedArrayBuffer(8);
  private readonly ctl = new Int32Array(this.sab);
  private readonly worker: Worker;
  private readonly onSignalled: () => void;
  private seen = 0;
  private readonly onSignal = () => {};

  /**
   * Watches blocking eventfd `fd`; `onSignalled` runs from `poll()` once per signal seen. Each
   * signal also rings `doorbell` (a 4-byte SharedArrayBuffer, Int32 [0]) when given.
   */
  constructor(fd: number, onSignalled: () => void, doorbell?: SharedArrayBuffer) {
    this.fd = fd;
    this.onSignalled = onSignalled;
    // The listener must exist before the worker can signal: SIGUSR2's default action terminates.
    process.on("SIGUSR2", this.onSignal);
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { sab: this.sab, fd, doorbell } });
    this.worker.unref();
  }

  /** Reports the signals counted since the last call (one call per signal). */
  poll(): void {
    const now = Atomics.load(this.ctl, 0);
    while (this.seen !== now) {
      this.seen = (this.seen + 1) | 0;
      this.onSignalled();
    }
  }

  /** Stops the worker: asks it to, then wakes it with a signal of our own. */
  close(): void {
    Atomics.store(this.ctl, 1, 1);
    const one = Buffer.alloc(8);
    one.writeBigUint64LE(1n);
    try {
      writeSync(this.fd, one);
    } catch {
      // The descriptor is gone: the worker's read has failed and it has stopped already.
    }
    void this.worker.terminate();
  }
}
