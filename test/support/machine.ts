/**
 * A minimal machine for device tests: guest RAM, port and memory buses, a recording interrupt
 * sink, and one PCI bus decoded through 0xCF8/0xCFC and ECAM, with BARs mapped on the buses.
 */
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { Tracer } from "../../src/engine/trace.ts";
import { PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_PORTS_SIZE, PciBus } from "../../src/pci/bus.ts";
import type { PciFunction } from "../../src/pci/function.ts";
import { IoBus } from "../../src/platform/bus.ts";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import { PciDriver, TEST_ECAM_BASE } from "./pci-driver.ts";
import { prng } from "./prng.ts";

export { prng };

export interface TestMachineOptions {
  /** Guest RAM size at gpa 0; default 16 MiB. */
  readonly ramBytes?: number;
  /** Tracer for the PCI bus (BAR map events). */
  readonly tracer?: Tracer;
}

export class TestMachine {
  readonly memory: GuestMemory;
  readonly io = new IoBus("io");
  readonly mmio = new IoBus("mmio");
  readonly irq = new RecordingInterruptSink();
  readonly pci: PciBus;
  readonly driver: PciDriver;

  constructor(options: TestMachineOptions = {}) {
    this.pci = new PciBus({ tracer: options.tracer });
    this.memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: options.ramBytes ?? 16 << 20, name: "ram" }]);
    this.io.register(
      PCI_CONFIG_ADDRESS_PORT,
      PCI_CONFIG_PORTS_SIZE,
      this.pci.legacyConfigHandler,
      "pci-config",
    );
    this.mmio.register(TEST_ECAM_BASE, this.pci.ecamSizeBytes, this.pci.ecamHandler, "ecam");
    this.pci.attachDecode(this.mmio, this.io);
    this.driver = new PciDriver(this.io, this.mmio);
  }

  /** Places `fn` at device `device`; DMA through `dma(requesterId)` or IDENTITY. */
  add(fn: PciFunction, device: number, dma?: (requesterId: number) => DmaAddressSpace): number {
    return this.pci.addFunction(fn, {
      device,
      interrupts: this.irq,
      dma: dma ?? ((rid) => new DmaAddressSpace(this.memory, IDENTITY, rid)),
    });
  }
}

/** FNV-1a over a byte range, to prove memory did not change. */
export function checksum(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193) >>> 0;
  return h;
}
