/**
 * The guest's view of an assigned PCI device: a `PciFunction` whose configuration space is
 * virtualized the way QEMU's vfio-pci does it, over a device opened through VFIO.
 *
 * - Emulated here: the type-0 header (0x00-0x3F): identity copied from the device at open, the
 *   BARs (placed by our firmware, sized from the VFIO regions, never written to the device: the
 *   kernel keeps the real ones), the ROM BAR (no ROM is exposed: reads 0), the capability
 *   pointer, interrupt line and pin.
 * - Command: kept here (bus-master gate, decode). Bus Master and INTx Disable are written
 *   through to the device, so it may DMA only when the guest lets it. I/O and Memory decode are
 *   not: the guest's BARs are emulated and every BAR access is trapped here, so the guest's
 *   decode bits only steer our BAR routing; the device decodes its own BARs (the kernel keeps
 *   them) from open to close. A guest sizing BARs toggles decode a dozen times; written
 *   through, each toggle is a slow config write on the host and, when the host's device is
 *   itself emulated (a vfio-user device in a QEMU guest), a memory-map change there.
 * - MSI: an emulated MSI capability (the only one in the list) when the device has MSI vectors.
 *   When the guest enables it, each vector gets an eventfd that VFIO signals
 *   (VFIO_DEVICE_SET_IRQS) and the VMM binds to a KVM GSI routed to the guest's message, after
 *   interrupt remapping (KVM_IRQFD; `MsiWiring`), so interrupts never pass through this process.
 * - Everything else from 0x40 up goes to the device's config region as is; vfio-pci in the
 *   kernel filters it. The device's own capability list is not offered: MSI-X and INTx are not
 *   wired yet, and the guest must not try to use them.
 * - BAR accesses are trapped and become pread/pwrite on the VFIO region (no mmap into the guest).
 */
import {
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
} from "../pci/config-space.ts";
import { type BarKind, PciFunction } from "../pci/function.ts";
import { MSI_ADDRESS_HI, MSI_ADDRESS_LO, MSI_DATA, MsiCapability } from "../pci/msi.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { MsiMessage } from "../platform/interrupts.ts";
import type { VfioPciDevice } from "./device.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd } from "./libc.ts";
import { VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from "./uapi.ts";

/** How the VMM delivers an assigned device's MSI vectors (KVM_IRQFD + a GSI route). */
export interface MsiWiring {
  /**
   * Signals on eventfd `fd` reach the guest as `message` from `requesterId` (through interrupt
   * remapping, like the device's other messages); null stops them.
   */
  route(fd: number, requesterId: number, message: MsiMessage | null): void;
}

/** The emulated MSI capability's size: 64-bit, no per-vector masking. */
const MSI_CAP_BYTES = 0x0e;

const HEADER_END = 0x40;
const COMMAND = 0x04;
/** Command bits that follow the guest's; the decode bits stay as `resetDevice` set them. */
const FORWARDED_COMMAND_BITS = PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
const DECODE_BITS = PCI_COMMAND_IO | PCI_COMMAND_MEMORY;

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
  /** Set by the VMM before the guest runs; without it MSI stays unwired (counted). */
  msiWiring: MsiWiring | null = null;
  private readonly msiCap: MsiCapability | null = null;
  private readonly msiFds: number[] = [];
  /** Vectors armed in VFIO now (0: MSI off), and the messages they are routed to. */
  private msiArmed = 0;
  private readonly msiRouted: string[] = [];
  private msiSetupErrors = 0;
  private msiUnwired = 0;
  /** I/O and/or Memory: what the device's BARs need decoded (set on the device at open). */
  private deviceDecode = 0;
  /** The Command value last written to the device (-1: unknown). */
  private deviceCommand = -1;

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
    const msiVectors = device.irqCount(VFIO_PCI_MSI_IRQ_INDEX);
    if (msiVectors > 0) {
      // Vectors a guest may enable: a power of two, at most 32 (PCI 3.0 6.8.1.3).
      let vectors = 1;
      while (vectors * 2 <= Math.min(msiVectors, 32)) vectors *= 2;
      this.msiCap = new MsiCapability(this, { vectors, perVectorMask: false });
    }
    for (const bar of this.bars) {
      if (bar !== undefined) this.deviceDecode |= bar.kind === "io" ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY;
    }
    this.onCommandChange = (_old, now) => this.writeDeviceCommand(now & FORWARDED_COMMAND_BITS);
    // VM reset: the device's side of it (interrupts, decode, bus master, FLR), after the
    // emulated registers were reset.
    this.onReset = () => this.resetDevice();
    // A guest starts with a quiet device, whatever the previous user left in it (QEMU resets
    // every device, vfio-pci included, at machine reset before the guest runs).
    this.resetDevice();
  }

  /**
   * The device's side of a reset, as QEMU's vfio_pci_reset does it: every interrupt index the
   * device has is disabled in VFIO and its routes dropped; I/O, memory decode, bus master and
   * INTx Disable are cleared in the device's Command register (vfio_pci_pre_reset: stops any
   * DMA in flight); then VFIO_DEVICE_RESET (the FLR, PM or bus reset vfio-pci found for the
   * device) when it has one; the outcome is counted in the device's stats (resets,
   * resetsUnavailable).
   */
  private resetDevice(): void {
    const device = this.device;
    this.disarmMsi();
    if (device.irqCount(VFIO_PCI_INTX_IRQ_INDEX) > 0) device.disableIrq(VFIO_PCI_INTX_IRQ_INDEX);
    if (device.irqCount(VFIO_PCI_MSIX_IRQ_INDEX) > 0) device.disableIrq(VFIO_PCI_MSIX_IRQ_INDEX);
    const command = device.readConfig(COMMAND, 2);
    device.writeConfig(COMMAND, 2, command & ~(FORWARDED_COMMAND_BITS | DECODE_BITS) & 0xffff);
    device.reset();
    // The reset cleared the device's Command (an FLR does); decode goes back on for good.
    this.deviceCommand = -1;
    this.writeDeviceCommand(0);
  }

  /** The device's Command: its BARs' decode, plus the guest's `forwarded` bits; only changes are written. */
  private writeDeviceCommand(forwarded: number): void {
    const command = this.deviceDecode | forwarded;
    if (command === this.deviceCommand) return;
    this.deviceCommand = command;
    this.device.writeConfig(COMMAND, 2, command);
  }

  /** True when [offset, offset + sizeBytes) is device config (not header, not our MSI cap). */
  private passedThrough(offset: number, sizeBytes: number): sizeBytes is 1 | 2 | 4 {
    if (offset < HEADER_END || offset + sizeBytes > 0x1000) return false;
    if (sizeBytes !== 1 && sizeBytes !== 2 && sizeBytes !== 4) return false;
    const cap = this.msiCap;
    return cap === null || offset + sizeBytes <= cap.offset || offset >= cap.offset + MSI_CAP_BYTES;
  }

  override readConfig(offset: number, sizeBytes: number): number {
    if (this.passedThrough(offset, sizeBytes)) {
      this.configReads++;
      const limit = this.device.regions[7]?.sizeBytes ?? 256;
      // Past the device's config space: all-ones, as QEMU answers a read beyond a function's size.
      if (offset + sizeBytes > limit) return sizeBytes === 4 ? 0xffffffff : (1 << (8 * sizeBytes)) - 1;
      return this.device.readConfig(offset, sizeBytes);
    }
    return super.readConfig(offset, sizeBytes);
  }

  override writeConfig(offset: number, sizeBytes: number, value: number): void {
    if (this.passedThrough(offset, sizeBytes)) {
      if (!Number.isFinite(value)) return;
      this.configWrites++;
      const limit = this.device.regions[7]?.sizeBytes ?? 256;
      if (offset + sizeBytes > limit) return;
      this.device.writeConfig(offset, sizeBytes, Math.trunc(value) >>> 0);
      return;
    }
    super.writeConfig(offset, sizeBytes, value);
    const cap = this.msiCap;
    if (cap !== null && offset < cap.offset + MSI_CAP_BYTES && offset + sizeBytes > cap.offset)
      this.syncMsi(cap);
  }

  override reset(): void {
    super.reset();
    if (this.msiCap !== null) this.syncMsi(this.msiCap);
  }

  /**
   * MSI off in VFIO (always: the previous user may have left it on) and every vector's route
   * dropped.
   */
  private disarmMsi(): void {
    if (this.msiCap === null) return;
    this.device.disableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    for (let v = 0; v < this.msiArmed; v++) this.routeVector(v, null);
    this.msiArmed = 0;
  }

  /** Makes VFIO and the VMM's routes follow the guest's MSI capability. */
  private syncMsi(cap: MsiCapability): void {
    const device = this.device;
    const want = cap.enabled ? cap.allocatedVectors : 0;
    if (want !== this.msiArmed) {
      // VFIO cannot resize an enabled MSI index (NORESIZE): disable, then enable with the new count.
      if (this.msiArmed > 0) device.disableIrq(VFIO_PCI_MSI_IRQ_INDEX);
      for (let v = want; v < this.msiArmed; v++) this.routeVector(v, null);
      this.msiArmed = 0;
      if (want > 0) {
        while (this.msiFds.length < want) {
          const fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
          if (fd < 0) {
            this.msiSetupErrors++;
            return;
          }
          this.msiFds.push(fd);
        }
        if (device.setIrqEventfds(VFIO_PCI_MSI_IRQ_INDEX, this.msiFds.slice(0, want)) !== null) {
          this.msiSetupErrors++;
          return;
        }
        this.msiArmed = want;
      }
    }
    const c = this.config;
    const o = cap.offset;
    const address = c.u32(o + MSI_ADDRESS_HI) * 2 ** 32 + c.u32(o + MSI_ADDRESS_LO);
    const data = c.u16(o + MSI_DATA);
    for (let v = 0; v < this.msiArmed; v++) {
      // PCI 3.0 6.8.1.6: vector v replaces the low log2(allocated) bits of the data.
      this.routeVector(v, { address, data: (data & ~(this.msiArmed - 1)) | v });
    }
  }

  private routeVector(vector: number, message: MsiMessage | null): void {
    const key = message === null ? "" : `${message.address}:${message.data}`;
    if ((this.msiRouted[vector] ?? "") === key) return;
    this.msiRouted[vector] = key;
    if (this.msiWiring === null) {
      this.msiUnwired++;
      return;
    }
    this.msiWiring.route(this.msiFds[vector], this.requesterId, message);
  }

  msiStats(): { vectorsArmed: number; setupErrors: number; unwired: number } {
    return { vectorsArmed: this.msiArmed, setupErrors: this.msiSetupErrors, unwired: this.msiUnwired };
  }
}
