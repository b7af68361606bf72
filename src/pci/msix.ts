/**
 * The MSI-X capability (PCI Local Bus 3.0 6.8.2) with its table and Pending Bit Array in BARs.
 *
 * Capability: +2 Message Control (10:0 table size - 1, 14 Function Mask, 15 MSI-X Enable),
 * +4 table offset | BIR, +8 PBA offset | BIR. Table entries are 16 bytes: address low (bits
 * 1:0 zero), address high, data, vector control (bit 0 Mask, reset value 1; 6.8.2.9). The PBA
 * is read-only. A message for a masked vector (function mask or vector mask) sets its pending
 * bit; when the vector becomes unmasked with its bit set, the message is sent and the bit
 * cleared (6.8.2.9 / 6.8.2.10).
 *
 * The device places `tableHandler` and `pbaHandler` inside its BARs (see BarRegions).
 */
import type { IoHandler } from "../platform/bus.ts";
import type { MsiMessage } from "../platform/interrupts.ts";
import { PCI_CAP_ID_MSIX } from "./config-space.ts";
import type { MessageCapability, PciFunction } from "./function.ts";

export const MSIX_CONTROL = 2;
export const MSIX_TABLE = 4;
export const MSIX_PBA = 8;
export const MSIX_CONTROL_FUNCTION_MASK = 0x4000;
export const MSIX_CONTROL_ENABLE = 0x8000;
export const MSIX_ENTRY_SIZE = 16;
export const MSIX_ENTRY_VECTOR_CONTROL = 12;
export const MSIX_VECTOR_MASKED = 0x1;

export interface MsixOptions {
  /** 1..2048. */
  readonly vectors: number;
  readonly tableBar: number;
  /** 8-byte aligned offset of the table in its BAR. */
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
  /** A fixed offset in config space (an assigned device's own); default the next free one. */
  readonly at?: number;
}

export class MsixCapability implements MessageCapability {
  readonly offset: number;
  readonly vectors: number;
  readonly tableSizeBytes: number;
  readonly pbaSizeBytes: number;
  readonly tableHandler: IoHandler;
  readonly pbaHandler: IoHandler;
  private readonly fn: PciFunction;
  private readonly table: Uint8Array;
  private readonly tableView: DataView;
  private readonly pba: Uint8Array;
  private readonly pbaView: DataView;
  /** Immutable message per vector, rebuilt after its table entry is written (no allocation per interrupt). */
  private readonly messages: (MsiMessage | undefined)[];
  /** Messages that found their vector masked and set a pending bit. */
  pendingSet = 0;
  /** Notifications for vectors outside the table (dropped). */
  badVector = 0;

  constructor(fn: PciFunction, options: MsixOptions) {
    const n = options.vectors;
    if (!Number.isInteger(n) || n < 1 || n > 2048) throw new Error("MSI-X vectors must be 1..2048");
    if (options.tableOffset % 8 !== 0 || options.pbaOffset % 8 !== 0)
      throw new Error("MSI-X offsets must be 8-aligned");
    this.fn = fn;
    this.vectors = n;
    this.tableSizeBytes = n * MSIX_ENTRY_SIZE;
    this.pbaSizeBytes = Math.ceil(n / 64) * 8;
    this.table = new Uint8Array(this.tableSizeBytes);
    this.tableView = new DataView(this.table.buffer);
    this.pba = new Uint8Array(this.pbaSizeBytes);
    this.pbaView = new DataView(this.pba.buffer);
    this.messages = new Array<MsiMessage | undefined>(n).fill(undefined);
    const c = fn.config;
    this.offset = c.addCapability(
      PCI_CAP_ID_MSIX,
      12,
      {
        afterWrite: (offsetInCap) => {
          if (offsetInCap <= MSIX_CONTROL + 1) {
            fn.updatePin();
            this.deliverPending();
          }
        },
      },
      options.at,
    );
    c.setU16(this.offset + MSIX_CONTROL, n - 1);
    c.setWritable(this.offset + MSIX_CONTROL, 2, MSIX_CONTROL_FUNCTION_MASK | MSIX_CONTROL_ENABLE);
    c.setU32(this.offset + MSIX_TABLE, options.tableOffset | options.tableBar);
    c.setU32(this.offset + MSIX_PBA, options.pbaOffset | options.pbaBar);
    this.resetTable();
    this.tableHandler = {
      read: (offset, sizeBytes) => this.readTable(offset, sizeBytes),
      write: (offset, sizeBytes, value) => this.writeTable(offset, sizeBytes, value),
    };
    this.pbaHandler = {
      read: (offset, sizeBytes) => readLe(this.pba, this.pbaView, offset, sizeBytes),
      write: () => {}, // 6.8.2.10: the PBA is read-only
    };
    fn.msix = this;
  }

  private get control(): number {
    return this.fn.config.u16(this.offset + MSIX_CONTROL);
  }

  get enabled(): boolean {
    return (this.control & MSIX_CONTROL_ENABLE) !== 0;
  }

  get functionMasked(): boolean {
    return (this.control & MSIX_CONTROL_FUNCTION_MASK) !== 0;
  }

  vectorMasked(vector: number): boolean {
    return (
      (this.tableView.getUint32(vector * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CONTROL, true) &
        MSIX_VECTOR_MASKED) !==
      0
    );
  }

  pending(vector: number): boolean {
    return (this.pba[vector >> 3] & (1 << (vector & 7))) !== 0;
  }

  private readTable(offset: number, sizeBytes: number): number {
    return readLe(this.table, this.tableView, offset, sizeBytes);
  }

  private writeTable(offset: number, sizeBytes: number, value: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset + sizeBytes > this.tableSizeBytes) return;
    const lo = Math.trunc(value) >>> 0;
    const hi = sizeBytes === 8 ? Math.floor(value / 2 ** 32) >>> 0 : 0;
    for (let i = 0; i < sizeBytes; i++) {
      const o = offset + i;
      const field = o % MSIX_ENTRY_SIZE;
      let b = i < 4 ? (lo >>> (8 * i)) & 0xff : (hi >>> (8 * (i - 4))) & 0xff;
      if (field === 0) b &= 0xfc; // address bits 1:0 are zero (DWORD aligned)
      if (field === MSIX_ENTRY_VECTOR_CONTROL) b &= MSIX_VECTOR_MASKED; // bits 31:1 reserved
      if (field > MSIX_ENTRY_VECTOR_CONTROL) b = 0;
      this.table[o] = b;
      this.messages[Math.floor(o / MSIX_ENTRY_SIZE)] = undefined;
    }
    this.deliverPending();
  }

  /** Sends the pending messages of vectors that are now unmasked. */
  private deliverPending(): void {
    if (!this.enabled || this.functionMasked) return;
    for (let i = 0; i < this.pbaSizeBytes; i++) {
      if (this.pba[i] === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const v = i * 8 + bit;
        if ((this.pba[i] & (1 << bit)) !== 0 && v < this.vectors && !this.vectorMasked(v)) {
          this.pba[i] &= ~(1 << bit);
          this.send(v);
        }
      }
    }
  }

  notify(vector: number): boolean {
    if (!this.enabled) return false;
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      this.badVector++;
      return true;
    }
    if (this.functionMasked || this.vectorMasked(vector)) {
      this.pba[vector >> 3] |= 1 << (vector & 7);
      this.pendingSet++;
      return true;
    }
    this.send(vector);
    return true;
  }

  /** The message table entry `vector` (0..vectors-1) holds now. */
  entryMessage(vector: number): MsiMessage {
    let message = this.messages[vector];
    if (message === undefined) {
      const e = vector * MSIX_ENTRY_SIZE;
      const lo = this.tableView.getUint32(e, true);
      const hi = this.tableView.getUint32(e + 4, true);
      message = { address: hi * 2 ** 32 + lo, data: this.tableView.getUint32(e + 8, true) };
      this.messages[vector] = message;
    }
    return message;
  }

  private send(vector: number): void {
    this.fn.sendMessage(this.entryMessage(vector), vector);
  }

  private resetTable(): void {
    this.messages.fill(undefined);
    this.table.fill(0);
    this.pba.fill(0);
    for (let v = 0; v < this.vectors; v++) {
      this.tableView.setUint32(v * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CONTROL, MSIX_VECTOR_MASKED, true);
    }
  }

  reset(): void {
    const c = this.fn.config;
    c.setU16(this.offset + MSIX_CONTROL, this.vectors - 1);
    this.resetTable();
  }
}

/** Little-endian read of 1, 2, 4 or 8 bytes inside `bytes`; all-ones outside. */
export function readLe(bytes: Uint8Array, view: DataView, offset: number, sizeBytes: number): number {
  if (!Number.isInteger(offset) || offset < 0 || offset + sizeBytes > bytes.length) {
    return sizeBytes >= 4 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
  }
  switch (sizeBytes) {
    case 1:
      return bytes[offset];
    case 2:
      return view.getUint16(offset, true);
    case 4:
      return view.getUint32(offset, true);
    default: {
      const hi = view.getUint32(offset + 4, true);
      // 8-byte reads return the low 53 bits (the platform contract); the high bits above 2^53 drop.
      return (hi & 0x1fffff) * 2 ** 32 + view.getUint32(offset, true);
    }
  }
}
