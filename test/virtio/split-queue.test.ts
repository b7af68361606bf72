import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_WRITE, type Access, type DmaFault, PERM_RW } from "../../src/engine/access.ts";
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { DmaTranslator, Translation } from "../../src/engine/translation.ts";
import {
  DescriptorChain,
  POP_CHAIN,
  POP_EMPTY,
  POP_ERROR,
  SplitQueue,
} from "../../src/virtio/split-queue.ts";
import { prng } from "../support/machine.ts";

const SIZE = 8;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;

function ring(eventIdx = false, indirect = true) {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 16 }]);
  const dma = new DmaAddressSpace(memory, IDENTITY, 0);
  const q = new SplitQueue(0, SIZE);
  assert.equal(q.start(dma, SIZE, DESC, AVAIL, USED, eventIdx, indirect), null);
  return { memory, q };
}

function desc(
  m: GuestMemory,
  table: number,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next: number,
) {
  m.writeU64(table + 16 * i, BigInt(addr));
  m.writeU32(table + 16 * i + 8, len);
  m.writeU16(table + 16 * i + 12, flags);
  m.writeU16(table + 16 * i + 14, next);
}

test("VIRTIO 1.3 2.7.13: nothing available is POP_EMPTY; a posted chain is returned readable-first", () => {
  const { memory, q } = ring();
  const chain = new DescriptorChain();
  assert.equal(q.pop(chain), POP_EMPTY);
  desc(memory, DESC, 3, 0x8000, 100, 1, 5);
  desc(memory, DESC, 5, 0x9000, 200, 2, 0);
  memory.writeU16(AVAIL + 4, 3);
  memory.writeU16(AVAIL + 2, 1);
  assert.equal(q.pop(chain), POP_CHAIN);
  assert.equal(chain.head, 3);
  assert.deepEqual(
    [chain.count, chain.firstWritable, chain.readableBytes, chain.writableBytes],
    [2, 1, 100, 200],
  );
  assert.equal(q.pop(chain), POP_EMPTY);
});

test("VIRTIO 1.3 2.7.8: the used element is written before used.idx", () => {
  const { memory, q } = ring();
  assert.equal(q.pushUsed(6, 0x1234), true);
  assert.deepEqual(
    [memory.readU32(USED + 4), memory.readU32(USED + 8), memory.readU16(USED + 2)],
    [6, 0x1234, 1],
  );
});

test("VIRTIO 1.3 2.7.5.3.1: a chain of direct descriptors may end in one indirect table", () => {
  const { memory, q } = ring();
  const table = 0x4000;
  desc(memory, DESC, 0, 0x8000, 16, 1, 1);
  desc(memory, DESC, 1, table, 32, 4, 0);
  desc(memory, table, 0, 0x9000, 64, 1, 1);
  desc(memory, table, 1, 0xa000, 64, 2, 0);
  memory.writeU16(AVAIL + 2, 1);
  const chain = new DescriptorChain();
  assert.equal(q.pop(chain), POP_CHAIN);
  assert.deepEqual([chain.count, chain.readableBytes, chain.writableBytes], [3, 80, 64]);
});

test("VIRTIO 1.3 2.7.10: with EVENT_IDX an empty pop publishes avail_event", () => {
  const { memory, q } = ring(true);
  const chain = new DescriptorChain();
  desc(memory, DESC, 0, 0x8000, 16, 2, 0);
  memory.writeU16(AVAIL + 2, 1);
  assert.equal(q.pop(chain), POP_CHAIN);
  assert.equal(q.pop(chain), POP_EMPTY);
  assert.equal(memory.readU16(USED + 4 + 8 * SIZE), 1);
});

test("a broken queue stays broken until reset and pushes nothing", () => {
  const { memory, q } = ring();
  memory.writeU16(AVAIL + 2, 9);
  const chain = new DescriptorChain();
  assert.equal(q.pop(chain), POP_ERROR);
  assert.equal(q.pushUsed(0, 0), false);
  assert.equal(memory.readU16(USED + 2), 0);
  assert.equal(q.pop(chain), POP_ERROR);
});

test("fuzz: random rings never throw, and every chain returned satisfies the chain rules", () => {
  const seed = 0x51_17_ee;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const r = prng(seed);
  const chain = new DescriptorChain();
  let chains = 0;
  let errors = 0;
  for (let round = 0; round < 3000; round++) {
    const { memory, q } = ring(r() < 0.5, r() < 0.8);
    const table = 0x4000;
    for (let i = 0; i < SIZE; i++) {
      const pick = r();
      const addr =
        pick < 0.7 ? 0x8000 + Math.floor(r() * 0x8000) : pick < 0.8 ? table : Math.floor(r() * 2 ** 53);
      const len = r() < 0.1 ? 0 : r() < 0.2 ? 16 * Math.floor(r() * 6) : Math.floor(r() * 0x1000);
      const flags = Math.floor(r() * 8);
      const next = r() < 0.8 ? Math.floor(r() * SIZE) : Math.floor(r() * 0x10000);
      desc(memory, DESC, i, addr, len, flags, next);
      desc(memory, table, i, addr, len, flags, r() < 0.8 ? Math.floor(r() * 5) : Math.floor(r() * 0x10000));
    }
    for (let i = 0; i < SIZE; i++)
      memory.writeU16(AVAIL + 4 + 2 * i, r() < 0.9 ? Math.floor(r() * SIZE) : Math.floor(r() * 0x10000));
    memory.writeU16(AVAIL + 2, Math.floor(r() * (r() < 0.9 ? SIZE + 1 : 0x10000)));
    for (let k = 0; k < SIZE + 2; k++) {
      const res = q.pop(chain);
      if (res === POP_ERROR) {
        errors++;
        break;
      }
      if (res === POP_EMPTY) break;
      chains++;
      // Invariants of an accepted chain.
      assert.ok(chain.count >= 1 && chain.count <= SIZE + SIZE);
      let total = 0;
      for (let i = 0; i < chain.count; i++) {
        assert.ok(chain.lengths[i] > 0, "no zero-length buffer");
        assert.ok(chain.addrs[i] + chain.lengths[i] <= 2 ** 53, "buffer representable");
        total += chain.lengths[i];
      }
      assert.equal(total, chain.readableBytes + chain.writableBytes);
      assert.ok(total <= 0xffffffff);
      q.pushUsed(chain.head, 0);
    }
  }
  console.log(`fuzz: ${chains} chains accepted, ${errors} rings rejected`);
  assert.ok(chains > 100 && errors > 100, "both outcomes exercised");
});

test("VIRTIO 1.3 2.7.10: a buffer made available while avail_event is being published is not left behind", () => {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 16 }]);
  let epoch = 0;
  let raced = false;
  // A translator that lets the "driver" run exactly when the device writes avail_event.
  const racing: DmaTranslator = {
    get epoch() {
      return epoch;
    },
    translate(_ep: number, iova: number, access: Access, out: Translation): DmaFault | null {
      epoch++; // no caching: every access translates
      if (access === ACCESS_WRITE && iova === USED + 4 + 8 * SIZE && !raced) {
        raced = true;
        desc(memory, DESC, 0, 0x8000, 16, 2, 0);
        memory.writeU16(AVAIL + 4, 0);
        memory.writeU16(AVAIL + 2, 1);
      }
      out.set(iova & ~0xfff, iova & ~0xfff, 0x1000, PERM_RW);
      return null;
    },
  };
  const dma = new DmaAddressSpace(memory, racing, 0);
  const q = new SplitQueue(0, SIZE);
  assert.equal(q.start(dma, SIZE, DESC, AVAIL, USED, true, false), null);
  const chain = new DescriptorChain();
  assert.equal(q.pop(chain), POP_CHAIN, "the device looked again after publishing avail_event");
  assert.ok(raced);
});
