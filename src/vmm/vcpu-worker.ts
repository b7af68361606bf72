/**
 * A vCPU thread (--cpus > 1): runs KVM_RUN for one vCPU and forwards the exits that need a
 * device to the device thread through its slot (src/vmm/vcpu-slot.ts). Loaded in a worker.
 */
import { parentPort, workerData } from "node:worker_threads";
import { gettid } from "../kvm/libc.ts";
import { RUN } from "../kvm/structs.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import {
  DATA_BYTES,
  DATA_OFFSET,
  REQUEST,
  SLOT,
  SLOT_STATE,
  STOP,
  type VcpuWorkerData,
} from "./vcpu-slot.ts";

const d = workerData as VcpuWorkerData;
const ctl = new Int32Array(d.slot, 0, DATA_OFFSET / 4);
const data = new Uint8Array(d.slot, DATA_OFFSET, DATA_BYTES);
const doorbell = new Int32Array(d.doorbell);
const vcpu = new Vcpu({ kvm: { fd: d.kvmFd, vcpuMmapSizeBytes: d.vcpuMmapSizeBytes } }, d.vcpuId, d.vcpuFd);
const run = vcpu.runBytes;
/** Polls of the reply before Atomics.wait (a futex sleep and wake cost tens of microseconds). */
const SPIN_ITERATIONS = 20_000;

function ring(): void {
  Atomics.add(doorbell, 0, 1);
  Atomics.notify(doorbell, 0);
}

/** Posts the request already written into the slot and waits for the reply; false when stopping. */
function request(): boolean {
  Atomics.store(ctl, SLOT.state, SLOT_STATE.request);
  ring();
  // Most replies come within microseconds: spin briefly before sleeping on the futex.
  for (let i = 0; i < SPIN_ITERATIONS && Atomics.load(ctl, SLOT.state) !== SLOT_STATE.reply; i++);
  while (Atomics.load(ctl, SLOT.state) !== SLOT_STATE.reply) {
    if (Atomics.load(ctl, SLOT.stopRequest) !== 0) return false;
    Atomics.wait(ctl, SLOT.state, SLOT_STATE.request, 50);
  }
  Atomics.store(ctl, SLOT.state, SLOT_STATE.running);
  return true;
}

function stop(code: number, detail = 0): void {
  ctl[SLOT.stopCode] = code;
  ctl[SLOT.detail] = detail;
}

ctl[SLOT.tid] = gettid();
Atomics.store(ctl, SLOT.ready, 1);
ring();

for (;;) {
  if (Atomics.load(ctl, SLOT.stopRequest) !== 0) {
    stop(STOP.requested);
    break;
  }
  let exit: ReturnType<Vcpu["runOnce"]>;
  try {
    exit = vcpu.runOnce();
  } catch {
    stop(STOP.error);
    break;
  }
  Atomics.add(ctl, SLOT.exits, 1);
  if (exit.kind === "interrupted") continue;
  if (exit.kind === "io") {
    const bytes = exit.count * exit.sizeBytes;
    ctl[SLOT.kind] = REQUEST.io;
    ctl[SLOT.isWrite] = exit.isWrite ? 1 : 0;
    ctl[SLOT.addrLo] = exit.port;
    ctl[SLOT.sizeBytes] = exit.sizeBytes;
    ctl[SLOT.count] = exit.count;
    if (bytes > DATA_BYTES) {
      stop(STOP.error);
      break;
    }
    if (exit.isWrite) data.set(run.subarray(exit.dataOffset, exit.dataOffset + bytes));
    if (!request()) {
      stop(STOP.requested);
      break;
    }
    if (!exit.isWrite) run.set(data.subarray(0, bytes), exit.dataOffset);
  } else if (exit.kind === "mmio") {
    ctl[SLOT.kind] = REQUEST.mmio;
    ctl[SLOT.isWrite] = exit.isWrite ? 1 : 0;
    ctl[SLOT.addrLo] = exit.gpa % 0x1_0000_0000;
    ctl[SLOT.addrHi] = Math.floor(exit.gpa / 0x1_0000_0000);
    ctl[SLOT.sizeBytes] = exit.sizeBytes;
    if (exit.isWrite) data.set(run.subarray(RUN.mmio.data, RUN.mmio.data + 8));
    if (!request()) {
      stop(STOP.requested);
      break;
    }
    if (!exit.isWrite) run.set(data.subarray(0, 8), RUN.mmio.data);
  } else if (exit.kind === "ioapic-eoi") {
    ctl[SLOT.kind] = REQUEST.eoi;
    ctl[SLOT.detail] = exit.vector;
    if (!request()) {
      stop(STOP.requested);
      break;
    }
  } else if (exit.kind === "shutdown") {
    stop(STOP.tripleFault);
    break;
  } else if (exit.kind === "system-event") {
    stop(STOP.systemEvent, exit.type);
    break;
  } else if (exit.kind === "internal-error") {
    stop(STOP.internalError, exit.suberror);
    break;
  } else if (exit.kind === "fail-entry") {
    stop(STOP.failEntry, exit.hardwareReason);
    break;
  } else {
    stop(STOP.unknownExit, exit.kind === "unknown" ? exit.reason : 0);
    break;
  }
}
Atomics.store(ctl, SLOT.state, SLOT_STATE.stopped);
ring();
parentPort?.close();
