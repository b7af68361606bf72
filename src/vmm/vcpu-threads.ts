/**
 * The device thread's side of --cpus > 1, on either architecture: one worker per vCPU
 * (src/vmm/vcpu-worker.ts), each blocking in KVM_RUN, talking to this thread through its slot
 * (src/vmm/vcpu-slot.ts). All device models stay on this thread, so they need no locking: a
 * vCPU's access is serviced while that vCPU waits, as a hardware access stalls the CPU that
 * issued it. `runVcpuThreads` is the device thread's loop; the machine gives it the same exit
 * handlers as the single-vCPU loop (vcpu-loop.ts).
 */
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { installKickHandler, kickThread } from "../kvm/kick.ts";
import { SIGINT, SIGTERM, SignalLatch } from "../kvm/signal-latch.ts";
import type { StopReason } from "./run-result.ts";
import type { VcpuExitHandlers } from "./vcpu-loop.ts";
import {
  DATA_OFFSET,
  REQUEST,
  SLOT,
  SLOT_BYTES,
  SLOT_STATE,
  STOP,
  type VcpuWorkerData,
} from "./vcpu-slot.ts";

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

/**
 * The parent's Node options for a worker, less those about the main script's source: `-e`/`-p`
 * with their code and `--input-type`. A worker inherits process.execArgv, and with the parent
 * started as `node --input-type=module -e CODE` (the arm64 lab's way to run the build) a worker
 * from the build never ran its own file and never became ready (measured here: the inherited
 * --input-type=module does it, -e alone does not; without it the worker is ready in about 80 ms).
 */
export function workerExecArgv(argv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "-e" || a === "--eval" || a === "-p" || a === "--print" || a === "--input-type") i++;
    else if (!/^--(eval|print|input-type)=/.test(a)) out.push(a);
  }
  return out;
}

function startWorker(data: VcpuWorkerData): Worker {
  const execArgv = workerExecArgv();
  return FROM_SOURCES
    ? new Worker(TSX_BOOTSTRAP, { eval: true, workerData: data, execArgv })
    : new Worker(WORKER_URL, { workerData: data, execArgv });
}

export class VcpuThreads {
  readonly slots: VcpuSlot[];
  readonly doorbell: Int32Array;
  private readonly workers: Worker[] = [];
  private readonly workerErrors: string[] = [];

  /** `doorbellBuffer`: 4 bytes, Int32 [0]; the machine's when others ring it too (eventfd-watch.ts). */
  constructor(
    vcpus: readonly { id: number; fd: number }[],
    kvmFd: number,
    vcpuMmapSizeBytes: number,
    doorbellBuffer = new SharedArrayBuffer(4),
  ) {
    installKickHandler();
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

/** Doorbell polls before the device thread sleeps (a futex sleep and wake cost tens of us). */
const DOORBELL_SPINS = 20_000;
/**
 * The device thread's longest sleep: the bound on noticing what rings no doorbell (a signal
 * latch, the run's timeout). vCPU requests and assigned devices' INTx ring it.
 */
const DOORBELL_WAIT_MS = 50;

/**
 * Waits until the doorbell moves from `seen` or `timeoutMs` pass: spins a little first, then
 * sleeps on the futex. True when it was rung.
 */
export function waitForDoorbell(doorbell: Int32Array, seen: number, timeoutMs = DOORBELL_WAIT_MS): boolean {
  for (let spins = 0; spins < DOORBELL_SPINS; spins++) {
    if (Atomics.load(doorbell, 0) !== seen) return true;
  }
  return Atomics.wait(doorbell, 0, seen, timeoutMs) !== "timed-out";
}

/** What the threads need of the VM: /dev/kvm's fd and the kvm_run size, and each vCPU's fd. */
export interface ThreadedVcpus {
  readonly kvm: { readonly fd: number; readonly vcpuMmapSizeBytes: number };
  readonly vcpus: readonly { readonly id: number; readonly fd: number }[];
  /**
   * The device thread's doorbell (4 bytes), when others than the vCPU threads ring it too: an
   * assigned device's INTx watcher (eventfd-watch.ts). Absent: the threads make their own.
   */
  readonly deviceDoorbell?: SharedArrayBuffer;
}

/**
 * Runs every vCPU on its own thread and services their accesses here, one at a time, until a
 * device or a vCPU stops the machine, a signal arrives, or `timeoutSeconds` pass (0: no
 * limit). `beforeRun` runs before any vCPU resumes: before the reply to each access too, so
 * that what the access changed (x86: IOAPIC routes for a level interrupt it raised) is in KVM
 * before the vCPU can act on it. `interrupted` (host input) runs on every pass.
 */
export function runVcpuThreads(
  machine: ThreadedVcpus,
  handlers: VcpuExitHandlers,
  timeoutSeconds: number,
): { stop: StopReason; wallMs: number; exits: number } {
  const t0 = Date.now();
  const deadline = timeoutSeconds > 0 ? t0 + timeoutSeconds * 1000 : Number.POSITIVE_INFINITY;
  const interrupt = new SignalLatch(SIGINT);
  const terminate = new SignalLatch(SIGTERM);
  interrupt.arm();
  terminate.arm();
  const threads = new VcpuThreads(
    machine.vcpus,
    machine.kvm.fd,
    machine.kvm.vcpuMmapSizeBytes,
    machine.deviceDoorbell,
  );
  let stop: StopReason | null = handlers.pendingStop();
  try {
    threads.waitReady();
    while (stop === null) {
      handlers.beforeRun?.();
      const seen = Atomics.load(threads.doorbell, 0);
      let serviced = false;
      for (const [index, slot] of threads.slots.entries()) {
        const state = Atomics.load(slot.ctl, SLOT.state);
        if (state === SLOT_STATE.stopped) {
          if (stop === null) {
            const own = stopFromSlot(slot.ctl);
            stop = handlers.vcpuStopped?.(own, index) ?? own;
          }
          continue;
        }
        if (state !== SLOT_STATE.request) continue;
        serviced = true;
        stop ??= serviceRequest(slot, handlers);
        handlers.beforeRun?.();
        threads.reply(slot);
      }
      handlers.interrupted?.();
      stop ??= handlers.pendingStop();
      if (stop !== null) break;
      if (interrupt.fired()) stop = { kind: "interrupted", signal: SIGINT };
      else if (terminate.fired()) stop = { kind: "interrupted", signal: SIGTERM };
      else if (Date.now() >= deadline) stop = { kind: "timeout", seconds: timeoutSeconds };
      else if (!serviced) waitForDoorbell(threads.doorbell, seen);
    }
  } finally {
    threads.stop();
    interrupt.disarm();
    terminate.disarm();
  }
  return { stop, wallMs: Date.now() - t0, exits: threads.totalExits() };
}

/** One vCPU's pending access, handed to the machine's handlers; a stop if it cannot be served. */
function serviceRequest(slot: VcpuSlot, handlers: VcpuExitHandlers): StopReason | null {
  const c = slot.ctl;
  try {
    const kind = c[SLOT.kind];
    if (kind === REQUEST.mmio) {
      const gpa = (c[SLOT.addrHi] >>> 0) * 0x1_0000_0000 + (c[SLOT.addrLo] >>> 0);
      handlers.mmio(c[SLOT.isWrite] === 1, gpa, c[SLOT.sizeBytes], slot.data, 0);
    } else if (kind === REQUEST.io && handlers.io) {
      const size = c[SLOT.sizeBytes] as 1 | 2 | 4;
      handlers.io(c[SLOT.isWrite] === 1, c[SLOT.addrLo], size, c[SLOT.count], slot.data, 0);
    } else if (kind === REQUEST.eoi && handlers.eoi) {
      handlers.eoi(c[SLOT.detail]);
    } else {
      // An exit this machine has no handler for (port I/O or an IOAPIC EOI on arm64).
      return { kind: "unknown-exit", reason: -1 };
    }
  } catch (e) {
    // A device model threw (a bug: models answer bad input architecturally).
    return { kind: "device-error", message: (e as Error).message };
  }
  return null;
}

/** Why a vCPU thread left its loop, from its slot (a thread has no instruction pointer to report). */
function stopFromSlot(ctl: Int32Array): StopReason {
  const detail = ctl[SLOT.detail];
  switch (ctl[SLOT.stopCode]) {
    case STOP.tripleFault:
      return { kind: "triple-fault" };
    case STOP.systemEvent:
      return { kind: "system-event", type: detail };
    case STOP.internalError:
      return { kind: "internal-error", suberror: detail, rip: -1 };
    case STOP.failEntry:
      return { kind: "fail-entry", hardwareReason: detail };
    case STOP.unknownExit:
      return { kind: "unknown-exit", reason: detail };
    default:
      return { kind: "device-error", message: "a vCPU thread stopped unexpectedly" };
  }
}
