/**
 * A PCI function: the interface between device models and the hosts that run them.
 *
 * Device models (edu, virtio-pci devices) build a `PciFunction`: identity registers, BARs, and
 * capabilities (MSI, MSI-X, vendor). Hosts then use only this surface:
 *
 *   - `readConfig(offset, sizeBytes)` / `writeConfig(offset, sizeBytes, value)`: the 4 KiB type-0
 *     configuration space (offsets 0-0xFFF, sizes 1/2/4, any alignment that does not cross the
 *     end). Never throws; out-of-range reads return all-ones, writes are dropped.
 *   - `bars`: the implemented BARs by index (`PciBar`: `index`, `kind` mem32/mem64/io,
 *     `sizeBytes`, `handler`, and `address` as the guest programmed it). A host with address
 *     decode (the KVM VMM) lets `PciBus` map them on its `IoBus`es (`PciBus.attachDecode`); a
 *     vfio-user host calls `bars[i].handler.read/write(offsetInBar, ...)` directly.
 *   - `connect({ requesterId, interrupts, dma })`: done by `PciBus.addFunction`. `requesterId`
 *     is the BDF (bus << 8 | device << 3 | function) that IOMMU models use as endpoint / source
 *     ID; `interrupts` receives MSI writes and INTx pin levels with that requester ID; `dma` is
 *     the function's DMA address space (from an IOMMU model, or over IDENTITY). Connect before
 *     the guest runs: a virtio device latches `dma` when the driver sets DRIVER_OK.
 *   - `reset()`: the function-level reset state (command cleared, BARs unassigned, MSI/MSI-X
 *     off, vectors masked) plus the device's own reset.
 *
 * Devices use:
 *   - `dma`: the gated DMA address space. Bus Master Enable is enforced here, in one place (see
 *     dma-gate.ts): with it clear every DMA faults as "blocked" and writes nothing. Read `dma`
 *     when you DMA; do not keep it across `connect`.
 *   - `setIntx(asserted)`: the level of the function's INTx line. Status.Interrupt follows it;
 *     the pin is driven only while Command.InterruptDisable is clear and MSI/MSI-X are off.
 *   - `notifyVector(vector)`: an MSI-X (if enabled) or MSI (if enabled) message for `vector`;
 *     returns false when neither is enabled so the device can fall back to INTx. Messages are
 *     memory writes: with Bus Master Enable clear they are dropped (PCI 3.0 6.8.1.3), counted.
 */
import { DmaAddressSpace } from "../engine/dma-space.ts";
import { GuestMemory } from "../engine/guest-memory.ts";
import type { Tracer } from "../engine/trace.ts";
import type { IoHandler } from "../platform/bus.ts";
import type { InterruptSink, MsiMessage } from "../platform/interrupts.ts";
import * as Cfg from "./config-space.ts";
import { BusMasterGate, NO_DMA } from "./dma-gate.ts";

// Module-local copies: under tsx, imported bindings are read through getter calls.
const CONFIG_SPACE_SIZE = Cfg.CONFIG_SPACE_SIZE;
const PCI_BAR0 = Cfg.PCI_BAR0;
const PCI_CACHE_LINE_SIZE = Cfg.PCI_CACHE_LINE_SIZE;
const PCI_CAPABILITY_LIST = Cfg.PCI_CAPABILITY_LIST;
const PCI_CLASS_PROG = Cfg.PCI_CLASS_PROG;
const PCI_COMMAND = Cfg.PCI_COMMAND;
const PCI_COMMAND_INTX_DISABLE = Cfg.PCI_COMMAND_INTX_DISABLE;
const PCI_COMMAND_IO = Cfg.PCI_COMMAND_IO;
const PCI_COMMAND_MASTER = Cfg.PCI_COMMAND_MASTER;
const PCI_COMMAND_MEMORY = Cfg.PCI_COMMAND_MEMORY;
const PCI_COMMAND_PARITY = Cfg.PCI_COMMAND_PARITY;
const PCI_COMMAND_SERR = Cfg.PCI_COMMAND_SERR;
const PCI_DEVICE_ID = Cfg.PCI_DEVICE_ID;
const PCI_HEADER_TYPE = Cfg.PCI_HEADER_TYPE;
const PCI_INTERRUPT_LINE = Cfg.PCI_INTERRUPT_LINE;
const PCI_INTERRUPT_PIN = Cfg.PCI_INTERRUPT_PIN;
const PCI_LATENCY_TIMER = Cfg.PCI_LATENCY_TIMER;
const PCI_REVISION_ID = Cfg.PCI_REVISION_ID;
const PCI_STATUS = Cfg.PCI_STATUS;
const PCI_STATUS_CAP_LIST = Cfg.PCI_STATUS_CAP_LIST;
const PCI_STATUS_INTERRUPT = Cfg.PCI_STATUS_INTERRUPT;
const PCI_STATUS_W1C_MASK = Cfg.PCI_STATUS_W1C_MASK;
const PCI_SUBSYSTEM_ID = Cfg.PCI_SUBSYSTEM_ID;
const PCI_SUBSYSTEM_VENDOR_ID = Cfg.PCI_SUBSYSTEM_VENDOR_ID;
const PCI_VENDOR_ID = Cfg.PCI_VENDOR_ID;

export type BarKind = "mem32" | "mem64" | "io";

export interface BarDefinition {
  readonly kind: BarKind;
  /** A power of two: at least 16 for memory BARs, 4 for I/O BARs. */
  readonly sizeBytes: number;
  readonly prefetchable?: boolean;
  /** Handles accesses at offsets relative to the start of the BAR. Must never throw. */
  readonly handler: IoHandler;
  readonly name?: string;
}

/** Sentinel address of a BAR that is not (validly) assigned. */
export const BAR_UNMAPPED = -1;

export class PciBar {
  readonly index: number;
  readonly kind: BarKind;
  readonly sizeBytes: number;
  readonly prefetchable: boolean;
  readonly handler: IoHandler;
  readonly name: string;
  /** The read-only low bits of the BAR register (PCI 3.0 6.2.5.1): I/O bit 0, memory type, prefetchable. */
  readonly typeBits: number;
  private readonly config: Cfg.ConfigSpace;

  constructor(index: number, def: BarDefinition, config: Cfg.ConfigSpace, functionName: string) {
    this.index = index;
    this.kind = def.kind;
    this.sizeBytes = def.sizeBytes;
    this.prefetchable = def.prefetchable === true && def.kind !== "io";
    this.typeBits =
      def.kind === "io" ? 0x1 : (def.kind === "mem64" ? 0x4 : 0) | (this.prefetchable ? 0x8 : 0);
    this.handler = def.handler;
    this.name = def.name ?? `${functionName} BAR${index}`;
    this.config = config;
  }

  private get registerOffset(): number {
    return PCI_BAR0 + 4 * this.index;
  }

  /**
   * The base address the guest programmed, or BAR_UNMAPPED when it is zero or the range would
   * not fit the BAR's address space (as after the all-ones sizing write). Like QEMU, address 0
   * counts as unassigned.
   */
  get address(): number {
    const lo = this.config.u32(this.registerOffset);
    let base: number;
    let limit: number;
    if (this.kind === "io") {
      base = lo & 0xfffffffc;
      limit = 0x10000; // x86 port space
    } else if (this.kind === "mem32") {
      base = (lo & 0xfffffff0) >>> 0;
      limit = 2 ** 32;
    } else {
      const hi = this.config.u32(this.registerOffset + 4);
      base = hi * 2 ** 32 + ((lo & 0xfffffff0) >>> 0);
      limit = 2 ** 53;
    }
    if (base === 0 || base + this.sizeBytes > limit) return BAR_UNMAPPED;
    return base;
  }
}

export interface PciFunctionOptions {
  readonly name: string;
  readonly vendorId: number;
  readonly deviceId: number;
  /** 24 bits: base class << 16 | subclass << 8 | programming interface. */
  readonly classCode: number;
  readonly revisionId: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
  /** 0 = no INTx, 1 = INTA# .. 4 = INTD#. */
  readonly interruptPin?: number;
}

/** What a capability that can send messages offers to the function (MSI, MSI-X). */
export interface MessageCapability {
  readonly enabled: boolean;
  /** Sends (or pends, when masked) a message for `vector`; false when disabled. */
  notify(vector: number): boolean;
  reset(): void;
  /** Messages that found their vector masked and became pending. */
  readonly pendingSet: number;
}

export interface PciConnection {
  readonly requesterId: number;
  readonly interrupts: InterruptSink;
  readonly dma: DmaAddressSpace;
}

export interface PciFunctionStats {
  readonly configReads: number;
  readonly configWrites: number;
  readonly messagesSent: number;
  readonly messagesDroppedBusMasterOff: number;
  readonly intxAssertions: number;
  readonly dmaRefusedBusMasterOff: number;
  /** Messages held as pending because their MSI / MSI-X vector was masked. */
  readonly messagesPended: number;
  /** DMA through the function's (gated) address space. */
  readonly dma: ReturnType<DmaAddressSpace["stats"]>;
}

const DROP_SINK: InterruptSink = {
  signalMsi(): void {},
  setPin(): void {},
};

// One byte of RAM so an unconnected function can have a DmaAddressSpace whose every access faults.
const NO_MEMORY = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1, name: "none" }]);

export class PciFunction {
  readonly name: string;
  readonly config = new Cfg.ConfigSpace();
  readonly bars: (PciBar | undefined)[] = [undefined, undefined, undefined, undefined, undefined, undefined];
  /** Set by the MSI / MSI-X capability constructors. */
  msi: MessageCapability | undefined;
  msix: MessageCapability | undefined;
  /** Called after any change of BAR addresses or decode enables (PciBus remaps). */
  onDecodeChange: (() => void) | undefined;
  /** Called by `reset()` after the PCI-level state was reset: the device's own reset. */
  onReset: (() => void) | undefined;
  /** Called after a command register write with the old and new value. */
  onCommandChange: ((oldCommand: number, newCommand: number) => void) | undefined;
  tracer: Tracer | undefined;

  private requesterIdValue = 0;
  private sink: InterruptSink = DROP_SINK;
  private gate = new BusMasterGate(NO_DMA);
  private gatedDma: DmaAddressSpace = new DmaAddressSpace(NO_MEMORY, this.gate, 0);
  private intxLevel = false;
  private pinDriven = false;
  private readonly interruptPin: number;

  configReads = 0;
  configWrites = 0;
  messagesSent = 0;
  messagesDroppedBusMasterOff = 0;
  intxAssertions = 0;

  constructor(options: PciFunctionOptions) {
    this.name = options.name;
    const c = this.config;
    c.setU16(PCI_VENDOR_ID, options.vendorId);
    c.setU16(PCI_DEVICE_ID, options.deviceId);
    c.setU8(PCI_REVISION_ID, options.revisionId);
    c.setU8(PCI_CLASS_PROG, options.classCode & 0xff);
    c.setU16(PCI_CLASS_PROG + 1, (options.classCode >>> 8) & 0xffff);
    c.setU16(PCI_SUBSYSTEM_VENDOR_ID, options.subsystemVendorId ?? 0);
    c.setU16(PCI_SUBSYSTEM_ID, options.subsystemId ?? 0);
    this.interruptPin = options.interruptPin ?? 0;
    if (this.interruptPin < 0 || this.interruptPin > 4) throw new Error(`${this.name}: bad interrupt pin`);
    c.setU8(PCI_INTERRUPT_PIN, this.interruptPin);
    c.setWritable(
      PCI_COMMAND,
      2,
      PCI_COMMAND_IO |
        PCI_COMMAND_MEMORY |
        PCI_COMMAND_MASTER |
        PCI_COMMAND_PARITY |
        PCI_COMMAND_SERR |
        (this.interruptPin !== 0 ? PCI_COMMAND_INTX_DISABLE : 0),
    );
    c.setW1c(PCI_STATUS, 2, PCI_STATUS_W1C_MASK);
    c.setWritable(PCI_CACHE_LINE_SIZE, 1, 0xff);
    c.setWritable(PCI_LATENCY_TIMER, 1, 0xff);
    c.setWritable(PCI_INTERRUPT_LINE, 1, 0xff);
  }

  /** Declares BAR `index`; a 64-bit BAR also takes `index + 1`. */
  addBar(index: number, def: BarDefinition): PciBar {
    const size = def.sizeBytes;
    const minSize = def.kind === "io" ? 4 : 16;
    if (!isPowerOfTwo(size) || size < minSize || size > 2 ** 52) {
      throw new Error(`${this.name}: BAR${index} size ${size} is not a power of two >= ${minSize}`);
    }
    const last = def.kind === "mem64" ? index + 1 : index;
    if (index < 0 || last > 5 || this.bars[index] !== undefined || this.bars[last] !== undefined) {
      throw new Error(`${this.name}: BAR${index} unavailable`);
    }
    if (def.kind !== "mem64" && size > 2 ** 31) throw new Error(`${this.name}: BAR${index} too large`);
    const bar = new PciBar(index, def, this.config, this.name);
    const off = PCI_BAR0 + 4 * index;
    const c = this.config;
    c.setU32(off, bar.typeBits);
    if (def.kind === "io") {
      c.setWritable(off, 4, ~(size - 1) & 0xfffffffc);
    } else {
      const sizeMaskLow = size >= 2 ** 32 ? 0 : ~(size - 1) & 0xfffffff0;
      c.setWritable(off, 4, sizeMaskLow);
      if (def.kind === "mem64") {
        const hiMask = size > 2 ** 32 ? ~(size / 2 ** 32 - 1) : 0xffffffff;
        c.setWritable(off + 4, 4, hiMask);
      }
    }
    this.bars[index] = bar;
    return bar;
  }

  get requesterId(): number {
    return this.requesterIdValue;
  }

  /** The function's DMA address space, behind the bus-master gate. */
  get dma(): DmaAddressSpace {
    return this.gatedDma;
  }

  get command(): number {
    return this.config.u16(PCI_COMMAND);
  }

  get busMasterEnabled(): boolean {
    return (this.command & PCI_COMMAND_MASTER) !== 0;
  }

  get memoryDecodeEnabled(): boolean {
    return (this.command & PCI_COMMAND_MEMORY) !== 0;
  }

  get ioDecodeEnabled(): boolean {
    return (this.command & PCI_COMMAND_IO) !== 0;
  }

  /** Wires the function to its host; see the file comment. */
  connect(connection: PciConnection): void {
    this.requesterIdValue = connection.requesterId;
    this.sink = connection.interrupts;
    const open = this.gate.isOpen;
    this.gate = new BusMasterGate(connection.dma.translator);
    this.gate.setOpen(open);
    this.gatedDma = new DmaAddressSpace(connection.dma.memory, this.gate, connection.dma.endpointId);
  }

  /** Sets the header-type multi-function bit (PciBus does this for multi-function devices). */
  setMultiFunction(on: boolean): void {
    const h = this.config.u8(PCI_HEADER_TYPE);
    this.config.setU8(PCI_HEADER_TYPE, on ? h | 0x80 : h & 0x7f);
  }

  readConfig(offset: number, sizeBytes: number): number {
    if (!validAccess(offset, sizeBytes))
      return sizeBytes === 1 ? 0xff : sizeBytes === 2 ? 0xffff : 0xffffffff;
    this.configReads++;
    return this.config.read(offset, sizeBytes);
  }

  writeConfig(offset: number, sizeBytes: number, value: number): void {
    if (!validAccess(offset, sizeBytes) || !Number.isFinite(value)) return;
    this.configWrites++;
    const oldCommand = this.command;
    const touchesBars = offset < PCI_BAR0 + 24 && offset + sizeBytes > PCI_BAR0;
    this.config.write(offset, sizeBytes, Math.trunc(value) >>> 0);
    const newCommand = this.command;
    if (newCommand !== oldCommand) {
      this.gate.setOpen((newCommand & PCI_COMMAND_MASTER) !== 0);
      this.updatePin();
      this.onCommandChange?.(oldCommand, newCommand);
      if (this.tracer?.on("config")) {
        this.tracer.emit("config", "pci", "command", {
          function: this.name,
          old: oldCommand,
          new: newCommand,
        });
      }
    }
    const decodeBits = PCI_COMMAND_IO | PCI_COMMAND_MEMORY;
    if (touchesBars || (newCommand & decodeBits) !== (oldCommand & decodeBits)) this.onDecodeChange?.();
  }

  /** The level of the function's INTx line (PCI 3.0 6.2.3 Status.Interrupt follows it). */
  setIntx(asserted: boolean): void {
    if (this.interruptPin === 0) return;
    if (asserted && !this.intxLevel) this.intxAssertions++;
    this.intxLevel = asserted;
    const status = this.config.u16(PCI_STATUS);
    this.config.setU16(PCI_STATUS, asserted ? status | PCI_STATUS_INTERRUPT : status & ~PCI_STATUS_INTERRUPT);
    this.updatePin();
  }

  get intxAsserted(): boolean {
    return this.intxLevel;
  }

  /**
   * Re-evaluates the pin: driven while the line is asserted, InterruptDisable is clear, and
   * neither MSI nor MSI-X is enabled (PCI 3.0 6.8.1.3 / 6.8.2.3: INTx is not used then).
   */
  updatePin(): void {
    if (this.interruptPin === 0) return;
    const drive =
      this.intxLevel &&
      (this.command & PCI_COMMAND_INTX_DISABLE) === 0 &&
      this.msi?.enabled !== true &&
      this.msix?.enabled !== true;
    if (drive !== this.pinDriven) {
      this.pinDriven = drive;
      this.sink.setPin(this.requesterIdValue, this.interruptPin - 1, drive);
    }
  }

  /** Sends a message for `vector` by MSI-X, else MSI; false when neither is enabled. */
  notifyVector(vector: number): boolean {
    if (this.msix?.enabled === true) return this.msix.notify(vector);
    if (this.msi?.enabled === true) return this.msi.notify(vector);
    return false;
  }

  /** Used by the MSI and MSI-X capabilities: the memory write of an interrupt message. */
  sendMessage(message: MsiMessage, vector: number): void {
    if (!this.busMasterEnabled) {
      this.messagesDroppedBusMasterOff++;
      return;
    }
    this.messagesSent++;
    if (this.tracer?.on("irq")) {
      this.tracer.emit("irq", "pci", "msi", {
        function: this.name,
        vector,
        address: message.address,
        data: message.data,
      });
    }
    this.sink.signalMsi(this.requesterIdValue, message, vector);
  }

  /** Function-level reset: command, status, BARs, interrupt line, capabilities, then the device. */
  reset(): void {
    const c = this.config;
    c.setU16(PCI_COMMAND, 0);
    c.setU16(PCI_STATUS, c.u8(PCI_CAPABILITY_LIST) !== 0 ? PCI_STATUS_CAP_LIST : 0);
    c.setU8(PCI_CACHE_LINE_SIZE, 0);
    c.setU8(PCI_LATENCY_TIMER, 0);
    c.setU8(PCI_INTERRUPT_LINE, 0);
    for (const bar of this.bars) {
      if (bar === undefined) continue;
      const off = PCI_BAR0 + 4 * bar.index;
      c.setU32(off, bar.typeBits);
      if (bar.kind === "mem64") c.setU32(off + 4, 0);
    }
    this.gate.setOpen(false);
    this.msi?.reset();
    this.msix?.reset();
    this.intxLevel = false;
    this.updatePin();
    this.onDecodeChange?.();
    this.onReset?.();
  }

  stats(): PciFunctionStats {
    return {
      configReads: this.configReads,
      configWrites: this.configWrites,
      messagesSent: this.messagesSent,
      messagesDroppedBusMasterOff: this.messagesDroppedBusMasterOff,
      intxAssertions: this.intxAssertions,
      dmaRefusedBusMasterOff: this.gate.refused,
      messagesPended: (this.msi?.pendingSet ?? 0) + (this.msix?.pendingSet ?? 0),
      dma: this.gatedDma.stats(),
    };
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

function validAccess(offset: number, sizeBytes: number): boolean {
  return (
    Number.isInteger(offset) &&
    (sizeBytes === 1 || sizeBytes === 2 || sizeBytes === 4) &&
    offset >= 0 &&
    offset + sizeBytes <= CONFIG_SPACE_SIZE
  );
}
