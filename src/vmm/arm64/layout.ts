/**
 * The arm64 machine's guest-physical map and interrupt numbers: QEMU's `virt` board
 * (hw/arm/virt.c base_memmap, a15irqmap), so a guest that boots on `-M virt` finds the same
 * devices at the same places. SPI numbers are as the device tree writes them (INTID = SPI + 32).
 */

export const GIC_DIST_GPA = 0x0800_0000;
export const GIC_DIST_BYTES = 0x1_0000;
export const GIC_ITS_GPA = 0x0808_0000;
export const GIC_ITS_BYTES = 0x2_0000;
export const GIC_REDIST_GPA = 0x080a_0000;
/** Two 64 KiB frames (RD_base, SGI_base) per vCPU (GICv3 12.10). */
export const GIC_REDIST_BYTES_PER_CPU = 0x2_0000;
/** Room up to the UART: 123 vCPUs, as QEMU's first redistributor region. */
export const GIC_REDIST_REGION_BYTES = 0xf6_0000;
export const UART_GPA = 0x0900_0000;
export const UART_BYTES = 0x1000;
export const SMMU_GPA = 0x0905_0000;
/**
 * Where each SMMU instance goes (--iommu smmuv3,instances=2): QEMU virt's place, then a free
 * 128 KiB-aligned frame below the virtio-mmio region. Instance i's four SPIs (eventq, priq,
 * cmdq-sync, gerror) start at SMMU_SPI_BASES[i].
 */
export const SMMU_GPAS = [SMMU_GPA, 0x0910_0000] as const;
export const SMMU_SPI_BASES = [74, 78] as const;
export const MAX_SMMU_INSTANCES = SMMU_GPAS.length;
export const PCIE_MMIO_GPA = 0x1000_0000;
export const PCIE_MMIO_BYTES = 0x2eff_0000;
export const PCIE_PIO_GPA = 0x3eff_0000;
export const PCIE_PIO_BYTES = 0x1_0000;
export const PCIE_ECAM_GPA = 0x3f00_0000;
export const RAM_GPA = 0x4000_0000;
/** RAM must end below 2^40 (the default 40-bit IPA space of KVM_CREATE_VM type 0). */
export const MAX_RAM_BYTES = 255 * 1024 * 1024 * 1024;

export const SPI_UART = 1;
/** PCI INTA..INTD of slot 0; slot s pin p (0 = INTA) uses SPI_PCIE_INTX + (s + p) % 4. */
export const SPI_PCIE_INTX = 3;
/** SMMUv3 wired interrupts (QEMU: eventq, priq, cmdq-sync, gerror = 74..77). */
export const SPI_SMMU_EVENTQ = 74;
export const SPI_SMMU_PRIQ = 75;
export const SPI_SMMU_CMD_SYNC = 76;
export const SPI_SMMU_GERROR = 77;
/** SPIs the GIC implements: INTIDs 32 .. 32 + SPI_COUNT - 1 (QEMU: 256). */
export const SPI_COUNT = 256;

/** KVM's default PPIs: the EL1 virtual timer is INTID 27, the EL1 physical timer 30. */
export const PPI_TIMER = { secure: 13, nonSecure: 14, virtual: 11, hypervisor: 10 } as const;

/** Which SMMU instance PCI slot `slot` sits behind (the DT iommu-map says the same). */
export function smmuInstanceOfSlot(slot: number, instances: number): number {
  return slot % instances;
}

/**
 * The host's StreamID for an endpoint (the framework's pSID): distinct per physical SMMU and
 * different from the guest's vSID (= its RID), so remapping is visible; the guest never sees it.
 */
export function hostStreamId(instance: number, rid: number): number {
  return 0x1000 * (instance + 1) + rid;
}

/** The SPI a PCI device's INTx pin raises (the standard swizzle, as the DT interrupt-map says). */
export function pciIntxSpi(slot: number, pin: number): number {
  return SPI_PCIE_INTX + ((slot + pin) % 4);
}
