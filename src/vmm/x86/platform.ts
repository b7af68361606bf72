/**
 * The machine's devices and buses, independent of KVM (tests drive it directly):
 * COM1, isa-debug-exit, fw_cfg, the IOAPIC, the PCI host bridge (0xCF8 and ECAM), and the PCI
 * functions with the chosen virtual IOMMU in front of those marked iommu=on.
 *
 * PCI slots: 00:00.0 host bridge, 00:01.0 virtio-iommu-pci (with --iommu virtio), then the
 * devices in command-line order from 00:02.0.
 */
import { DebugExit } from "../../devices/debug-exit.ts";
import {
  FW_CFG_DMA_IOBASE,
  FW_CFG_DMA_IOSIZE,
  FW_CFG_IOBASE,
  FW_CFG_IOSIZE,
  FwCfg,
} from "../../devices/fw-cfg.ts";
import { IOAPIC_SIZE, Ioapic } from "../../devices/ioapic.ts";
import {
  COM1_IOBASE,
  COM1_IRQ,
  type SerialSink,
  type SerialSource,
  Uart16550,
} from "../../devices/uart16550.ts";
import { VirtioIommuPci } from "../../devices/virtio-iommu-pci.ts";
import { PERM_RW } from "../../engine/access.ts";
import { DmaAddressSpace, IDENTITY } from "../../engine/dma-space.ts";
import type { GuestMemory } from "../../engine/guest-memory.ts";
import type { HostIommu } from "../../engine/host-iommu.ts";
import { HostNotifier } from "../../engine/host-notifier.ts";
import type { Tracer } from "../../engine/trace.ts";
import { ViommuRegistry } from "../../framework/registry.ts";
import { PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_PORTS_SIZE, PciBus } from "../../pci/bus.ts";
import { type AccessSize, IoBus, type IoHandler } from "../../platform/bus.ts";
import type { MsiMessage } from "../../platform/interrupts.ts";
import type { VfioPciDevice } from "../../vfio/device.ts";
import { VfioPciFunction } from "../../vfio/pci-passthrough.ts";
import type {
  Endpoint as VirtioIommuEndpoint,
  VirtioIommuEndpointOptions,
} from "../../virtio-iommu/endpoints.ts";
import { dmarForConfig } from "../../vtd/dmar.ts";
import type {
  EndpointOptions as VtdEndpointOptions,
  EndpointState as VtdEndpointState,
} from "../../vtd/options.ts";
import { VtdUnit } from "../../vtd/vtd.ts";
import type { DeviceChoice, PlacedDevice } from "../device-choice.ts";
import { placeEmulatedDevice } from "../emulated-devices.ts";
import { ACPI_POWER_IOBASE, ACPI_POWER_IOSIZE, AcpiPower, type PowerRequest } from "./acpi-power.ts";
import { InterruptFabric, intxIoapicPin, type MsiTarget } from "./interrupts.ts";
import {
  e820Bytes,
  e820Map,
  IOAPIC_GPA,
  PCI_ECAM_BASE,
  PCI_MMIO32_BASE,
  PCI_MMIO32_END,
  type RamLayout,
  VTD_GPA,
} from "./layout.ts";
import { assignPciResources, type BarAssignment } from "./pci-firmware.ts";

export type IommuChoice =
  | { readonly kind: "none" }
  | { readonly kind: "virtio"; readonly pageSizeMask?: bigint }
  | { readonly kind: "intel"; readonly spec: string };

export interface PlatformConfig {
  readonly memory: GuestMemory;
  readonly ramLayout: RamLayout;
  readonly cpus: number;
  readonly serial: SerialSink;
  readonly iommu: IommuChoice;
  readonly devices: readonly DeviceChoice[];
  readonly debugExit: { readonly iobase: number; readonly iosize: number };
  readonly tracer: Tracer;
  readonly msiTarget: MsiTarget;
  /** The guest asked to power off or reset through the ACPI registers. */
  readonly onPowerRequest?: (request: PowerRequest) => void;
  /** A guest write to isa-debug-exit: the machine should stop with this status. */
  readonly onDebugExit: (status: number) => void;
  /** Host input for COM1. */
  readonly serialInput?: SerialSource;
  /** An IOAPIC pin's message was delivered (after remapping): the VMM checks its KVM route. */
  readonly onIoapicMessage?: (pin: number, message: MsiMessage) => void;
  /** IOAPIC entries changed (the VMM refreshes KVM's routes). */
  readonly onIoapicRoutesChanged?: () => void;
}

export const VIRTIO_IOMMU_SLOT = 1;
export const FIRST_DEVICE_SLOT = 2;
/** I/O ports firmware hands out to PCI I/O BARs. */
export const PCI_IO_BASE = 0xc000;
export const PCI_IO_END = 0x10000;

/** An MMIO handler whose 8-byte accesses must not be split (the VT-d register file). */
export interface WideIoHandler extends IoHandler {
  readWide(offset: number): bigint;
  writeWide(offset: number, value: bigint): void;
}

/** The host's IOMMU in the framework's registry (assigned devices sit behind it through VFIO). */
const HOST_IOMMU_ID = "host-iommu";

export class Platform {
  readonly pio = new IoBus("pio");
  readonly mmio = new IoBus("mmio");
  readonly memory: GuestMemory;
  readonly cpus: number;
  readonly uart: Uart16550;
  readonly debugExit: DebugExit;
  readonly fwCfg: FwCfg;
  readonly acpiPower: AcpiPower;
  readonly ioapic: Ioapic;
  readonly interrupts: InterruptFabric;
  readonly pci = new PciBus();
  readonly viommu: VirtioIommuPci | null = null;
  readonly vtd: VtdUnit | null = null;
  /**
   * The framework's registry (with --iommu): the host's IOMMU as one physical IOMMU (16-bit
   * BDFs) and the guest's vIOMMU on it, whose endpoint table the model backs.
   */
  readonly registry: ViommuRegistry | null = null;
  /** The ACPI DMAR table for the VT-d unit (for a firmware-table consumer). */
  readonly dmar: Uint8Array | null = null;
  readonly devices: PlacedDevice[] = [];
  readonly bars: BarAssignment[];
  /** MMIO ranges whose 8-byte accesses go through readWide/writeWide. */
  readonly wideMmio: { base: number; sizeBytes: number; handler: WideIoHandler }[] = [];

  // About 85 lines: it wires each piece of the platform to its bus in address order and reads
  // best in one place; what has logic (device placement, the DMAR) is in the methods below.
  // biome-ignore lint/complexity/noExcessiveLinesPerFunction: wiring only, see above
  constructor(config: PlatformConfig) {
    this.memory = config.memory;
    this.cpus = config.cpus;
    this.interrupts = new InterruptFabric(config.msiTarget, 0xff00, config.tracer);
    traceUnclaimed(this.pio, config.tracer);
    traceUnclaimed(this.mmio, config.tracer);
    this.ioapic = new Ioapic((message, pin) => {
      const delivered = this.interrupts.deliverFromIoapic(message);
      if (delivered !== null) config.onIoapicMessage?.(pin, delivered);
    }, config.onIoapicRoutesChanged);
    this.interrupts.setIoapic(this.ioapic);
    this.mmio.register(IOAPIC_GPA, IOAPIC_SIZE, this.ioapic, "ioapic");

    this.uart = new Uart16550(config.serial, (level) =>
      this.interrupts.setIoapicInput(COM1_IRQ, "com1", level),
    );
    this.uart.setSource(config.serialInput ?? null);
    this.pio.register(COM1_IOBASE, 8, this.uart, "com1");
    this.debugExit = new DebugExit(config.onDebugExit, config.debugExit.iobase, config.debugExit.iosize);
    this.pio.register(config.debugExit.iobase, config.debugExit.iosize, this.debugExit, "isa-debug-exit");
    this.fwCfg = new FwCfg({
      ramSizeBytes: config.ramLayout.totalBytes,
      cpus: config.cpus,
      maxCpus: config.cpus,
    });
    this.fwCfg.addFile("etc/e820", e820Bytes(e820Map(config.ramLayout)));
    this.pio.register(FW_CFG_IOBASE, FW_CFG_IOSIZE, this.fwCfg, "fw_cfg");
    this.pio.register(FW_CFG_DMA_IOBASE, FW_CFG_DMA_IOSIZE, this.fwCfg.dmaHandler, "fw_cfg-dma");

    this.acpiPower = new AcpiPower((request) => config.onPowerRequest?.(request));
    this.pio.register(ACPI_POWER_IOBASE, ACPI_POWER_IOSIZE, this.acpiPower, "acpi-power");

    this.pio.register(
      PCI_CONFIG_ADDRESS_PORT,
      PCI_CONFIG_PORTS_SIZE,
      this.pci.legacyConfigHandler,
      "pci-config",
    );
    this.mmio.register(PCI_ECAM_BASE, this.pci.ecamSizeBytes, this.pci.ecamHandler, "pci-ecam");
    this.pci.attachDecode(this.mmio, this.pio);

    const identity = (rid: number) => new DmaAddressSpace(this.memory, IDENTITY, rid);
    // `host`: the host IOMMU of an assigned device, kept in step by the IOMMU model.
    let translated: ((rid: number, host?: HostIommu) => DmaAddressSpace) | null = null;
    // An assigned device's endpoint is "assigned" in the registry; its host IOMMU goes to the model.
    const kindOf = (host: HostIommu | undefined) => (host === undefined ? "emulated" : "assigned");
    if (config.iommu.kind === "virtio") {
      const sole = ViommuRegistry.single<VirtioIommuEndpoint, VirtioIommuEndpointOptions>(HOST_IOMMU_ID, 16);
      this.registry = sole.registry;
      const viommu = new VirtioIommuPci(this.memory, {
        tracer: config.tracer,
        pageSizeMask: config.iommu.pageSizeMask,
        viommu: sole.instance,
      });
      // The IOMMU's own queues are guest-physical (it is not behind itself).
      this.pci.addFunction(viommu.pci, {
        device: VIRTIO_IOMMU_SLOT,
        interrupts: this.interrupts,
        dma: identity,
      });
      this.viommu = viommu;
      translated = (rid, host) =>
        sole.instance.plugOrThrow({ vId: rid, kind: kindOf(host), options: { host } });
    } else if (config.iommu.kind === "intel") {
      const sole = ViommuRegistry.single<VtdEndpointState, VtdEndpointOptions>(HOST_IOMMU_ID, 16);
      this.registry = sole.registry;
      const vtd = new VtdUnit(this.memory, {
        config: config.iommu.spec,
        interrupts: this.interrupts.unremapped,
        tracer: config.tracer,
        viommu: sole.instance,
      });
      this.mmio.register(VTD_GPA, 0x1000, vtd, "vtd");
      this.wideMmio.push({ base: VTD_GPA, sizeBytes: 0x1000, handler: vtd });
      this.vtd = vtd;
      translated = (rid, host) =>
        sole.instance.plugOrThrow({ vId: rid, kind: kindOf(host), options: { host } });
    }

    config.devices.forEach((d, i) => {
      const device = FIRST_DEVICE_SLOT + i;
      if (device > 31) throw new Error("too many PCI devices for one bus");
      if (d.iommu && translated === null) throw new Error(`${d.kind},iommu=on needs --iommu virtio or intel`);
      this.devices.push(this.placeDevice(d, i, device, d.iommu ? translated : null, identity, config.tracer));
    });

    if (this.vtd !== null) this.dmar = this.describeVtd(this.vtd);

    this.bars = assignPciResources(
      this.pci,
      { mmioBase: PCI_MMIO32_BASE, mmioEnd: PCI_MMIO32_END, ioBase: PCI_IO_BASE, ioEnd: PCI_IO_END },
      intxIoapicPin,
    );
    traceBarAssignments(this.bars, config.tracer);
  }

  /**
   * The DMAR for `vtd` once every device is placed, and the interrupt remapper hooked in.
   *
   * The DMAR tells the truth: explicit endpoint scopes (VT-d 8.3.1) for the iommu=on functions
   * only, never INCLUDE_PCI_ALL, so a guest gives IOVAs only to devices whose DMA is translated.
   * The others are outside every DRHD: untranslated DMA, and their MSIs do not pass the interrupt
   * remapper (they do not cross the unit).
   */
  private describeVtd(vtd: VtdUnit): Uint8Array {
    const behindUnit = this.devices.filter((d) => d.iommu).map((d) => d.requesterId);
    const dmar = dmarForConfig(vtd.config, {
      registerBase: VTD_GPA,
      ioapicSourceId: this.interrupts.ioapicSourceId,
      endpoints: behindUnit,
    });
    const remapped = new Set([...behindUnit, this.interrupts.ioapicSourceId]);
    if (vtd.config.intremap) this.interrupts.setRemapper(vtd, (sourceId) => remapped.has(sourceId));
    return dmar;
  }

  /**
   * Places device choice `d` (the `i`th) at `slot`: DMA through `translated` (the IOMMU, for an
   * iommu=on device when there is one), else untranslated (`identity`).
   */
  private placeDevice(
    d: DeviceChoice,
    i: number,
    slot: number,
    translated: ((rid: number, host?: HostIommu) => DmaAddressSpace) | null,
    identity: (rid: number) => DmaAddressSpace,
    tracer: Tracer,
  ): PlacedDevice {
    if (d.kind === "vfio") return this.assign(d.device, `vfio${i}`, slot, translated);
    const place = { device: slot, interrupts: this.interrupts, dma: translated ?? identity };
    return placeEmulatedDevice(this.pci, d, i, place, tracer);
  }

  /**
   * An assigned device at `slot`: behind the IOMMU (`translated`), whose model keeps the device's
   * VFIO container in step; or without one, with all guest RAM mapped identity into it.
   */
  private assign(
    device: VfioPciDevice,
    name: string,
    slot: number,
    translated: ((rid: number, host?: HostIommu) => DmaAddressSpace) | null,
  ): PlacedDevice {
    const fn = new VfioPciFunction(device, name);
    const container = device.container;
    let identityHost: HostNotifier | null = null;
    const dma = (rid: number): DmaAddressSpace => {
      if (translated !== null) return translated(rid, container);
      identityHost = new HostNotifier(container, { traceSource: "vfio", endpointId: rid });
      const regions = this.memory.regions;
      const refusal = identityHost.replay((_s, _l, leaf) => {
        for (const r of regions) leaf(r.gpa, r.gpa, r.sizeBytes, PERM_RW);
        return true;
      });
      if (refusal !== null)
        throw new Error(`${device.bdf}: mapping guest RAM for DMA failed: ${refusal.message}`);
      return new DmaAddressSpace(this.memory, IDENTITY, rid);
    };
    const rid = this.pci.addFunction(fn, { device: slot, interrupts: this.interrupts, dma });
    return {
      kind: "vfio",
      requesterId: rid,
      iommu: translated !== null,
      fn,
      stats: () => ({
        host: device.bdf,
        device: device.stats(),
        bars: fn.barStats(),
        interrupts: fn.interruptStats(),
        msixTableAccesses: fn.msixTableAccesses,
        container: { maps: container.maps, unmaps: container.unmaps },
        identity: (identityHost as HostNotifier | null)?.stats() ?? null,
      }),
      close: () => device.close(),
    };
  }

  /** Releases device resources (disk files). */
  close(): void {
    for (const d of this.devices) d.close?.();
  }

  /**
   * An MMIO read of 1, 2, 4 or 8 bytes into `out`. An 8-byte access reaches the device as one
   * 8-byte access (a wide device gets all 64 bits through readWide/writeWide; others the low
   * 53 bits, per the IoHandler contract).
   */
  mmioRead(gpa: number, sizeBytes: number, out: DataView, outOffset: number): void {
    if (sizeBytes === 8) {
      const wide = this.wideAt(gpa);
      if (wide !== undefined) {
        out.setBigUint64(outOffset, wide.handler.readWide(gpa - wide.base), true);
        return;
      }
      const v = this.mmio.read(gpa, 8);
      out.setUint32(outOffset, (v % 0x1_0000_0000) >>> 0, true);
      out.setUint32(outOffset + 4, Math.floor(v / 0x1_0000_0000) >>> 0, true);
      return;
    }
    const v = this.mmio.read(gpa, sizeBytes as AccessSize);
    if (sizeBytes === 1) out.setUint8(outOffset, v);
    else if (sizeBytes === 2) out.setUint16(outOffset, v, true);
    else out.setUint32(outOffset, v >>> 0, true);
  }

  /**
   * An MMIO write of 1, 2, 4 or 8 bytes from `data`. An 8-byte value at or above 2^53 cannot be
   * a `number`: for a device without wide access it is written as two dwords, low first (as a
   * 32-bit driver would write it).
   */
  mmioWrite(gpa: number, sizeBytes: number, data: DataView, dataOffset: number): void {
    if (sizeBytes === 8) {
      const wide = this.wideAt(gpa);
      if (wide !== undefined) {
        wide.handler.writeWide(gpa - wide.base, data.getBigUint64(dataOffset, true));
        return;
      }
      const lo = data.getUint32(dataOffset, true);
      const hi = data.getUint32(dataOffset + 4, true);
      if (hi < 0x200000) {
        this.mmio.write(gpa, 8, hi * 0x1_0000_0000 + lo);
      } else {
        this.mmio.write(gpa, 4, lo);
        this.mmio.write(gpa + 4, 4, hi);
      }
      return;
    }
    const v =
      sizeBytes === 1
        ? data.getUint8(dataOffset)
        : sizeBytes === 2
          ? data.getUint16(dataOffset, true)
          : data.getUint32(dataOffset, true);
    this.mmio.write(gpa, sizeBytes as AccessSize, v);
  }

  private wideAt(gpa: number): { base: number; sizeBytes: number; handler: WideIoHandler } | undefined {
    for (const w of this.wideMmio) if (gpa >= w.base && gpa + 8 <= w.base + w.sizeBytes) return w;
    return undefined;
  }
}

/** --trace unclaimed: every access on `bus` no device claims (the summary counts them by address). */
function traceUnclaimed(bus: IoBus, tracer: Tracer): void {
  bus.onUnclaimed = (address, sizeBytes, write, value) => {
    if (!tracer.on("unclaimed")) return;
    tracer.emit("unclaimed", "vmm", write ? `${bus.name}-write` : `${bus.name}-read`, {
      address,
      sizeBytes,
      value,
    });
  };
}

/** --trace config: where each BAR was placed. */
function traceBarAssignments(bars: readonly BarAssignment[], tracer: Tracer): void {
  if (!tracer.on("config")) return;
  for (const b of bars) {
    tracer.emit("config", "vmm", "bar-assigned", {
      requesterId: b.requesterId,
      bar: b.bar,
      kind: b.kind,
      address: b.address,
      sizeBytes: b.sizeBytes,
    });
  }
}
