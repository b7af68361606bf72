/**
 * A PCI host bridge with one bus: function placement, requester IDs, configuration access by
 * the legacy 0xCF8/0xCFC mechanism and by ECAM, and (for hosts that decode guest addresses)
 * BAR mapping on the host's I/O and memory buses.
 *
 * Requester ID (PCI Express 2.2.6.2) = bus << 8 | device << 3 | function: IOMMU models use it as
 * the endpoint ID (virtio-iommu, VIOT) or source ID (VT-d) / StreamID (SMMUv3 through IORT).
 *
 * Configuration mechanism #1 (PCI Local Bus 3.0 3.2.2.3.2): CONFIG_ADDRESS at 0xCF8 (32-bit
 * only: bit 31 enable, 23:16 bus, 15:11 device, 10:8 function, 7:2 register), CONFIG_DATA at
 * 0xCFC-0xCFF with byte lanes. ECAM (PCI Express 7.2.2): offset = bus << 20 | device << 15 |
 * function << 12 | register. Absent functions read all-ones and ignore writes.
 *
 * QEMU compatibility (hw/pci/pci_host.c): QEMU keeps bits 1:0 of CONFIG_ADDRESS and decodes a
 * CONFIG_DATA access at 0xCFC+n as register (CONFIG_ADDRESS[7:0] | n), so a program that
 * writes register 2 and reads a word at 0xCFC gets the device ID; an access running past
 * offset 0xFF is cut at 0xFF. Guests written for QEMU rely on this, so we decode the same
 * way. Reading CONFIG_ADDRESS back still shows bits 1:0 and 30:24 as zero (PCI 3.0).
 */
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { Tracer } from "../engine/trace.ts";
import type { AccessSize, IoBus, IoHandler } from "../platform/bus.ts";
import type { InterruptSink } from "../platform/interrupts.ts";
import { LEGACY_CONFIG_SPACE_SIZE } from "./config-space.ts";
import { BAR_UNMAPPED, type PciBar, PciFunction } from "./function.ts";

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_PORTS_SIZE = 8;
export const ECAM_BYTES_PER_BUS = 1 << 20;

export function requesterIdOf(bus: number, device: number, fn: number): number {
  return ((bus & 0xff) << 8) | ((device & 0x1f) << 3) | (fn & 7);
}

export function formatBdf(requesterId: number): string {
  const hex = (v: number, w: number) => v.toString(16).padStart(w, "0");
  return `${hex(requesterId >> 8, 2)}:${hex((requesterId >> 3) & 0x1f, 2)}.${requesterId & 7}`;
}

export interface PlaceOptions {
  readonly device: number;
  readonly function?: number;
  readonly interrupts: InterruptSink;
  /** Builds the function's DMA space once its requester ID is known (IOMMU endpoint or IDENTITY). */
  readonly dma: (requesterId: number) => DmaAddressSpace;
}

export interface PciBusOptions {
  /** The bus number (the host bridge's secondary bus); default 0. */
  readonly busNumber?: number;
  /** Put a host bridge function (class 06:00:00) at device 0; default true. */
  readonly hostBridge?: boolean;
  /** Receives `config` events: bar-map, bar-unmap, bar-conflict. */
  readonly tracer?: Tracer;
}

interface BarMapping {
  readonly bar: PciBar;
  readonly wrapper: IoHandler;
  mappedOn: IoBus | undefined;
  base: number;
}

export interface PciBusStats {
  readonly functions: number;
  readonly legacyConfigAccesses: number;
  readonly ecamAccesses: number;
  readonly absentFunctionAccesses: number;
  readonly barConflicts: number;
  readonly barsMapped: number;
}

export class PciBus {
  readonly busNumber: number;
  private readonly tracer: Tracer | undefined;
  private readonly slots: (PciFunction | undefined)[] = new Array(256).fill(undefined);
  private configAddress = 0;
  private memoryBus: IoBus | undefined;
  private ioBus: IoBus | undefined;
  private readonly mappings: BarMapping[] = [];

  legacyConfigAccesses = 0;
  ecamAccesses = 0;
  absentFunctionAccesses = 0;
  barConflicts = 0;

  /** Handler for ports 0xCF8-0xCFF; register it at PCI_CONFIG_ADDRESS_PORT, size 8. */
  readonly legacyConfigHandler: IoHandler;
  /** Handler for the ECAM window (one bus: 1 MiB); register it at the MCFG base. */
  readonly ecamHandler: IoHandler;
  readonly ecamSizeBytes = ECAM_BYTES_PER_BUS;

  constructor(options: PciBusOptions = {}) {
    this.busNumber = options.busNumber ?? 0;
    this.tracer = options.tracer;
    this.legacyConfigHandler = {
      read: (offset, sizeBytes) => this.legacyRead(offset, sizeBytes),
      write: (offset, sizeBytes, value) => this.legacyWrite(offset, sizeBytes, value),
    };
    this.ecamHandler = {
      read: (offset, sizeBytes) => this.ecamRead(offset, sizeBytes),
      write: (offset, sizeBytes, value) => this.ecamWrite(offset, sizeBytes, value),
    };
    if (options.hostBridge !== false) {
      const bridge = new PciFunction({
        name: "host-bridge",
        vendorId: 0x1b36, // Red Hat, QEMU's PCIe host bridge ID
        deviceId: 0x0008,
        classCode: 0x060000,
        revisionId: 0,
      });
      this.placeRaw(bridge, 0, 0);
    }
  }

  private placeRaw(fn: PciFunction, device: number, functionNumber: number): number {
    if (!Number.isInteger(device) || device < 0 || device > 31 || !Number.isInteger(functionNumber)) {
      throw new Error(`bad device number ${device}`);
    }
    if (functionNumber < 0 || functionNumber > 7) throw new Error(`bad function number ${functionNumber}`);
    const slot = (device << 3) | functionNumber;
    if (this.slots[slot] !== undefined) throw new Error(`PCI slot ${device}.${functionNumber} is taken`);
    this.slots[slot] = fn;
    // PCI 3.0 6.2.1: header type bit 7 on function 0 announces a multi-function device.
    const fn0 = this.slots[device << 3];
    let multi = false;
    for (let f = 1; f < 8; f++) if (this.slots[(device << 3) | f] !== undefined) multi = true;
    fn0?.setMultiFunction(multi);
    for (const bar of fn.bars) {
      if (bar === undefined) continue;
      const wrapper: IoHandler = {
        read: (offset, sizeBytes) => bar.handler.read(offset, sizeBytes),
        write: (offset, sizeBytes, value) => bar.handler.write(offset, sizeBytes, value),
      };
      this.mappings.push({ bar, wrapper, mappedOn: undefined, base: BAR_UNMAPPED });
    }
    fn.onDecodeChange = () => this.remap();
    return requesterIdOf(this.busNumber, device, functionNumber);
  }

  /** Places `fn`, connects its interrupts and DMA, and returns its requester ID. */
  addFunction(fn: PciFunction, options: PlaceOptions): number {
    const requesterId = this.placeRaw(fn, options.device, options.function ?? 0);
    fn.connect({ requesterId, interrupts: options.interrupts, dma: options.dma(requesterId) });
    return requesterId;
  }

  /**
   * Removes the function at device.function (surprise hot-unplug): its BARs stop decoding, its
   * INTx line is released, and the slot reads all-ones again. Returns the function, if any.
   * The caller detaches it from its IOMMU (e.g. virtio-iommu `removeEndpoint`).
   */
  removeFunction(device: number, functionNumber = 0): PciFunction | undefined {
    const fn = this.functionAt(device, functionNumber);
    if (fn === undefined) return undefined;
    this.slots[(device << 3) | functionNumber] = undefined;
    fn.setIntx(false);
    fn.onDecodeChange = undefined;
    for (let i = this.mappings.length - 1; i >= 0; i--) {
      const m = this.mappings[i];
      if (fn.bars[m.bar.index] !== m.bar) continue;
      if (m.mappedOn !== undefined) m.mappedOn.unregister(m.wrapper);
      this.mappings.splice(i, 1);
    }
    const fn0 = this.slots[device << 3];
    let multi = false;
    for (let f = 1; f < 8; f++) if (this.slots[(device << 3) | f] !== undefined) multi = true;
    fn0?.setMultiFunction(multi);
    this.remap();
    return fn;
  }

  functionAt(device: number, functionNumber: number): PciFunction | undefined {
    if (device < 0 || device > 31 || functionNumber < 0 || functionNumber > 7) return undefined;
    return this.slots[(device << 3) | functionNumber];
  }

  /** All placed functions with their requester IDs. */
  functions(): { requesterId: number; fn: PciFunction }[] {
    const out: { requesterId: number; fn: PciFunction }[] = [];
    this.slots.forEach((fn, slot) => {
      if (fn !== undefined) out.push({ requesterId: (this.busNumber << 8) | slot, fn });
    });
    return out;
  }

  /**
   * Lets the bus map BARs on the host's buses: memory BARs on `memory` while Command.Memory is
   * set, I/O BARs on `io` while Command.IO is set, at the addresses the guest programmed.
   */
  attachDecode(memory: IoBus, io?: IoBus): void {
    this.memoryBus = memory;
    this.ioBus = io;
    this.remap();
  }

  /** Recomputes every BAR mapping (BAR or command changes are rare; overlaps resolve in order). */
  private remap(): void {
    const before = this.mappings.map((m) => m.base);
    for (const m of this.mappings) {
      if (m.mappedOn !== undefined) m.mappedOn.unregister(m.wrapper);
      m.mappedOn = undefined;
      m.base = BAR_UNMAPPED;
    }
    for (const m of this.mappings) {
      const bar = m.bar;
      const owner = this.ownerOf(bar);
      if (owner === undefined) continue;
      const isIo = bar.kind === "io";
      const target = isIo ? this.ioBus : this.memoryBus;
      const enabled = isIo ? owner.ioDecodeEnabled : owner.memoryDecodeEnabled;
      const base = bar.address;
      if (target === undefined || !enabled || base === BAR_UNMAPPED) continue;
      try {
        target.register(base, bar.sizeBytes, m.wrapper, bar.name);
        m.mappedOn = target;
        m.base = base;
      } catch {
        // A guest may program overlapping BARs; the later one does not decode (counted).
        this.barConflicts++;
        if (this.tracer?.on("config")) {
          this.tracer.emit("config", "pci", "bar-conflict", {
            bar: bar.name,
            address: base,
            sizeBytes: bar.sizeBytes,
          });
        }
      }
    }
    if (this.tracer?.on("config")) {
      this.mappings.forEach((m, i) => {
        if (m.base === before[i]) return;
        this.tracer?.emit("config", "pci", m.base === BAR_UNMAPPED ? "bar-unmap" : "bar-map", {
          bar: m.bar.name,
          address: m.base === BAR_UNMAPPED ? before[i] : m.base,
          sizeBytes: m.bar.sizeBytes,
        });
      });
    }
  }

  private ownerOf(bar: PciBar): PciFunction | undefined {
    for (const fn of this.slots) if (fn?.bars[bar.index] === bar) return fn;
    return undefined;
  }

  /** The address a BAR is currently decoded at, or BAR_UNMAPPED. */
  mappedAddress(bar: PciBar): number {
    for (const m of this.mappings) if (m.bar === bar) return m.base;
    return BAR_UNMAPPED;
  }

  /** Configuration read of bus/device/function; all-ones for an absent function. */
  readConfig(bus: number, device: number, functionNumber: number, offset: number, sizeBytes: number): number {
    const fn = bus === this.busNumber ? this.functionAt(device, functionNumber) : undefined;
    if (fn === undefined) {
      this.absentFunctionAccesses++;
      return sizeBytes === 1 ? 0xff : sizeBytes === 2 ? 0xffff : 0xffffffff;
    }
    return fn.readConfig(offset, sizeBytes);
  }

  writeConfig(
    bus: number,
    device: number,
    functionNumber: number,
    offset: number,
    sizeBytes: number,
    value: number,
  ): void {
    const fn = bus === this.busNumber ? this.functionAt(device, functionNumber) : undefined;
    if (fn === undefined) {
      this.absentFunctionAccesses++;
      return;
    }
    fn.writeConfig(offset, sizeBytes, value);
  }

  private legacyRead(offset: number, sizeBytes: AccessSize): number {
    this.legacyConfigAccesses++;
    if (offset === 0 && sizeBytes === 4) return (this.configAddress & 0x80fffffc) >>> 0;
    if (offset >= 4 && offset + sizeBytes <= 8 && sizeBytes !== 8) {
      const a = this.configAddress;
      if ((a & 0x80000000) === 0) return allOnes(sizeBytes);
      const bus = (a >>> 16) & 0xff;
      const device = (a >>> 11) & 0x1f;
      const fn = (a >>> 8) & 7;
      const reg = legacyRegister(a, offset);
      if (reg + sizeBytes <= LEGACY_CONFIG_SPACE_SIZE)
        return this.readConfig(bus, device, fn, reg, sizeBytes);
      // Past 0xFF QEMU reads only the bytes below 0x100 and zero-extends them.
      let value = 0;
      for (let i = 0; reg + i < LEGACY_CONFIG_SPACE_SIZE; i++) {
        value += this.readConfig(bus, device, fn, reg + i, 1) * 2 ** (8 * i);
      }
      return value;
    }
    return allOnes(sizeBytes);
  }

  private legacyWrite(offset: number, sizeBytes: AccessSize, value: number): void {
    this.legacyConfigAccesses++;
    if (offset === 0 && sizeBytes === 4) {
      // Bits 30:24 are reserved; bits 1:0 are kept for the data-port decode (QEMU, above).
      this.configAddress = (Math.trunc(value) & 0x80ffffff) >>> 0;
      return;
    }
    if (offset >= 4 && offset + sizeBytes <= 8 && sizeBytes !== 8) {
      const a = this.configAddress;
      if ((a & 0x80000000) === 0) return;
      const bus = (a >>> 16) & 0xff;
      const device = (a >>> 11) & 0x1f;
      const fn = (a >>> 8) & 7;
      const reg = legacyRegister(a, offset);
      if (reg + sizeBytes <= LEGACY_CONFIG_SPACE_SIZE) {
        this.writeConfig(bus, device, fn, reg, sizeBytes, value);
        return;
      }
      // Past 0xFF QEMU writes only the bytes below 0x100 (the low bytes of the value).
      const v = Math.trunc(value) >>> 0;
      for (let i = 0; reg + i < LEGACY_CONFIG_SPACE_SIZE; i++) {
        this.writeConfig(bus, device, fn, reg + i, 1, (v >>> (8 * i)) & 0xff);
      }
    }
  }

  private ecamRead(offset: number, sizeBytes: AccessSize): number {
    this.ecamAccesses++;
    if (sizeBytes === 8 || !Number.isInteger(offset) || offset < 0) return allOnes(sizeBytes);
    const reg = offset & 0xfff;
    if (reg + sizeBytes > 0x1000) return allOnes(sizeBytes);
    return this.readConfig(
      this.busNumber + Math.floor(offset / ECAM_BYTES_PER_BUS),
      (offset >>> 15) & 0x1f,
      (offset >>> 12) & 7,
      reg,
      sizeBytes,
    );
  }

  private ecamWrite(offset: number, sizeBytes: AccessSize, value: number): void {
    this.ecamAccesses++;
    if (sizeBytes === 8 || !Number.isInteger(offset) || offset < 0) return;
    const reg = offset & 0xfff;
    if (reg + sizeBytes > 0x1000) return;
    this.writeConfig(
      this.busNumber + Math.floor(offset / ECAM_BYTES_PER_BUS),
      (offset >>> 15) & 0x1f,
      (offset >>> 12) & 7,
      reg,
      sizeBytes,
      value,
    );
  }

  stats(): PciBusStats {
    return {
      functions: this.slots.filter((s) => s !== undefined).length,
      legacyConfigAccesses: this.legacyConfigAccesses,
      ecamAccesses: this.ecamAccesses,
      absentFunctionAccesses: this.absentFunctionAccesses,
      barConflicts: this.barConflicts,
      barsMapped: this.mappings.filter((m) => m.mappedOn !== undefined).length,
    };
  }
}

/** The register a CONFIG_DATA access at port offset `offset` (4-7) reaches: QEMU ORs the port's low bits into CONFIG_ADDRESS[7:0]. */
function legacyRegister(configAddress: number, offset: number): number {
  return (configAddress & 0xff) | (offset & 3);
}

function allOnes(sizeBytes: number): number {
  return sizeBytes >= 4 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
}
