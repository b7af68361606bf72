/**
 * Fuzzing with fixed seeds: hostile STEs, CDs, tables, commands, queue pointers and register
 * writes never throw, never let DMA out of current mappings, and keep the queues architecturally
 * valid. Each test prints its seed; iteration counts are bounded.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { Translation } from "../../src/engine/translation.ts";
import { ptrMask } from "../../src/smmuv3/queue.ts";
import { REG } from "../../src/smmuv3/regs.ts";
import { prngU32 as prng } from "../support/prng.ts";
import { attachS1, cmd, type Fixture, makeFixture, RAM_BYTES, s1Attrs, writeWords } from "./harness.ts";

function checkQueues(fx: Fixture): void {
  const cons = fx.smmu.read(REG.CMDQ_CONS, 4);
  assert.ok([0, 1, 2].includes((cons >>> 24) & 0x7f), "CMDQ_CONS.ERR is a defined code");
  assert.equal(cons & 0x80ff_ffff & ~0xfffff & ~(0x7f << 24), 0);
  const ep = fx.smmu.read(REG.EVENTQ_PROD, 4);
  assert.equal(ep & 0x7ff0_0000, 0, "EVENTQ_PROD holds only WR and OVFLG");
  assert.equal(fx.smmu.read(REG.GERROR, 4) & ~0x1fd, 0);
}

test("fuzz: random STEs, CDs and table words never throw; every translation is permitted and inside the OAS", () => {
  const seed = 0x5eed_0001;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const fx = makeFixture({ sids: [0, 1, 2, 3, 4, 5, 6, 7] });
  fx.driver.probe({ sidBits: 3, twoLevel: false });
  // A pool of pages filled with random words: STEs point into it, and so do CDs and tables.
  const pool = fx.alloc.alloc(64 * 4096);
  const pick = (): number => pool + (rnd() % ((64 * 4096) / 64)) * 64;
  for (let i = 0; i < 64 * 1024; i++) fx.memory.writeU32(pool + i * 4, rnd());
  // A quarter of the 64-byte slots hold mostly-valid CDs whose TTB0 points into the pool, so
  // walks over random descriptors are reached too.
  for (let slot = 0; slot < 64 * 64; slot += 4) {
    const gpa = pool + slot * 64;
    const ttb = pool + (rnd() % 64) * 4096;
    const w0 = (16 + (rnd() % 24)) | ((rnd() % 3) << 6) | (1 << 30) | (1 << 31);
    const w1 = 5 | (1 << 9) | (1 << 14) | ((rnd() & 1) << 13) | ((rnd() & 0xff) << 16);
    writeWords(fx.memory, gpa, [w0, w1, ttb, 0]);
  }
  const t = new Translation();
  for (let round = 0; round < 300; round++) {
    const sid = rnd() % 8;
    const w = Array.from({ length: 16 }, () => rnd());
    // Bias towards valid, translating configurations so that deep paths are reached.
    w[0] = (w[0] & ~0xf) | 1 | ((4 + (rnd() % 4)) << 1);
    if (rnd() % 2) {
      const p = pick();
      w[0] = (w[0] & 0x3f) | (p & 0xffffffc0);
      w[1] = ((rnd() % 4) << 27) >>> 0;
      w[2] = rnd() % 3;
    }
    if (rnd() % 2) {
      // Mostly well-formed stage 2 (4K, 40-bit IPA from level 1) with random AFFD/S2R bits.
      w[5] =
        rnd() % 4 ? (24 | (1 << 6) | (5 << 16) | (1 << 19) | (rnd() & ((1 << 21) | (1 << 26)))) >>> 0 : rnd();
      const p = pick();
      w[6] = p & 0xfffffff0;
      w[7] = 0;
    }
    w[2] &= ~(3 << 30);
    writeWords(fx.memory, fx.driver.steAddr(sid), w);
    fx.driver.submit([cmd.cfgiSte(sid), cmd.tlbiNsnhAll()]);
    for (let k = 0; k < 20; k++) {
      const iova = rnd() % 2 === 0 ? rnd() * 4096 : rnd();
      const ssid = rnd() % 4 === 0 ? rnd() % 8 : -1;
      const access = rnd() % 2 ? ACCESS_READ : ACCESS_WRITE;
      const tr = ssid >= 0 ? fx.smmu.substream(ssid) : fx.smmu;
      const f = tr.translate(sid, iova, access, t);
      if (f === null) {
        assert.ok(t.covers(iova));
        assert.ok(t.gpaBase >= 0 && t.gpaBase + t.sizeBytes <= 2 ** 48);
        assert.ok((t.perms & access) !== 0);
      } else {
        assert.ok(f.code >= 0 && f.code <= 0x25);
      }
    }
    if (round % 16 === 0) fx.driver.drainEvents();
    checkQueues(fx);
  }
  const s = fx.smmu.stats();
  console.log(`faults reached: ${JSON.stringify(s.faults)}`);
  assert.ok(Object.keys(s.faults).length >= 5, "varied faults");
});

test("fuzz: random map/unmap with TLBI + CMD_SYNC: DMA reaches exactly the current mappings", () => {
  const seed = 0x5eed_0002;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  for (const g of [12, 14] as const) {
    const fx = makeFixture();
    fx.driver.probe();
    const pt = attachS1(fx, 8, { granuleShift: g, asid: 11 });
    const page = 2 ** g;
    const frames = fx.alloc.alloc(256 * page, page);
    const ref = new Map<number, number>(); // va page -> pa page
    const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
    const vaOf = (i: number): number => 0x4000_0000 + i * page;
    for (let op = 0; op < 600; op++) {
      const i = rnd() % 64;
      const va = vaOf(i);
      const r = rnd() % 4;
      if (r === 0) {
        const paPage = frames + (rnd() % 256) * page;
        pt.map(va, paPage, 3, s1Attrs());
        // Remapping a live entry needs an invalidation too (break-before-make is the guest's).
        fx.driver.submit([cmd.tlbiNhVa(0, 11, va)]);
        ref.set(va, paPage);
      } else if (r === 1) {
        pt.unmap(va, 3);
        if (rnd() % 8 === 0) fx.driver.submit([cmd.tlbiNhAsid(0, 11)]);
        else fx.driver.submit([cmd.tlbiNhVa(0, 11, va)]);
        ref.delete(va);
      } else {
        const off = rnd() % (page - 4);
        const want = ref.get(va);
        const f = dma.translate(va + off, ACCESS_READ, new Translation());
        if (want === undefined) assert.notEqual(f, null, `va 0x${va.toString(16)} must fault`);
        else {
          const t = new Translation();
          assert.equal(dma.translate(va + off, ACCESS_READ, t), null);
          assert.equal(t.gpaBase + (va + off - t.iovaBase), want + off);
        }
      }
    }
    fx.driver.drainEvents();
    assert.ok(fx.smmu.stats().iotlb.hits > 0);
  }
});

test("fuzz: random commands, PROD/CONS values and GERRORN acks keep the command queue valid", () => {
  const seed = 0x5eed_0003;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const fx = makeFixture();
  fx.driver.probe({ cmdqLog2: 4 });
  const ops = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x18, 0x20, 0x28, 0x2a, 0x30, 0x40, 0x46,
  ];
  const log2 = 4;
  for (let round = 0; round < 3000; round++) {
    const slot = fx.driver.cmdq + (rnd() % 16) * 16;
    const op = rnd() % 8 === 0 ? rnd() & 0xff : ops[rnd() % ops.length];
    const w0 = ((rnd() & ~0xff) | op) >>> 0;
    // Keep CMD_SYNC MSI writes inside the queue page most of the time.
    const w2 = op === 0x46 && rnd() % 2 ? fx.driver.cmdq : rnd();
    writeWords(fx.memory, slot, [w0, rnd(), w2, rnd() % 4 === 0 ? rnd() : 0]);
    const what = rnd() % 10;
    if (what < 5) fx.smmu.write(REG.CMDQ_PROD, 4, rnd());
    else if (what < 7) fx.smmu.write(REG.GERRORN, 4, fx.smmu.read(REG.GERROR, 4));
    else if (what === 7) {
      fx.smmu.write(REG.CR0, 4, 0b0101);
      fx.smmu.write(REG.CMDQ_CONS, 4, rnd());
      fx.smmu.write(REG.CR0, 4, 0b1101);
    } else fx.smmu.pump();
    const cons = fx.smmu.read(REG.CMDQ_CONS, 4);
    assert.equal(cons & 0xfffff & ~ptrMask(log2), 0, "CONS within index + wrap bits");
    assert.ok(fx.smmu.read(REG.CMDQ_PROD, 4) <= 0xfffff);
    checkQueues(fx);
    if (round % 64 === 0) fx.driver.drainEvents();
  }
  assert.ok(fx.smmu.stats().commandErrors > 0);
  assert.ok(fx.smmu.stats().syncs > 0);
});

test("fuzz: random register accesses across the 128 KiB frame never throw", () => {
  const seed = 0x5eed_0004;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const fx = makeFixture();
  fx.driver.probe();
  const pt = attachS1(fx, 8);
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  const hot = [
    0x20, 0x28, 0x2c, 0x44, 0x50, 0x64, 0x68, 0x80, 0x88, 0x90, 0x98, 0x9c, 0xa0, 0xa8, 0xac, 0xb0,
  ];
  const sizes = [1, 2, 4, 8] as const;
  const t = new Translation();
  for (let i = 0; i < 20000; i++) {
    const off = rnd() % 3 ? hot[rnd() % hot.length] + (rnd() % 2) * 0x10000 : rnd() % 0x20000;
    const size = sizes[rnd() % 4];
    if (rnd() % 2) fx.smmu.write(off, size, size === 8 ? rnd() * 2 ** 20 + rnd() : rnd());
    else fx.smmu.read(off, size);
    if (i % 50 === 0) {
      fx.smmu.translate(8, 0x1000 + (rnd() % 4) * 4096, ACCESS_READ, t);
      checkQueues(fx);
    }
  }
  assert.ok(fx.smmu.stats().badRegisterAccesses > 0);
  assert.ok(RAM_BYTES > 0);
});
