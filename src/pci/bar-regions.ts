/**
 * The contents of one BAR as a set of non-overlapping regions, each with its own handler
 * (e.g. virtio common configuration, notify area, MSI-X table, PBA). Accesses that hit no
 * region, or straddle a region boundary, read as zero and are dropped when written (PCI
 * devices return zero for unimplemented memory-space registers by convention; QEMU does too).
 */
import type { AccessSize, IoHandler } from "../platform/bus.ts";

interface Region {
  readonly offset: number;
  readonly sizeBytes: number;
  readonly handler: IoHandler;
}

export class BarRegions implements IoHandler {
  readonly sizeBytes: number;
  private readonly regions: Region[] = [];
  /** Accesses that hit no region. */
  unclaimed = 0;

  constructor(sizeBytes: number) {
    this.sizeBytes = sizeBytes;
  }

  add(offset: number, sizeBytes: number, handler: IoHandler): void {
    if (offset < 0 || sizeBytes <= 0 || offset + sizeBytes > this.sizeBytes)
      throw new Error("region outside BAR");
    for (const r of this.regions) {
      if (offset < r.offset + r.sizeBytes && r.offset < offset + sizeBytes)
        throw new Error("regions overlap");
    }
    this.regions.push({ offset, sizeBytes, handler });
  }

  private find(offset: number, sizeBytes: number): Region | undefined {
    for (const r of this.regions) {
      if (offset >= r.offset && offset + sizeBytes <= r.offset + r.sizeBytes) return r;
    }
    return undefined;
  }

  read(offset: number, sizeBytes: AccessSize): number {
    const r = this.find(offset, sizeBytes);
    if (r === undefined) {
      this.unclaimed++;
      return 0;
    }
    return r.handler.read(offset - r.offset, sizeBytes);
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    const r = this.find(offset, sizeBytes);
    if (r === undefined) {
      this.unclaimed++;
      return;
    }
    r.handler.write(offset - r.offset, sizeBytes, value);
  }
}
