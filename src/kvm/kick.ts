/**
 * Kicking a vCPU thread out of KVM_RUN: a real-time signal (SIGRTMIN + 6, unused by Node and
 * libuv) whose handler is harmless (libc's getpid) and installed without SA_RESTART, sent to
 * the thread with tgkill. KVM_RUN then returns EINTR and the thread checks its stop flag.
 */
import koffi from "koffi";
import { getpid, tgkill } from "./libc.ts";

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
const libcSigrtmin = libc.func("int __libc_current_sigrtmin(void)") as () => number;

const SIGACTION_BYTES = 152;

/** The signal used to kick vCPU threads. */
export const KICK_SIGNAL = libcSigrtmin() + 6;

let installed = false;

/** Installs the harmless handler for the kick signal (process-wide; idempotent). */
export function installKickHandler(): void {
  if (installed) return;
  const act = new Uint8Array(SIGACTION_BYTES);
  new DataView(act.buffer).setBigUint64(0, koffi.address(dlsym(null, "getpid")), true);
  if (sigaction(KICK_SIGNAL, act, null) !== 0) throw new Error(`sigaction(${KICK_SIGNAL}) failed`);
  installed = true;
}

/** Interrupts thread `tid` of this process (EINTR out of a blocking KVM_RUN). */
export function kickThread(tid: number): void {
  tgkill(getpid(), tid, KICK_SIGNAL);
}
