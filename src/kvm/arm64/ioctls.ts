/**
 * KVM on arm64: ioctl numbers, structure sizes and constants the arm64 VMM needs, from the
 * arm64 UAPI (<asm/kvm.h>, <linux/kvm.h>) and Documentation/virt/kvm/api.rst and
 * devices/arm-vgic-v3.rst, arm-vgic-its.rst. Numbers are _IOW/_IOR/_IOWR(0xAE, nr, size).
 */

export const KVM_ARM_VCPU_INIT = 0x4020aeae;
export const KVM_ARM_PREFERRED_TARGET = 0x8020aeaf;
export const KVM_GET_ONE_REG = 0x4010aeab;
export const KVM_SET_ONE_REG = 0x4010aeac;
export const KVM_CREATE_DEVICE = 0xc00caee0;
export const KVM_SET_DEVICE_ATTR = 0x4018aee1;
export const KVM_IRQ_LINE = 0x4008ae61;

/** struct kvm_vcpu_init: u32 target, u32 features[7]. */
export const KVM_VCPU_INIT_SIZE = 32;
/** struct kvm_one_reg: u64 id, u64 addr. */
export const KVM_ONE_REG_SIZE = 16;
/** struct kvm_create_device: u32 type, u32 fd, u32 flags. */
export const KVM_CREATE_DEVICE_SIZE = 12;
/** struct kvm_device_attr: u32 flags, u32 group, u64 attr, u64 addr. */
export const KVM_DEVICE_ATTR_SIZE = 24;

/** kvm_vcpu_init.features[0] bits (api.rst 4.82). */
export const KVM_ARM_VCPU_POWER_OFF = 0;
export const KVM_ARM_VCPU_PSCI_0_2 = 2;

export const KVM_DEV_TYPE_ARM_VGIC_V3 = 7;
export const KVM_DEV_TYPE_ARM_VGIC_ITS = 8;
export const KVM_DEV_ARM_VGIC_GRP_ADDR = 0;
export const KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3;
export const KVM_DEV_ARM_VGIC_GRP_CTRL = 4;
export const KVM_VGIC_V3_ADDR_TYPE_DIST = 2;
export const KVM_VGIC_V3_ADDR_TYPE_REDIST = 3;
export const KVM_VGIC_ITS_ADDR_TYPE = 4;
export const KVM_DEV_ARM_VGIC_CTRL_INIT = 0;

export const KVM_CAP_ARM_PSCI_0_2 = 102;
export const KVM_CAP_MSI_DEVID = 131;

/** KVM_IRQ_LINE irq field (api.rst 4.25): type in bits 27:24, 1 = SPI (INTID 32..1019). */
export const KVM_ARM_IRQ_TYPE_SPI = 1;

/** kvm_msi.flags: devid is valid (required with an ITS). */
export const KVM_MSI_VALID_DEVID = 1;

/**
 * Register IDs for KVM_{GET,SET}_ONE_REG (api.rst 4.68): core registers are
 * KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset in struct kvm_regs / 4).
 */
const CORE = 0x6030_0000_0010_0000n;
export const REG_X0 = CORE | 0x00n;
export const REG_X1 = CORE | 0x02n;
export const REG_X2 = CORE | 0x04n;
export const REG_X3 = CORE | 0x06n;
export const REG_PC = CORE | 0x40n;
export const REG_PSTATE = CORE | 0x42n;
/** System registers: KVM_REG_ARM64_SYSREG | op0<<14 | op1<<11 | CRn<<7 | CRm<<3 | op2. */
export const REG_MPIDR_EL1 = 0x6030_0000_0013_c005n;

/** PSTATE at entry: EL1h with D, A, I, F masked (booting.rst; Firecracker uses 0x3C5). */
export const PSTATE_EL1H_DAIF = 0x3c5n;

export const ARM64_IOCTL_NAMES: ReadonlyMap<number, string> = new Map([
  [KVM_ARM_VCPU_INIT, "KVM_ARM_VCPU_INIT"],
  [KVM_ARM_PREFERRED_TARGET, "KVM_ARM_PREFERRED_TARGET"],
  [KVM_GET_ONE_REG, "KVM_GET_ONE_REG"],
  [KVM_SET_ONE_REG, "KVM_SET_ONE_REG"],
  [KVM_CREATE_DEVICE, "KVM_CREATE_DEVICE"],
  [KVM_SET_DEVICE_ATTR, "KVM_SET_DEVICE_ATTR"],
  [KVM_IRQ_LINE, "KVM_IRQ_LINE"],
]);
