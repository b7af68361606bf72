import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ACCESS_READ,
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  dmaFault,
  PERM_READ,
  PERM_RW,
} from "../../src/engine/access.ts";
import { DmaAddressSpace, IDENTITY, SgList } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { type DmaTranslator, Translation } from "../../src/engine/translation.ts";

const K4 = 0x1000;

/** A page-table-like translator over a plain map: iova page -> [gpa page, perms]. */
class MapTranslator implements DmaTranslator {
  epoch = 0;
  readonly pages = new Map<number, [number, number]>();
  calls = 0;
  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    this.calls++;
    const base = iova - (iova % K4);
    const p = this.pages.get(base);
    if (p === undefined) return dmaFault("unmapped", endpointId, iova, access);
    out.set(base, p[0], K4, p[1]);
    return null;
  }
  unmap(iova: number): void {
    this.pages.delete(iova);
    this.epoch++;
  }
}

test("a multi-page write whose last page faults writes nothing", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const tr = new MapTranslator();
  tr.pages.set(0x10000, [0x40000, PERM_RW]);
  tr.pages.set(0x11000, [0x80000, PERM_RW]);
  const dma = new DmaAddressSpace(mem, tr, 1);
  const data = new Uint8Array(3 * K4).fill(0xaa);
  const f = dma.write(0x10000, data);
  assert.equal(f?.reason, "unmapped");
  assert.equal(f?.iova, 0x12000);
  assert.equal(
    mem.view(0x40000, K4).some((b) => b !== 0),
    false,
  );
  assert.equal(
    mem.view(0x80000, K4).some((b) => b !== 0),
    false,
  );
  assert.equal(dma.faults, 1);
});

test("scatter/gather splits at page boundaries and merges contiguous pages", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const tr = new MapTranslator();
  tr.pages.set(0x10000, [0x40000, PERM_RW]);
  tr.pages.set(0x11000, [0x41000, PERM_RW]);
  tr.pages.set(0x12000, [0x20000, PERM_RW]);
  const dma = new DmaAddressSpace(mem, tr, 1);
  const sg = new SgList(1);
  assert.equal(dma.translateRange(0x10800, 0x2000, ACCESS_READ, sg), null);
  assert.equal(sg.count, 2);
  assert.deepEqual([sg.gpas[0], sg.lengths[0], sg.gpas[1], sg.lengths[1]], [0x40800, 0x1800, 0x20000, 0x800]);
  assert.equal(sg.totalBytes, 0x2000);
  const views = dma.views(sg);
  assert.equal(views[0].length + views[1].length, 0x2000);
});

test("the one-entry cache never outlives an epoch change (no stale translation)", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const tr = new MapTranslator();
  tr.pages.set(0x10000, [0x40000, PERM_RW]);
  const dma = new DmaAddressSpace(mem, tr, 1);
  assert.equal(dma.writeUint(0x10000, 4, 1), null);
  assert.equal(dma.writeUint(0x10004, 4, 2), null);
  assert.equal(tr.calls, 1, "second access served by the cache");
  tr.unmap(0x10000);
  assert.equal(dma.writeUint(0x10008, 4, 3)?.reason, "unmapped");
  assert.equal(mem.readU32(0x40008), 0);
});

test("the cache does not grant a write that a read-only translation forbids", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const tr = new MapTranslator();
  tr.pages.set(0x10000, [0x40000, PERM_READ]);
  const dma = new DmaAddressSpace(mem, tr, 1);
  assert.equal(dma.readUint(0x10000, 4), 0);
  tr.translate = (endpointId, iova, access) => dmaFault("permission", endpointId, iova, access);
  assert.equal(dma.writeUint(0x10000, 4, 7)?.reason, "permission");
  assert.equal(dma.translate(0x10000, ACCESS_WRITE, new Translation())?.reason, "permission");
});

test("ranges that wrap or exceed 2^53 fault as address-range; translations outside RAM as not-ram", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const dma = new DmaAddressSpace(mem, IDENTITY, 1);
  const sg = new SgList();
  assert.equal(dma.translateRange(Number.MAX_SAFE_INTEGER, 2, ACCESS_READ, sg)?.reason, "address-range");
  assert.equal(dma.translateRange(-4096, 16, ACCESS_READ, sg)?.reason, "address-range");
  assert.equal(dma.translateRange(0.5, 16, ACCESS_READ, sg)?.reason, "address-range");
  assert.equal(dma.read(1 << 20, new Uint8Array(1))?.reason, "not-ram");
  assert.equal(dma.readU64(0x100), 0n);
  assert.equal(dma.readUint(1 << 20, 2), -1);
});

test("non-integer or negative IOVAs fault as address-range before reaching the model", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const tr = new MapTranslator();
  tr.pages.set(0x10000, [0x40000, PERM_RW]);
  const dma = new DmaAddressSpace(mem, tr, 1);
  const t = new Translation();
  for (const iova of [65536.5, -1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60]) {
    assert.equal(dma.translate(iova, ACCESS_READ, t)?.reason, "address-range", `iova ${iova}`);
  }
  assert.equal(tr.calls, 0);
});
