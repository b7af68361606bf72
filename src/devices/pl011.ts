/**
 * An Arm PrimeCell UART (PL011, ARM DDI 0183) as Linux's amba-pl011 driver and earlycon use it:
 * transmit only (bytes leave at once, so the transmit FIFO is always empty), the receive FIFO
 * always empty, the interrupt registers (IMSC, RIS, MIS, ICR) and the PrimeCell ID registers,
 * which the AMBA bus reads before any driver binds (0xFE0-0xFFC; CID 0xB105F00D).
 *
 * The interrupt is level: asserted while RIS & IMSC is non-zero. TXRIS is set by every DR write
 * (the FIFO drained past its trigger level at once, as QEMU's pl011 does) and cleared by ICR.
 */
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { SerialSink } from "./uart16550.ts";

export const PL011_SIZE_BYTES = 0x1000;

const DR = 0x000;
const RSR_ECR = 0x004;
const FR = 0x018;
const ILPR = 0x020;
const IBRD = 0x024;
const FBRD = 0x028;
const LCR_H = 0x02c;
const CR = 0x030;
const IFLS = 0x034;
const IMSC = 0x038;
const RIS = 0x03c;
const MIS = 0x040;
const ICR = 0x044;
const DMACR = 0x048;
const ID_BASE = 0xfe0;

/** FR bits: TXFE (7) and RXFE (4) set; BUSY, TXFF, RXFF clear. */
const FR_TXFE = 1 << 7;
const FR_RXFE = 1 << 4;
/** Interrupt bits (IMSC/RIS/MIS/ICR): TX is bit 5; the 11 defined bits are [10:0]. */
export const PL011_INT_TX = 1 << 5;
const INT_MASK = 0x7ff;
/** PeriphID0-3, CellID0-3 as QEMU's pl011_id_arm (hw/char/pl011.c). */
const ID_BYTES = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1] as const;

export interface Pl011Stats {
  readonly bytesOut: number;
  readonly interruptsRaised: number;
  readonly badAccesses: number;
}

export class Pl011 implements IoHandler {
  private readonly sink: SerialSink;
  private readonly setLevel: (asserted: boolean) => void;
  private ibrd = 0;
  private fbrd = 0;
  private lcrH = 0;
  /** Reset value 0x300: TXE and RXE set, UARTEN clear (DDI 0183 3.3.8). */
  private cr = 0x300;
  private ifls = 0x12;
  private imsc = 0;
  private ris = 0;
  private dmacr = 0;
  private ilpr = 0;
  private level = false;
  private bytesOut = 0;
  private interruptsRaised = 0;
  private badAccesses = 0;

  constructor(sink: SerialSink, setLevel: (asserted: boolean) => void) {
    this.sink = sink;
    this.setLevel = setLevel;
  }

  read(offset: number, sizeBytes: AccessSize): number {
    if (sizeBytes === 8 || (offset & 3) !== 0) {
      this.badAccesses++;
      return 0;
    }
    switch (offset) {
      case DR:
        return 0; // receive FIFO empty
      case RSR_ECR:
        return 0;
      case FR:
        return FR_TXFE | FR_RXFE;
      case ILPR:
        return this.ilpr;
      case IBRD:
        return this.ibrd;
      case FBRD:
        return this.fbrd;
      case LCR_H:
        return this.lcrH;
      case CR:
        return this.cr;
      case IFLS:
        return this.ifls;
      case IMSC:
        return this.imsc;
      case RIS:
        return this.ris;
      case MIS:
        return this.ris & this.imsc;
      case DMACR:
        return this.dmacr;
      default:
        if (offset >= ID_BASE && offset < ID_BASE + 0x20) return ID_BYTES[(offset - ID_BASE) >> 2]!;
        return 0;
    }
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    if (sizeBytes === 8 || (offset & 3) !== 0) {
      this.badAccesses++;
      return;
    }
    switch (offset) {
      case DR:
        this.sink.write(value & 0xff);
        this.bytesOut++;
        this.ris |= PL011_INT_TX;
        break;
      case ILPR:
        this.ilpr = value & 0xff;
        break;
      case IBRD:
        this.ibrd = value & 0xffff;
        break;
      case FBRD:
        this.fbrd = value & 0x3f;
        break;
      case LCR_H:
        this.lcrH = value & 0xff;
        break;
      case CR:
        this.cr = value & 0xffff;
        break;
      case IFLS:
        this.ifls = value & 0x3f;
        break;
      case IMSC:
        this.imsc = value & INT_MASK;
        break;
      case ICR:
        this.ris &= ~value & INT_MASK;
        break;
      case DMACR:
        this.dmacr = value & 0x7;
        break;
      default:
        return; // RSR/ECR (clears errors we never have), FR, RIS, MIS, IDs: read-only or none
    }
    this.update();
  }

  private update(): void {
    const level = (this.ris & this.imsc) !== 0;
    if (level === this.level) return;
    this.level = level;
    if (level) this.interruptsRaised++;
    this.setLevel(level);
  }

  flush(): void {
    this.sink.flush();
  }

  stats(): Pl011Stats {
    return {
      bytesOut: this.bytesOut,
      interruptsRaised: this.interruptsRaised,
      badAccesses: this.badAccesses,
    };
  }
}
