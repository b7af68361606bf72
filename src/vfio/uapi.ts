/**
 * Numbers from Linux's VFIO user API (include/uapi/linux/vfio.h), x86-64 / aarch64 (LP64).
 * Every VFIO ioctl is _IO(';', 100 + n): no size is encoded, the size travels in `argsz`.
 */

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1v2_IOMMU = 3;

const vfioIoctl = (n: number): number => 0x3b00 + 100 + n;
export const VFIO_GET_API_VERSION = vfioIoctl(0);
export const VFIO_CHECK_EXTENSION = vfioIoctl(1);
export const VFIO_SET_IOMMU = vfioIoctl(2);
export const VFIO_GROUP_GET_STATUS = vfioIoctl(3);
export const VFIO_GROUP_SET_CONTAINER = vfioIoctl(4);
export const VFIO_GROUP_GET_DEVICE_FD = vfioIoctl(6);
export const VFIO_DEVICE_GET_INFO = vfioIoctl(7);
export const VFIO_DEVICE_GET_REGION_INFO = vfioIoctl(8);
export const VFIO_DEVICE_GET_IRQ_INFO = vfioIoctl(9);
export const VFIO_DEVICE_SET_IRQS = vfioIoctl(10);
export const VFIO_DEVICE_RESET = vfioIoctl(11);
export const VFIO_IOMMU_GET_INFO = vfioIoctl(12);
export const VFIO_IOMMU_MAP_DMA = vfioIoctl(13);
export const VFIO_IOMMU_UNMAP_DMA = vfioIoctl(14);

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
/** Region info capabilities (struct vfio_info_cap_header: id u16, version u16, next u32). */
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;

/** vfio-pci region indexes: BAR0-5, expansion ROM, config space, VGA. */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;

/** Struct sizes (argsz). */
export const GROUP_STATUS_BYTES = 8;
export const DEVICE_INFO_BYTES = 24;
export const REGION_INFO_BYTES = 32;
export const IOMMU_TYPE1_INFO_BYTES = 24;
export const DMA_MAP_BYTES = 32;
export const DMA_UNMAP_BYTES = 24;

/** vfio-pci interrupt indexes. */
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const IRQ_INFO_BYTES = 16;
export const IRQ_SET_HEADER_BYTES = 20;
