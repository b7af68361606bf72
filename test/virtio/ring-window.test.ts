import assert from "node:assert/strict";
import { test } from "node:test";
import { type Access, type DmaFault, dmaFault, PERM_RW } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { DmaTranslator, Translation } from "../../src/engine/translation.ts";
import { RingWindow } from "../../src/virtio/ring-window.ts";

/** A page-granular translator with explicit epoch bumps, counting calls and faults. */
class PageTable implements DmaTranslator {
  epoch = 0;
  readonly pages = new Map<number, number>(); // iova page -> gpa page
  calls = 0;
  faults = 0;
  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.calls++;
    const page = Math.floor(iova / 4096) * 4096;
    const gpa = this.pages.get(page);
    if (gpa === undefined) {
      this.faults++;
      return dmaFault("unmapped", endpointId, iova, access);
    }
    out.set(page, gpa, 4096, PERM_RW);
    return null;
  }
}

function setup() {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const pt = new PageTable();
  const dma = new DmaAddressSpace(memory, pt, 7);
  return { memory, pt, dma };
}

test("a ring window serves repeated accesses from one translation while the epoch is unchanged", () => {
  const { memory, pt, dma } = setup();
  pt.pages.set(0x10000, 0x3000);
  memory.writeU16(0x3010, 0xabcd);
  const w = new RingWindow(false);
  w.bind(dma, 0x10000, 0x100);
  assert.equal(w.read16(0x10010), 0xabcd);
  assert.equal(w.read16(0x10010), 0xabcd);
  assert.equal(pt.calls, 1);
  assert.equal(w.hits, 1);
});

test("no stale translation: after an epoch change the window translates again (remap and unmap)", () => {
  const { memory, pt, dma } = setup();
  pt.pages.set(0x10000, 0x3000);
  memory.writeU32(0x3000, 1);
  memory.writeU32(0x5000, 2);
  const w = new RingWindow(false);
  w.bind(dma, 0x10000, 0x100);
  assert.equal(w.read32(0x10000), 1);
  pt.pages.set(0x10000, 0x5000);
  pt.epoch++;
  assert.equal(w.read32(0x10000), 2);
  pt.pages.delete(0x10000);
  pt.epoch++;
  assert.equal(w.read32(0x10000), -1);
  assert.equal(pt.faults, 1, "the fault is reported once");
});

test("an area split across discontiguous pages is served correctly on both sides", () => {
  const { memory, pt, dma } = setup();
  pt.pages.set(0x10000, 0x3000);
  pt.pages.set(0x11000, 0x8000); // the next IOVA page maps elsewhere
  memory.writeU16(0x3ffe, 0x1111);
  memory.writeU16(0x8000, 0x2222);
  const w = new RingWindow(true);
  w.bind(dma, 0x10ff0, 0x20);
  assert.equal(w.read16(0x10ffe), 0x1111);
  assert.equal(w.read16(0x11000), 0x2222);
  assert.equal(w.write16(0x11002, 0x3333), true);
  assert.equal(memory.readU16(0x8002), 0x3333);
  assert.equal(memory.readU16(0x3002 + 0x1000), 0, "nothing written through the first page's mapping");
});

test("a window never reaches outside its area even when the block is larger", () => {
  const { memory, pt, dma } = setup();
  pt.pages.set(0x10000, 0x3000);
  memory.writeU16(0x3100, 0x4444);
  const w = new RingWindow(false);
  w.bind(dma, 0x10000, 0x10);
  // Outside the bound area the access goes through the DMA space (still translated, still right).
  assert.equal(w.read16(0x10100), 0x4444);
  assert.equal(w.hits, 0);
});

test("a change of the guest memory's region set (generation) invalidates the window", () => {
  const { memory, pt, dma } = setup();
  pt.pages.set(0x10000, 0x3000);
  memory.writeU16(0x3000, 0x5555);
  const w = new RingWindow(false);
  w.bind(dma, 0x10000, 0x100);
  assert.equal(w.read16(0x10000), 0x5555);
  assert.equal(w.read16(0x10000), 0x5555);
  assert.equal(w.refills, 1);
  // A region comes (memory hot-add): the generation changes.
  memory.addRegion({ gpa: 0x4000_0000, sizeBytes: 0x1000, bytes: new Uint8Array(0x1000) });
  assert.equal(w.read16(0x10000), 0x5555);
  assert.equal(w.refills, 2);
});
