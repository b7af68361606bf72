/**
 * The in-kernel GICv3 and ITS (Documentation/virt/kvm/devices/arm-vgic-v3.rst, arm-vgic-its.rst),
 * wired interrupt lines (KVM_IRQ_LINE) and MSIs into the ITS (KVM_SIGNAL_MSI with a DeviceID).
 *
 * Order (as Cloud Hypervisor and Firecracker do it): all vCPUs exist; create the GIC, set the
 * distributor and redistributor bases, create the ITS, set its base, init the ITS, set the
 * number of IRQs, init the GIC.
 */
import { KVM_SIGNAL_MSI, KvmError } from "../ioctls.ts";
import { errno, ioctlBuffer, scratchMemory } from "../libc.ts";
import { KVM_MSI_SIZE } from "../structs.ts";
import {
  KVM_ARM_IRQ_TYPE_SPI,
  KVM_CREATE_DEVICE,
  KVM_CREATE_DEVICE_SIZE,
  KVM_DEV_ARM_VGIC_CTRL_INIT,
  KVM_DEV_ARM_VGIC_GRP_ADDR,
  KVM_DEV_ARM_VGIC_GRP_CTRL,
  KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
  KVM_DEV_TYPE_ARM_VGIC_ITS,
  KVM_DEV_TYPE_ARM_VGIC_V3,
  KVM_DEVICE_ATTR_SIZE,
  KVM_IRQ_LINE,
  KVM_MSI_VALID_DEVID,
  KVM_SET_DEVICE_ATTR,
  KVM_VGIC_ITS_ADDR_TYPE,
  KVM_VGIC_V3_ADDR_TYPE_DIST,
  KVM_VGIC_V3_ADDR_TYPE_REDIST,
} from "./ioctls.ts";

export interface GicLayout {
  readonly distributorGpa: number;
  /** 2 x 64 KiB per vCPU, contiguous. */
  readonly redistributorGpa: number;
  /** 128 KiB ITS frame; its GITS_TRANSLATER doorbell is at +0x10040. */
  readonly itsGpa: number;
  /** SPIs + 32 (SGIs and PPIs), a multiple of 32 in [64, 1024]. */
  readonly irqs: number;
}

export const GITS_TRANSLATER_OFFSET = 0x10040;

function createDevice(vmFd: number, type: number, name: string): number {
  const buf = new Uint8Array(KVM_CREATE_DEVICE_SIZE);
  new DataView(buf.buffer).setUint32(0, type, true);
  if (ioctlBuffer(vmFd, KVM_CREATE_DEVICE, buf) < 0)
    throw new KvmError(`KVM_CREATE_DEVICE(${name})`, errno());
  return new DataView(buf.buffer).getUint32(4, true);
}

/** KVM_SET_DEVICE_ATTR; `value` (if any) travels through a scratch mapping (attr.addr is a pointer). */
class DeviceAttrs {
  private readonly scratch = scratchMemory(8);
  private readonly value = new DataView(this.scratch.bytes.buffer, this.scratch.bytes.byteOffset, 8);
  private readonly buf = new Uint8Array(KVM_DEVICE_ATTR_SIZE);
  private readonly v = new DataView(this.buf.buffer);

  set(fd: number, group: number, attr: number, value: bigint | null, what: string): void {
    this.v.setUint32(0, 0, true);
    this.v.setUint32(4, group, true);
    this.v.setBigUint64(8, BigInt(attr), true);
    if (value === null) {
      this.v.setBigUint64(16, 0n, true);
    } else {
      this.value.setBigUint64(0, value, true);
      this.v.setBigUint64(16, this.scratch.address, true);
    }
    if (ioctlBuffer(fd, KVM_SET_DEVICE_ATTR, this.buf) < 0)
      throw new KvmError(`KVM_SET_DEVICE_ATTR(${what})`, errno());
  }
}

export class VgicV3 {
  readonly layout: GicLayout;
  readonly gicFd: number;
  readonly itsFd: number;
  private readonly vmFd: number;
  private readonly lineBuf = new Uint8Array(8);
  private readonly lineView = new DataView(this.lineBuf.buffer);
  private readonly msiBuf = new Uint8Array(KVM_MSI_SIZE);
  private readonly msiView = new DataView(this.msiBuf.buffer);
  msisDelivered = 0;
  /** KVM_SIGNAL_MSI returned 0: the ITS has no mapping for (DeviceID, EventID). */
  msisUnmapped = 0;
  /** KVM_SIGNAL_MSI failed: no ITS at that doorbell address. */
  msisRejected = 0;

  /** Creates and initialises the GIC and ITS; every vCPU must already exist. */
  constructor(vmFd: number, layout: GicLayout) {
    this.vmFd = vmFd;
    this.layout = layout;
    const attrs = new DeviceAttrs();
    this.gicFd = createDevice(vmFd, KVM_DEV_TYPE_ARM_VGIC_V3, "VGIC_V3");
    attrs.set(
      this.gicFd,
      KVM_DEV_ARM_VGIC_GRP_ADDR,
      KVM_VGIC_V3_ADDR_TYPE_DIST,
      BigInt(layout.distributorGpa),
      "DIST",
    );
    attrs.set(
      this.gicFd,
      KVM_DEV_ARM_VGIC_GRP_ADDR,
      KVM_VGIC_V3_ADDR_TYPE_REDIST,
      BigInt(layout.redistributorGpa),
      "REDIST",
    );
    this.itsFd = createDevice(vmFd, KVM_DEV_TYPE_ARM_VGIC_ITS, "VGIC_ITS");
    attrs.set(this.itsFd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_ITS_ADDR_TYPE, BigInt(layout.itsGpa), "ITS");
    attrs.set(this.itsFd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, null, "ITS INIT");
    // NR_IRQS takes a u32 through the pointer: the low half of the little-endian u64 scratch.
    attrs.set(this.gicFd, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, BigInt(layout.irqs), "NR_IRQS");
    attrs.set(this.gicFd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, null, "GIC INIT");
  }

  /** The doorbell devices write their MSIs to (GITS_TRANSLATER). */
  get msiDoorbellGpa(): number {
    return this.layout.itsGpa + GITS_TRANSLATER_OFFSET;
  }

  /** Drives SPI `spi` (INTID spi + 32) to `level` (KVM_IRQ_LINE, type SPI). */
  setSpi(spi: number, level: boolean): void {
    const intid = spi + 32;
    this.lineView.setUint32(0, ((KVM_ARM_IRQ_TYPE_SPI << 24) | intid) >>> 0, true);
    this.lineView.setUint32(4, level ? 1 : 0, true);
    if (ioctlBuffer(this.vmFd, KVM_IRQ_LINE, this.lineBuf) < 0) throw new KvmError("KVM_IRQ_LINE", errno());
  }

  /**
   * One MSI write of `data` to guest-physical `address` from DeviceID `devid` (the PCI RID, as
   * the DT msi-map gives it). Returns "delivered", "unmapped" (the ITS has no translation: the
   * guest has not mapped that event; blocked) or "rejected" (no ITS at that address).
   */
  signalMsi(address: number, data: number, devid: number): "delivered" | "unmapped" | "rejected" {
    const v = this.msiView;
    v.setUint32(0, address >>> 0, true);
    v.setUint32(4, Math.floor(address / 0x1_0000_0000) >>> 0, true);
    v.setUint32(8, data >>> 0, true);
    v.setUint32(12, KVM_MSI_VALID_DEVID, true);
    v.setUint32(16, devid >>> 0, true);
    const r = ioctlBuffer(this.vmFd, KVM_SIGNAL_MSI, this.msiBuf);
    if (r < 0) {
      this.msisRejected++;
      return "rejected";
    }
    if (r === 0) {
      this.msisUnmapped++;
      return "unmapped";
    }
    this.msisDelivered++;
    return "delivered";
  }
}
