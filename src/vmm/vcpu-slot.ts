/**
 * The shared-memory mailbox between a vCPU thread and the device thread (for --cpus > 1).
 *
 * A vCPU worker runs KVM_RUN; on an exit that needs a device it writes the request into its
 * slot, rings the shared doorbell and waits; the device thread services it and replies. Layout
 * of a slot: Int32 words (below), then DATA_BYTES of access data at DATA_OFFSET.
 */

export const SLOT = {
  /** 0 running, 1 request pending, 2 reply ready, 3 worker stopped. */
  state: 0,
  /** Request kind (REQUEST) or, once stopped, unused. */
  kind: 1,
  isWrite: 2,
  /** Port, or the low 32 bits of the guest-physical address. */
  addrLo: 3,
  addrHi: 4,
  sizeBytes: 5,
  count: 6,
  /** Why the worker stopped (STOP), with a detail word. */
  stopCode: 7,
  detail: 8,
  /** The worker's kernel thread id, for kicks. */
  tid: 9,
  /** Set by the device thread: leave the run loop. */
  stopRequest: 10,
  exits: 11,
  ready: 12,
} as const;

export const SLOT_STATE = { running: 0, request: 1, reply: 2, stopped: 3 } as const;
export const REQUEST = { io: 1, mmio: 2, eoi: 3 } as const;
export const STOP = {
  requested: 0,
  tripleFault: 1,
  systemEvent: 2,
  internalError: 3,
  failEntry: 4,
  unknownExit: 5,
  error: 6,
} as const;

export const DATA_OFFSET = 64;
/** kvm_run's I/O data lives in its page: string I/O never carries more than this. */
export const DATA_BYTES = 4096;
export const SLOT_BYTES = DATA_OFFSET + DATA_BYTES;

export interface VcpuWorkerData {
  readonly slot: SharedArrayBuffer;
  /** Int32 [0]: incremented by every request and every stop. */
  readonly doorbell: SharedArrayBuffer;
  readonly kvmFd: number;
  readonly vcpuFd: number;
  readonly vcpuId: number;
  readonly vcpuMmapSizeBytes: number;
}
