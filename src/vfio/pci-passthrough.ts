/**
 * The guest's view of an assigned PCI device: a `PciFunction` whose configuration space is
 * virtualized the way QEMU's vfio-pci does it, over a device opened through VFIO.
 *
 * - Emulated here: the type-0 header (0x00-0x3F): identity copied from the device at open, the
 *   BARs (placed by our firmware, sized from the VFIO regions, never written to the device: the
 *   kernel keeps the real ones), the ROM BAR (no ROM is exposed: reads 0), the capability
 *   pointer, interrupt line and pin.
 * - Command: kept here (bus-master gate, decode) and its I/O, Memory, Bus Master and INTx
 *   Disable bits written through to the device, so the device decodes its BARs and may DMA.
 * - Everything from 0x40 up goes to the device's config region as is; vfio-pci in the kernel
 *   filters it (its own virtual MSI/MSI-X capabilities, read-only fields). The capability list
 *   is not offered (pointer 0, Status.CapList 0): without emulated MSI / MSI-X the guest must
 *   not try to enable the device's own.
 * - BAR accesses are trapped and become pread/pwrite on the VFIO region (no mmap into the guest).
 */
import {
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
} from "../pci/config-space.ts";
import { type BarKind, PciFunction } from "../pci/function.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { VfioPciDevice } from "./device.ts";

const HEADER_END = 0x40;
const COMMAND = 0x04;
const FORWARDED_COMMAND_BITS =
  PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;

function barHandler(device: VfioPciDevice, index: number): IoHandler {
  return {
    read(offset: number, sizeBytes: AccessSize): number {
      if (sizeBytes !== 8) return device.regionRead(index, offset, sizeBytes);
      const lo = device.regionRead(index, offset, 4);
      const hi = device.regionRead(index, offset + 4, 4);
      return (hi & 0x1fffff) * 0x1_0000_0000 + lo;
    },
    write(offset: number, sizeBytes: AccessSize, value: number): void {
      if (sizeBytes !== 8) {
        device.regionWrite(index, offset, sizeBytes, value);
        return;
      }
      device.regionWrite(index, offset, 4, value % 0x1_0000_0000);
      device.regionWrite(index, offset + 4, 4, Math.floor(value / 0x1_0000_0000));
    },
  };
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

export class VfioPciFunction extends PciFunction {
  readonly device: VfioPciDevice;

  constructor(device: VfioPciDevice, name: string) {
    const d = device;
    super({
      name,
      vendorId: d.readConfig(0x00, 2),
      deviceId: d.readConfig(0x02, 2),
      revisionId: d.readConfig(0x08, 1),
      classCode: d.readConfig(0x09, 1) | (d.readConfig(0x0a, 2) << 8),
      subsystemVendorId: d.readConfig(0x2c, 2),
      subsystemId: d.readConfig(0x2e, 2),
      // INTx is not wired to the guest yet: report no pin rather than one that never fires.
      interruptPin: 0,
    });
    this.device = device;
    for (let index = 0; index < 6; index++) {
      const region = device.regions[index];
      if (region === undefined || region.sizeBytes === 0) continue;
      const low = device.readConfig(0x10 + 4 * index, 4);
      const kind: BarKind = (low & 1) !== 0 ? "io" : (low & 0x6) === 0x4 ? "mem64" : "mem32";
      if (!isPowerOfTwo(region.sizeBytes)) continue;
      this.addBar(index, {
        kind,
        sizeBytes: region.sizeBytes,
        prefetchable: kind !== "io" && (low & 0x8) !== 0,
        handler: barHandler(device, index),
        name: `${name} BAR${index}`,
      });
      if (kind === "mem64") index++;
    }
    this.onCommandChange = (_old, now) => {
      device.writeConfig(COMMAND, 2, now & FORWARDED_COMMAND_BITS);
    };
    // VM reset: the device's function-level reset (when it has one), as QEMU's vfio_pci_reset.
    this.onReset = () => {
      device.reset();
    };
  }

  override readConfig(offset: number, sizeBytes: number): number {
    if (
      offset >= HEADER_END &&
      offset + sizeBytes <= 0x1000 &&
      (sizeBytes === 1 || sizeBytes === 2 || sizeBytes === 4)
    ) {
      this.configReads++;
      const limit = this.device.regions[7]?.sizeBytes ?? 256;
      // Past the device's config space: all-ones, as QEMU answers a read beyond a function's size.
      if (offset + sizeBytes > limit) return sizeBytes === 4 ? 0xffffffff : (1 << (8 * sizeBytes)) - 1;
      return this.device.readConfig(offset, sizeBytes);
    }
    return super.readConfig(offset, sizeBytes);
  }

  override writeConfig(offset: number, sizeBytes: number, value: number): void {
    if (
      offset >= HEADER_END &&
      offset + sizeBytes <= 0x1000 &&
      (sizeBytes === 1 || sizeBytes === 2 || sizeBytes === 4)
    ) {
      if (!Number.isFinite(value)) return;
      this.configWrites++;
      const limit = this.device.regions[7]?.sizeBytes ?? 256;
      if (offset + sizeBytes > limit) return;
      this.device.writeConfig(offset, sizeBytes, Math.trunc(value) >>> 0);
      return;
    }
    super.writeConfig(offset, sizeBytes, value);
  }
}
