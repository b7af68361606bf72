/**
 * isa-debug-exit, as QEMU implements it: a guest write of `v` to the port ends the machine with
 * process exit status `(v << 1) | 1`, so a test kernel's verdict becomes the VMM's exit code.
 * QEMU's defaults are iobase 0x501, iosize 2; bare-metal test suites often configure
 * iobase=0xf4,iosize=4. Reads return all ones (the device decodes writes only).
 */
import type { AccessSize, IoHandler } from "../platform/bus.ts";

export const DEBUG_EXIT_DEFAULT_IOBASE = 0x501;
export const DEBUG_EXIT_DEFAULT_IOSIZE = 2;

export class DebugExit implements IoHandler {
  readonly iobase: number;
  readonly iosize: number;
  /** Called once per guest write with the exit status the machine should end with. */
  private readonly onExit: (status: number) => void;
  /** The written value and resulting status of the last write, or null. */
  lastValue: number | null = null;
  lastStatus: number | null = null;

  constructor(
    onExit: (status: number) => void,
    iobase = DEBUG_EXIT_DEFAULT_IOBASE,
    iosize = DEBUG_EXIT_DEFAULT_IOSIZE,
  ) {
    this.onExit = onExit;
    this.iobase = iobase;
    this.iosize = iosize;
  }

  read(_offset: number, sizeBytes: AccessSize): number {
    return sizeBytes >= 4 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
  }

  write(_offset: number, sizeBytes: AccessSize, value: number): void {
    const v = sizeBytes >= 4 ? value >>> 0 : value & (2 ** (8 * sizeBytes) - 1);
    // QEMU hw/misc/debugexit.c: exit((val << 1) | 1). A process exit status keeps 8 bits.
    const status = ((v << 1) | 1) & 0xff;
    this.lastValue = v;
    this.lastStatus = status;
    this.onExit(status);
  }
}
