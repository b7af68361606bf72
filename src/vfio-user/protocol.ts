/**
 * vfio-user wire format (QEMU docs/interop/vfio-user.rst, protocol version 0.1), host-endian
 * (little-endian on every host this runs on). Offsets below are from the start of a message;
 * the spec gives payload offsets from the end of the 16-byte header.
 *
 * Structures reused from <linux/vfio.h>: vfio_device_info, vfio_region_info, vfio_irq_info,
 * vfio_irq_set, with the vfio-user meaning of `argsz` described in "Message sizes".
 */

export const HEADER_SIZE = 16;

/** "Commands" table. */
export const CMD = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;

const COMMAND_NAMES: string[] = [];
for (const [k, v] of Object.entries(CMD)) COMMAND_NAMES[v] = k;

export function commandName(cmd: number): string {
  return COMMAND_NAMES[cmd] ?? `command ${cmd}`;
}

/** Header flags: bits 0-3 type, bit 4 No_reply, bit 5 Error. */
export const FLAG_TYPE_MASK = 0xf;
export const TYPE_COMMAND = 0x0;
export const TYPE_REPLY = 0x1;
export const FLAG_NO_REPLY = 0x10;
export const FLAG_ERROR = 0x20;

export const PROTOCOL_MAJOR = 0;
export const PROTOCOL_MINOR = 1;

/** Spec defaults when a capability is absent. */
export const DEFAULT_MAX_MSG_FDS = 1;
export const DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20;
export const DEFAULT_MAX_DMA_MAPS = 65535;
export const DEFAULT_PGSIZES = 4096;

// VFIO_USER_DMA_MAP flags.
export const DMA_FLAG_READ = 1 << 0;
export const DMA_FLAG_WRITE = 1 << 1;
export const DMA_MAP_SIZE = 32;
export const DMA_UNMAP_SIZE = 24;

// vfio_device_info flags (<linux/vfio.h>).
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const DEVICE_INFO_SIZE = 16;

// vfio_region_info.
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
export const REGION_INFO_SIZE = 32;

/** VFIO PCI region indexes: BAR0..BAR5, ROM, CONFIG, VGA. */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;

/** VFIO PCI IRQ indexes. */
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;

// vfio_irq_info flags.
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;
export const IRQ_INFO_SIZE = 16;

// vfio_irq_set flags.
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const VFIO_IRQ_SET_DATA_TYPE_MASK = 0x7;
export const VFIO_IRQ_SET_ACTION_TYPE_MASK = 0x38;
export const IRQ_SET_SIZE = 20;

/** REGION_READ/WRITE and DMA_READ/WRITE fixed parts (after the header). */
export const REGION_RW_SIZE = 16;
export const DMA_RW_SIZE = 16;

export interface MessageHeader {
  id: number;
  command: number;
  /** Whole message size including the header. */
  sizeBytes: number;
  flags: number;
  error: number;
}

export function decodeHeader(view: DataView, offset = 0): MessageHeader {
  return {
    id: view.getUint16(offset, true),
    command: view.getUint16(offset + 2, true),
    sizeBytes: view.getUint32(offset + 4, true),
    flags: view.getUint32(offset + 8, true),
    error: view.getUint32(offset + 12, true),
  };
}

export function encodeHeader(
  view: DataView,
  offset: number,
  id: number,
  command: number,
  sizeBytes: number,
  flags: number,
  error: number,
): void {
  view.setUint16(offset, id, true);
  view.setUint16(offset + 2, command, true);
  view.setUint32(offset + 4, sizeBytes, true);
  view.setUint32(offset + 8, flags, true);
  view.setUint32(offset + 12, error, true);
}

export interface Capabilities {
  maxMsgFds: number;
  maxDataXferSize: number;
  maxDmaMaps: number;
  pgsizes: number;
}

export type VersionParse =
  | { ok: true; major: number; minor: number; caps: Capabilities; raw: unknown }
  | { ok: false; why: string };

/**
 * Parses a VERSION payload: major u16, minor u16, optional NUL-terminated UTF-8 JSON
 * `{"capabilities": {...}}`. Unknown capabilities are ignored (the reply lists only ours).
 */
export function parseVersion(payload: Uint8Array): VersionParse {
  if (payload.length < 4) return { ok: false, why: "version payload shorter than 4 bytes" };
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const major = view.getUint16(0, true);
  const minor = view.getUint16(2, true);
  const caps: Capabilities = {
    maxMsgFds: DEFAULT_MAX_MSG_FDS,
    maxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE,
    maxDmaMaps: DEFAULT_MAX_DMA_MAPS,
    pgsizes: DEFAULT_PGSIZES,
  };
  let raw: unknown = null;
  if (payload.length > 4) {
    let end = payload.indexOf(0, 4);
    if (end < 0) end = payload.length;
    const text = Buffer.from(payload.buffer, payload.byteOffset + 4, end - 4).toString("utf8");
    if (text.length > 0) {
      try {
        raw = JSON.parse(text);
      } catch {
        return { ok: false, why: "version data is not valid JSON" };
      }
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        return { ok: false, why: "version data is not a JSON object" };
      }
      const c = (raw as { capabilities?: unknown }).capabilities;
      if (c !== undefined) {
        if (typeof c !== "object" || c === null || Array.isArray(c)) {
          return { ok: false, why: "capabilities is not an object" };
        }
        const o = c as Record<string, unknown>;
        const num = (k: string, min: number, max: number): number | undefined | null => {
          const v = o[k];
          if (v === undefined) return undefined;
          if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) return null;
          return v;
        };
        const fds = num("max_msg_fds", 0, 1 << 16);
        const xfer = num("max_data_xfer_size", 1, 2 ** 32 - 1);
        const maps = num("max_dma_maps", 1, 2 ** 32 - 1);
        const pg = num("pgsizes", 1, Number.MAX_SAFE_INTEGER);
        if (fds === null || xfer === null || maps === null || pg === null) {
          return { ok: false, why: "a capability has a value of the wrong type or range" };
        }
        if (fds !== undefined) caps.maxMsgFds = fds;
        if (xfer !== undefined) caps.maxDataXferSize = xfer;
        if (maps !== undefined) caps.maxDmaMaps = maps;
        if (pg !== undefined) caps.pgsizes = pg;
      }
    }
  }
  return { ok: true, major, minor, caps, raw };
}

/** VERSION payload bytes: major, minor, JSON capabilities and the terminating NUL. */
export function encodeVersion(
  major: number,
  minor: number,
  capabilities: Record<string, unknown>,
): Uint8Array {
  const json = Buffer.from(`${JSON.stringify({ capabilities })}\0`, "utf8");
  const out = new Uint8Array(4 + json.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, major, true);
  view.setUint16(2, minor, true);
  out.set(json, 4);
  return out;
}

/** 64-bit little-endian message fields (src/engine/little-endian.ts): -1 when 2^53 or more. */
export { readU64Safe as readU64, writeU64Safe as writeU64 } from "../engine/little-endian.ts";
