/**
 * The function's regions as the vfio-user client sees them (vfio-user.rst
 * "VFIO_USER_DEVICE_GET_REGION_INFO", "VFIO_USER_REGION_READ"): BAR0-5 as the function declares
 * them, config space, everything else absent; and one access split into the register-sized
 * pieces the device models take.
 */
import type { PciFunction } from "../pci/function.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import {
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "./protocol.ts";

/** Config space exposed to the client: the conventional 256-byte header and capabilities. */
export const CONFIG_REGION_SIZE = 256;

/** Size and access flags of region `index` of `fn` (size 0: the region does not exist). */
export function regionInfo(fn: PciFunction, index: number): { sizeBytes: number; flags: number } {
  const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
  if (index === VFIO_PCI_CONFIG_REGION_INDEX) return { sizeBytes: CONFIG_REGION_SIZE, flags: rw };
  if (index >= 0 && index < 6) {
    const bar = fn.bars[index];
    if (bar !== undefined && bar.index === index) return { sizeBytes: bar.sizeBytes, flags: rw };
  }
  return { sizeBytes: 0, flags: 0 };
}

/**
 * Performs a region access of `count` bytes at `offset`, split into naturally aligned pieces of
 * 8, 4, 2 or 1 bytes (config space: at most 4), moving data to/from `buf` at `bufAt`.
 */
export function regionAccess(
  fn: PciFunction,
  index: number,
  offset: number,
  count: number,
  buf: DataView,
  bufAt: number,
  write: boolean,
): void {
  const config = index === VFIO_PCI_CONFIG_REGION_INDEX;
  const handler: IoHandler | undefined = config ? undefined : fn.bars[index]?.handler;
  let done = 0;
  while (done < count) {
    const at = offset + done;
    const left = count - done;
    // Largest naturally aligned piece that fits (config space: at most 4 bytes).
    let size: AccessSize = 1;
    if (!config && left >= 8 && at % 8 === 0) size = 8;
    else if (left >= 4 && at % 4 === 0) size = 4;
    else if (left >= 2 && at % 2 === 0) size = 2;
    const b = bufAt + done;
    if (write) {
      let value: number;
      if (size === 8) value = buf.getUint32(b + 4, true) * 2 ** 32 + buf.getUint32(b, true);
      else if (size === 4) value = buf.getUint32(b, true);
      else if (size === 2) value = buf.getUint16(b, true);
      else value = buf.getUint8(b);
      if (config) fn.writeConfig(at, size, value);
      else handler?.write(at, size, value);
    } else {
      const value = config
        ? fn.readConfig(at, size)
        : (handler?.read(at, size) ?? 2 ** (8 * Math.min(size, 4)) - 1);
      if (size === 8) {
        buf.setUint32(b, value >>> 0, true);
        buf.setUint32(b + 4, Math.floor(value / 2 ** 32) >>> 0, true);
      } else if (size === 4) buf.setUint32(b, value >>> 0, true);
      else if (size === 2) buf.setUint16(b, value & 0xffff, true);
      else buf.setUint8(b, value & 0xff);
    }
    done += size;
  }
}
