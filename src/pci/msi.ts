/**
 * The MSI capability (PCI Local Bus 3.0 6.8.1), 64-bit, with optional per-vector masking.
 *
 * Layout: +2 Message Control (bit 0 enable, 3:1 Multiple Message Capable, 6:4 Multiple Message
 * Enable, 7 64-bit capable, 8 per-vector masking capable), +4 address low (bits 1:0 zero), +8
 * address high, +0xC data (16 bits); with per-vector masking +0x10 Mask Bits and +0x14 Pending
 * Bits (read-only). A message for a masked vector sets its pending bit and is sent when the
 * vector is unmasked (6.8.1.7 / 6.8.1.8).
 */
import { PCI_CAP_ID_MSI } from "./config-space.ts";
import type { MessageCapability, PciFunction } from "./function.ts";

export const MSI_CONTROL = 2;
export const MSI_ADDRESS_LO = 4;
export const MSI_ADDRESS_HI = 8;
export const MSI_DATA = 0xc;
export const MSI_MASK_BITS = 0x10;
export const MSI_PENDING_BITS = 0x14;

export const MSI_CONTROL_ENABLE = 0x1;
export const MSI_CONTROL_64BIT = 0x80;
export const MSI_CONTROL_PER_VECTOR_MASK = 0x100;

export interface MsiOptions {
  /** Requested vectors: 1, 2, 4, 8, 16 or 32. */
  readonly vectors: number;
  readonly perVectorMask: boolean;
  /** A fixed offset in config space (an assigned device's own); default the next free one. */
  readonly at?: number;
}

export class MsiCapability implements MessageCapability {
  readonly offset: number;
  readonly vectors: number;
  readonly perVectorMask: boolean;
  private readonly fn: PciFunction;
  /** Messages for masked vectors that became pending. */
  pendingSet = 0;
  /** Notifications for vectors beyond those allocated (aliased onto the allocated ones). */
  aliased = 0;

  constructor(fn: PciFunction, options: MsiOptions) {
    const log2 = Math.log2(options.vectors);
    if (!Number.isInteger(log2) || log2 < 0 || log2 > 5)
      throw new Error("MSI vectors must be 1..32, a power of two");
    this.fn = fn;
    this.vectors = options.vectors;
    this.perVectorMask = options.perVectorMask;
    const size = options.perVectorMask ? 0x18 : 0x0e;
    const c = fn.config;
    this.offset = c.addCapability(
      PCI_CAP_ID_MSI,
      size,
      { afterWrite: (offsetInCap) => this.afterWrite(offsetInCap) },
      options.at,
    );
    const o = this.offset;
    c.setU16(
      o + MSI_CONTROL,
      (log2 << 1) | MSI_CONTROL_64BIT | (options.perVectorMask ? MSI_CONTROL_PER_VECTOR_MASK : 0),
    );
    c.setWritable(o + MSI_CONTROL, 2, MSI_CONTROL_ENABLE | 0x70);
    c.setWritable(o + MSI_ADDRESS_LO, 4, 0xfffffffc);
    c.setWritable(o + MSI_ADDRESS_HI, 4, 0xffffffff);
    c.setWritable(o + MSI_DATA, 2, 0xffff);
    if (options.perVectorMask) c.setWritable(o + MSI_MASK_BITS, 4, vectorBits(options.vectors));
    fn.msi = this;
  }

  get enabled(): boolean {
    return (this.fn.config.u16(this.offset + MSI_CONTROL) & MSI_CONTROL_ENABLE) !== 0;
  }

  /** Vectors the driver allocated (Multiple Message Enable), capped at those requested. */
  get allocatedVectors(): number {
    const mme = (this.fn.config.u16(this.offset + MSI_CONTROL) >> 4) & 7;
    return Math.min(1 << Math.min(mme, 5), this.vectors);
  }

  private afterWrite(offsetInCap: number): void {
    // Enable changes route INTx off or back on; unmasking delivers pending messages.
    if (offsetInCap <= MSI_CONTROL + 1) this.fn.updatePin();
    this.deliverPending();
  }

  private deliverPending(): void {
    if (!this.perVectorMask || !this.enabled) return;
    const c = this.fn.config;
    const pending = c.u32(this.offset + MSI_PENDING_BITS);
    if (pending === 0) return;
    const mask = c.u32(this.offset + MSI_MASK_BITS);
    for (let v = 0; v < this.vectors; v++) {
      const bit = 2 ** v;
      if ((pending & bit) !== 0 && (mask & bit) === 0) {
        c.setU32(this.offset + MSI_PENDING_BITS, c.u32(this.offset + MSI_PENDING_BITS) & ~bit);
        this.send(v);
      }
    }
  }

  notify(vector: number): boolean {
    if (!this.enabled) return false;
    const allocated = this.allocatedVectors;
    let v = vector;
    if (!Number.isInteger(v) || v < 0 || v >= allocated) {
      // PCI 3.0 6.8.1.3: with fewer vectors allocated than events, events share vectors.
      this.aliased++;
      v = Math.abs(Math.trunc(v) || 0) & (allocated - 1);
    }
    if (this.perVectorMask) {
      const c = this.fn.config;
      if ((c.u32(this.offset + MSI_MASK_BITS) & (1 << v)) !== 0) {
        c.setU32(this.offset + MSI_PENDING_BITS, c.u32(this.offset + MSI_PENDING_BITS) | (1 << v));
        this.pendingSet++;
        return true;
      }
    }
    this.send(v);
    return true;
  }

  private send(vector: number): void {
    const c = this.fn.config;
    const hi = c.u32(this.offset + MSI_ADDRESS_HI);
    const lo = c.u32(this.offset + MSI_ADDRESS_LO);
    const allocated = this.allocatedVectors;
    // 6.8.1.6: the function modifies the low log2(allocated) bits of the data to select the vector.
    const data = (c.u16(this.offset + MSI_DATA) & ~(allocated - 1)) | (vector & (allocated - 1));
    this.fn.sendMessage({ address: hi * 2 ** 32 + lo, data: data & 0xffff }, vector);
  }

  reset(): void {
    const c = this.fn.config;
    const o = this.offset;
    c.setU16(o + MSI_CONTROL, c.u16(o + MSI_CONTROL) & ~(MSI_CONTROL_ENABLE | 0x70));
    c.setU32(o + MSI_ADDRESS_LO, 0);
    c.setU32(o + MSI_ADDRESS_HI, 0);
    c.setU16(o + MSI_DATA, 0);
    if (this.perVectorMask) {
      c.setU32(o + MSI_MASK_BITS, 0);
      c.setU32(o + MSI_PENDING_BITS, 0);
    }
  }
}

function vectorBits(vectors: number): number {
  return vectors >= 32 ? 0xffffffff : (1 << vectors) - 1;
}
