import { Pl011 } from "../../devices/pl011.ts";
import type { SerialSink } from "../../devices/uart16550.ts";
import { VirtioIommuPci } from "../../devices/virtio-iommu-pci.ts";
import { ACCESS_WRITE } from "../../engine/access.ts";
import { DmaAddressSpace, IDENTITY } from "../../engine/dma-space.ts";
import type { GuestMemory } from "../../engine/guest-memory.ts";
import type { Tracer } from "../../engine/trace.ts";
import { Translation } from "../../engine/translation.ts";
import { ViommuRegistry } from "../../framework/registry.ts";
import { RecordingBackend, type ViommuInstance } from "../../framework/viommu.ts";
import { PciBus } from "../../pci/bus.ts";
import { IoBus } from "../../platform/bus.ts";
import type { InterruptSink, MsiMessage } from "../../platform/interrupts.ts";
import { SMMU_FRAME_BYTES } from "../../smmuv3/regs.ts";
import { SmmuV3, VECTOR_CMD_SYNC, VECTOR_EVENTQ, VECTOR_GERROR } from "../../smmuv3/smmu.ts";
import type {
  Endpoint as VirtioIommuEndpoint,
  VirtioIommuEndpointOptions,
} from "../../virtio-iommu/endpoints.ts";
import type { DeviceChoice, PlacedDevice } from "../device-choice.ts";
import { placeEmulatedDevice } from "../emulated-devices.ts";
import { ECAM_BYTES } from "./device-tree.ts";
import {
  hostStreamId,
  MAX_SMMU_INSTANCES,
  PCIE_ECAM_GPA,
  PCIE_PIO_BYTES,
  PCIE_PIO_GPA,
  pciIntxSpi,
  SMMU_GPAS,
  SMMU_SPI_BASES,
  SPI_UART,
  smmuInstanceOfSlot,
  UART_BYTES,
  UART_GPA,
} from "./layout.ts";

export type Arm64IommuChoice =
  | { readonly kind: "none" }
  | { readonly kind: "virtio"; readonly pageSizeMask?: bigint }
  /**
   * `stage`: the translation stages each SMMU offers (IDR0.S1P, S2P); "nested" offers both.
   * `instances` (default 1): SMMUs, each a physical IOMMU of its own in the framework's registry.
   */
  | { readonly kind: "smmuv3"; readonly stage: "1" | "2" | "nested"; readonly instances?: number };

/** Where the platform's interrupts go. */
export interface Arm64Irq {
  setSpi(spi: number, level: boolean): void;
  /** An MSI write of `data` to guest-physical `gpa` from DeviceID `devid`. */
  signalMsi(gpa: number, data: number, devid: number): "delivered" | "unmapped" | "rejected";
}

export interface Arm64PlatformConfig {
  readonly memory: GuestMemory;
  readonly serial: SerialSink;
  readonly iommu: Arm64IommuChoice;
  readonly devices: readonly DeviceChoice[];
  readonly tracer: Tracer;
  readonly irq: Arm64Irq;
}

export const ARM64_VIRTIO_IOMMU_SLOT = 1;
export const ARM64_FIRST_DEVICE_SLOT = 2;
/** The SMMU's own requester ID for its MSIs (unused: the DT gives it wired interrupts only). */
const SMMU_REQUESTER_ID = 0xffff;

export interface Arm64InterruptStats {
  readonly msisDelivered: number;
  /** The ITS had no mapping for (DeviceID, EventID). */
  readonly msisUnmapped: number;
  /** No ITS at the (translated) address. */
  readonly msisRejected: number;
  /** The IOMMU refused the MSI write (a fault it reported). */
  readonly msisBlockedByIommu: number;
  readonly spiRaises: number;
}

/** Wired lines and MSIs of the PCI devices and the SMMU. */
export class Arm64Interrupts implements InterruptSink {
  private readonly irq: Arm64Irq;
  /** Per requester ID: the address space its MSI writes go through. */
  private readonly msiSpaces = new Map<number, DmaAddressSpace>();
  /** Per SPI: the inputs currently asserting it ("rid:pin"). */
  private readonly asserted = new Map<number, Set<string>>();
  private readonly scratch = new Translation();
  msisDelivered = 0;
  msisUnmapped = 0;
  msisRejected = 0;
  msisBlockedByIommu = 0;
  spiRaises = 0;

  constructor(irq: Arm64Irq) {
    this.irq = irq;
  }

  setMsiSpace(requesterId: number, space: DmaAddressSpace): void {
    this.msiSpaces.set(requesterId, space);
  }

  signalMsi(requesterId: number, message: MsiMessage, _vector: number): void {
    let gpa = message.address;
    const space = this.msiSpaces.get(requesterId);
    if (space !== undefined && !space.isIdentity) {
      const out = this.scratch;
      if (space.translate(message.address, ACCESS_WRITE, out) !== null) {
        this.msisBlockedByIommu++;
        return;
      }
      gpa = out.gpaBase + (message.address - out.iovaBase);
    }
    const r = this.irq.signalMsi(gpa, message.data, requesterId);
    if (r === "delivered") this.msisDelivered++;
    else if (r === "unmapped") this.msisUnmapped++;
    else this.msisRejected++;
  }

  setPin(requesterId: number, pin: number, asserted: boolean): void {
    const slot = (requesterId >> 3) & 31;
    this.setLine(pciIntxSpi(slot, pin & 3), `${requesterId}:${pin}`, asserted);
  }

  /** Drives SPI `spi` from input `source`; the line is the OR of its inputs. */
  setLine(spi: number, source: string, asserted: boolean): void {
    let set = this.asserted.get(spi);
    if (set === undefined) {
      set = new Set();
      this.asserted.set(spi, set);
    }
    const before = set.size > 0;
    if (asserted) set.add(source);
    else set.delete(source);
    const after = set.size > 0;
    if (before !== after) {
      if (after) this.spiRaises++;
      this.irq.setSpi(spi, after);
    }
  }

  stats(): Arm64InterruptStats {
    return {
      msisDelivered: this.msisDelivered,
      msisUnmapped: this.msisUnmapped,
      msisRejected: this.msisRejected,
      msisBlockedByIommu: this.msisBlockedByIommu,
      spiRaises: this.spiRaises,
    };
  }
}

/**
 * An SMMU's wired interrupts: pins 0/1/2 (event queue, GERROR, CMD_SYNC) to its SPIs (eventq at
 * the base, cmdq-sync at +2, gerror at +3, as the DT lists them).
 */
class SmmuLines implements InterruptSink {
  private readonly irq: Arm64Interrupts;
  private readonly spiBase: number;
  private readonly name: string;
  constructor(irq: Arm64Interrupts, spiBase: number, name: string) {
    this.irq = irq;
    this.spiBase = spiBase;
    this.name = name;
  }
  signalMsi(): void {
    // The DT gives the SMMU no msi-parent, so Linux never programs *_IRQ_CFG0: no MSIs.
  }
  setPin(_requesterId: number, pin: number, asserted: boolean): void {
    const offset = pin === VECTOR_EVENTQ ? 0 : pin === VECTOR_CMD_SYNC ? 2 : pin === VECTOR_GERROR ? 3 : -1;
    if (offset >= 0) this.irq.setLine(this.spiBase + offset, this.name, asserted);
  }
}

/** One endpoint behind an SMMU: the guest's vSID (its RID) and the host's pSID for it. */
export interface SmmuStream {
  readonly requesterId: number;
  readonly instance: number;
  readonly vSid: number;
  readonly pSid: number;
}

export class Arm64Platform {
  readonly mmio = new IoBus("mmio");
  /** PCI I/O space, reached through the MMIO window at PCIE_PIO_GPA. */
  readonly pio = new IoBus("pci-io");
  readonly memory: GuestMemory;
  readonly uart: Pl011;
  readonly interrupts: Arm64Interrupts;
  readonly pci = new PciBus();
  /** The SMMU instances (empty without --iommu smmuv3), at SMMU_GPAS[i]. */
  readonly smmus: SmmuV3[] = [];
  /** Each instance's physical-IOMMU backend in the registry (it records forwarded commands). */
  readonly smmuBackends: RecordingBackend[] = [];
  readonly registry = new ViommuRegistry();
  /** The guest's vIOMMU on each SMMU instance: its vSID -> pSID table. */
  readonly smmuViews: ViommuInstance[] = [];
  readonly smmuStreams: SmmuStream[] = [];
  readonly viommu: VirtioIommuPci | null = null;
  readonly devices: PlacedDevice[] = [];

  constructor(config: Arm64PlatformConfig) {
    this.memory = config.memory;
    this.interrupts = new Arm64Interrupts(config.irq);
    this.uart = new Pl011(config.serial, (level) => this.interrupts.setLine(SPI_UART, "pl011", level));
    this.mmio.register(UART_GPA, UART_BYTES, this.uart, "pl011");
    this.mmio.register(PCIE_ECAM_GPA, ECAM_BYTES, this.pci.ecamHandler, "pci-ecam");
    this.mmio.register(
      PCIE_PIO_GPA,
      PCIE_PIO_BYTES,
      {
        read: (off, size) => this.pio.read(off, size),
        write: (off, size, v) => this.pio.write(off, size, v),
      },
      "pci-io-window",
    );
    this.pci.attachDecode(this.mmio, this.pio);

    const identity = (rid: number) => new DmaAddressSpace(this.memory, IDENTITY, rid);
    let translated: ((rid: number) => DmaAddressSpace) | null = null;
    if (config.iommu.kind === "smmuv3") {
      const iommu = config.iommu;
      const instances = iommu.instances ?? 1;
      if (!(Number.isInteger(instances) && instances >= 1 && instances <= MAX_SMMU_INSTANCES)) {
        throw new Error(`smmuv3 instances must be 1..${MAX_SMMU_INSTANCES}`);
      }
      const views = Array.from({ length: instances }, (_, i) => this.addSmmu(i, iommu.stage, config.tracer));
      translated = (rid) => {
        const instance = smmuInstanceOfSlot((rid >> 3) & 31, instances);
        const pSid = hostStreamId(instance, rid);
        const space = views[instance]!.plugOrThrow({ vId: rid, pId: pSid, name: `rid ${rid.toString(16)}` });
        this.smmuStreams.push({ requesterId: rid, instance, vSid: rid, pSid });
        return space;
      };
    } else if (config.iommu.kind === "virtio") {
      // No RESV_MEM regions: Linux then reserves its software MSI window (0x8000000) and maps
      // the ITS doorbell through the IOMMU, as on QEMU's virt board.
      const sole = ViommuRegistry.single<VirtioIommuEndpoint, VirtioIommuEndpointOptions>("host-iommu", 16);
      const viommu = new VirtioIommuPci(this.memory, {
        tracer: config.tracer,
        reservedRegions: [],
        pageSizeMask: config.iommu.pageSizeMask,
        viommu: sole.instance,
      });
      this.pci.addFunction(viommu.pci, {
        device: ARM64_VIRTIO_IOMMU_SLOT,
        interrupts: this.interrupts,
        dma: identity,
      });
      this.viommu = viommu;
      translated = (rid) => sole.instance.plugOrThrow({ vId: rid });
    }

    config.devices.forEach((d, i) => {
      const device = ARM64_FIRST_DEVICE_SLOT + i;
      if (device > 31) throw new Error("too many PCI devices for one bus");
      if (d.iommu && translated === null)
        throw new Error(`${d.kind},iommu=on needs --iommu smmuv3 or virtio`);
      const dma = (rid: number) => {
        const space = d.iommu && translated !== null ? translated(rid) : identity(rid);
        this.interrupts.setMsiSpace(rid, space);
        return space;
      };
      this.devices.push(this.placeDevice(d, i, device, dma, config.tracer));
    });
  }

  /** The first SMMU, or null (the one-instance case's accessor). */
  get smmu(): SmmuV3 | null {
    return this.smmus[0] ?? null;
  }

  /**
   * SMMU instance `i`: a physical IOMMU of its own in the registry (one vIOMMU per guest and
   * physical IOMMU, after the Xen design) and its register frame at SMMU_GPAS[i].
   */
  private addSmmu(i: number, stage: "1" | "2" | "nested", tracer: Tracer): ViommuInstance {
    const id = `smmu${i}`;
    const backend = new RecordingBackend(id);
    const registered = this.registry.registerPhysical({ id, backend, idBits: 16, vmidCount: 1 << 16 });
    if (!registered.ok) throw new Error(registered.error);
    const created = this.registry.createViommu("guest", id, null);
    if (!created.ok) throw new Error(created.error);
    const smmu = new SmmuV3({
      memory: this.memory,
      viommu: created.value,
      interrupts: new SmmuLines(this.interrupts, SMMU_SPI_BASES[i]!, id),
      requesterId: SMMU_REQUESTER_ID,
      tracer,
      features: { stage1: stage !== "2", stage2: stage !== "1" },
    });
    this.mmio.register(SMMU_GPAS[i]!, SMMU_FRAME_BYTES, smmu, id);
    this.smmus.push(smmu);
    this.smmuBackends.push(backend);
    this.smmuViews.push(created.value);
    return created.value;
  }

  private placeDevice(
    d: DeviceChoice,
    index: number,
    device: number,
    dma: (rid: number) => DmaAddressSpace,
    tracer: Tracer,
  ): PlacedDevice {
    if (d.kind === "vfio") throw new Error(`--device ${d.kind} is not available on the arm64 machine`);
    return placeEmulatedDevice(this.pci, d, index, { device, interrupts: this.interrupts, dma }, tracer);
  }

  close(): void {
    for (const d of this.devices) d.close?.();
  }
}
