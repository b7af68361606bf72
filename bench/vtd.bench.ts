/**
 * VT-d translation and invalidation costs.
 *
 * - IOTLB hit: `translate` on pages already in the IOTLB (the address space's one-entry cache
 *   is bypassed by calling the unit directly).
 * - Full 4-level walk: the same call with an IOTLB of 16 entries cycling over 4096 pages, so
 *   every lookup misses (checked at setup) and walks root -> PML4 -> PDPT -> PD -> PT.
 * - Queued page-selective invalidations: one descriptor per IQT write, through fetch, decode
 *   and the IOTLB probe, with 2048 other pages of the same domain cached.
 * - Linux DMA patterns: a strict-mode request without and with the IOTLB neighbour prefetch.
 */
import { ACCESS_READ } from "../src/engine/access.ts";
import { GuestMemory } from "../src/engine/guest-memory.ts";
import { Translation } from "../src/engine/translation.ts";
import { GCMD, REG } from "../src/vtd/registers.ts";
import { IOTLB_PREFETCH_PAGES, VtdUnit } from "../src/vtd/vtd.ts";
import type { BenchCase } from "./harness.ts";

const SID = 0x0010;
const PAGES = 4096;

function setup(config: string, iotlbCapacity: number) {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 128 << 20 }]);
  const unit = new VtdUnit(memory, { config, iotlbCapacity });
  let next = 64 << 20;
  const page = () => {
    const p = next;
    next += 4096;
    return p;
  };
  const root = page();
  const ctx = page();
  memory.writeU64(root, BigInt(ctx) | 1n);
  const pml4 = page();
  memory.writeU64(ctx + (SID & 0xff) * 16, BigInt(pml4) | 1n);
  memory.writeU64(ctx + (SID & 0xff) * 16 + 8, 2n | (1n << 8n));
  const tables = new Map<string, number>();
  const entry = (table: number, index: number, key: string) => {
    let t = tables.get(key);
    if (t === undefined) {
      t = page();
      tables.set(key, t);
      memory.writeU64(table + index * 8, BigInt(t) | 3n);
    }
    return t;
  };
  // Map 2 * PAGES pages spread over several page tables.
  for (let i = 0; i < 2 * PAGES; i++) {
    const iova = i * 4096 * 3;
    const l3 = entry(pml4, Math.floor(iova / 2 ** 39) % 512, `3:${Math.floor(iova / 2 ** 39)}`);
    const l2 = entry(l3, Math.floor(iova / 2 ** 30) % 512, `2:${Math.floor(iova / 2 ** 30)}`);
    const l1 = entry(l2, Math.floor(iova / 2 ** 21) % 512, `1:${Math.floor(iova / 2 ** 21)}`);
    memory.writeU64(l1 + (Math.floor(iova / 4096) % 512) * 8, BigInt(i * 4096) | 3n);
  }
  unit.write(REG.RTADDR, 8, root);
  unit.write(REG.GCMD, 4, GCMD.SRTP);
  const dma = unit.addEndpoint(SID);
  unit.write(REG.GCMD, 4, GCMD.TE);
  return { memory, unit, dma, page };
}

function iotlbHit(): BenchCase {
  const { unit } = setup("", 4096);
  const out = new Translation();
  for (let i = 0; i < 64; i++) unit.translate(SID, i * 4096 * 3, ACCESS_READ, out);
  let k = 0;
  return {
    group: "vtd: translation",
    name: "translate, IOTLB hit (64 hot pages)",
    run(n) {
      for (let i = 0; i < n; i++) {
        unit.translate(SID, (k & 63) * 4096 * 3 + 0x10, ACCESS_READ, out);
        k++;
      }
    },
  };
}

function fullWalk(): BenchCase {
  const { unit } = setup("", 16);
  const out = new Translation();
  for (let i = 0; i < PAGES; i++) unit.translate(SID, i * 4096 * 3, ACCESS_READ, out);
  const before = unit.stats();
  for (let i = 0; i < PAGES; i++) unit.translate(SID, i * 4096 * 3, ACCESS_READ, out);
  const after = unit.stats();
  if (after.iotlbHits !== before.iotlbHits) throw new Error("walk bench: expected every lookup to miss");
  let k = 0;
  return {
    group: "vtd: translation",
    name: "translate, IOTLB miss + 4-level walk (forced)",
    run(n) {
      for (let i = 0; i < n; i++) {
        unit.translate(SID, (k % PAGES) * 4096 * 3, ACCESS_READ, out);
        k++;
      }
    },
  };
}

function dmaRead(): BenchCase {
  const { dma } = setup("", 4096);
  const buf = new Uint8Array(64);
  let k = 0;
  return {
    group: "vtd: translation",
    name: "DmaAddressSpace.read 64 B, cycling 64 pages (IOTLB hits)",
    run(n) {
      for (let i = 0; i < n; i++) {
        dma.read((k & 63) * 4096 * 3, buf);
        k++;
      }
    },
  };
}

function queuedPsi(): BenchCase {
  const { unit, memory, page } = setup("", 4096);
  const out = new Translation();
  // 2048 cached pages that the invalidations below do not cover.
  for (let i = PAGES; i < PAGES + 2048; i++) unit.translate(SID, i * 4096 * 3, ACCESS_READ, out);
  const queue = page();
  for (let j = 1; j < 16; j++) page(); // 64 KiB queue: QS = 4, 4096 descriptors
  for (let d = 0; d < 4096; d++) {
    memory.writeU64(queue + d * 16, 0x2n | (3n << 4n) | (1n << 16n));
    memory.writeU64(queue + d * 16 + 8, BigInt(d * 4096 * 3));
  }
  unit.write(REG.IQT, 8, 0);
  unit.write(REG.IQA, 8, queue + 4);
  unit.write(REG.GCMD, 4, GCMD.TE | GCMD.QIE);
  let tail = 0;
  return {
    group: "vtd: invalidation",
    name: "queued page-selective IOTLB invalidation (1 desc per IQT write)",
    run(n) {
      for (let i = 0; i < n; i++) {
        tail = (tail + 1) % 4096;
        unit.write(REG.IQT, 8, tail * 16);
      }
    },
  };
}

function queuedBatch(): BenchCase {
  const { unit, memory, page } = setup("", 4096);
  const queue = page();
  for (let j = 1; j < 16; j++) page();
  for (let d = 0; d < 4096; d++) {
    memory.writeU64(queue + d * 16, 0x2n | (3n << 4n) | (1n << 16n));
    memory.writeU64(queue + d * 16 + 8, BigInt(d * 4096 * 3));
  }
  unit.write(REG.IQT, 8, 0);
  unit.write(REG.IQA, 8, queue + 4);
  unit.write(REG.GCMD, 4, GCMD.TE | GCMD.QIE);
  let tail = 0;
  return {
    group: "vtd: invalidation",
    name: "queued page-selective IOTLB invalidation (batches of 64)",
    run(n) {
      for (let i = 0; i < n; i += 64) {
        tail = (tail + 64) % 4096;
        unit.write(REG.IQT, 8, tail * 16);
      }
    },
  };
}

function remapHit(): BenchCase {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const unit = new VtdUnit(memory, { config: "intremap=on" });
  memory.writeU64(0x10000 + 16 * 3, 1n | (0x40n << 16n) | (1n << 40n));
  unit.write(REG.IRTA, 8, 0x10000 | 7);
  unit.write(REG.GCMD, 4, GCMD.SIRTP);
  unit.write(REG.GCMD, 4, GCMD.IRE);
  return {
    group: "vtd: interrupt remapping",
    name: "remap MSI, interrupt entry cache hit",
    run(n) {
      for (let i = 0; i < n; i++) unit.remap(SID, 0xfee00010 + 3 * 32, 0);
    },
  };
}

/**
 * One Linux strict-mode request (what caching mode forces): a 56-page scatter-gather list mapped
 * at consecutive IOVAs, the caching-mode flush of that range, the device reading 64 bytes of each
 * page, the PTEs cleared and the range flushed again. With `prefetchPages` 0 every page walks;
 * with the default, one walk covers the next 31 pages of the leaf table.
 */
function linuxStrictRequest(prefetchPages: number): BenchCase {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 64 << 20 }]);
  const unit = new VtdUnit(memory, { config: "caching-mode=on", iotlbPrefetchPages: prefetchPages });
  const [root, ctx, pml4, pdpt, pd, pt] = [0x100000, 0x101000, 0x102000, 0x103000, 0x104000, 0x105000];
  memory.writeU64(root, BigInt(ctx) | 1n);
  memory.writeU64(ctx + (SID & 0xff) * 16, BigInt(pml4) | 1n);
  memory.writeU64(ctx + (SID & 0xff) * 16 + 8, 2n | (1n << 8n));
  memory.writeU64(pml4, BigInt(pdpt) | 3n);
  memory.writeU64(pdpt, BigInt(pd) | 3n);
  memory.writeU64(pd, BigInt(pt) | 3n);
  unit.write(REG.RTADDR, 8, root);
  unit.write(REG.GCMD, 4, GCMD.SRTP);
  const dma = unit.addEndpoint(SID);
  unit.write(REG.GCMD, 4, GCMD.TE);
  const PAGES_PER_REQUEST = 56;
  const buf = new Uint8Array(64);
  let slot = 0;
  return {
    group: "vtd: Linux DMA patterns",
    name: `strict request, 56 pages (map, flush, device reads, unmap, flush), prefetch ${prefetchPages}`,
    run(n) {
      for (let r = 0; r < n; r++) {
        const first = (slot++ % 8) * 64; // 8 request slots in one leaf table, 64-page aligned
        for (let i = 0; i < PAGES_PER_REQUEST; i++) {
          memory.writeU64(pt + (first + i) * 8, BigInt(0x1000000 + (first + i) * 4096) | 3n);
        }
        unit.invalidation.invalidateIotlb(3, 1, first * 4096, 6);
        for (let i = 0; i < PAGES_PER_REQUEST; i++) dma.read((first + i) * 4096, buf);
        for (let i = 0; i < PAGES_PER_REQUEST; i++) memory.writeU64(pt + (first + i) * 8, 0n);
        unit.invalidation.invalidateIotlb(3, 1, first * 4096, 6);
      }
    },
  };
}

export const cases: BenchCase[] = [
  iotlbHit(),
  fullWalk(),
  dmaRead(),
  queuedPsi(),
  queuedBatch(),
  remapHit(),
  linuxStrictRequest(0),
  linuxStrictRequest(IOTLB_PREFETCH_PAGES),
];
