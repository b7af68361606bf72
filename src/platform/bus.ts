/**
 * Buses that route a guest's port I/O and MMIO accesses to devices.
 *
 * A device exposes `IoHandler`s; a host (the KVM VMM, the vfio-user server, a test) owns the
 * buses and dispatches each access. Offsets given to a handler are relative to the start of the
 * range it was registered at. Handlers must not throw on any offset, size or value: reads of
 * unimplemented registers return all-ones or zero as the device's specification says, writes to
 * them are ignored.
 */

export type AccessSize = 1 | 2 | 4 | 8;

/** How many distinct unclaimed addresses a bus names (a guest scanning memory must not grow it without bound). */
export const UNCLAIMED_ADDRESSES_KEPT = 64;

export interface IoHandler {
  /** Reads `sizeBytes` at `offset`; the value is an unsigned number (8-byte reads: low 53 bits or use readWide). */
  read(offset: number, sizeBytes: AccessSize): number;
  write(offset: number, sizeBytes: AccessSize, value: number): void;
}

interface Range {
  readonly base: number;
  readonly sizeBytes: number;
  readonly handler: IoHandler;
  readonly name: string;
}

/** An address decoder: non-overlapping ranges, each with a handler. */
export class IoBus {
  private ranges: Range[] = [];
  private last: Range | undefined;
  /** Accesses that hit no device (reads return all-ones, writes are dropped). */
  unclaimedReads = 0;
  unclaimedWrites = 0;
  /** The same by address (first UNCLAIMED_ADDRESSES_KEPT addresses; the summary names them). */
  private readonly unclaimedByAddress = new Map<number, { reads: number; writes: number }>();
  /** Called on every unclaimed access (the VMM traces it). */
  onUnclaimed: ((address: number, sizeBytes: AccessSize, write: boolean, value: number) => void) | undefined;

  readonly name: string;

  constructor(name: string) {
    this.name = name;
  }

  register(base: number, sizeBytes: number, handler: IoHandler, name: string): void {
    if (sizeBytes <= 0) throw new Error(`${this.name}: ${name} has an empty range`);
    for (const r of this.ranges) {
      if (base < r.base + r.sizeBytes && r.base < base + sizeBytes) {
        throw new Error(
          `${this.name}: ${name} at 0x${base.toString(16)} overlaps ${r.name} at 0x${r.base.toString(16)}`,
        );
      }
    }
    this.ranges.push({ base, sizeBytes, handler, name });
    this.ranges.sort((a, b) => a.base - b.base);
    this.last = undefined;
  }

  unregister(handler: IoHandler): void {
    this.ranges = this.ranges.filter((r) => r.handler !== handler);
    this.last = undefined;
  }

  /** The range holding [addr, addr + sizeBytes), or undefined. */
  private lookup(addr: number, sizeBytes: number): Range | undefined {
    const l = this.last;
    if (l !== undefined && addr >= l.base && addr + sizeBytes <= l.base + l.sizeBytes) return l;
    for (const r of this.ranges) {
      if (addr >= r.base && addr + sizeBytes <= r.base + r.sizeBytes) {
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  /** True when some device claims [addr, addr + sizeBytes). */
  claims(addr: number, sizeBytes: number): boolean {
    return this.lookup(addr, sizeBytes) !== undefined;
  }

  read(addr: number, sizeBytes: AccessSize): number {
    const r = this.lookup(addr, sizeBytes);
    if (r === undefined) {
      this.unclaimedReads++;
      const value = sizeBytes >= 4 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
      this.tally(addr, false);
      this.onUnclaimed?.(addr, sizeBytes, false, value);
      return value;
    }
    return r.handler.read(addr - r.base, sizeBytes);
  }

  write(addr: number, sizeBytes: AccessSize, value: number): void {
    const r = this.lookup(addr, sizeBytes);
    if (r === undefined) {
      this.unclaimedWrites++;
      this.tally(addr, true);
      this.onUnclaimed?.(addr, sizeBytes, true, value);
      return;
    }
    r.handler.write(addr - r.base, sizeBytes, value);
  }

  private tally(addr: number, write: boolean): void {
    let t = this.unclaimedByAddress.get(addr);
    if (t === undefined) {
      if (this.unclaimedByAddress.size >= UNCLAIMED_ADDRESSES_KEPT) return;
      t = { reads: 0, writes: 0 };
      this.unclaimedByAddress.set(addr, t);
    }
    if (write) t.writes++;
    else t.reads++;
  }

  /** Unclaimed accesses by address, in address order. */
  unclaimedAddresses(): { address: number; reads: number; writes: number }[] {
    return [...this.unclaimedByAddress]
      .map(([address, t]) => ({ address, reads: t.reads, writes: t.writes }))
      .sort((a, b) => a.address - b.address);
  }

  describe(): string[] {
    return this.ranges.map(
      (r) => `${this.name} [0x${r.base.toString(16)}, 0x${(r.base + r.sizeBytes).toString(16)}) ${r.name}`,
    );
  }
}
