/**
 * QEMU's educational PCI device "edu" (QEMU docs/specs/edu.rst, hw/misc/edu.c behaviour).
 *
 * PCI 1234:11e8, revision 0x10, class 00:ff (unclassified), INTA#, one MSI vector (64-bit, at
 * 0x40), BAR0: 1 MiB 32-bit memory. Registers (accesses below 0x80 must be 4 bytes, from 0x80
 * 4 or 8 bytes; other sizes read all-ones and are ignored when written; unknown offsets read
 * all-ones):
 *   0x00 RO identification 0x010000ed (major 1, minor 0, magic 0xed)
 *   0x04 RW liveness check: reads back the bitwise NOT of the value written
 *   0x08 RW factorial: a write starts computing n! (mod 2^32) unless one is in progress
 *   0x20 RW status: bit 0 computing (RO), bit 7 raise interrupt 0x01 when the factorial is done
 *   0x24 RO interrupt status; 0x60 WO raise (ORed into status); 0x64 WO acknowledge (cleared)
 *   0x80 DMA source, 0x88 DMA destination, 0x90 DMA count (64-bit fields; a 4-byte write sets
 *        the whole field), 0x98 DMA command: bit 0 start, bit 1 direction (0: RAM to the
 *        device buffer, 1: device buffer to RAM), bit 2 raise interrupt 0x100 when done.
 *   The DMA buffer is device-internal, 4 KiB at device address 0x40000 (not visible in BAR0).
 *
 * Completion model: the factorial and the DMA run synchronously inside the MMIO write that
 * starts them (QEMU uses a thread and a 100 ms timer). So when the write returns, status bit 0
 * and command bit 0 are already clear and any completion interrupt has been raised; a driver
 * that polls those bits (as edu drivers do) sees completion on its first read. A synchronous
 * model also works under hosts that never yield to the event loop (a KVM vCPU loop).
 *
 * DMA: the RAM-side address is masked with `dmaMask` (default 2^28 - 1, QEMU's default
 * dma_mask property; QEMU's edu_clamp_addr does the same), then goes through the function's
 * DMA address space (bus-master gate, then the IOMMU or IDENTITY). The device-buffer side must
 * satisfy 0x40000 <= addr and addr + count <= 0x41000, else no data moves (QEMU since the
 * edu_check_range fix). A faulting DMA moves nothing (the engine translates the whole range
 * first), is counted in `stats().dmaFaults`, and the IOMMU reports it in its own way. Either
 * way the command completes: bit 0 clears and, when requested, interrupt 0x100 is raised, as
 * QEMU does.
 *
 * Interrupts: while interrupt status is non-zero the device asserts INTx (level), or, when MSI
 * is enabled, sends one MSI message each time a raise leaves the status non-zero (edge).
 */
import { ACCESS_READ, ACCESS_WRITE } from "../engine/access.ts";
import { PciFunction } from "../pci/function.ts";
import { MsiCapability } from "../pci/msi.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";

export const EDU_VENDOR_ID = 0x1234;
export const EDU_DEVICE_ID = 0x11e8;
export const EDU_REVISION = 0x10;
export const EDU_BAR0_SIZE = 1 << 20;
export const EDU_ID_VALUE = 0x010000ed;

export const EDU_REG_ID = 0x00;
export const EDU_REG_LIVENESS = 0x04;
export const EDU_REG_FACTORIAL = 0x08;
export const EDU_REG_STATUS = 0x20;
export const EDU_REG_IRQ_STATUS = 0x24;
export const EDU_REG_IRQ_RAISE = 0x60;
export const EDU_REG_IRQ_ACK = 0x64;
export const EDU_REG_DMA_SRC = 0x80;
export const EDU_REG_DMA_DST = 0x88;
export const EDU_REG_DMA_COUNT = 0x90;
export const EDU_REG_DMA_CMD = 0x98;

export const EDU_STATUS_COMPUTING = 0x01;
export const EDU_STATUS_IRQ_FACTORIAL = 0x80;
export const EDU_DMA_START = 0x1;
export const EDU_DMA_DIR_TO_RAM = 0x2;
export const EDU_DMA_IRQ = 0x4;
export const EDU_IRQ_FACTORIAL = 0x001;
export const EDU_IRQ_DMA = 0x100;

export const EDU_DMA_BUFFER_ADDRESS = 0x40000;
export const EDU_DMA_BUFFER_SIZE = 4096;
export const EDU_DEFAULT_DMA_MASK = 2 ** 28 - 1;

export interface EduOptions {
  /** Mask applied to RAM-side DMA addresses; default 2^28 - 1 (QEMU's default). */
  readonly dmaMask?: number;
  readonly name?: string;
}

export interface EduStats {
  readonly factorials: number;
  readonly dmaTransfers: number;
  readonly dmaBytes: number;
  readonly dmaFaults: number;
  readonly dmaRangeErrors: number;
  readonly dmaAddressesClamped: number;
  readonly interruptsRaised: number;
  readonly badAccesses: number;
}

/** n! mod 2^32. For n >= 34, n! has at least 32 factors of two, so the result is 0. */
export function factorialMod32(n: number): number {
  if (n >= 34) return 0;
  let r = 1;
  for (let i = 2; i <= n; i++) r = Math.imul(r, i) >>> 0;
  return r >>> 0;
}

export class EduDevice {
  readonly pci: PciFunction;
  readonly msi: MsiCapability;
  readonly buffer = new Uint8Array(EDU_DMA_BUFFER_SIZE);
  private readonly dmaMask: number;

  private liveness = 0;
  private factorial = 0;
  private status = 0;
  private irqStatus = 0;
  // 64-bit DMA registers as two 32-bit halves each.
  private readonly dmaRegs = new Uint32Array(8); // src lo/hi, dst lo/hi, count lo/hi, cmd lo/hi

  factorials = 0;
  dmaTransfers = 0;
  dmaBytes = 0;
  dmaFaults = 0;
  dmaRangeErrors = 0;
  dmaAddressesClamped = 0;
  interruptsRaised = 0;
  badAccesses = 0;

  constructor(options: EduOptions = {}) {
    this.dmaMask = options.dmaMask ?? EDU_DEFAULT_DMA_MASK;
    this.pci = new PciFunction({
      name: options.name ?? "edu",
      vendorId: EDU_VENDOR_ID,
      deviceId: EDU_DEVICE_ID,
      classCode: 0x00ff00,
      revisionId: EDU_REVISION,
      subsystemVendorId: 0x1af4, // QEMU's default subsystem IDs
      subsystemId: 0x1100,
      interruptPin: 1,
    });
    const mmio: IoHandler = {
      read: (offset, sizeBytes) => this.mmioRead(offset, sizeBytes),
      write: (offset, sizeBytes, value) => this.mmioWrite(offset, sizeBytes, value),
    };
    this.pci.addBar(0, { kind: "mem32", sizeBytes: EDU_BAR0_SIZE, handler: mmio, name: "edu-mmio" });
    this.msi = new MsiCapability(this.pci, { vectors: 1, perVectorMask: false });
    this.pci.onReset = () => this.resetDevice();
  }

  private resetDevice(): void {
    this.liveness = 0;
    this.factorial = 0;
    this.status = 0;
    this.irqStatus = 0;
    this.dmaRegs.fill(0);
  }

  private sizeOk(offset: number, sizeBytes: number): boolean {
    return offset < 0x80 ? sizeBytes === 4 : sizeBytes === 4 || sizeBytes === 8;
  }

  private mmioRead(offset: number, sizeBytes: AccessSize): number {
    const ones = sizeBytes >= 4 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
    if (!this.sizeOk(offset, sizeBytes)) {
      this.badAccesses++;
      return ones;
    }
    switch (offset) {
      case EDU_REG_ID:
        return EDU_ID_VALUE;
      case EDU_REG_LIVENESS:
        return this.liveness;
      case EDU_REG_FACTORIAL:
        return this.factorial;
      case EDU_REG_STATUS:
        return this.status;
      case EDU_REG_IRQ_STATUS:
        return this.irqStatus;
      case EDU_REG_DMA_SRC:
      case EDU_REG_DMA_DST:
      case EDU_REG_DMA_COUNT:
      case EDU_REG_DMA_CMD: {
        const i = (offset - EDU_REG_DMA_SRC) / 4;
        const lo = this.dmaRegs[i];
        // 8-byte reads return the low 53 bits (platform contract for wide reads).
        return sizeBytes === 4 ? lo : (this.dmaRegs[i + 1] & 0x1fffff) * 2 ** 32 + lo;
      }
      default:
        return ones;
    }
  }

  private mmioWrite(offset: number, sizeBytes: AccessSize, value: number): void {
    if (!this.sizeOk(offset, sizeBytes) || !Number.isFinite(value)) {
      this.badAccesses++;
      return;
    }
    const v = Math.trunc(value);
    const lo = v >>> 0;
    const hi = sizeBytes === 8 ? Math.floor(v / 2 ** 32) >>> 0 : 0;
    switch (offset) {
      case EDU_REG_LIVENESS:
        this.liveness = ~lo >>> 0;
        return;
      case EDU_REG_FACTORIAL:
        if ((this.status & EDU_STATUS_COMPUTING) !== 0) return;
        this.factorial = lo;
        this.status |= EDU_STATUS_COMPUTING;
        this.computeFactorial();
        return;
      case EDU_REG_STATUS:
        // Only bit 7 is writable; bit 0 is read-only.
        this.status = (this.status & ~EDU_STATUS_IRQ_FACTORIAL) | (lo & EDU_STATUS_IRQ_FACTORIAL);
        return;
      case EDU_REG_IRQ_RAISE:
        this.raiseIrq(lo);
        return;
      case EDU_REG_IRQ_ACK:
        this.lowerIrq(lo);
        return;
      case EDU_REG_DMA_SRC:
      case EDU_REG_DMA_DST:
      case EDU_REG_DMA_COUNT: {
        if ((this.dmaRegs[6] & EDU_DMA_START) !== 0) return; // ignored while a DMA runs
        const i = (offset - EDU_REG_DMA_SRC) / 4;
        this.dmaRegs[i] = lo;
        this.dmaRegs[i + 1] = hi;
        return;
      }
      case EDU_REG_DMA_CMD:
        if ((lo & EDU_DMA_START) === 0) return;
        if ((this.dmaRegs[6] & EDU_DMA_START) !== 0) return;
        this.dmaRegs[6] = lo;
        this.dmaRegs[7] = hi;
        this.runDma();
        return;
      default:
        return;
    }
  }

  private computeFactorial(): void {
    this.factorial = factorialMod32(this.factorial);
    this.factorials++;
    this.status &= ~EDU_STATUS_COMPUTING;
    if ((this.status & EDU_STATUS_IRQ_FACTORIAL) !== 0) this.raiseIrq(EDU_IRQ_FACTORIAL);
  }

  /** A 64-bit register value as a number, or -1 when it is not below 2^53. */
  private reg64(i: number): number {
    const hi = this.dmaRegs[i + 1];
    return hi >= 0x200000 ? -1 : hi * 2 ** 32 + this.dmaRegs[i];
  }

  /** The RAM-side address after the DMA mask (2^28 - 1 by default: below 2^53 always). */
  private clampRamAddress(i: number): number {
    const lo = this.dmaRegs[i];
    const hi = this.dmaRegs[i + 1];
    const maskLo = (this.dmaMask % 2 ** 32) >>> 0;
    const maskHi = Math.floor(this.dmaMask / 2 ** 32) >>> 0;
    const clamped = ((hi & maskHi) >>> 0) * 2 ** 32 + ((lo & maskLo) >>> 0);
    if (clamped !== this.reg64(i)) this.dmaAddressesClamped++;
    return clamped;
  }

  /** QEMU edu_check_range: [start, start + count) inside the device buffer. */
  private bufferRangeOk(start: number, count: number): boolean {
    return (
      start >= EDU_DMA_BUFFER_ADDRESS &&
      count >= 0 &&
      start + count <= EDU_DMA_BUFFER_ADDRESS + EDU_DMA_BUFFER_SIZE
    );
  }

  private runDma(): void {
    const cmd = this.dmaRegs[6];
    const count = this.reg64(4);
    const toRam = (cmd & EDU_DMA_DIR_TO_RAM) !== 0;
    const bufferSide = toRam ? this.reg64(0) : this.reg64(2);
    if (count < 0 || bufferSide < 0 || !this.bufferRangeOk(bufferSide, count)) {
      this.dmaRangeErrors++;
    } else {
      const ramIova = this.clampRamAddress(toRam ? 2 : 0);
      const bufOff = bufferSide - EDU_DMA_BUFFER_ADDRESS;
      const window = this.buffer.subarray(bufOff, bufOff + count);
      const dma = this.pci.dma;
      const fault = toRam ? dma.write(ramIova, window) : dma.read(ramIova, window);
      if (fault !== null) {
        this.dmaFaults++;
        if (this.pci.tracer?.on("fault")) {
          this.pci.tracer.emit("fault", "edu", "dma-fault", {
            iova: ramIova,
            access: toRam ? ACCESS_WRITE : ACCESS_READ,
            reason: fault.reason,
          });
        }
      } else {
        this.dmaTransfers++;
        this.dmaBytes += count;
      }
    }
    this.dmaRegs[6] &= ~EDU_DMA_START;
    if ((cmd & EDU_DMA_IRQ) !== 0) this.raiseIrq(EDU_IRQ_DMA);
  }

  private raiseIrq(bits: number): void {
    this.irqStatus = (this.irqStatus | bits) >>> 0;
    if (this.irqStatus === 0) return;
    this.interruptsRaised++;
    if (this.msi.enabled) this.pci.notifyVector(0);
    else this.pci.setIntx(true);
  }

  private lowerIrq(bits: number): void {
    this.irqStatus = (this.irqStatus & ~bits) >>> 0;
    if (this.irqStatus === 0 && !this.msi.enabled) this.pci.setIntx(false);
  }

  stats(): EduStats {
    return {
      factorials: this.factorials,
      dmaTransfers: this.dmaTransfers,
      dmaBytes: this.dmaBytes,
      dmaFaults: this.dmaFaults,
      dmaRangeErrors: this.dmaRangeErrors,
      dmaAddressesClamped: this.dmaAddressesClamped,
      interruptsRaised: this.interruptsRaised,
      badAccesses: this.badAccesses,
    };
  }
}
