/**
 * QEMU's firmware configuration device, I/O-port interface (QEMU docs/specs/fw_cfg.rst):
 * a 16-bit selector at 0x510 and a byte-wide data port at 0x511. Selecting a key rewinds the
 * item; each data read returns its next byte, and zero past its end or for an unknown key.
 * Numeric items are little-endian; the file directory (key 0x19) is big-endian.
 * The DMA interface is not offered: the ID item (key 0x01) reports only the traditional one.
 */
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
/** ID item: bit 0 = traditional I/O interface. */
const FW_CFG_VERSION_TRADITIONAL = 1;

export interface FwCfgConfig {
  readonly ramSizeBytes: number;
  readonly cpus: number;
  readonly maxCpus: number;
  readonly nographic?: boolean;
}

export interface FwCfgStats {
  readonly selects: number;
  readonly unknownSelects: number;
  readonly dataReads: number;
}

function u16le(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v, true);
  return b;
}
function u64le(v: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}

export class FwCfg implements IoHandler {
  /** Items by full selector (arch-local keys keep bit 15). */
  private readonly items = new Map<number, Uint8Array>();
  private readonly files: { name: string; key: number; sizeBytes: number }[] = [];
  private current: Uint8Array | undefined;
  private offset = 0;

  selects = 0;
  unknownSelects = 0;
  dataReads = 0;

  constructor(config: FwCfgConfig) {
    this.items.set(FW_CFG_SIGNATURE, new TextEncoder().encode("QEMU"));
    const id = new Uint8Array(4);
    new DataView(id.buffer).setUint32(0, FW_CFG_VERSION_TRADITIONAL, true);
    this.items.set(FW_CFG_ID, id);
    this.items.set(FW_CFG_UUID, new Uint8Array(16));
    this.items.set(FW_CFG_RAM_SIZE, u64le(config.ramSizeBytes));
    this.items.set(FW_CFG_NOGRAPHIC, u16le(config.nographic === false ? 0 : 1));
    this.items.set(FW_CFG_NB_CPUS, u16le(config.cpus));
    this.items.set(FW_CFG_MAX_CPUS, u16le(config.maxCpus));
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

  stats(): FwCfgStats {
    return { selects: this.selects, unknownSelects: this.unknownSelects, dataReads: this.dataReads };
  }
}
