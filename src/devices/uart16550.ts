/**
 * A 16550A UART (COM1 at 0x3F8, IRQ 4 on PC platforms): the register file of the National
 * Semiconductor PC16550D data sheet, with a 16-byte receive FIFO, loopback, scratch register and
 * interrupt identification by priority. Transmission is instantaneous: THR writes go straight
 * to the output sink, so THRE and TEMT are always set.
 */
import type { AccessSize, IoHandler } from "../platform/bus.ts";

export const COM1_IOBASE = 0x3f8;
export const COM1_IRQ = 4;

/** Where received bytes come from (polled when the FIFO has room). */
export interface SerialSource {
  /** Up to `maxBytes` bytes that arrived; empty when none. */
  take(maxBytes: number): Uint8Array;
}

/** Where transmitted bytes go. */
export interface SerialSink {
  write(byte: number): void;
  flush(): void;
}

const REG_RBR_THR_DLL = 0;
const REG_IER_DLM = 1;
const REG_IIR_FCR = 2;
const REG_LCR = 3;
const REG_MCR = 4;
const REG_LSR = 5;
const REG_MSR = 6;
const REG_SCR = 7;

const LCR_DLAB = 0x80;
const IER_RDI = 0x01; // received data available
const IER_THRI = 0x02; // transmitter holding register empty
const IER_RLSI = 0x04; // receiver line status
const IER_MSI = 0x08; // modem status
const IIR_NO_INT = 0x01;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_FIFO_ENABLED = 0xc0;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const RX_FIFO_BYTES = 16;

export interface UartStats {
  readonly txBytes: number;
  readonly rxBytes: number;
  readonly rxOverruns: number;
  readonly interrupts: number;
}

export class Uart16550 implements IoHandler {
  private readonly sink: SerialSink;
  /** Drives the interrupt line (IRQ 4 for COM1); called on level changes only. */
  private readonly setIrqLevel: (asserted: boolean) => void;

  private dll = 0x0c; // 9600 baud after reset, as PC firmware leaves it
  private dlm = 0;
  private ier = 0;
  private lcr = 0x03;
  private mcr = 0;
  private scr = 0;
  private fcr = 0;
  private lsrErrors = 0;
  private thriPending = false;
  private irqLevel = false;
  private readonly rx = new Uint8Array(RX_FIFO_BYTES);
  private rxHead = 0;
  private rxCount = 0;

  private source: SerialSource | null = null;

  txBytes = 0;
  rxBytes = 0;
  rxOverruns = 0;
  interrupts = 0;

  constructor(sink: SerialSink, setIrqLevel: (asserted: boolean) => void = () => {}) {
    this.sink = sink;
    this.setIrqLevel = setIrqLevel;
  }

  /** Connects host input; the FIFO refills from it when the guest reads RBR or LSR, and on `poll`. */
  setSource(source: SerialSource | null): void {
    this.source = source;
  }

  /** Pulls pending host input into the FIFO (as far as it has room) and updates the interrupt. */
  poll(): void {
    this.refill();
    this.updateIrq();
  }

  private refill(): void {
    if (this.source === null || this.rxCount === RX_FIFO_BYTES) return;
    const bytes = this.source.take(RX_FIFO_BYTES - this.rxCount);
    for (let i = 0; i < bytes.length; i++) this.pushRx(bytes[i]);
  }

  /** Host input (a keyboard, a pipe): queued into the receive FIFO; overflow sets LSR.OE. */
  receive(bytes: Uint8Array): void {
    for (const b of bytes) this.pushRx(b);
    this.updateIrq();
  }

  private pushRx(byte: number): void {
    if (this.rxCount === RX_FIFO_BYTES) {
      this.lsrErrors |= LSR_OE;
      this.rxOverruns++;
      return;
    }
    this.rx[(this.rxHead + this.rxCount) % RX_FIFO_BYTES] = byte;
    this.rxCount++;
    this.rxBytes++;
  }

  private popRx(): number {
    if (this.rxCount === 0) return 0;
    const b = this.rx[this.rxHead];
    this.rxHead = (this.rxHead + 1) % RX_FIFO_BYTES;
    this.rxCount--;
    return b;
  }

  private msr(): number {
    if (this.mcr & MCR_LOOP) {
      // PC16550D loopback: the modem control outputs are wired to the modem status inputs.
      return (
        (this.mcr & MCR_RTS ? MSR_CTS : 0) |
        (this.mcr & MCR_DTR ? MSR_DSR : 0) |
        (this.mcr & MCR_OUT1 ? MSR_RI : 0) |
        (this.mcr & MCR_OUT2 ? MSR_DCD : 0)
      );
    }
    return MSR_DCD | MSR_DSR | MSR_CTS;
  }

  /** The highest-priority pending interrupt identification (without FIFO bits). */
  private pendingIid(): number {
    if (this.ier & IER_RLSI && this.lsrErrors !== 0) return IIR_RLSI;
    if (this.ier & IER_RDI && this.rxCount > 0) return IIR_RDI;
    if (this.ier & IER_THRI && this.thriPending) return IIR_THRI;
    // Modem status changes never happen here (the lines are constant), so MSI never pends.
    return IIR_NO_INT;
  }

  private updateIrq(): void {
    // On a PC, OUT2 gates the UART's interrupt onto the ISA line.
    const level = this.pendingIid() !== IIR_NO_INT && (this.mcr & MCR_OUT2) !== 0;
    if (level === this.irqLevel) return;
    this.irqLevel = level;
    if (level) this.interrupts++;
    this.setIrqLevel(level);
  }

  read(offset: number, sizeBytes: AccessSize): number {
    if (sizeBytes !== 1 || offset > 7) return sizeBytes >= 4 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    if (this.rxCount === 0 && (offset === REG_LSR || (offset === REG_RBR_THR_DLL && !dlab))) this.refill();
    let value: number;
    switch (offset) {
      case REG_RBR_THR_DLL:
        value = dlab ? this.dll : this.popRx();
        break;
      case REG_IER_DLM:
        value = dlab ? this.dlm : this.ier;
        break;
      case REG_IIR_FCR: {
        const iid = this.pendingIid();
        // Reading IIR while it reports THRI clears that source (PC16550D table IV).
        if (iid === IIR_THRI) this.thriPending = false;
        value = iid | (this.fcr & FCR_ENABLE ? IIR_FIFO_ENABLED : 0);
        break;
      }
      case REG_LCR:
        value = this.lcr;
        break;
      case REG_MCR:
        value = this.mcr;
        break;
      case REG_LSR:
        value = (this.rxCount > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT | this.lsrErrors;
        this.lsrErrors = 0; // error bits clear on read
        break;
      case REG_MSR:
        value = this.msr();
        break;
      default:
        value = this.scr;
    }
    this.updateIrq();
    return value;
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    if (sizeBytes !== 1 || offset > 7) return;
    const v = value & 0xff;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case REG_RBR_THR_DLL:
        if (dlab) {
          this.dll = v;
        } else if (this.mcr & MCR_LOOP) {
          this.pushRx(v);
          this.thriPending = true;
        } else {
          this.txBytes++;
          this.sink.write(v);
          this.thriPending = true;
        }
        break;
      case REG_IER_DLM:
        if (dlab) {
          this.dlm = v;
        } else {
          const enablingThri = (v & IER_THRI) !== 0 && (this.ier & IER_THRI) === 0;
          this.ier = v & (IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
          // Enabling THRI while the holding register is empty raises it at once.
          if (enablingThri) this.thriPending = true;
        }
        break;
      case REG_IIR_FCR:
        if (v & FCR_CLEAR_RX) {
          this.rxCount = 0;
          this.rxHead = 0;
        }
        this.fcr = v & 0xc9; // enable, DMA mode, trigger level; the clear bits self-reset
        break;
      case REG_LCR:
        this.lcr = v;
        break;
      case REG_MCR:
        this.mcr = v & 0x1f;
        break;
      case REG_SCR:
        this.scr = v;
        break;
      default:
        // LSR and MSR are read-only (factory test writes are ignored).
        break;
    }
    this.updateIrq();
  }

  /** Pushes buffered output to the sink (at the end of a run). */
  flush(): void {
    this.sink.flush();
  }

  stats(): UartStats {
    return {
      txBytes: this.txBytes,
      rxBytes: this.rxBytes,
      rxOverruns: this.rxOverruns,
      interrupts: this.interrupts,
    };
  }
}

/** Buffers output and writes it through `writeChunk` at each newline, when full, and on flush. */
export class LineBufferedSink implements SerialSink {
  private readonly buf = new Uint8Array(4096);
  private used = 0;
  private readonly writeChunk: (bytes: Uint8Array) => void;
  constructor(writeChunk: (bytes: Uint8Array) => void) {
    this.writeChunk = writeChunk;
  }
  write(byte: number): void {
    this.buf[this.used++] = byte;
    if (byte === 0x0a || this.used === this.buf.length) this.flush();
  }
  flush(): void {
    if (this.used === 0) return;
    this.writeChunk(this.buf.slice(0, this.used));
    this.used = 0;
  }
}

/** Keeps everything transmitted, for tests and for the VMM's summary. */
export class CapturingSink implements SerialSink {
  private chunks: number[] = [];
  write(byte: number): void {
    this.chunks.push(byte);
  }
  flush(): void {}
  text(): string {
    return Buffer.from(this.chunks).toString("latin1");
  }
}

export const NULL_SINK: SerialSink = { write() {}, flush() {} };
