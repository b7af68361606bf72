/**
 * VIRTIO 1.3 constants shared by the split ring, the PCI transport and the devices.
 */

/** Device status bits (VIRTIO 1.3 2.1). */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

/** Reserved feature bits (VIRTIO 1.3 6). */
export const F_RING_INDIRECT_DESC = 1n << 28n;
export const F_RING_EVENT_IDX = 1n << 29n;
export const F_VERSION_1 = 1n << 32n;
export const F_ACCESS_PLATFORM = 1n << 33n;

/** Split virtqueue descriptor flags (2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags (2.7.7) and used.flags (2.7.8). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** The largest split queue (2.7: Queue Size is at most 32768). */
export const MAX_QUEUE_SIZE = 32768;
export const DESCRIPTOR_SIZE = 16;

/** virtio_pci_cap cfg_type values (4.1.4). */
export const PCI_CAP_COMMON_CFG = 1;
export const PCI_CAP_NOTIFY_CFG = 2;
export const PCI_CAP_ISR_CFG = 3;
export const PCI_CAP_DEVICE_CFG = 4;
export const PCI_CAP_PCI_CFG = 5;

/** Common configuration structure offsets (4.1.4.3). */
export const COMMON_DEVICE_FEATURE_SELECT = 0;
export const COMMON_DEVICE_FEATURE = 4;
export const COMMON_DRIVER_FEATURE_SELECT = 8;
export const COMMON_DRIVER_FEATURE = 12;
export const COMMON_MSIX_CONFIG = 16;
export const COMMON_NUM_QUEUES = 18;
export const COMMON_DEVICE_STATUS = 20;
export const COMMON_CONFIG_GENERATION = 21;
export const COMMON_QUEUE_SELECT = 22;
export const COMMON_QUEUE_SIZE = 24;
export const COMMON_QUEUE_MSIX_VECTOR = 26;
export const COMMON_QUEUE_ENABLE = 28;
export const COMMON_QUEUE_NOTIFY_OFF = 30;
export const COMMON_QUEUE_DESC = 32;
export const COMMON_QUEUE_DRIVER = 40;
export const COMMON_QUEUE_DEVICE = 48;
export const COMMON_QUEUE_NOTIFY_DATA = 56;
export const COMMON_QUEUE_RESET = 58;
/** admin_queue_index / admin_queue_num (60, 62) exist with VIRTIO_F_ADMIN_VQ, not offered: read 0. */
export const COMMON_CFG_SIZE = 64;

/** ISR status bits (4.1.4.5). */
export const ISR_QUEUE = 1;
export const ISR_CONFIG = 2;

export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** PCI vendor of virtio devices and the modern device ID base (4.1.2). */
export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
export const VIRTIO_PCI_MODERN_DEVICE_ID_BASE = 0x1040;

/** Device types (5). */
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_ENTROPY = 4;
// VIRTIO_ID_IOMMU (23) is a virtio-iommu wire constant: src/virtio-iommu/wire.ts.
