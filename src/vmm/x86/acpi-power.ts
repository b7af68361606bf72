/**
 * Hardware-reduced ACPI power control (ACPI 6.5 4.8.3.7, 4.8.3.6): the sleep control and
 * status registers and the reset register, as three I/O ports the FADT points at. A guest
 * entering S5 (SLP_EN with the DSDT's _S5_ SLP_TYP) powers the machine off; writing the reset
 * value resets it. This VMM does not restart a guest: both end the run (like QEMU's
 * -no-reboot), with the guest's request as the stop reason.
 */
import { ioPortByte } from "../../acpi/gas.ts";
import type { AccessSize, IoHandler } from "../../platform/bus.ts";

export const ACPI_POWER_IOBASE = 0x600;
export const ACPI_POWER_IOSIZE = 3;
const SLEEP_CONTROL = 0;
const SLEEP_STATUS = 1;
const RESET = 2;
/** SLP_TYP for S5 in the DSDT's _S5_ package. */
export const S5_SLEEP_TYPE = 5;
export const RESET_VALUE = 0x0f;
const SLP_EN = 0x20;
const SLP_TYP_SHIFT = 2;
const SLP_TYP_MASK = 0x1c;

/** The FADT fields that describe these registers (for src/acpi's layout). */
export const ACPI_POWER_FADT = {
  sleep: {
    control: ioPortByte(ACPI_POWER_IOBASE + SLEEP_CONTROL),
    status: ioPortByte(ACPI_POWER_IOBASE + SLEEP_STATUS),
  },
  reset: { register: ioPortByte(ACPI_POWER_IOBASE + RESET), value: RESET_VALUE },
} as const;

export type PowerRequest = "poweroff" | "reset";

export class AcpiPower implements IoHandler {
  private readonly onRequest: (request: PowerRequest) => void;
  /** Sleep requests for states other than S5 (ignored: there is no S1-S4 here). */
  ignoredSleeps = 0;

  constructor(onRequest: (request: PowerRequest) => void) {
    this.onRequest = onRequest;
  }

  read(offset: number, sizeBytes: AccessSize): number {
    if (sizeBytes !== 1) return 2 ** (8 * Math.min(sizeBytes, 4)) - 1;
    // WAK_STS (bit 7) would report a wake; this machine never sleeps and wakes.
    if (offset === SLEEP_STATUS) return 0;
    return 0;
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    if (sizeBytes !== 1) return;
    if (offset === SLEEP_CONTROL && (value & SLP_EN) !== 0) {
      if ((value & SLP_TYP_MASK) >> SLP_TYP_SHIFT === S5_SLEEP_TYPE) this.onRequest("poweroff");
      else this.ignoredSleeps++;
    } else if (offset === RESET && (value & 0xff) === RESET_VALUE) {
      this.onRequest("reset");
    }
  }
}
