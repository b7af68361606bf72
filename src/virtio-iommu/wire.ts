/**
 * virtio-iommu wire constants: feature bits, request types, status codes, flags, probe property
 * and fault record layouts (VIRTIO 1.3 section 5.13, device ID 23).
 */

export const VIRTIO_ID_IOMMU = 23;

/** Virtqueue indices (5.13.2). */
export const REQUEST_QUEUE = 0;
export const EVENT_QUEUE = 1;

/** Device feature bit numbers (5.13.3). */
export const FEATURE_BIT = {
  INPUT_RANGE: 0,
  DOMAIN_RANGE: 1,
  MAP_UNMAP: 2,
  /** Legacy: superseded by BYPASS_CONFIG; new devices SHOULD NOT offer it (5.13.3.2). */
  BYPASS: 3,
  PROBE: 4,
  MMIO: 5,
  BYPASS_CONFIG: 6,
} as const;

export const F_INPUT_RANGE = 1n << 0n;
export const F_DOMAIN_RANGE = 1n << 1n;
export const F_MAP_UNMAP = 1n << 2n;
export const F_BYPASS = 1n << 3n;
export const F_PROBE = 1n << 4n;
export const F_MMIO = 1n << 5n;
export const F_BYPASS_CONFIG = 1n << 6n;
/** Every device-specific feature bit this device type defines (bits 0..6). */
export const DEVICE_FEATURE_MASK = 0x7fn;

/** Request types (5.13.6). */
export const REQ_ATTACH = 1;
export const REQ_DETACH = 2;
export const REQ_MAP = 3;
export const REQ_UNMAP = 4;
export const REQ_PROBE = 5;
export type RequestType = 1 | 2 | 3 | 4 | 5;
export const REQUEST_TYPE_NAMES = ["unknown", "attach", "detach", "map", "unmap", "probe"] as const;
export type RequestTypeName = (typeof REQUEST_TYPE_NAMES)[number];

/** Status codes written into the request tail (5.13.6). */
export const S_OK = 0;
export const S_IOERR = 1;
export const S_UNSUPP = 2;
export const S_DEVERR = 3;
export const S_INVAL = 4;
export const S_RANGE = 5;
export const S_NOENT = 6;
export const S_FAULT = 7;
export const S_NOMEM = 8;
export type Status = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8;
export const STATUS_NAMES = [
  "OK",
  "IOERR",
  "UNSUPP",
  "DEVERR",
  "INVAL",
  "RANGE",
  "NOENT",
  "FAULT",
  "NOMEM",
] as const;
export type StatusName = (typeof STATUS_NAMES)[number];

/** ATTACH flags (5.13.6.3). */
export const ATTACH_F_BYPASS = 1;

/** MAP flags (5.13.6.5). */
export const MAP_F_READ = 1;
export const MAP_F_WRITE = 2;
export const MAP_F_MMIO = 4;

/**
 * Sizes of the device-readable part of each request (head + body), in bytes. The tail
 * (u8 status, u8 reserved[3]) is the first 4 bytes of the device-writable part, except for PROBE,
 * where it follows `probe_size` bytes of properties.
 */
export const HEAD_SIZE_BYTES = 4;
export const TAIL_SIZE_BYTES = 4;
export const ATTACH_READABLE_BYTES = 20;
export const DETACH_READABLE_BYTES = 20;
export const MAP_READABLE_BYTES = 36;
export const UNMAP_READABLE_BYTES = 28;
export const PROBE_READABLE_BYTES = 72;

/** Probe property types and RESV_MEM subtypes (5.13.6.8). */
export const PROBE_T_NONE = 0;
export const PROBE_T_RESV_MEM = 1;
export const RESV_MEM_T_RESERVED = 0;
export const RESV_MEM_T_MSI = 1;
export const PROBE_PROPERTY_HEADER_BYTES = 4;
/** A RESV_MEM property: 4-byte header + subtype, reserved[3], start le64, end le64. */
export const RESV_MEM_PROPERTY_BYTES = 24;
export const RESV_MEM_PROPERTY_LENGTH = RESV_MEM_PROPERTY_BYTES - PROBE_PROPERTY_HEADER_BYTES;

/** Fault record (5.13.6.9). */
export const FAULT_R_UNKNOWN = 0;
export const FAULT_R_DOMAIN = 1;
export const FAULT_R_MAPPING = 2;
export const FAULT_REASON_NAMES = ["unknown", "domain", "mapping"] as const;
export const FAULT_F_READ = 1;
export const FAULT_F_WRITE = 2;
export const FAULT_F_ADDRESS = 0x100;
export const FAULT_RECORD_BYTES = 24;

/** Configuration space layout (5.13.4): offsets in bytes. */
export const CONFIG_PAGE_SIZE_MASK = 0;
export const CONFIG_INPUT_RANGE_START = 8;
export const CONFIG_INPUT_RANGE_END = 16;
export const CONFIG_DOMAIN_RANGE_START = 24;
export const CONFIG_DOMAIN_RANGE_END = 28;
export const CONFIG_PROBE_SIZE = 32;
export const CONFIG_BYPASS = 36;
export const CONFIG_SIZE_BYTES = 40;
