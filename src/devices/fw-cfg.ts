/**
 * QEMU's firmware configuration device, I/O-port interface (QEMU docs/specs/fw_cfg.rst):
 * a 16-bit selector at 0x510 and a byte-wide data port at 0x511. Selecting a key rewinds the
 * item; each data read returns its next byte, and zero past its end or for an unknown key.
 * Numeric items are little-endian; the file directory (key 0x19) is big-endian.
 *
 * DMA interface (when the device is given guest memory): a 64-bit big-endian address register
 * at 0x514 (high dword) / 0x518 (low dword); writing the low dword starts the transfer
 * described by the FWCfgDmaAccess structure at that guest-physical address (control, length:
 * big-endian u32; address: big-endian u64). Control bits: 0x01 error, 0x02 read, 0x04 skip,
 * 0x08 select (selector in bits 31:16), 0x10 write (refused: items are read-only). When done
 * the device writes control back as 0, or with the error bit. Like QEMU, the DMA targets
 * guest-physical memory directly (fw_cfg is not behind an IOMMU). A structure or buffer
 * outside RAM sets the error bit (when the structure itself is in RAM) and moves nothing.
 */

import type { GuestMemory } from "../engine/guest-memory.ts";
import { u16LeBytes, u64LeBytes } from "../engine/little-endian.ts";
import type { AccessSize, IoHandler } from "../platform/bus.ts";

export const FW_CFG_IOBASE = 0x510;
/** Selector (u16 write) at offset 0, data (u8 read) at offset 1. */
export const FW_CFG_IOSIZE = 2;

export const FW_CFG_SIGNATURE = 0x00;
export const FW_CFG_ID = 0x01;
export const FW_CFG_UUID = 0x02;
export const FW_CFG_RAM_SIZE = 0x03;
export const FW_CFG_NOGRAPHIC = 0x04;
export const FW_CFG_NB_CPUS = 0x05;
export const FW_CFG_MAX_CPUS = 0x0f;
export const FW_CFG_FILE_DIR = 0x19;
export const FW_CFG_FILE_FIRST = 0x20;
/** Bits above the entry number in a selector: 0x4000 write channel (ignored), 0x8000 arch-local. */
const FW_CFG_ENTRY_MASK = 0x3fff;
const FW_CFG_ARCH_LOCAL = 0x8000;
const FW_CFG_FILE_NAME_BYTES = 56;
const FW_CFG_MAX_FILES = FW_CFG_ENTRY_MASK + 1 - FW_CFG_FILE_FIRST;
/** ID item: bit 0 = traditional I/O interface, bit 1 = DMA interface. */
const FW_CFG_VERSION_TRADITIONAL = 1;
const FW_CFG_VERSION_DMA = 2;
export const FW_CFG_DMA_IOBASE = 0x514;
export const FW_CFG_DMA_IOSIZE = 8;
/** Reading the DMA address register returns "QEMU CFG" (big-endian), the feature signature. */
const FW_CFG_DMA_SIGNATURE_HI = 0x51454d55;
const FW_CFG_DMA_SIGNATURE_LO = 0x20434647;
export const FW_CFG_DMA_CTL_ERROR = 0x01;
export const FW_CFG_DMA_CTL_READ = 0x02;
export const FW_CFG_DMA_CTL_SKIP = 0x04;
export const FW_CFG_DMA_CTL_SELECT = 0x08;
export const FW_CFG_DMA_CTL_WRITE = 0x10;
const FW_CFG_DMA_ACCESS_BYTES = 16;

export interface FwCfgConfig {
  readonly ramSizeBytes: number;
  readonly cpus: number;
  readonly maxCpus: number;
  readonly nographic?: boolean;
  /** Guest memory for the DMA interface; without it only the I/O interface exists. */
  readonly memory?: GuestMemory;
}

export interface FwCfgStats {
  readonly selects: number;
  readonly unknownSelects: number;
  readonly dataReads: number;
  readonly dmaTransfers: number;
  readonly dmaErrors: number;
}

function swap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

export class FwCfg implements IoHandler {
  /** Items by full selector (arch-local keys keep bit 15). */
  private readonly items = new Map<number, Uint8Array>();
  private readonly files: { name: string; key: number; sizeBytes: number }[] = [];
  private current: Uint8Array | undefined;
  private offset = 0;

  private readonly memory: GuestMemory | undefined;
  private dmaAddressHigh = 0;
  /** The handler for the DMA address register (register it at FW_CFG_DMA_IOBASE, 8 bytes). */
  readonly dmaHandler: IoHandler;

  selects = 0;
  unknownSelects = 0;
  dataReads = 0;
  dmaTransfers = 0;
  dmaErrors = 0;

  constructor(config: FwCfgConfig) {
    this.memory = config.memory;
    this.dmaHandler = {
      read: (offset, sizeBytes) => this.dmaRegisterRead(offset, sizeBytes),
      write: (offset, sizeBytes, value) => this.dmaRegisterWrite(offset, sizeBytes, value),
    };
    this.items.set(FW_CFG_SIGNATURE, new TextEncoder().encode("QEMU"));
    const id = new Uint8Array(4);
    const version = FW_CFG_VERSION_TRADITIONAL | (config.memory === undefined ? 0 : FW_CFG_VERSION_DMA);
    new DataView(id.buffer).setUint32(0, version, true);
    this.items.set(FW_CFG_ID, id);
    this.items.set(FW_CFG_UUID, new Uint8Array(16));
    this.items.set(FW_CFG_RAM_SIZE, u64LeBytes(config.ramSizeBytes));
    this.items.set(FW_CFG_NOGRAPHIC, u16LeBytes(config.nographic === false ? 0 : 1));
    this.items.set(FW_CFG_NB_CPUS, u16LeBytes(config.cpus));
    this.items.set(FW_CFG_MAX_CPUS, u16LeBytes(config.maxCpus));
    this.rebuildDirectory();
  }

  /** Adds a named file item ("etc/e820"); it gets the next key from 0x20 and a directory entry. */
  addFile(name: string, data: Uint8Array): number {
    const nameBytes = new TextEncoder().encode(name);
    if (nameBytes.length >= FW_CFG_FILE_NAME_BYTES) throw new Error(`fw_cfg file name too long: ${name}`);
    if (this.files.some((f) => f.name === name)) throw new Error(`fw_cfg file ${name} already exists`);
    if (this.files.length >= FW_CFG_MAX_FILES) throw new Error("fw_cfg file directory is full");
    const key = FW_CFG_FILE_FIRST + this.files.length;
    this.files.push({ name, key, sizeBytes: data.length });
    this.items.set(key, data.slice());
    this.rebuildDirectory();
    return key;
  }

  /** Key 0x19: u32 count, then { u32 size, u16 select, u16 reserved, char name[56] }, big-endian. */
  private rebuildDirectory(): void {
    const dir = new Uint8Array(4 + this.files.length * 64);
    const v = new DataView(dir.buffer);
    v.setUint32(0, this.files.length, false);
    const enc = new TextEncoder();
    this.files.forEach((f, i) => {
      const o = 4 + i * 64;
      v.setUint32(o, f.sizeBytes, false);
      v.setUint16(o + 4, f.key, false);
      dir.set(enc.encode(f.name), o + 8);
    });
    this.items.set(FW_CFG_FILE_DIR, dir);
  }

  private select(key: number): void {
    this.selects++;
    this.offset = 0;
    const entry = key & (FW_CFG_ENTRY_MASK | FW_CFG_ARCH_LOCAL);
    this.current = this.items.get(entry);
    if (this.current === undefined) this.unknownSelects++;
  }

  private nextByte(): number {
    this.dataReads++;
    const item = this.current;
    if (item === undefined || this.offset >= item.length) return 0;
    return item[this.offset++];
  }

  read(_offset: number, sizeBytes: AccessSize): number {
    // QEMU's combined I/O region reads data bytes at either port; only byte reads are valid.
    if (sizeBytes !== 1) return 2 ** (8 * Math.min(sizeBytes, 4)) - 1;
    return this.nextByte();
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    // A 16-bit write at the selector port selects; data-port writes are ignored (QEMU >= 2.4).
    if (offset === 0 && sizeBytes === 2) this.select(value & 0xffff);
  }

  /** The register reads back the "QEMU CFG" signature (big-endian, high dword at offset 0). */
  private dmaRegisterRead(offset: number, sizeBytes: AccessSize): number {
    if (this.memory === undefined) return 2 ** (8 * Math.min(sizeBytes, 4)) - 1;
    if (offset === 0 && sizeBytes === 4) return swap32(FW_CFG_DMA_SIGNATURE_HI);
    if (offset === 4 && sizeBytes === 4) return swap32(FW_CFG_DMA_SIGNATURE_LO);
    return 0;
  }

  private dmaRegisterWrite(offset: number, sizeBytes: AccessSize, value: number): void {
    if (this.memory === undefined || sizeBytes !== 4) return;
    // The port is big-endian: an x86 `out` of a dword stores it byte-swapped.
    if (offset === 0) {
      this.dmaAddressHigh = swap32(value >>> 0);
    } else if (offset === 4) {
      const gpa = this.dmaAddressHigh * 0x1_0000_0000 + swap32(value >>> 0);
      this.dmaAddressHigh = 0;
      this.dma(gpa);
    }
  }

  /** Runs one FWCfgDmaAccess at `gpa`; never throws on guest values. */
  private dma(gpa: number): void {
    const mem = this.memory;
    if (mem === undefined || !Number.isSafeInteger(gpa) || !mem.isRam(gpa, FW_CFG_DMA_ACCESS_BYTES)) {
      this.dmaErrors++;
      return; // nowhere to report the error
    }
    this.dmaTransfers++;
    const control = mem.readU32(gpa);
    const c = swap32(control);
    const length = swap32(mem.readU32(gpa + 4));
    const hi = swap32(mem.readU32(gpa + 8));
    const lo = swap32(mem.readU32(gpa + 12));
    const bufferGpa = hi * 0x1_0000_0000 + lo;
    if (c & FW_CFG_DMA_CTL_SELECT) this.select(c >>> 16);
    let error = false;
    if (c & FW_CFG_DMA_CTL_WRITE) {
      error = true; // every item is read-only
    } else if (c & (FW_CFG_DMA_CTL_READ | FW_CFG_DMA_CTL_SKIP)) {
      const read = (c & FW_CFG_DMA_CTL_READ) !== 0;
      if (read && length > 0 && !(Number.isSafeInteger(bufferGpa) && mem.isRam(bufferGpa, length))) {
        error = true;
      } else {
        // No per-byte loop over the guest's length: the item's remaining bytes are copied, the
        // rest of a read is one zero fill, and a skip past the end stops at the end.
        const item = this.current;
        const n = item === undefined ? 0 : Math.min(length, item.length - this.offset);
        if (read) {
          if (n > 0 && item !== undefined) mem.write(bufferGpa, item.subarray(this.offset, this.offset + n));
          if (length > n) mem.fill(bufferGpa + n, length - n, 0);
        }
        this.offset += n;
      }
    }
    if (error) this.dmaErrors++;
    mem.writeU32(gpa, swap32(error ? FW_CFG_DMA_CTL_ERROR : 0));
  }

  stats(): FwCfgStats {
    return {
      selects: this.selects,
      unknownSelects: this.unknownSelects,
      dataReads: this.dataReads,
      dmaTransfers: this.dmaTransfers,
      dmaErrors: this.dmaErrors,
    };
  }
}
