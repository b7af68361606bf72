/**
 * Guest-side virtio-blk request helpers (VIRTIO 1.3 5.2.6), on top of VirtioPciDriver.
 */
import type { GuestAllocator, VirtioPciDriver } from "./virtio-driver.ts";

export const T_IN = 0;
export const T_OUT = 1;
export const T_FLUSH = 4;
export const T_GET_ID = 8;
export const T_DISCARD = 11;
export const T_WRITE_ZEROES = 13;

export interface BlkResult {
  readonly status: number;
  readonly usedLen: number;
}

export class BlkDriver {
  readonly drv: VirtioPciDriver;
  readonly alloc: GuestAllocator;
  /** Post every request as one indirect descriptor table (needs VIRTIO_F_INDIRECT_DESC). */
  indirect = false;

  constructor(drv: VirtioPciDriver, alloc: GuestAllocator) {
    this.drv = drv;
    this.alloc = alloc;
  }

  private header(type: number, sector: number): number {
    const h = this.alloc.alloc(16);
    const m = this.drv.m.memory;
    m.writeU32(h, type);
    m.writeU32(h + 4, 0);
    m.writeU64(h + 8, BigInt(sector));
    return h;
  }

  /**
   * Submits one request: header, `out` buffers (device-readable), `inBufs` (device-writable),
   * then a status byte. Returns the status and the used length.
   */
  submit(
    type: number,
    sector: number,
    out: { gpa: number; len: number }[],
    inBufs: { gpa: number; len: number }[],
  ): BlkResult {
    const m = this.drv.m.memory;
    const status = this.alloc.alloc(1, 1);
    m.writeU8(status, 0xee);
    const q = this.drv.queues[0];
    q.add(
      [
        { gpa: this.header(type, sector), len: 16, writable: false },
        ...out.map((b) => ({ ...b, writable: false })),
        ...inBufs.map((b) => ({ ...b, writable: true })),
        { gpa: status, len: 1, writable: true },
      ],
      { indirect: this.indirect },
    );
    this.drv.kick(0);
    const used = q.takeUsed();
    if (used.length !== 1) throw new Error(`expected one used buffer, got ${used.length}`);
    return { status: m.readU8(status), usedLen: used[0].len };
  }

  /** Writes `data` (a multiple of 512 bytes) at `sector`, split into `segments` buffers. */
  write(sector: number, data: Uint8Array, segments = 1): BlkResult {
    const m = this.drv.m.memory;
    const per = data.length / segments;
    const bufs = [];
    for (let i = 0; i < segments; i++) {
      const gpa = this.alloc.alloc(per, 512);
      m.write(gpa, data.subarray(i * per, (i + 1) * per));
      bufs.push({ gpa, len: per });
    }
    return this.submit(T_OUT, sector, bufs, []);
  }

  /** Reads `length` bytes at `sector` into fresh buffers; returns the bytes and the result. */
  read(sector: number, length: number, segments = 1): { result: BlkResult; data: Uint8Array } {
    const m = this.drv.m.memory;
    const per = length / segments;
    const bufs = [];
    for (let i = 0; i < segments; i++) {
      const gpa = this.alloc.alloc(per, 512);
      m.fill(gpa, per, 0xcd);
      bufs.push({ gpa, len: per });
    }
    const result = this.submit(T_IN, sector, [], bufs);
    const data = new Uint8Array(length);
    bufs.forEach((b, i) => {
      data.set(m.view(b.gpa, per), i * per);
    });
    return { result, data };
  }

  /** A DISCARD / WRITE_ZEROES payload of {sector, num_sectors, flags} segments. */
  rangeRequest(type: number, ranges: { sector: number; sectors: number; flags?: number }[]): BlkResult {
    const m = this.drv.m.memory;
    const buf = this.alloc.alloc(16 * ranges.length);
    ranges.forEach((r, i) => {
      m.writeU64(buf + 16 * i, BigInt(r.sector));
      m.writeU32(buf + 16 * i + 8, r.sectors);
      m.writeU32(buf + 16 * i + 12, r.flags ?? 0);
    });
    return this.submit(type, 0, [{ gpa: buf, len: 16 * ranges.length }], []);
  }
}
