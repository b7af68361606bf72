/**
 * The 4 KiB configuration space of one PCI function, as bytes with per-byte access masks.
 *
 * Every byte has a current value, a writable mask (bits software may change) and a W1C mask
 * (bits software clears by writing 1). Reads and writes may have any alignment and size 1, 2 or
 * 4 inside [0, 4096); the bytes are little-endian (PCI Local Bus 3.0 6.1). Offsets
 * 0x100-0xFFF are the PCI Express extended space, reachable through ECAM only.
 *
 * Capabilities (PCI 3.0 6.7) are linked from the Capabilities Pointer at 0x34 in the order they
 * are added; each one may register hooks that run before a read of its bytes (to refresh state
 * kept elsewhere) and after a write (to act on it).
 */

export const CONFIG_SPACE_SIZE = 4096;
/** Legacy (conventional PCI) configuration space, reachable through 0xCF8/0xCFC. */
export const LEGACY_CONFIG_SPACE_SIZE = 256;

/** Type-0 header offsets (PCI Local Bus 3.0 6.1). */
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CACHE_LINE_SIZE = 0x0c;
export const PCI_LATENCY_TIMER = 0x0d;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BAR0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_ROM_ADDRESS = 0x30;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

/** Command register bits (PCI 3.0 6.2.2). */
export const PCI_COMMAND_IO = 0x0001;
export const PCI_COMMAND_MEMORY = 0x0002;
export const PCI_COMMAND_MASTER = 0x0004;
export const PCI_COMMAND_PARITY = 0x0040;
export const PCI_COMMAND_SERR = 0x0100;
export const PCI_COMMAND_INTX_DISABLE = 0x0400;

/** Status register bits (PCI 3.0 6.2.3). */
export const PCI_STATUS_INTERRUPT = 0x0008;
export const PCI_STATUS_CAP_LIST = 0x0010;
/** The error bits of Status, all RW1C. */
export const PCI_STATUS_W1C_MASK = 0xf900;

/** Capability IDs (PCI Code and ID Assignment 3.x). */
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_VENDOR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;

export interface CapabilityHooks {
  /** Runs before bytes of the capability are read; `offsetInCap` is relative to its start. */
  beforeRead?(offsetInCap: number, sizeBytes: number): void;
  /** Runs after bytes of the capability were written (masks already applied). */
  afterWrite?(offsetInCap: number, sizeBytes: number): void;
}

interface CapabilitySlot {
  readonly id: number;
  readonly offset: number;
  readonly sizeBytes: number;
  readonly hooks: CapabilityHooks;
}

export class ConfigSpace {
  readonly bytes = new Uint8Array(CONFIG_SPACE_SIZE);
  /** Bits software may write. */
  readonly writableMask = new Uint8Array(CONFIG_SPACE_SIZE);
  /** Bits software clears by writing 1 (they are not in writableMask). */
  readonly w1cMask = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly view = new DataView(this.bytes.buffer);
  private readonly capabilities: CapabilitySlot[] = [];
  private nextCapabilityOffset = 0x40;
  private lastExtendedOffset = 0;
  private nextExtendedOffset = 0x100;

  u8(offset: number): number {
    return this.bytes[offset];
  }
  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }
  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }
  setU8(offset: number, value: number): void {
    this.bytes[offset] = value;
  }
  setU16(offset: number, value: number): void {
    this.view.setUint16(offset, value, true);
  }
  setU32(offset: number, value: number): void {
    this.view.setUint32(offset, value >>> 0, true);
  }

  /** Sets the writable mask of `sizeBytes` bytes at `offset` from a little-endian value. */
  setWritable(offset: number, sizeBytes: 1 | 2 | 4, mask: number): void {
    for (let i = 0; i < sizeBytes; i++) this.writableMask[offset + i] = (mask >>> (8 * i)) & 0xff;
  }

  setW1c(offset: number, sizeBytes: 1 | 2 | 4, mask: number): void {
    for (let i = 0; i < sizeBytes; i++) this.w1cMask[offset + i] = (mask >>> (8 * i)) & 0xff;
  }

  /**
   * Adds a capability of `sizeBytes` (including its 2-byte header) to the list and returns its
   * offset. The ID and next pointer are read-only; all other bytes start read-only and zero.
   * `at` places it at a fixed offset (an assigned device keeps its capabilities where the
   * hardware has them); the owner then links the list itself.
   */
  addCapability(id: number, sizeBytes: number, hooks: CapabilityHooks = {}, at?: number): number {
    const offset = at ?? this.nextCapabilityOffset;
    if (offset < 0x40 || offset % 4 !== 0) throw new Error(`capability offset 0x${offset.toString(16)}`);
    if (sizeBytes < 2 || offset + sizeBytes > LEGACY_CONFIG_SPACE_SIZE) {
      throw new Error(`capability 0x${id.toString(16)} of ${sizeBytes} bytes does not fit`);
    }
    this.bytes[offset] = id;
    this.bytes[offset + 1] = 0;
    const prev = this.capabilities[this.capabilities.length - 1];
    if (prev === undefined) this.bytes[PCI_CAPABILITY_LIST] = offset;
    else this.bytes[prev.offset + 1] = offset;
    this.setU16(PCI_STATUS, this.u16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    this.capabilities.push({ id, offset, sizeBytes, hooks });
    this.nextCapabilityOffset = Math.max(this.nextCapabilityOffset, (offset + sizeBytes + 3) & ~3);
    return offset;
  }

  /**
   * Adds a PCI Express extended capability (PCIe 7.6.3: header = ID 15:0, version 19:16, next
   * 31:20) in the extended space, linked from 0x100 in the order added. Returns its offset.
   * Only ECAM reaches it; a function without extended capabilities reads 0 at 0x100.
   */
  addExtendedCapability(id: number, version: number, sizeBytes: number, hooks: CapabilityHooks = {}): number {
    const offset = this.nextExtendedOffset;
    if (sizeBytes < 4 || offset + sizeBytes > CONFIG_SPACE_SIZE) {
      throw new Error(`extended capability 0x${id.toString(16)} of ${sizeBytes} bytes does not fit`);
    }
    this.setU32(offset, (id & 0xffff) | ((version & 0xf) << 16));
    if (this.lastExtendedOffset !== 0) {
      const prev = this.lastExtendedOffset;
      this.setU32(prev, (this.u32(prev) & 0xfffff) | (offset << 20));
    }
    this.lastExtendedOffset = offset;
    this.capabilities.push({ id: 0x10000 | id, offset, sizeBytes, hooks });
    this.nextExtendedOffset = (offset + sizeBytes + 3) & ~3;
    return offset;
  }

  /** Offsets of the capabilities with `id`, in list order. */
  findCapabilities(id: number): number[] {
    return this.capabilities.filter((c) => c.id === id).map((c) => c.offset);
  }

  /** Offsets of the extended capabilities with `id`, in list order. */
  findExtendedCapabilities(id: number): number[] {
    return this.capabilities.filter((c) => c.id === (0x10000 | id)).map((c) => c.offset);
  }

  /** Reads `sizeBytes` (1, 2 or 4) at `offset`; the caller checked the range. */
  read(offset: number, sizeBytes: number): number {
    for (const c of this.capabilities) {
      if (
        c.hooks.beforeRead !== undefined &&
        offset < c.offset + c.sizeBytes &&
        c.offset < offset + sizeBytes
      ) {
        const start = Math.max(offset, c.offset);
        const end = Math.min(offset + sizeBytes, c.offset + c.sizeBytes);
        c.hooks.beforeRead(start - c.offset, end - start);
      }
    }
    let value = 0;
    for (let i = sizeBytes - 1; i >= 0; i--) value = value * 256 + this.bytes[offset + i];
    return value;
  }

  /**
   * Applies a guest write through the masks. Returns nothing; the owner compares state before
   * and after for the registers it cares about.
   */
  write(offset: number, sizeBytes: number, value: number): void {
    for (let i = 0; i < sizeBytes; i++) {
      const o = offset + i;
      const b = Math.floor(value / 2 ** (8 * i)) & 0xff;
      const wm = this.writableMask[o];
      const w1c = this.w1cMask[o];
      this.bytes[o] = ((this.bytes[o] & ~wm) | (b & wm)) & ~(b & w1c);
    }
    for (const c of this.capabilities) {
      if (
        c.hooks.afterWrite !== undefined &&
        offset < c.offset + c.sizeBytes &&
        c.offset < offset + sizeBytes
      ) {
        const start = Math.max(offset, c.offset);
        const end = Math.min(offset + sizeBytes, c.offset + c.sizeBytes);
        c.hooks.afterWrite(start - c.offset, end - start);
      }
    }
  }
}
