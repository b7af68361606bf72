/**
 * One KVM virtual machine: memory slots, the split irqchip, MSI injection, GSI routes.
 */
import {
  KVM_CAP_SPLIT_IRQCHIP,
  KVM_CREATE_VCPU,
  KVM_ENABLE_CAP,
  KVM_IRQ_ROUTING_MSI,
  KVM_IRQFD,
  KVM_IRQFD_FLAG_DEASSIGN,
  KVM_SET_GSI_ROUTING,
  KVM_SET_IDENTITY_MAP_ADDR,
  KVM_SET_TSS_ADDR,
  KVM_SET_USER_MEMORY_REGION,
  KVM_SIGNAL_MSI,
  KvmError,
} from "./ioctls.ts";
import { close, errno, ioctlBuffer } from "./libc.ts";
import {
  IRQ_ROUTING_ENTRY_SIZE,
  IRQ_ROUTING_HEADER_SIZE,
  KVM_ENABLE_CAP_SIZE,
  KVM_MSI_SIZE,
  USER_MEMORY_REGION_SIZE,
} from "./structs.ts";
import { type Kvm, kvmIoctl } from "./system.ts";
import { Vcpu } from "./vcpu.ts";

/** A GSI route that KVM turns into an MSI (used for the userspace IOAPIC's pins). */
export interface MsiRoute {
  readonly gsi: number;
  readonly address: number;
  readonly data: number;
}

function bufferIoctl(fd: number, request: number, name: string, buf: Uint8Array): number {
  const r = ioctlBuffer(fd, request, buf);
  if (r < 0) throw new KvmError(name, errno());
  return r;
}

export class Vm {
  readonly kvm: Kvm;
  readonly fd: number;
  private readonly msiBuf = new Uint8Array(KVM_MSI_SIZE);
  private readonly msiView = new DataView(this.msiBuf.buffer);
  private nextSlot = 0;
  private readonly freeSlots: number[] = [];
  splitIrqchip = false;
  msisSignalled = 0;
  msisBlocked = 0;

  constructor(kvm: Kvm) {
    this.kvm = kvm;
    this.fd = kvm.createVmFd();
  }

  /**
   * KVM_SET_TSS_ADDR and KVM_SET_IDENTITY_MAP_ADDR: three pages plus one, placed by the caller
   * in a hole below 4 GiB that is neither RAM nor MMIO (Intel VMX needs them for real mode).
   */
  setSystemPages(tssGpa: number, identityMapGpa: number): void {
    kvmIoctl(this.fd, KVM_SET_TSS_ADDR, tssGpa);
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, BigInt(identityMapGpa), true);
    bufferIoctl(this.fd, KVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", buf);
  }

  /**
   * Maps host memory at `hostAddress` into the guest at `gpa` (a new slot, or one freed by
   * `removeMemory`). Returns the slot; throws KvmError when KVM refuses (e.g. EEXIST: it overlaps
   * another slot).
   */
  addMemory(gpa: number, sizeBytes: number, hostAddress: bigint): number {
    const slot = this.freeSlots.pop() ?? this.nextSlot++;
    try {
      this.setSlot(slot, gpa, sizeBytes, hostAddress);
    } catch (e) {
      this.freeSlots.push(slot);
      throw e;
    }
    return slot;
  }

  /** Deletes memory slot `slot` (KVM: a region of size 0); its number is reused. */
  removeMemory(slot: number): void {
    this.setSlot(slot, 0, 0, 0n);
    this.freeSlots.push(slot);
  }

  private setSlot(slot: number, gpa: number, sizeBytes: number, hostAddress: bigint): void {
    const buf = new Uint8Array(USER_MEMORY_REGION_SIZE);
    const v = new DataView(buf.buffer);
    v.setUint32(0, slot, true);
    v.setUint32(4, 0, true); // flags
    v.setBigUint64(8, BigInt(gpa), true);
    v.setBigUint64(16, BigInt(sizeBytes), true);
    v.setBigUint64(24, hostAddress, true);
    bufferIoctl(this.fd, KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", buf);
  }

  /**
   * KVM_CAP_SPLIT_IRQCHIP: local APICs in the kernel, IOAPIC (and PIC, PIT) in userspace.
   * `ioapicPins` GSIs are reserved for the IOAPIC; KVM exits with KVM_EXIT_IOAPIC_EOI when the
   * guest EOIs a level-triggered vector routed through them. Must precede vCPU creation.
   */
  enableSplitIrqchip(ioapicPins: number): void {
    const buf = new Uint8Array(KVM_ENABLE_CAP_SIZE);
    const v = new DataView(buf.buffer);
    v.setUint32(0, KVM_CAP_SPLIT_IRQCHIP, true);
    v.setBigUint64(8, BigInt(ioapicPins), true);
    bufferIoctl(this.fd, KVM_ENABLE_CAP, "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", buf);
    this.splitIrqchip = true;
  }

  /**
   * KVM_SIGNAL_MSI: delivers one MSI write to the local APICs. Returns true when delivered,
   * false when the message was blocked (for example every destination masked it).
   */
  signalMsi(address: number, data: number): boolean {
    const v = this.msiView;
    v.setUint32(0, address >>> 0, true);
    v.setUint32(4, Math.floor(address / 0x1_0000_0000) >>> 0, true);
    v.setUint32(8, data >>> 0, true);
    v.setUint32(12, 0, true);
    v.setUint32(16, 0, true);
    const r = ioctlBuffer(this.fd, KVM_SIGNAL_MSI, this.msiBuf);
    if (r < 0) throw new KvmError("KVM_SIGNAL_MSI", errno());
    if (r > 0) this.msisSignalled++;
    else this.msisBlocked++;
    return r > 0;
  }

  /**
   * KVM_SET_GSI_ROUTING: replaces the whole routing table. Under the split irqchip, MSI routes
   * on the IOAPIC's GSIs tell KVM which vectors are level-triggered (so their EOI exits).
   */
  setMsiRoutes(routes: readonly MsiRoute[]): void {
    const buf = new Uint8Array(IRQ_ROUTING_HEADER_SIZE + routes.length * IRQ_ROUTING_ENTRY_SIZE);
    const v = new DataView(buf.buffer);
    v.setUint32(0, routes.length, true);
    routes.forEach((r, i) => {
      const o = IRQ_ROUTING_HEADER_SIZE + i * IRQ_ROUTING_ENTRY_SIZE;
      v.setUint32(o, r.gsi, true);
      v.setUint32(o + 4, KVM_IRQ_ROUTING_MSI, true);
      v.setUint32(o + 16, r.address >>> 0, true);
      v.setUint32(o + 20, Math.floor(r.address / 0x1_0000_0000) >>> 0, true);
      v.setUint32(o + 24, r.data >>> 0, true);
    });
    bufferIoctl(this.fd, KVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING", buf);
  }

  /**
   * KVM_IRQFD: a signal on eventfd `fd` injects GSI `gsi` in the kernel (for an MSI route, the
   * route's message), without a trip through this process; `deassign` removes the binding.
   */
  irqfd(fd: number, gsi: number, deassign = false): void {
    const buf = new Uint8Array(32);
    const v = new DataView(buf.buffer);
    v.setInt32(0, fd, true);
    v.setUint32(4, gsi, true);
    v.setUint32(8, deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0, true);
    bufferIoctl(this.fd, KVM_IRQFD, "KVM_IRQFD", buf);
  }

  createVcpu(id: number): Vcpu {
    const fd = kvmIoctl(this.fd, KVM_CREATE_VCPU, id);
    return new Vcpu(this, id, fd);
  }

  close(): void {
    close(this.fd);
  }
}
