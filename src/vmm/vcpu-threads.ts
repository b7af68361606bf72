/**
 * The device thread's side of --cpus > 1: one worker per vCPU (src/vmm/vcpu-worker.ts), each
 * blocking in KVM_RUN, talking to this thread through its slot (src/vmm/vcpu-slot.ts). All
 * device models stay on this thread, so they need no locking: a vCPU's access is serviced
 * while that vCPU waits, as a hardware access stalls the CPU that issued it.
 */
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { installKickHandler, kickThread } from "../kvm/kick.ts";
import { DATA_OFFSET, SLOT, SLOT_BYTES, SLOT_STATE, type VcpuWorkerData } from "./vcpu-slot.ts";

export interface VcpuSlot {
  readonly vcpuId: number;
  readonly ctl: Int32Array;
  /** The access data, at offset 0 of this view. */
  readonly data: DataView;
}

/**
 * Run from the sources (tests, through tsx), the worker is vcpu-worker.ts and loads TypeScript
 * through tsx, registered inside the worker before the entry module. Run from the JavaScript
 * build (bin/viommu.mjs; tools/build/js-build.mjs), it is vcpu-worker.js beside this chunk.
 */
const FROM_SOURCES = import.meta.url.endsWith(".ts");
const WORKER_URL = new URL(FROM_SOURCES ? "./vcpu-worker.ts" : "./vcpu-worker.js", import.meta.url);
const WORKER_FILE = fileURLToPath(WORKER_URL);
const TSX_BOOTSTRAP = `import("tsx/esm/api").then((m) => { m.register(); return import(${JSON.stringify(
  WORKER_URL.href,
)}); });`;

function startWorker(data: VcpuWorkerData): Worker {
  return FROM_SOURCES
    ? new Worker(TSX_BOOTSTRAP, { eval: true, workerData: data })
    : new Worker(WORKER_URL, { workerData: data });
}

export class VcpuThreads {
  readonly slots: VcpuSlot[];
  readonly doorbell: Int32Array;
  private readonly workers: Worker[] = [];
  private readonly workerErrors: string[] = [];

  constructor(vcpus: readonly { id: number; fd: number }[], kvmFd: number, vcpuMmapSizeBytes: number) {
    installKickHandler();
    const doorbellBuffer = new SharedArrayBuffer(4);
    this.doorbell = new Int32Array(doorbellBuffer);
    this.slots = vcpus.map((v) => {
      const slot = new SharedArrayBuffer(SLOT_BYTES);
      const data: VcpuWorkerData = {
        slot,
        doorbell: doorbellBuffer,
        kvmFd,
        vcpuFd: v.fd,
        vcpuId: v.id,
        vcpuMmapSizeBytes,
      };
      const worker = startWorker(data);
      worker.on("error", (e) => this.workerErrors.push(`vCPU ${v.id}: ${e.message}`));
      this.workers.push(worker);
      return {
        vcpuId: v.id,
        ctl: new Int32Array(slot, 0, DATA_OFFSET / 4),
        data: new DataView(slot, DATA_OFFSET),
      };
    });
  }

  /**
   * Waits (blocking) until every worker is in its run loop; throws after `timeoutMs`. Generous:
   * from the sources each worker loads tsx, which took 40-70 s for 4 workers in the KVM lab's
   * L1 (a TCG guest, tools/guest-lab/kvm-lab.ts).
   */
  waitReady(timeoutMs = 180_000): void {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const seen = Atomics.load(this.doorbell, 0);
      if (this.slots.every((s) => Atomics.load(s.ctl, SLOT.ready) === 1)) return;
      if (Date.now() > deadline) {
        throw new Error(`vCPU threads did not start within ${timeoutMs} ms (${WORKER_FILE})`);
      }
      Atomics.wait(this.doorbell, 0, seen, 50);
    }
  }

  /** Replies to a serviced request. */
  reply(slot: VcpuSlot): void {
    Atomics.store(slot.ctl, SLOT.state, SLOT_STATE.reply);
    Atomics.notify(slot.ctl, SLOT.state);
  }

  totalExits(): number {
    let n = 0;
    for (const s of this.slots) n += Atomics.load(s.ctl, SLOT.exits);
    return n;
  }

  /** Asks every vCPU thread to leave KVM_RUN and its loop, kicks them, waits, and ends them. */
  stop(timeoutMs = 2000): void {
    for (const s of this.slots) Atomics.store(s.ctl, SLOT.stopRequest, 1);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const running = this.slots.filter((s) => Atomics.load(s.ctl, SLOT.state) !== SLOT_STATE.stopped);
      if (running.length === 0 || Date.now() > deadline) break;
      for (const s of running) {
        const tid = Atomics.load(s.ctl, SLOT.tid);
        if (tid > 0) kickThread(tid);
        Atomics.notify(s.ctl, SLOT.state);
      }
      const seen = Atomics.load(this.doorbell, 0);
      Atomics.wait(this.doorbell, 0, seen, 10);
    }
    for (const w of this.workers) void w.terminate();
  }

  errors(): readonly string[] {
    return this.workerErrors;
  }
}
