/**
 * The DMA address space of one endpoint: every device DMA goes through here.
 *
 * An address space reads and writes by IOVA with an access kind, and translates ranges into
 * guest-physical scatter/gather lists. Behind it is a `DmaTranslator`: an IOMMU model, or
 * `IDENTITY` for a device that is not behind an IOMMU (iova == gpa). Nothing here throws on
 * guest-controlled input: failures come back as `DmaFault` values, and a write is only performed
 * after the whole range has been translated, so a faulting DMA writes nothing.
 *
 * Data moves through `memory.tryRead`/`memory.tryWrite` per segment (not views), so a memory
 * whose ranges are reached by messages rather than shared bytes (vfio-user DMA_READ/WRITE) can
 * serve them; if such a memory fails an access (`GuestMemoryError`), the DMA returns a not-RAM
 * fault (for a multi-segment write, earlier segments may already have landed).
 */
import {
  ACCESS_READ,
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  dmaFault,
  isValidRange,
  MAX_ADDRESS,
  PERM_RW,
} from "./access.ts";
import type { GuestMemory, GuestMemoryError } from "./guest-memory.ts";
import { type DmaTranslator, Translation } from "./translation.ts";

/** The translator of an endpoint that is not behind any IOMMU: one block covering everything. */
export const IDENTITY: DmaTranslator = {
  epoch: 0,
  translate(_endpointId: number, _iova: number, _access: Access, out: Translation): DmaFault | null {
    out.set(0, 0, MAX_ADDRESS + 1, PERM_RW);
    return null;
  },
};

/** A reusable list of guest-physical segments (gpa, length), grown on demand. */
export class SgList {
  count = 0;
  totalBytes = 0;
  gpas: Float64Array;
  lengths: Float64Array;

  constructor(initialCapacity = 16) {
    this.gpas = new Float64Array(initialCapacity);
    this.lengths = new Float64Array(initialCapacity);
  }

  clear(): void {
    this.count = 0;
    this.totalBytes = 0;
  }

  /** Appends a segment, merging it with the previous one when they are contiguous. */
  push(gpa: number, sizeBytes: number): void {
    const n = this.count;
    this.totalBytes += sizeBytes;
    if (n > 0 && this.gpas[n - 1] + this.lengths[n - 1] === gpa) {
      this.lengths[n - 1] += sizeBytes;
      return;
    }
    if (n === this.gpas.length) {
      const gpas = new Float64Array(n * 2);
      const lengths = new Float64Array(n * 2);
      gpas.set(this.gpas);
      lengths.set(this.lengths);
      this.gpas = gpas;
      this.lengths = lengths;
    }
    this.gpas[n] = gpa;
    this.lengths[n] = sizeBytes;
    this.count = n + 1;
  }
}

export interface DmaSpaceStats {
  readonly endpointId: number;
  readonly reads: number;
  readonly writes: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly faults: number;
  readonly lastFault: DmaFault | null;
}

/**
 * Reads and writes up to this many bytes that lie in one translated block and one view of guest
 * memory are copied directly, without a segment list. Measured (bench/vmm-io.bench.ts, and in
 * the KVM lab's L1, tools/guest-lab/README.md): under a software CPU every exit starts with cold
 * TLBs, and what an exit handler costs grows with how much distinct code it runs; the general
 * path (segment list, region lookup, per-segment copy) is most of a virtio request's own code.
 */
const SMALL_COPY_BYTES = 64;

export class DmaAddressSpace {
  readonly memory: GuestMemory;
  readonly translator: DmaTranslator;
  readonly endpointId: number;

  // One-entry translation cache, valid while translator.epoch equals cachedEpoch.
  private readonly cached = new Translation();
  private cachedEpoch = -1;
  private readonly rangeBlock = new Translation();
  private readonly scratchSg = new SgList(4);
  private readonly scratch8 = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch8.buffer);

  reads = 0;
  writes = 0;
  bytesRead = 0;
  bytesWritten = 0;
  faults = 0;
  lastFault: DmaFault | null = null;
  /** The last `direct` lookup stopped at a translation fault (already counted). */
  private directFault = false;

  constructor(memory: GuestMemory, translator: DmaTranslator, endpointId: number) {
    this.memory = memory;
    this.translator = translator;
    this.endpointId = endpointId;
  }

  /** True when this endpoint is not behind an IOMMU. */
  get isIdentity(): boolean {
    return this.translator === IDENTITY;
  }

  private fault(f: DmaFault): DmaFault {
    this.faults++;
    this.lastFault = f;
    return f;
  }

  /** A `GuestMemoryError` from the memory behind a translated range, as a DMA fault. */
  private memoryFault(e: GuestMemoryError, iova: number, access: Access): DmaFault {
    return this.fault(dmaFault("not-ram", this.endpointId, iova, access, 0, e.message));
  }

  /**
   * Translates the block containing `iova` for `access` into `out`.
   * This is the per-access hot path: a cache hit allocates nothing and calls nothing.
   */
  translate(iova: number, access: Access, out: Translation): DmaFault | null {
    const c = this.cached;
    const translator = this.translator;
    if (this.cachedEpoch === translator.epoch && iova >= c.iovaBase && iova - c.iovaBase < c.sizeBytes) {
      if ((c.perms & access) !== 0) {
        out.iovaBase = c.iovaBase;
        out.gpaBase = c.gpaBase;
        out.sizeBytes = c.sizeBytes;
        out.perms = c.perms;
        return null;
      }
    }
    // Miss path only: the cache above can only hold addresses validated here.
    if (!Number.isSafeInteger(iova) || iova < 0) {
      return this.fault(dmaFault("address-range", this.endpointId, 0, access, 0, "iova not representable"));
    }
    const epoch = translator.epoch;
    const f = translator.translate(this.endpointId, iova, access, out);
    if (f !== null) return this.fault(f);
    if (!Number.isSafeInteger(out.gpaBase) || !Number.isSafeInteger(out.iovaBase)) {
      return this.fault(
        dmaFault("bad-table", this.endpointId, iova, access, 0, "translation not representable"),
      );
    }
    if ((out.perms & access) === 0 || !out.covers(iova)) {
      // A model must not hand back a block that forbids the access or misses the address.
      return this.fault(
        dmaFault("permission", this.endpointId, iova, access, 0, "translation denies access"),
      );
    }
    c.set(out.iovaBase, out.gpaBase, out.sizeBytes, out.perms);
    this.cachedEpoch = epoch;
    return null;
  }

  /** Drops the one-entry cache (models normally do this by bumping their epoch). */
  flushCache(): void {
    this.cachedEpoch = -1;
  }

  /**
   * Translates [iova, iova + sizeBytes) for `access` into guest-physical segments in `sg`
   * (cleared first). Every segment lies inside one RAM region.
   */
  translateRange(iova: number, sizeBytes: number, access: Access, sg: SgList): DmaFault | null {
    sg.clear();
    if (sizeBytes === 0) return null;
    if (!isValidRange(iova, sizeBytes)) {
      return this.fault(
        dmaFault("address-range", this.endpointId, iova, access, 0, "range not representable"),
      );
    }
    const t = this.rangeBlock;
    let cur = iova;
    let remaining = sizeBytes;
    while (remaining > 0) {
      const f = this.translate(cur, access, t);
      if (f !== null) return f;
      const gpa = t.gpaBase + (cur - t.iovaBase);
      let chunk = Math.min(remaining, t.iovaBase + t.sizeBytes - cur);
      const ram = this.memory.contiguousBytesAt(gpa);
      if (ram === 0) {
        return this.fault(
          dmaFault("not-ram", this.endpointId, cur, access, 0, `gpa 0x${gpa.toString(16)} is not RAM`),
        );
      }
      chunk = Math.min(chunk, ram);
      sg.push(gpa, chunk);
      cur += chunk;
      remaining -= chunk;
    }
    return null;
  }

  /**
   * True when all of [iova, iova + sizeBytes) translates to RAM for `access` (a fault is counted
   * and reported as by a DMA). The common case, one block and one view, takes no segment list.
   */
  accessible(iova: number, sizeBytes: number, access: Access): boolean {
    if (sizeBytes > 0 && isValidRange(iova, sizeBytes)) {
      if (this.direct(iova, sizeBytes, access) !== null) return true;
      if (this.directFault) return false;
    }
    return this.translateRange(iova, sizeBytes, access, this.scratchSg) === null;
  }

  /** Zero-copy views of guest RAM for a translated list (they alias guest memory). */
  views(sg: SgList): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = 0; i < sg.count; i++) out.push(this.memory.view(sg.gpas[i], sg.lengths[i]));
    return out;
  }

  /** Device reads guest memory at `iova` into `dest`. */
  read(iova: number, dest: Uint8Array): DmaFault | null {
    const n = dest.length;
    if (n > 0 && n <= SMALL_COPY_BYTES && isValidRange(iova, n)) {
      // A request, a status, a descriptor: one block and one view, copied byte by byte. The
      // path every small DMA takes; see SMALL_COPY_BYTES for why it is worth its own code.
      const view = this.direct(iova, n, ACCESS_READ);
      if (view !== null) {
        const at = this.memory.backing.offset;
        for (let i = 0; i < n; i++) dest[i] = view.getUint8(at + i);
        this.reads++;
        this.bytesRead += n;
        return null;
      }
      if (this.directFault) return this.lastFault;
    }
    const sg = this.scratchSg;
    const f = this.translateRange(iova, dest.length, ACCESS_READ, sg);
    if (f !== null) return f;
    const m = this.memory;
    if (sg.count === 1) {
      const e = m.tryRead(sg.gpas[0], dest);
      if (e !== null) return this.memoryFault(e, iova, ACCESS_READ);
    } else {
      let off = 0;
      for (let i = 0; i < sg.count; i++) {
        const len = sg.lengths[i];
        const e = m.tryRead(sg.gpas[i], dest.subarray(off, off + len));
        if (e !== null) return this.memoryFault(e, iova, ACCESS_READ);
        off += len;
      }
    }
    this.reads++;
    this.bytesRead += dest.length;
    return null;
  }

  /** Device writes `src` to guest memory at `iova`; nothing is written unless all of it translates. */
  write(iova: number, src: Uint8Array): DmaFault | null {
    const n = src.length;
    if (n > 0 && n <= SMALL_COPY_BYTES && isValidRange(iova, n)) {
      const view = this.direct(iova, n, ACCESS_WRITE);
      if (view !== null) {
        const at = this.memory.backing.offset;
        for (let i = 0; i < n; i++) view.setUint8(at + i, src[i]);
        this.writes++;
        this.bytesWritten += n;
        return null;
      }
      if (this.directFault) return this.lastFault;
    }
    const sg = this.scratchSg;
    const f = this.translateRange(iova, src.length, ACCESS_WRITE, sg);
    if (f !== null) return f;
    const m = this.memory;
    if (sg.count === 1) {
      const e = m.tryWrite(sg.gpas[0], src);
      if (e !== null) return this.memoryFault(e, iova, ACCESS_WRITE);
    } else {
      let off = 0;
      for (let i = 0; i < sg.count; i++) {
        const len = sg.lengths[i];
        const e = m.tryWrite(sg.gpas[i], src.subarray(off, off + len));
        if (e !== null) return this.memoryFault(e, iova, ACCESS_WRITE);
        off += len;
      }
    }
    this.writes++;
    this.bytesWritten += src.length;
    return null;
  }

  /**
   * The DataView holding [iova, iova + sizeBytes) when it lies in one translated block and one
   * view of guest memory (the common case for ring and register-sized accesses; the offset is
   * the backing's `offset`), else null (`directFault` tells whether the translation faulted).
   */
  private direct(iova: number, sizeBytes: number, access: Access): DataView | null {
    const t = this.rangeBlock;
    this.directFault = this.translate(iova, access, t) !== null;
    if (this.directFault) return null;
    const offset = iova - t.iovaBase;
    if (offset + sizeBytes > t.sizeBytes) return null;
    return this.memory.backing.locate(t.gpaBase + offset, sizeBytes);
  }

  /** Reads a little-endian unsigned value of 1, 2 or 4 bytes; returns -1 on a fault (see lastFault). */
  readUint(iova: number, sizeBytes: 1 | 2 | 4): number {
    const view = this.direct(iova, sizeBytes, ACCESS_READ);
    if (view !== null) {
      const at = this.memory.backing.offset;
      this.reads++;
      this.bytesRead += sizeBytes;
      return sizeBytes === 4
        ? view.getUint32(at, true)
        : sizeBytes === 2
          ? view.getUint16(at, true)
          : view.getUint8(at);
    }
    if (this.directFault) return -1;
    // Across blocks or regions, or memory without a view here: the general path.
    const buf = this.scratch8.subarray(0, sizeBytes);
    if (this.read(iova, buf) !== null) return -1;
    const v = this.scratchView;
    return sizeBytes === 1 ? v.getUint8(0) : sizeBytes === 2 ? v.getUint16(0, true) : v.getUint32(0, true);
  }

  /** Reads a little-endian 64-bit value; null on a fault. */
  readU64(iova: number): bigint | null {
    if (this.read(iova, this.scratch8) !== null) return null;
    return this.scratchView.getBigUint64(0, true);
  }

  /** Writes a little-endian unsigned value of 1, 2 or 4 bytes. */
  writeUint(iova: number, sizeBytes: 1 | 2 | 4, value: number): DmaFault | null {
    const view = this.direct(iova, sizeBytes, ACCESS_WRITE);
    if (view !== null) {
      const at = this.memory.backing.offset;
      if (sizeBytes === 4) view.setUint32(at, value, true);
      else if (sizeBytes === 2) view.setUint16(at, value, true);
      else view.setUint8(at, value);
      this.writes++;
      this.bytesWritten += sizeBytes;
      return null;
    }
    if (this.directFault) return this.lastFault;
    const v = this.scratchView;
    if (sizeBytes === 1) v.setUint8(0, value);
    else if (sizeBytes === 2) v.setUint16(0, value, true);
    else v.setUint32(0, value, true);
    return this.write(iova, this.scratch8.subarray(0, sizeBytes));
  }

  writeU64(iova: number, value: bigint): DmaFault | null {
    this.scratchView.setBigUint64(0, value, true);
    return this.write(iova, this.scratch8);
  }

  stats(): DmaSpaceStats {
    return {
      endpointId: this.endpointId,
      reads: this.reads,
      writes: this.writes,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      faults: this.faults,
      lastFault: this.lastFault,
    };
  }
}
