import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ACCESS_READ,
  ACCESS_WRITE,
  type Access,
  type DmaFault,
  dmaFault,
  PERM_READ,
} from "../../src/engine/access.ts";
import { DmaAddressSpace, IDENTITY, SgList } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Iotlb } from "../../src/engine/iotlb.ts";
import { type DmaTranslator, Translation } from "../../src/engine/translation.ts";

test("identity space reads and writes guest RAM", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const dma = new DmaAddressSpace(mem, IDENTITY, 8);
  assert.equal(dma.write(0x1000, new Uint8Array([1, 2, 3])), null);
  assert.deepEqual([...mem.view(0x1000, 3)], [1, 2, 3]);
  const f = dma.write((1 << 20) - 1, new Uint8Array(2));
  assert.equal(f?.reason, "not-ram");
});

test("translated space: IOTLB-backed translator, read-only page refuses writes", () => {
  const mem = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 22 }]);
  const iotlb = new Iotlb(64);
  const tr: DmaTranslator & { epoch: number } = {
    epoch: 0,
    translate(ep: number, iova: number, access: Access, out: Translation): DmaFault | null {
      if (iotlb.lookup(1, iova, out)) return null;
      if (iova >= 0x10000 && iova < 0x11000) {
        out.set(0x10000, 0x200000, 0x1000, PERM_READ);
        iotlb.insertFrom(1, iova, out);
        return null;
      }
      return dmaFault("unmapped", ep, iova, access);
    },
  };
  const dma = new DmaAddressSpace(mem, tr, 3);
  mem.writeU32(0x200010, 0xdeadbeef);
  assert.equal(dma.readUint(0x10010, 4), 0xdeadbeef);
  assert.equal(dma.write(0x10010, new Uint8Array(4))?.reason, "permission");
  assert.equal(mem.readU32(0x200010), 0xdeadbeef);
  assert.equal(dma.readUint(0x20000, 4), -1);
  const sg = new SgList();
  assert.equal(dma.translateRange(0x10ff0, 0x20, ACCESS_READ, sg)?.reason, "unmapped");
  iotlb.invalidateAll();
  tr.epoch++;
  assert.equal(iotlb.entries, 0);
  assert.equal(dma.translate(0x10000, ACCESS_WRITE, new Translation())?.reason, "permission");
});
