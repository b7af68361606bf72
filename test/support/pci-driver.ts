/**
 * A guest-side PCI driver for tests, written from the PCI specifications (not from our device
 * code): enumerate the bus through configuration mechanism #1 (0xCF8/0xCFC) or ECAM, size and
 * program BARs with the all-ones protocol, walk the capability list, enable MSI / MSI-X.
 *
 * It talks to the machine only through `IoBus`es, like a guest would: `io` for ports and
 * `mmio` for memory space (where ECAM and the BARs live).
 */
import type { IoBus } from "../../src/platform/bus.ts";

export const TEST_ECAM_BASE = 0xb000_0000;
export const TEST_MMIO32_BASE = 0xc000_0000;
export const TEST_MMIO64_BASE = 0x80_0000_0000;
export const TEST_IO_BASE = 0xc000;

export interface Bdf {
  readonly bus: number;
  readonly device: number;
  readonly fn: number;
}

export function bdfToId(b: Bdf): number {
  return (b.bus << 8) | (b.device << 3) | b.fn;
}

export interface FoundFunction extends Bdf {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly classCode: number;
  readonly headerType: number;
}

export interface SizedBar {
  readonly index: number;
  readonly kind: "mem32" | "mem64" | "io";
  readonly prefetchable: boolean;
  readonly sizeBytes: number;
  address: number;
}

export type ConfigMechanism = "legacy" | "ecam";

export class PciDriver {
  readonly io: IoBus;
  readonly mmio: IoBus;
  mechanism: ConfigMechanism;
  readonly ecamBase: number;
  private next32 = TEST_MMIO32_BASE;
  private next64 = TEST_MMIO64_BASE;
  private nextIo = TEST_IO_BASE;

  constructor(io: IoBus, mmio: IoBus, mechanism: ConfigMechanism = "ecam", ecamBase = TEST_ECAM_BASE) {
    this.io = io;
    this.mmio = mmio;
    this.mechanism = mechanism;
    this.ecamBase = ecamBase;
  }

  read(b: Bdf, offset: number, sizeBytes: 1 | 2 | 4): number {
    if (this.mechanism === "ecam") {
      return this.mmio.read(
        this.ecamBase + ((b.bus << 20) | (b.device << 15) | (b.fn << 12) | offset),
        sizeBytes,
      );
    }
    this.io.write(
      0xcf8,
      4,
      (0x80000000 | (b.bus << 16) | (b.device << 11) | (b.fn << 8) | (offset & 0xfc)) >>> 0,
    );
    return this.io.read(0xcfc + (offset & 3), sizeBytes);
  }

  write(b: Bdf, offset: number, sizeBytes: 1 | 2 | 4, value: number): void {
    if (this.mechanism === "ecam") {
      this.mmio.write(
        this.ecamBase + ((b.bus << 20) | (b.device << 15) | (b.fn << 12) | offset),
        sizeBytes,
        value,
      );
      return;
    }
    this.io.write(
      0xcf8,
      4,
      (0x80000000 | (b.bus << 16) | (b.device << 11) | (b.fn << 8) | (offset & 0xfc)) >>> 0,
    );
    this.io.write(0xcfc + (offset & 3), sizeBytes, value);
  }

  /** PCI 3.0 3.2.2.3.2 / 6.2.1: probe function 0 of each device, functions 1-7 when multi-function. */
  enumerate(bus = 0): FoundFunction[] {
    const out: FoundFunction[] = [];
    for (let device = 0; device < 32; device++) {
      for (let fn = 0; fn < 8; fn++) {
        const b = { bus, device, fn };
        const vendorId = this.read(b, 0, 2);
        if (vendorId === 0xffff) {
          if (fn === 0) break;
          continue;
        }
        const headerType = this.read(b, 0x0e, 1);
        out.push({
          ...b,
          vendorId,
          deviceId: this.read(b, 2, 2),
          classCode: this.read(b, 8, 4) >>> 8,
          headerType,
        });
        if (fn === 0 && (headerType & 0x80) === 0) break;
      }
    }
    return out;
  }

  /** Sizes every BAR with decode disabled (PCI 3.0 6.2.5.1), restoring the original values. */
  sizeBars(b: Bdf): SizedBar[] {
    const cmd = this.read(b, 4, 2);
    this.write(b, 4, 2, cmd & ~3);
    const bars: SizedBar[] = [];
    for (let i = 0; i < 6; i++) {
      const off = 0x10 + 4 * i;
      const orig = this.read(b, off, 4);
      this.write(b, off, 4, 0xffffffff);
      const lo = this.read(b, off, 4);
      this.write(b, off, 4, orig);
      if (lo === 0) continue;
      if ((lo & 1) === 1) {
        const mask = (lo & 0xfffffffc) >>> 0;
        // Upper 16 bits of an I/O BAR may be hardwired to zero: size from the low 16.
        bars.push({
          index: i,
          kind: "io",
          prefetchable: false,
          sizeBytes: ((~mask >>> 0) & 0xffff) + 1,
          address: 0,
        });
        continue;
      }
      const type = (lo >> 1) & 3;
      const prefetchable = (lo & 8) !== 0;
      if (type === 2) {
        const origHi = this.read(b, off + 4, 4);
        this.write(b, off + 4, 4, 0xffffffff);
        const hi = this.read(b, off + 4, 4);
        this.write(b, off + 4, 4, origHi);
        const mask = hi * 2 ** 32 + ((lo & 0xfffffff0) >>> 0);
        const size = 2 ** 64 - mask;
        bars.push({ index: i, kind: "mem64", prefetchable, sizeBytes: size, address: 0 });
        i++;
      } else {
        const mask = (lo & 0xfffffff0) >>> 0;
        bars.push({ index: i, kind: "mem32", prefetchable, sizeBytes: 2 ** 32 - mask, address: 0 });
      }
    }
    this.write(b, 4, 2, cmd);
    return bars;
  }

  /** Sizes and assigns all BARs, then enables memory/IO decode and bus mastering. */
  assignBars(b: Bdf, enableCommand = 0x7): SizedBar[] {
    const bars = this.sizeBars(b);
    for (const bar of bars) {
      const off = 0x10 + 4 * bar.index;
      if (bar.kind === "io") {
        this.nextIo = alignUp(this.nextIo, bar.sizeBytes);
        bar.address = this.nextIo;
        this.nextIo += bar.sizeBytes;
        this.write(b, off, 4, bar.address);
      } else if (bar.kind === "mem32") {
        this.next32 = alignUp(this.next32, bar.sizeBytes);
        bar.address = this.next32;
        this.next32 += bar.sizeBytes;
        this.write(b, off, 4, bar.address);
      } else {
        this.next64 = alignUp(this.next64, bar.sizeBytes);
        bar.address = this.next64;
        this.next64 += bar.sizeBytes;
        this.write(b, off, 4, bar.address % 2 ** 32);
        this.write(b, off + 4, 4, Math.floor(bar.address / 2 ** 32));
      }
    }
    this.write(b, 4, 2, this.read(b, 4, 2) | enableCommand);
    return bars;
  }

  /** Offsets of capabilities with `id` (PCI 3.0 6.7), guarding against loops. */
  findCapabilities(b: Bdf, id: number): number[] {
    const out: number[] = [];
    if ((this.read(b, 6, 2) & 0x10) === 0) return out;
    let ptr = this.read(b, 0x34, 1) & 0xfc;
    for (let guard = 0; ptr !== 0 && guard < 48; guard++) {
      if (this.read(b, ptr, 1) === id) out.push(ptr);
      ptr = this.read(b, ptr + 1, 1) & 0xfc;
    }
    return out;
  }

  /** Programs and enables 64-bit MSI at capability `cap`. */
  enableMsi(b: Bdf, cap: number, address: number, data: number, multipleMessageEnable = 0): void {
    this.write(b, cap + 4, 4, address % 2 ** 32);
    this.write(b, cap + 8, 4, Math.floor(address / 2 ** 32));
    this.write(b, cap + 0xc, 2, data);
    const ctl = this.read(b, cap + 2, 2);
    this.write(b, cap + 2, 2, (ctl & ~0x70) | (multipleMessageEnable << 4) | 1);
  }

  /** The MSI-X table and PBA addresses from the capability and the assigned BARs. */
  msixLayout(
    b: Bdf,
    cap: number,
    bars: SizedBar[],
  ): { tableAddress: number; pbaAddress: number; vectors: number } {
    const ctl = this.read(b, cap + 2, 2);
    const t = this.read(b, cap + 4, 4);
    const p = this.read(b, cap + 8, 4);
    const barAddr = (bir: number) => bars.find((x) => x.index === bir)?.address ?? 0;
    return {
      tableAddress: barAddr(t & 7) + ((t & ~7) >>> 0),
      pbaAddress: barAddr(p & 7) + ((p & ~7) >>> 0),
      vectors: (ctl & 0x7ff) + 1,
    };
  }

  /** Programs MSI-X entry `vector` (unmasked) and enables MSI-X (function unmasked). */
  setMsixVector(tableAddress: number, vector: number, address: number, data: number): void {
    const e = tableAddress + 16 * vector;
    this.mmio.write(e, 4, address % 2 ** 32);
    this.mmio.write(e + 4, 4, Math.floor(address / 2 ** 32));
    this.mmio.write(e + 8, 4, data);
    this.mmio.write(e + 12, 4, 0);
  }

  enableMsix(b: Bdf, cap: number, functionMask = false): void {
    const ctl = this.read(b, cap + 2, 2);
    this.write(b, cap + 2, 2, (ctl & 0x3fff) | 0x8000 | (functionMask ? 0x4000 : 0));
  }
}

export function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}
