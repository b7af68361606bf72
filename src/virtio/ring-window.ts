/**
 * A cached direct view of one ring area (descriptor table, driver area, device area, indirect
 * table) in guest RAM, for the per-field accesses of a split virtqueue.
 *
 * The window is the part of the area that one translation block maps onto one RAM region. It is
 * valid while the translator's epoch is unchanged, so an unmap, detach, invalidation or a
 * Bus Master Enable change (the gate bumps its epoch) makes the next access translate again: no
 * stale translation is used. Guest memory whose region set can change (the vfio-user server's
 * client-registered memory) exposes a `generation`; a change of it also invalidates the window,
 * since the view would otherwise keep pointing at a region that left guest memory. Accesses outside the window (an area split across blocks or RAM
 * regions) go through the DMA address space as usual. A translation fault while refilling is
 * reported once, by the IOMMU behind `translate`, and returned as -1 (reads) / false (writes).
 */
import { ACCESS_READ, ACCESS_WRITE, type Access } from "../engine/access.ts";
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import { Translation } from "../engine/translation.ts";

const EMPTY: DataView = new DataView(new ArrayBuffer(0));
const OUTSIDE = -1;
const FAULTED = -2;
const READ = ACCESS_READ;
const WRITE = ACCESS_WRITE;

export class RingWindow {
  private readonly access: Access;
  private dma: DmaAddressSpace | undefined;
  private areaStart = 0;
  private areaBytes = 0;
  private epoch = -1;
  private generation = -1;
  private iovaStart = 0;
  private length = 0;
  private view: DataView = EMPTY;
  /** Where the window starts in `view` (a region's own view: the window is a part of it). */
  private viewBase = 0;
  private readonly block = new Translation();
  /** Accesses served from the window, and window (re)translations. */
  hits = 0;
  refills = 0;

  constructor(writable: boolean) {
    this.access = writable ? WRITE : READ;
  }

  /** Points the window at [areaStart, areaStart + areaBytes) of `dma`; nothing is cached yet. */
  bind(dma: DmaAddressSpace, areaStart: number, areaBytes: number): void {
    this.dma = dma;
    this.areaStart = areaStart;
    this.areaBytes = areaBytes;
    this.epoch = -1;
    this.length = 0;
    this.view = EMPTY;
  }

  unbind(): void {
    this.dma = undefined;
    this.epoch = -1;
    this.length = 0;
    this.view = EMPTY;
  }

  /** Offset of [iova, iova + sizeBytes) in the view, OUTSIDE, or FAULTED. */
  private offset(dma: DmaAddressSpace, iova: number, sizeBytes: number): number {
    const epoch = dma.translator.epoch;
    const generation = dma.memory.generation;
    if (epoch === this.epoch && generation === this.generation) {
      const off = iova - this.iovaStart;
      if (off >= 0 && off + sizeBytes <= this.length) {
        this.hits++;
        return off;
      }
    }
    return this.refill(dma, iova, sizeBytes, epoch, generation);
  }

  private refill(
    dma: DmaAddressSpace,
    iova: number,
    sizeBytes: number,
    epoch: number,
    generation: number,
  ): number {
    this.refills++;
    this.epoch = epoch;
    this.generation = generation;
    this.length = 0;
    this.view = EMPTY;
    const t = this.block;
    if (dma.translate(iova, this.access, t) !== null) return FAULTED;
    const start = Math.max(t.iovaBase, this.areaStart);
    const end = Math.min(t.iovaBase + t.sizeBytes, this.areaStart + this.areaBytes);
    const gpa = t.gpaBase + (start - t.iovaBase);
    if (end <= start) return OUTSIDE;
    // The region's own DataView, nothing allocated (a window refills at every indirect table and
    // after every invalidation). None where no one view holds the window: not RAM, across
    // regions, or memory reached by messages (vfio-user DMA_READ/WRITE); the caller then goes
    // through the address space's copying accessors.
    const backing = dma.memory.backing;
    const view = backing.locate(gpa, end - start);
    if (view === null) return OUTSIDE;
    this.view = view;
    this.viewBase = backing.offset;
    this.iovaStart = start;
    this.length = end - start;
    const off = iova - start;
    return off >= 0 && off + sizeBytes <= this.length ? off : OUTSIDE;
  }

  /** Little-endian u16 at `iova`, or -1 on a fault. */
  read16(iova: number): number {
    const dma = this.dma;
    if (dma === undefined) return -1;
    const o = this.offset(dma, iova, 2);
    if (o >= 0) return this.view.getUint16(this.viewBase + o, true);
    return o === FAULTED ? -1 : dma.readUint(iova, 2);
  }

  /** Little-endian u32 at `iova`, or -1 on a fault. */
  read32(iova: number): number {
    const dma = this.dma;
    if (dma === undefined) return -1;
    const o = this.offset(dma, iova, 4);
    if (o >= 0) return this.view.getUint32(this.viewBase + o, true);
    return o === FAULTED ? -1 : dma.readUint(iova, 4);
  }

  /** Writes a little-endian u16; false on a fault. */
  write16(iova: number, value: number): boolean {
    const dma = this.dma;
    if (dma === undefined) return false;
    const o = this.offset(dma, iova, 2);
    if (o >= 0) {
      this.view.setUint16(this.viewBase + o, value, true);
      return true;
    }
    return o === FAULTED ? false : dma.writeUint(iova, 2, value) === null;
  }

  /** Writes a little-endian u32; false on a fault. */
  write32(iova: number, value: number): boolean {
    const dma = this.dma;
    if (dma === undefined) return false;
    const o = this.offset(dma, iova, 4);
    if (o >= 0) {
      this.view.setUint32(this.viewBase + o, value, true);
      return true;
    }
    return o === FAULTED ? false : dma.writeUint(iova, 4, value) === null;
  }
}
