/**
 * The capability list of an assigned device, read from its VFIO config region, and the layout
 * the guest sees: the device's capabilities where the device has them, MSI and MSI-X emulated at
 * their own offsets (as QEMU's vfio-pci: vfio_add_capabilities), the rest passed through.
 *
 * The list is walked defensively (PCI 3.0 6.7: pointers are DWORD aligned, in 0x40-0xFF): a
 * pointer outside that range, a loop, or more than 48 entries ends it.
 */
import { PCI_CAP_ID_MSI, PCI_CAP_ID_MSIX } from "../pci/config-space.ts";

export interface DeviceCapability {
  readonly id: number;
  readonly offset: number;
}

export interface DeviceMsixLayout {
  readonly offset: number;
  /** Table Size + 1 (PCI 3.0 6.8.2.3: 1..2048). */
  readonly vectors: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
}

export interface DeviceMsiLayout {
  readonly offset: number;
  readonly perVectorMask: boolean;
  /** Bytes the device's own capability occupies (10, 14, 20 or 24). */
  readonly sizeBytes: number;
}

type ReadConfig = (offset: number, sizeBytes: 1 | 2 | 4) => number;

const STATUS_CAP_LIST = 0x10;
const MAX_CAPABILITIES = 48;

/** The device's standard capabilities in list order. */
export function readCapabilityList(readConfig: ReadConfig): DeviceCapability[] {
  const out: DeviceCapability[] = [];
  if ((readConfig(0x06, 2) & STATUS_CAP_LIST) === 0) return out;
  const seen = new Set<number>();
  let at = readConfig(0x34, 1) & 0xfc;
  while (at >= 0x40 && at <= 0xfc && !seen.has(at) && out.length < MAX_CAPABILITIES) {
    seen.add(at);
    out.push({ id: readConfig(at, 1), offset: at });
    at = readConfig(at + 1, 1) & 0xfc;
  }
  return out;
}

/** The device's MSI capability's shape, or null when it has none. */
export function readMsiLayout(
  caps: readonly DeviceCapability[],
  readConfig: ReadConfig,
): DeviceMsiLayout | null {
  const cap = caps.find((c) => c.id === PCI_CAP_ID_MSI);
  if (cap === undefined) return null;
  const control = readConfig(cap.offset + 2, 2);
  const is64 = (control & 0x80) !== 0;
  const perVectorMask = (control & 0x100) !== 0;
  // PCI 3.0 6.8.1: 32-bit 0x0A bytes, 64-bit 0x0E; per-vector masking adds mask + pending.
  const sizeBytes = (is64 ? 0x0e : 0x0a) + (perVectorMask ? 0x0a : 0);
  return { offset: cap.offset, perVectorMask, sizeBytes };
}

/** The device's MSI-X capability: table and PBA placement (BIR + offset), or null. */
export function readMsixLayout(
  caps: readonly DeviceCapability[],
  readConfig: ReadConfig,
): DeviceMsixLayout | null {
  const cap = caps.find((c) => c.id === PCI_CAP_ID_MSIX);
  if (cap === undefined || cap.offset + 12 > 0x100) return null;
  const control = readConfig(cap.offset + 2, 2);
  const table = readConfig(cap.offset + 4, 4) >>> 0;
  const pba = readConfig(cap.offset + 8, 4) >>> 0;
  return {
    offset: cap.offset,
    vectors: (control & 0x7ff) + 1,
    tableBar: table & 7,
    tableOffset: (table & ~7) >>> 0,
    pbaBar: pba & 7,
    pbaOffset: (pba & ~7) >>> 0,
  };
}

/**
 * True when an emulated capability of `sizeBytes` fits at the device's own capability at `at`:
 * no other capability of the device starts inside it and it ends by 0xFF. (Ours may be larger
 * than the device's: the emulated MSI is always 64-bit.)
 */
export function fitsAt(at: number, sizeBytes: number, caps: readonly DeviceCapability[]): boolean {
  if (at + sizeBytes > 0x100) return false;
  return caps.every((c) => c.offset === at || c.offset < at || c.offset >= at + sizeBytes);
}
