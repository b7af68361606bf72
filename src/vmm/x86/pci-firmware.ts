/**
 * What PC firmware (SeaBIOS under QEMU) does to PCI before it starts a kernel: size every BAR
 * with the all-ones protocol (PCI 3.0 6.2.5.1), assign addresses from the 32-bit memory window
 * and the I/O port window, naturally aligned, enable memory and I/O decoding, and write each
 * function's Interrupt Line (PCI 3.0 6.2.4) with the interrupt input its INTx pin reaches. Bus
 * mastering stays off: the guest driver enables it, as on real machines.
 *
 * Interrupt Line: SeaBIOS on q35 writes the 8259 IRQ it routed the PIRQ to (10 or 11), which
 * QEMU also drives into the IOAPIC input of that number. This machine has no 8259, so the one
 * input a device's INTx reaches is its IOAPIC input (16-23): that is the value written, and a
 * guest that programs its IOAPIC entry from Interrupt Line gets the interrupt.
 */
import type { PciBus } from "../../pci/bus.ts";

const REG_COMMAND = 0x04;
const REG_BAR0 = 0x10;
const REG_INTERRUPT_LINE = 0x3c;
const REG_INTERRUPT_PIN = 0x3d;
const CMD_IO = 0x1;
const CMD_MEMORY = 0x2;

export interface BarAssignment {
  readonly requesterId: number;
  readonly bar: number;
  readonly kind: "io" | "mem32" | "mem64";
  readonly address: number;
  readonly sizeBytes: number;
}

export interface PciWindows {
  readonly mmioBase: number;
  readonly mmioEnd: number;
  readonly ioBase: number;
  readonly ioEnd: number;
}

function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

export function assignPciResources(
  pci: PciBus,
  windows: PciWindows,
  /** The interrupt input INTx pin `pin` (INTA#=0) of `requesterId` reaches. */
  intxInput?: (requesterId: number, pin: number) => number,
): BarAssignment[] {
  const out: BarAssignment[] = [];
  let mmio = windows.mmioBase;
  let io = windows.ioBase;
  const bus = pci.busNumber;
  for (const { requesterId } of pci.functions()) {
    const dev = (requesterId >> 3) & 0x1f;
    const fn = requesterId & 7;
    const interruptPin = pci.readConfig(bus, dev, fn, REG_INTERRUPT_PIN, 1);
    // Interrupt Pin 1-4 = INTA#-INTD#; 0 = no INTx, and the line stays as the device reset it.
    if (intxInput !== undefined && interruptPin >= 1 && interruptPin <= 4) {
      pci.writeConfig(bus, dev, fn, REG_INTERRUPT_LINE, 1, intxInput(requesterId, interruptPin - 1));
    }
    let cmd = 0;
    for (let bar = 0; bar < 6; bar++) {
      const reg = REG_BAR0 + bar * 4;
      const original = pci.readConfig(bus, dev, fn, reg, 4);
      pci.writeConfig(bus, dev, fn, reg, 4, 0xffffffff);
      const sized = pci.readConfig(bus, dev, fn, reg, 4);
      pci.writeConfig(bus, dev, fn, reg, 4, original);
      if (sized === 0 || sized === 0xffffffff) continue;
      if (sized & 1) {
        const size = (~(sized & ~0x3) + 1) & 0xffff;
        if (size === 0) continue;
        const address = alignUp(io, size);
        if (address + size > windows.ioEnd) throw new Error("PCI I/O window exhausted");
        pci.writeConfig(bus, dev, fn, reg, 4, address);
        io = address + size;
        cmd |= CMD_IO;
        out.push({ requesterId, bar, kind: "io", address, sizeBytes: size });
        continue;
      }
      const is64 = ((sized >>> 1) & 3) === 2;
      let size = (~(sized & ~0xf) + 1) >>> 0;
      if (is64) {
        // Size the upper half too; we place every BAR below 4 GiB, so it must fit there.
        const hiReg = reg + 4;
        const hiOriginal = pci.readConfig(bus, dev, fn, hiReg, 4);
        pci.writeConfig(bus, dev, fn, hiReg, 4, 0xffffffff);
        const hiSized = pci.readConfig(bus, dev, fn, hiReg, 4);
        pci.writeConfig(bus, dev, fn, hiReg, 4, hiOriginal);
        if (hiSized !== 0xffffffff)
          throw new Error(`BAR${bar} of ${requesterId.toString(16)} is larger than 4 GiB`);
        if ((sized & ~0xf) === 0) continue;
      }
      if (size === 0) continue;
      size = Math.max(size, 4096);
      const address = alignUp(mmio, size);
      if (address + size > windows.mmioEnd) throw new Error("PCI memory window exhausted");
      pci.writeConfig(bus, dev, fn, reg, 4, address);
      if (is64) pci.writeConfig(bus, dev, fn, reg + 4, 4, 0);
      mmio = address + size;
      cmd |= CMD_MEMORY;
      out.push({ requesterId, bar, kind: is64 ? "mem64" : "mem32", address, sizeBytes: size });
      if (is64) bar++;
    }
    if (cmd !== 0) {
      const current = pci.readConfig(bus, dev, fn, REG_COMMAND, 2);
      pci.writeConfig(bus, dev, fn, REG_COMMAND, 2, current | cmd);
    }
  }
  return out;
}
