/**
 * The guest's view of an assigned PCI device: a `PciFunction` whose configuration space is
 * virtualized the way QEMU's vfio-pci does it, over a device opened through VFIO.
 *
 * - Emulated here: the type-0 header (0x00-0x3F): identity copied from the device at open, the
 *   BARs (placed by our firmware, sized from the VFIO regions, never written to the device: the
 *   kernel keeps the real ones), the ROM BAR (no ROM is exposed: reads 0), interrupt line and
 *   pin.
 * - Command: kept here (bus-master gate, decode). Bus Master and INTx Disable are written
 *   through to the device, so it may DMA only when the guest lets it. I/O and Memory decode are
 *   not: the guest's BARs are emulated and every BAR access is trapped here, so the guest's
 *   decode bits only steer our BAR routing; the device decodes its own BARs (the kernel keeps
 *   them) from open to close. A guest sizing BARs toggles decode a dozen times; written
 *   through, each toggle is a slow config write on the host and, when the host's device is
 *   itself emulated (a vfio-user device in a QEMU guest), a memory-map change there.
 * - Capabilities: the device's own list, at the device's offsets (`capabilities.ts`). MSI and
 *   MSI-X are emulated in place (QEMU: vfio_msi_setup, vfio_msix_setup); the others (virtio's
 *   vendor capabilities, PCIe, PM) are passed through, and vfio-pci in the kernel filters them.
 *   MSI is offered when VFIO has MSI vectors and ours (always 64-bit) fits where the device's
 *   is; MSI-X when VFIO has MSI-X vectors and its table and PBA lie in BARs we expose.
 * - MSI / MSI-X delivery: when the guest enables one, each vector gets an eventfd that VFIO
 *   signals (VFIO_DEVICE_SET_IRQS) and the VMM binds to a KVM GSI routed to the guest's message,
 *   after interrupt remapping (KVM_IRQFD; `MsiWiring`), so interrupts never pass through this
 *   process. A masked vector (MSI-X vector or function mask, PCI 3.0 6.8.2.9; MSI per-vector
 *   mask, 6.8.1.7) is unrouted: the device's signal waits in its eventfd, shows as the vector's
 *   pending bit when the guest reads the PBA / Pending Bits, and is delivered on unmask
 *   (`irq-vectors.ts`).
 * - MSI-X table and PBA are trapped and emulated (never reach the device); the rest of their
 *   BAR, like every other BAR access, becomes pread/pwrite on the VFIO region (no mmap yet).
 * - INTx (when VFIO has it): the device's pin is offered. VFIO signals an eventfd when the line
 *   asserts and masks it (AUTOMASKED); the VMM watches that eventfd and calls `intxFired`, which
 *   raises the function's line (Status.Interrupt, the IOAPIC pin). The end of the interrupt is
 *   the guest's EOI of the pin's vector (KVM_EXIT_IOAPIC_EOI under the split irqchip, which has
 *   no resamplefd): `intxEoi` lowers the line and unmasks INTx in VFIO, which signals again at
 *   once if the device still asserts it (as QEMU's vfio_intx_eoi). The guest clearing INTx
 *   Disable resamples the same way. VFIO enables one index at a time: INTx is armed while
 *   neither MSI nor MSI-X is (QEMU: vfio_intx_enable after reset and when MSI/MSI-X go off).
 */
import {
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
} from "../pci/config-space.ts";
import { BAR_UNMAPPED, type BarKind, PciFunction } from "../pci/function.ts";
import {
  MSI_ADDRESS_HI,
  MSI_ADDRESS_LO,
  MSI_DATA,
  MSI_MASK_BITS,
  MSI_PENDING_BITS,
  MsiCapability,
} from "../pci/msi.ts";
import { MsixCapability } from "../pci/msix.ts";
import type { AccessSize } from "../platform/bus.ts";
import { BarMmap, type GuestMemoryMapper, mappablePieces } from "./bar-mmap.ts";
import {
  type DeviceCapability,
  type DeviceMsixLayout,
  fitsAt,
  readCapabilityList,
  readMsiLayout,
  readMsixLayout,
} from "./capabilities.ts";
import type { VfioPciDevice } from "./device.ts";
import { type MsiWiring, type VectorStats, VfioVectors } from "./irq-vectors.ts";
import { EFD_CLOEXEC, eventfd } from "./libc.ts";
import { VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from "./uapi.ts";

export type { MsiWiring } from "./irq-vectors.ts";

const HEADER_END = 0x40;
const COMMAND = 0x04;
/** Command bits that follow the guest's; the decode bits stay as `resetDevice` set them. */
const FORWARDED_COMMAND_BITS = PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
const DECODE_BITS = PCI_COMMAND_IO | PCI_COMMAND_MEMORY;
const MSIX_CAP_BYTES = 12;

function isPowerOfTwo(n: number): boolean {
  return n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

function allOnes(sizeBytes: number): number {
  return sizeBytes >= 4 ? 0xffffffff : (1 << (8 * sizeBytes)) - 1;
}

export interface VfioInterruptStats {
  readonly intx: { armed: boolean; signals: number; unmasks: number; setupErrors: number } | null;
  readonly msi: VectorStats | null;
  readonly msix: VectorStats | null;
}

export class VfioPciFunction extends PciFunction {
  readonly device: VfioPciDevice;
  private readonly msiCap: MsiCapability | null = null;
  private readonly msixCap: MsixCapability | null = null;
  private readonly msixLayout: DeviceMsixLayout | null = null;
  private readonly msiVectors: VfioVectors;
  private readonly msixVectors: VfioVectors;
  /** MSI-X vectors VFIO offers (the guest's table may be larger; the rest are never armed). */
  private readonly msixVfioVectors: number;
  /** [start, end) of the capabilities emulated here (not passed to the device). */
  private readonly emulated: [number, number][] = [];
  /** Next-pointer bytes of passed-through capabilities that differ from the device's (a capability left out). */
  private readonly nextOverride = new Map<number, number>();
  /** I/O and/or Memory: what the device's BARs need decoded (set on the device at open). */
  private deviceDecode = 0;
  /** The Command value last written to the device (-1: unknown). */
  private deviceCommand = -1;
  /** BAR accesses that hit the emulated MSI-X table or PBA. */
  msixTableAccesses = 0;
  /** Accesses that trapped to the VMM, per BAR (an mmapped part of a BAR never traps). */
  private readonly barTraps = [0, 0, 0, 0, 0, 0];
  /** The mmappable memory BARs (the rest are trapped). */
  private readonly barMmaps: BarMmap[] = [];
  private memoryMapper: GuestMemoryMapper | null = null;
  /** The device's INTx pin (1 = INTA#; 0: none or VFIO has no INTx). */
  private readonly intxPin: number;
  /** The eventfd VFIO signals when the device asserts INTx (blocking: the VMM's watcher reads it); -1: none. */
  readonly intxEventfd: number = -1;
  private intxArmed = false;
  private intxSignals = 0;
  private intxUnmasks = 0;
  private intxSetupErrors = 0;

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
      interruptPin: intxPinOf(device),
    });
    this.device = device;
    this.intxPin = intxPinOf(device);
    this.msiVectors = new VfioVectors(device, VFIO_PCI_MSI_IRQ_INDEX, () => this.requesterId);
    this.msixVectors = new VfioVectors(device, VFIO_PCI_MSIX_IRQ_INDEX, () => this.requesterId);
    this.addDeviceBars(name);
    const readConfig = (offset: number, sizeBytes: 1 | 2 | 4) => device.readConfig(offset, sizeBytes);
    const caps = readCapabilityList(readConfig);
    const kept: DeviceCapability[] = [];
    const msi = device.irqCount(VFIO_PCI_MSI_IRQ_INDEX) > 0 ? readMsiLayout(caps, readConfig) : null;
    this.msixVfioVectors = Math.min(device.irqCount(VFIO_PCI_MSIX_IRQ_INDEX), 2048);
    const msix = this.msixVfioVectors > 0 ? readMsixLayout(caps, readConfig) : null;
    for (const cap of caps) {
      if (cap.id === PCI_CAP_ID_MSI) {
        if (msi === null || this.msiCap !== null) continue;
        // Vectors a guest may enable: a power of two, at most 32 (PCI 3.0 6.8.1.3).
        const mmc = Math.min(5, (device.readConfig(cap.offset + 2, 2) >> 1) & 7);
        const vectors = Math.min(1 << mmc, highestPowerOfTwo(device.irqCount(VFIO_PCI_MSI_IRQ_INDEX)));
        const sizeBytes = msi.perVectorMask ? 0x18 : 0x0e;
        if (!fitsAt(cap.offset, sizeBytes, caps)) continue;
        this.msiCap = new MsiCapability(this, { vectors, perVectorMask: msi.perVectorMask, at: cap.offset });
        this.emulated.push([cap.offset, cap.offset + sizeBytes]);
      } else if (cap.id === PCI_CAP_ID_MSIX) {
        if (msix === null || this.msixCap !== null || !this.msixFitsBars(msix)) continue;
        this.msixLayout = msix;
        this.msixCap = new MsixCapability(this, { ...msix, at: cap.offset });
        this.emulated.push([cap.offset, cap.offset + MSIX_CAP_BYTES]);
      }
      kept.push(cap);
    }
    this.linkCapabilities(kept);
    this.findMappableBars();
    if (this.intxPin !== 0) this.intxEventfd = eventfd(0, EFD_CLOEXEC);
    this.onCommandChange = (old, now) => {
      this.writeDeviceCommand(now & FORWARDED_COMMAND_BITS);
      // INTx Disable cleared: whatever the line did meanwhile, ask VFIO again (resample).
      if ((old & PCI_COMMAND_INTX_DISABLE) !== 0 && (now & PCI_COMMAND_INTX_DISABLE) === 0) this.intxEoi();
    };
    // VM reset: the device's side of it (interrupts, decode, bus master, FLR), after the
    // emulated registers were reset.
    this.onReset = () => this.resetDevice();
    // A guest starts with a quiet device, whatever the previous user left in it (QEMU resets
    // every device, vfio-pci included, at machine reset before the guest runs).
    this.resetDevice();
  }

  /** Set by the VMM before the guest runs; without it MSI and MSI-X stay unwired (counted). */
  set msiWiring(wiring: MsiWiring | null) {
    this.msiVectors.wiring = wiring;
    this.msixVectors.wiring = wiring;
  }

  /**
   * Set by the VMM before the guest runs: mmappable BAR parts then become guest memory while the
   * guest decodes them (`bar-mmap.ts`); without it every BAR access traps.
   */
  set guestMemoryMapper(mapper: GuestMemoryMapper | null) {
    this.memoryMapper = mapper;
    this.syncBarMappings();
  }

  /** The memory BARs with parts VFIO lets us mmap, minus the MSI-X table and PBA pages. */
  private findMappableBars(): void {
    const l = this.msixLayout;
    const cap = this.msixCap;
    for (const bar of this.bars) {
      if (bar === undefined || bar.kind === "io") continue;
      const trapped: [number, number][] = [];
      if (l !== null && cap !== null) {
        if (l.tableBar === bar.index) trapped.push([l.tableOffset, l.tableOffset + cap.tableSizeBytes]);
        if (l.pbaBar === bar.index) trapped.push([l.pbaOffset, l.pbaOffset + cap.pbaSizeBytes]);
      }
      const areas = this.device.regions[bar.index]?.mmapAreas ?? [];
      const pieces = mappablePieces(areas, bar.sizeBytes, trapped);
      if (pieces.length > 0) this.barMmaps.push(new BarMmap(this.device, bar.index, pieces));
    }
  }

  /** Mapped BAR parts follow the guest's BAR addresses and Memory decode. */
  private syncBarMappings(): void {
    const mapper = this.memoryMapper;
    if (mapper === null) return;
    for (const m of this.barMmaps) {
      const address = this.bars[m.barIndex]?.address ?? BAR_UNMAPPED;
      m.moveTo(this.memoryDecodeEnabled && address !== BAR_UNMAPPED ? address : -1, mapper);
    }
  }

  /** BARs sized from the VFIO regions (a size that is not a power of two is not offered). */
  private addDeviceBars(name: string): void {
    const device = this.device;
    for (let index = 0; index < 6; index++) {
      const region = device.regions[index];
      if (region === undefined || region.sizeBytes === 0) continue;
      const low = device.readConfig(0x10 + 4 * index, 4);
      const kind: BarKind = (low & 1) !== 0 ? "io" : (low & 0x6) === 0x4 ? "mem64" : "mem32";
      if (!isPowerOfTwo(region.sizeBytes)) continue;
      const bar = index;
      this.addBar(index, {
        kind,
        sizeBytes: region.sizeBytes,
        prefetchable: kind !== "io" && (low & 0x8) !== 0,
        handler: {
          read: (offset, sizeBytes) => this.barRead(bar, offset, sizeBytes),
          write: (offset, sizeBytes, value) => this.barWrite(bar, offset, sizeBytes, value),
        },
        name: `${name} BAR${index}`,
      });
      this.deviceDecode |= kind === "io" ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY;
      if (kind === "mem64") index++;
    }
  }

  /** True when the MSI-X table and PBA lie inside memory BARs offered to the guest. */
  private msixFitsBars(l: DeviceMsixLayout): boolean {
    const inBar = (bir: number, offset: number, sizeBytes: number): boolean => {
      const bar = this.bars[bir];
      return bar !== undefined && bar.kind !== "io" && offset + sizeBytes <= bar.sizeBytes;
    };
    return (
      inBar(l.tableBar, l.tableOffset, l.vectors * 16) &&
      inBar(l.pbaBar, l.pbaOffset, Math.ceil(l.vectors / 64) * 8)
    );
  }

  /** The guest's capability list: `kept` in the device's order, from 0x34. */
  private linkCapabilities(kept: readonly DeviceCapability[]): void {
    const c = this.config;
    c.setU8(PCI_CAPABILITY_LIST, kept[0]?.offset ?? 0);
    const status = c.u16(PCI_STATUS);
    c.setU16(PCI_STATUS, kept.length > 0 ? status | PCI_STATUS_CAP_LIST : status & ~PCI_STATUS_CAP_LIST);
    kept.forEach((cap, i) => {
      const next = kept[i + 1]?.offset ?? 0;
      if (this.isEmulated(cap.offset, 1)) c.setU8(cap.offset + 1, next);
      else if ((this.device.readConfig(cap.offset + 1, 1) & 0xfc) !== next)
        this.nextOverride.set(cap.offset + 1, next);
    });
  }

  private isEmulated(offset: number, sizeBytes: number): boolean {
    for (const [start, end] of this.emulated) if (offset < end && start < offset + sizeBytes) return true;
    return false;
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
    if (device.irqCount(VFIO_PCI_MSI_IRQ_INDEX) > 0) this.msiVectors.disarm();
    if (device.irqCount(VFIO_PCI_INTX_IRQ_INDEX) > 0) device.disableIrq(VFIO_PCI_INTX_IRQ_INDEX);
    this.intxArmed = false;
    this.setIntx(false);
    if (this.msixVfioVectors > 0) this.msixVectors.disarm();
    const command = device.readConfig(COMMAND, 2);
    device.writeConfig(COMMAND, 2, command & ~(FORWARDED_COMMAND_BITS | DECODE_BITS) & 0xffff);
    device.reset();
    // The reset cleared the device's Command (an FLR does); decode goes back on for good.
    this.deviceCommand = -1;
    this.writeDeviceCommand(0);
    this.armIntxIfIdle();
  }

  /** INTx armed in VFIO when neither MSI nor MSI-X is (VFIO: one interrupt index at a time). */
  private armIntxIfIdle(): void {
    if (this.intxEventfd < 0 || this.intxArmed) return;
    if (this.msiVectors.armed > 0 || this.msixVectors.armed > 0) return;
    if (this.device.setIrqEventfds(VFIO_PCI_INTX_IRQ_INDEX, [this.intxEventfd]) !== null) {
      this.intxSetupErrors++;
      return;
    }
    this.intxArmed = true;
  }

  /** INTx off in VFIO before MSI or MSI-X is armed; the line drops. */
  private disarmIntx(): void {
    if (!this.intxArmed) return;
    this.device.disableIrq(VFIO_PCI_INTX_IRQ_INDEX);
    this.intxArmed = false;
    this.setIntx(false);
  }

  /** The VMM saw the INTx eventfd signalled: the device asserted its line (VFIO masked it). */
  intxFired(): void {
    if (!this.intxArmed) return;
    this.intxSignals++;
    this.setIntx(true);
  }

  /**
   * The guest ended the pin's interrupt (EOI of its IOAPIC vector) or cleared INTx Disable:
   * the line drops and VFIO unmasks it; a device still asserting signals again at once.
   */
  intxEoi(): void {
    if (!this.intxArmed || !this.intxAsserted) return;
    this.setIntx(false);
    if (this.device.unmaskIrq(VFIO_PCI_INTX_IRQ_INDEX)) this.intxUnmasks++;
    else this.intxSetupErrors++;
  }

  /** The device's Command: its BARs' decode, plus the guest's `forwarded` bits; only changes are written. */
  private writeDeviceCommand(forwarded: number): void {
    const command = this.deviceDecode | forwarded;
    if (command === this.deviceCommand) return;
    this.deviceCommand = command;
    this.device.writeConfig(COMMAND, 2, command);
  }

  /** True when [offset, offset + sizeBytes) is device config (not header, not an emulated capability). */
  private passedThrough(offset: number, sizeBytes: number): sizeBytes is 1 | 2 | 4 {
    if (offset < HEADER_END || offset + sizeBytes > 0x1000) return false;
    if (sizeBytes !== 1 && sizeBytes !== 2 && sizeBytes !== 4) return false;
    return !this.isEmulated(offset, sizeBytes);
  }

  override readConfig(offset: number, sizeBytes: number): number {
    if (this.passedThrough(offset, sizeBytes)) {
      this.configReads++;
      const limit = this.device.regions[7]?.sizeBytes ?? 256;
      // Past the device's config space: all-ones, as QEMU answers a read beyond a function's size.
      if (offset + sizeBytes > limit) return allOnes(sizeBytes);
      let value = this.device.readConfig(offset, sizeBytes);
      if (this.nextOverride.size > 0 && offset < 0x100) {
        for (let i = 0; i < sizeBytes; i++) {
          const next = this.nextOverride.get(offset + i);
          if (next === undefined) continue;
          const shift = 8 * i;
          value = (value & ~(0xff << shift)) | (next << shift);
        }
        value >>>= 0;
      }
      return value;
    }
    const msi = this.msiCap;
    if (
      msi?.perVectorMask === true &&
      offset < msi.offset + MSI_PENDING_BITS + 4 &&
      offset + sizeBytes > msi.offset + MSI_PENDING_BITS
    )
      this.collectMsiPending(msi);
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
    // Command (decode) or a BAR register: the mapped parts follow.
    if ((offset < 0x06 && offset + sizeBytes > 0x04) || (offset < 0x28 && offset + sizeBytes > 0x10))
      this.syncBarMappings();
    const msi = this.msiCap;
    if (msi !== null && offset < msi.offset + 0x18 && offset + sizeBytes > msi.offset) this.syncMsi(msi);
    const msix = this.msixCap;
    if (msix !== null && offset < msix.offset + MSIX_CAP_BYTES && offset + sizeBytes > msix.offset)
      this.syncMsix(msix);
  }

  override reset(): void {
    super.reset();
    this.syncBarMappings();
    if (this.msiCap !== null) this.syncMsi(this.msiCap);
    if (this.msixCap !== null) this.syncMsix(this.msixCap);
  }

  /** Makes VFIO and the VMM's routes follow the guest's MSI capability. */
  private syncMsi(cap: MsiCapability): void {
    const vectors = this.msiVectors;
    const want = cap.enabled ? cap.allocatedVectors : 0;
    if (want > 0) this.disarmIntx();
    const armed = vectors.arm(want);
    this.armIntxIfIdle();
    if (!armed) return;
    const c = this.config;
    const o = cap.offset;
    const address = c.u32(o + MSI_ADDRESS_HI) * 2 ** 32 + c.u32(o + MSI_ADDRESS_LO);
    const data = c.u16(o + MSI_DATA);
    const mask = cap.perVectorMask ? c.u32(o + MSI_MASK_BITS) : 0;
    for (let v = 0; v < vectors.armed; v++) {
      const masked = (mask & (1 << v)) !== 0;
      // Unmasked now, and the device signalled while it was masked: deliver it (6.8.1.7).
      if (!masked && !vectors.isRouted(v) && vectors.drain(v)) cap.notify(v);
      // PCI 3.0 6.8.1.6: vector v replaces the low log2(allocated) bits of the data.
      vectors.route(v, masked ? null : { address, data: (data & ~(vectors.armed - 1)) | v });
    }
  }

  /** Signals that arrived on masked MSI vectors become their Pending Bits (6.8.1.8). */
  private collectMsiPending(cap: MsiCapability): void {
    const mask = this.config.u32(cap.offset + MSI_MASK_BITS);
    for (let v = 0; v < this.msiVectors.armed; v++) {
      if ((mask & (1 << v)) !== 0 && this.msiVectors.drain(v)) cap.notify(v);
    }
  }

  /** Makes VFIO and the VMM's routes follow the guest's MSI-X capability and table. */
  private syncMsix(cap: MsixCapability): void {
    const want = cap.enabled ? Math.min(cap.vectors, this.msixVfioVectors) : 0;
    if (want > 0) this.disarmIntx();
    const armed = this.msixVectors.arm(want);
    this.armIntxIfIdle();
    if (!armed) return;
    for (let v = 0; v < this.msixVectors.armed; v++) this.syncMsixVector(cap, v);
  }

  private syncMsixVector(cap: MsixCapability, vector: number): void {
    const vectors = this.msixVectors;
    const masked = cap.functionMasked || cap.vectorMasked(vector);
    // Unmasked now, and the device signalled while it was masked: deliver it (6.8.2.9).
    if (!masked && !vectors.isRouted(vector) && vectors.drain(vector)) cap.notify(vector);
    vectors.route(vector, masked ? null : cap.entryMessage(vector));
  }

  private barRead(bar: number, offset: number, sizeBytes: AccessSize): number {
    this.barTraps[bar]++;
    const l = this.msixLayout;
    const cap = this.msixCap;
    if (l !== null && cap !== null) {
      if (bar === l.tableBar && offset >= l.tableOffset && offset < l.tableOffset + cap.tableSizeBytes) {
        this.msixTableAccesses++;
        return cap.tableHandler.read(offset - l.tableOffset, sizeBytes);
      }
      if (bar === l.pbaBar && offset >= l.pbaOffset && offset < l.pbaOffset + cap.pbaSizeBytes) {
        this.msixTableAccesses++;
        // Signals that arrived on masked vectors become their pending bits (6.8.2.10).
        for (let v = 0; v < this.msixVectors.armed; v++) {
          if ((cap.functionMasked || cap.vectorMasked(v)) && this.msixVectors.drain(v)) cap.notify(v);
        }
        return cap.pbaHandler.read(offset - l.pbaOffset, sizeBytes);
      }
    }
    const device = this.device;
    if (sizeBytes !== 8) return device.regionRead(bar, offset, sizeBytes);
    const lo = device.regionRead(bar, offset, 4);
    const hi = device.regionRead(bar, offset + 4, 4);
    return (hi & 0x1fffff) * 0x1_0000_0000 + lo;
  }

  private barWrite(bar: number, offset: number, sizeBytes: AccessSize, value: number): void {
    this.barTraps[bar]++;
    const l = this.msixLayout;
    const cap = this.msixCap;
    if (l !== null && cap !== null) {
      if (bar === l.tableBar && offset >= l.tableOffset && offset < l.tableOffset + cap.tableSizeBytes) {
        this.msixTableAccesses++;
        const inTable = offset - l.tableOffset;
        cap.tableHandler.write(inTable, sizeBytes, value);
        if (!Number.isInteger(inTable) || this.msixVectors.armed === 0) return;
        const last = Math.min(Math.floor((inTable + sizeBytes - 1) / 16), this.msixVectors.armed - 1);
        for (let v = Math.floor(inTable / 16); v <= last; v++) this.syncMsixVector(cap, v);
        return;
      }
      // 6.8.2.10: the PBA is read-only.
      if (bar === l.pbaBar && offset >= l.pbaOffset && offset < l.pbaOffset + cap.pbaSizeBytes) {
        this.msixTableAccesses++;
        return;
      }
    }
    const device = this.device;
    if (sizeBytes !== 8) {
      device.regionWrite(bar, offset, sizeBytes, value);
      return;
    }
    device.regionWrite(bar, offset, 4, value % 0x1_0000_0000);
    device.regionWrite(bar, offset + 4, 4, Math.floor(value / 0x1_0000_0000));
  }

  msiStats(): VectorStats {
    return this.msiVectors.stats();
  }

  /**
   * Per BAR: "mmap" (some of it is guest memory now, `mappedBytes`) or "trapped", and the
   * accesses that trapped to the VMM.
   */
  barStats(): Record<string, { mapping: string; mappedBytes: number; traps: number }> {
    const out: Record<string, { mapping: string; mappedBytes: number; traps: number }> = {};
    for (const bar of this.bars) {
      if (bar === undefined) continue;
      const m = this.barMmaps.find((x) => x.barIndex === bar.index);
      out[`bar${bar.index}`] = {
        mapping: m !== undefined && m.mappedBytes > 0 ? "mmap" : "trapped",
        mappedBytes: m?.mappedBytes ?? 0,
        traps: this.barTraps[bar.index],
      };
    }
    return out;
  }

  interruptStats(): VfioInterruptStats {
    return {
      intx:
        this.intxPin === 0
          ? null
          : {
              armed: this.intxArmed,
              signals: this.intxSignals,
              unmasks: this.intxUnmasks,
              setupErrors: this.intxSetupErrors,
            },
      msi: this.msiCap === null ? null : this.msiVectors.stats(),
      msix: this.msixCap === null ? null : this.msixVectors.stats(),
    };
  }
}

/** The device's INTx pin (Interrupt Pin, 1-4) when VFIO offers INTx, else 0. */
function intxPinOf(device: VfioPciDevice): number {
  if (device.irqCount(VFIO_PCI_INTX_IRQ_INDEX) === 0) return 0;
  const pin = device.readConfig(0x3d, 1);
  return pin >= 1 && pin <= 4 ? pin : 0;
}

function highestPowerOfTwo(n: number): number {
  let p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}
