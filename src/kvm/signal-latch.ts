/**
 * Noticing a signal while the JavaScript thread is blocked in KVM_RUN.
 *
 * Node runs `process.on(signal)` listeners from its event loop, which never turns while the
 * vCPU loop runs. A latch instead installs, with sigaction, a handler that does nothing
 * harmful (libc's getpid, which is async-signal-safe) with SA_RESETHAND and without
 * SA_RESTART: the signal interrupts KVM_RUN (EINTR) and resets its own disposition to
 * SIG_DFL, which `fired()` reads back. A second signal then has its default effect (a second
 * Ctrl-C terminates), as in most VMMs.
 */
import koffi from "koffi";

const libc = koffi.load("libc.so.6");
const sigaction = libc.func("int sigaction(int signum, void *act, void *oldact)") as (
  signum: number,
  act: Uint8Array | null,
  oldact: Uint8Array | null,
) => number;
const dlsym = libc.func("void *dlsym(void *handle, const char *name)") as (
  handle: null,
  name: string,
) => unknown;

/** struct sigaction (x86-64 glibc): handler u64, sa_mask 128 bytes, sa_flags i32, restorer u64. */
const SIGACTION_BYTES = 152;
const SA_FLAGS_OFFSET = 136;
const SA_RESETHAND = 0x80000000;
const SIG_DFL = 0n;

export const SIGINT = 2;
export const SIGTERM = 15;

const harmlessHandler = koffi.address(dlsym(null, "getpid"));

export class SignalLatch {
  readonly signal: number;
  private readonly previous = new Uint8Array(SIGACTION_BYTES);
  private readonly scratch = new Uint8Array(SIGACTION_BYTES);
  private armed = false;

  constructor(signal: number) {
    this.signal = signal;
  }

  arm(): void {
    const act = new Uint8Array(SIGACTION_BYTES);
    const v = new DataView(act.buffer);
    v.setBigUint64(0, harmlessHandler, true);
    v.setUint32(SA_FLAGS_OFFSET, SA_RESETHAND, true);
    if (sigaction(this.signal, act, this.previous) !== 0) throw new Error(`sigaction(${this.signal}) failed`);
    this.armed = true;
  }

  /** True once the signal arrived since `arm()`. */
  fired(): boolean {
    if (!this.armed) return false;
    sigaction(this.signal, null, this.scratch);
    return new DataView(this.scratch.buffer).getBigUint64(0, true) === SIG_DFL;
  }

  /** Restores the disposition that was in place before `arm()`. */
  disarm(): void {
    if (!this.armed) return;
    sigaction(this.signal, this.previous, null);
    this.armed = false;
  }
}
