/**
 * KVM ioctl request numbers, capabilities and exit reasons (x86-64), from <linux/kvm.h>.
 * The numbers encode direction and structure size (_IOW(KVMIO, nr, type)); they were computed
 * against this machine's UAPI header and are checked by the sizes in kvm-structs.ts.
 */
import { errnoName } from "./libc.ts";

export const KVM_API_VERSION = 12;

export const KVM_GET_API_VERSION = 0xae00;
export const KVM_CREATE_VM = 0xae01;
export const KVM_CHECK_EXTENSION = 0xae03;
export const KVM_GET_VCPU_MMAP_SIZE = 0xae04;
export const KVM_GET_SUPPORTED_CPUID = 0xc008ae05;
export const KVM_CREATE_VCPU = 0xae41;
export const KVM_SET_USER_MEMORY_REGION = 0x4020ae46;
export const KVM_SET_TSS_ADDR = 0xae47;
export const KVM_SET_IDENTITY_MAP_ADDR = 0x4008ae48;
export const KVM_SET_GSI_ROUTING = 0x4008ae6a;
export const KVM_RUN = 0xae80;
export const KVM_GET_REGS = 0x8090ae81;
export const KVM_SET_REGS = 0x4090ae82;
export const KVM_GET_SREGS = 0x8138ae83;
export const KVM_SET_SREGS = 0x4138ae84;
export const KVM_SET_MSRS = 0x4008ae89;
export const KVM_GET_LAPIC = 0x8400ae8e;
export const KVM_SET_LAPIC = 0x4400ae8f;
export const KVM_SET_CPUID2 = 0x4008ae90;
export const KVM_ENABLE_CAP = 0x4068aea3;
export const KVM_SIGNAL_MSI = 0x4020aea5;
/** _IOW(KVMIO, 0x76, struct kvm_irqfd): 32 bytes (fd, gsi, flags, resamplefd, pad[16]). */
export const KVM_IRQFD = 0x4020ae76;
export const KVM_IRQFD_FLAG_DEASSIGN = 1;

/** Names for error messages ("KVM_RUN failed: EINTR (4)"). */
export const IOCTL_NAMES: ReadonlyMap<number, string> = new Map([
  [KVM_GET_API_VERSION, "KVM_GET_API_VERSION"],
  [KVM_CREATE_VM, "KVM_CREATE_VM"],
  [KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION"],
  [KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE"],
  [KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID"],
  [KVM_CREATE_VCPU, "KVM_CREATE_VCPU"],
  [KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION"],
  [KVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR"],
  [KVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR"],
  [KVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING"],
  [KVM_RUN, "KVM_RUN"],
  [KVM_GET_REGS, "KVM_GET_REGS"],
  [KVM_SET_REGS, "KVM_SET_REGS"],
  [KVM_GET_SREGS, "KVM_GET_SREGS"],
  [KVM_SET_SREGS, "KVM_SET_SREGS"],
  [KVM_SET_MSRS, "KVM_SET_MSRS"],
  [KVM_GET_LAPIC, "KVM_GET_LAPIC"],
  [KVM_SET_LAPIC, "KVM_SET_LAPIC"],
  [KVM_SET_CPUID2, "KVM_SET_CPUID2"],
  [KVM_ENABLE_CAP, "KVM_ENABLE_CAP"],
  [KVM_SIGNAL_MSI, "KVM_SIGNAL_MSI"],
  [KVM_IRQFD, "KVM_IRQFD"],
]);

export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_SIGNAL_MSI = 77;
export const KVM_CAP_SPLIT_IRQCHIP = 121;

export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;
export const KVM_EXIT_IOAPIC_EOI = 26;

export const KVM_IRQ_ROUTING_MSI = 2;

/** A failed KVM ioctl, named: "KVM_SET_USER_MEMORY_REGION failed: EINVAL (22)". */
export class KvmError extends Error {
  readonly ioctl: string;
  readonly errno: number;
  constructor(ioctl: string, errno: number, detail = "") {
    super(`${ioctl} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ""}`);
    this.name = "KvmError";
    this.ioctl = ioctl;
    this.errno = errno;
  }
}

export function ioctlName(request: number): string {
  return IOCTL_NAMES.get(request) ?? `ioctl 0x${request.toString(16)}`;
}
