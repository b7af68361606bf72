/**
 * Fuzzing with fixed seeds (printed): random register traffic, random descriptors and random
 * table entries never make the unit throw, and every translation it hands out after a global
 * invalidation matches an independent reference walk of the guest tables (no DMA outside the
 * current mappings).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE, type Access } from "../../src/engine/access.ts";
import type { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Translation } from "../../src/engine/translation.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { prng } from "../support/prng.ts";
import { D, q, rig } from "./guest.ts";

const u32 = (r: () => number) => Math.floor(r() * 2 ** 32) >>> 0;

test("fuzz: random register traffic, DMA and interrupts never throw (seed 0x5eed01)", () => {
  const seed = 0x5eed01;
  console.log(`vtd register fuzz seed 0x${seed.toString(16)}`);
  for (const config of [
    "intremap=on,eim=on,device-iotlb=on",
    "scalable-mode=on,pasid=on,intremap=on,device-iotlb=on,caching-mode=on",
  ]) {
    const rnd = prng(seed);
    const r = rig({ config });
    // Random bytes where random pointers are likely to land.
    for (let gpa = 0; gpa < 1 << 20; gpa += 4) r.memory.writeU32(gpa, u32(rnd));
    const sids = [0x0000, 0x0008, 0x0100, 0x00f8];
    const spaces = sids.map((sid) => r.unit.addEndpoint(sid, { ats: { invalidate: () => {} } }));
    const offsets = [
      REG.GCMD,
      REG.RTADDR,
      REG.RTADDR + 4,
      REG.CCMD,
      REG.CCMD + 4,
      REG.FSTS,
      REG.FECTL,
      REG.IQT,
      REG.IQA,
      REG.IQA + 4,
      REG.ICS,
      REG.IECTL,
      REG.IRTA,
      REG.IVA,
      REG.IOTLB,
      REG.IOTLB + 4,
      REG.FRCD + 12,
      REG.FRCD + 28,
      REG.PMEN,
    ];
    const buf = new Uint8Array(8);
    for (let i = 0; i < 4000; i++) {
      const k = rnd();
      if (k < 0.45) {
        const off = rnd() < 0.8 ? offsets[Math.floor(rnd() * offsets.length)] : Math.floor(rnd() * 1024) * 4;
        // Keep table pointers mostly inside the random first MiB.
        let v = u32(rnd);
        if (off === REG.RTADDR || off === REG.IQA || off === REG.IRTA)
          v = (v & 0xfff) | (Math.floor(rnd() * 256) << 12);
        if (off === REG.RTADDR + 4 || off === REG.IQA + 4) v = 0;
        if (rnd() < 0.3) r.unit.write(off & ~7, 8, v + Math.floor(rnd() * 4) * 2 ** 32);
        else r.unit.write(off, 4, v);
      } else if (k < 0.55) {
        r.unit.read(Math.floor(rnd() * 1024) * 4, 4);
      } else if (k < 0.85) {
        const dma = spaces[Math.floor(rnd() * spaces.length)];
        const iova = rnd() < 0.5 ? Math.floor(rnd() * (1 << 24)) : Math.floor(rnd() * 2 ** 52);
        if (rnd() < 0.5) dma.read(iova, buf);
        else dma.write(iova, buf);
      } else if (k < 0.95) {
        r.unit.remap(
          sids[Math.floor(rnd() * sids.length)],
          0xfee00000 + Math.floor(rnd() * 0x100000),
          u32(rnd),
        );
      } else {
        r.unit.translationRequest(
          sids[Math.floor(rnd() * sids.length)],
          Math.floor(rnd() * 2 ** 40),
          rnd() < 0.5,
        );
      }
    }
    const st = r.unit.stats();
    assert.ok(st.translations > 0);
    assert.ok(st.faults.recorded + st.faults.droppedOverflow + st.faults.suppressedByFpd > 0);
  }
});

test("fuzz: random invalidation descriptors stop the queue or run, never throw (seed 0x5eed02)", () => {
  const seed = 0x5eed02;
  console.log(`vtd descriptor fuzz seed 0x${seed.toString(16)}`);
  for (const wide of [false, true]) {
    const rnd = prng(seed);
    const r = rig({ config: "scalable-mode=on,pasid=on,intremap=on,device-iotlb=on,caching-mode=on" });
    const d = r.driver;
    d.enableQueuedInvalidation(wide);
    d.setRootTable(wide);
    let errors = 0;
    for (let i = 0; i < 1500; i++) {
      const type = Math.floor(rnd() * 16);
      const lo0 = rnd() < 0.5 ? type | ((u32(rnd) & 0x0ff0) >>> 0) : (u32(rnd) & ~0xe0f) | type;
      const desc = [q(lo0, rnd() < 0.5 ? 0 : u32(rnd)), q(rnd() < 0.5 ? 0 : u32(rnd) & ~3, 0)];
      d.submit([desc]);
      if (d.r32(REG.FSTS) & 0x10) {
        errors++;
        // Replace the offending descriptor with a harmless wait and resume (6.5.2.10).
        const head = Number(d.r64(REG.IQH));
        r.memory.writeU64(d.queueBase + head, q(0x5));
        r.memory.writeU64(d.queueBase + head + 8, 0n);
        if (wide) {
          r.memory.writeU64(d.queueBase + head + 16, 0n);
          r.memory.writeU64(d.queueBase + head + 24, 0n);
        }
        d.w32(REG.FSTS, 0x10);
      }
      assert.equal(d.r64(REG.IQH), d.r64(REG.IQT), "queue drained up to the tail");
    }
    assert.ok(errors > 0 && errors < 1500);
    assert.ok(d.submitAndWait([D.iotlbGlobal()]));
  }
});

/** Independent legacy second-stage walk (48-bit, 4-level, 2M/1G leaves, no SC) over bigints. */
function referenceWalk(mem: GuestMemory, root: number, iova: number): { gpa: number; perms: number } | null {
  let table = BigInt(root);
  let perms = 3n;
  const a = BigInt(iova);
  for (let level = 4; level >= 1; level--) {
    const shift = BigInt(12 + 9 * (level - 1));
    const addr = Number(table + ((a >> shift) & 511n) * 8n);
    if (!mem.isRam(addr, 8)) return null;
    const e = mem.readU64(addr);
    if ((e & 3n) === 0n) return null;
    const ps = level > 1 && (e & 0x80n) !== 0n;
    if ((e >> 62n) & 1n || (e >> 48n) & 0xfn) return null;
    if (
      ps &&
      (level === 4 || (level === 3 && (e & 0x3ffff000n) !== 0n) || (level === 2 && (e & 0x1ff000n) !== 0n))
    )
      return null;
    if ((level === 1 || ps) && (e & 0x800n) !== 0n) return null;
    perms &= e & 3n;
    const next = e & 0x000f_ffff_ffff_f000n;
    if (level === 1 || ps) {
      const size = 1n << shift;
      const gpa = Number((next & ~(size - 1n)) + (a & (size - 1n)));
      if (gpa >= 0xfee00000 && gpa <= 0xfeefffff) return null;
      return { gpa, perms: Number(perms) };
    }
    table = next;
  }
  return null;
}

test("fuzz: random second-stage tables translate exactly as a reference walk says (seed 0x5eed03)", () => {
  const seed = 0x5eed03;
  console.log(`vtd table fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const r = rig({ config: "aw-bits=48" });
  const d = r.driver;
  d.enableQueuedInvalidation();
  d.setRootTable(false);
  const pool = Array.from({ length: 12 }, () => r.alloc.page());
  const SID = 0x0010;
  d.setLegacyContext(SID, { did: 1, slptptr: pool[0] });
  r.unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  const hot = [0, 1, 511];
  const index = () => (rnd() < 0.9 ? hot[Math.floor(rnd() * hot.length)] : Math.floor(rnd() * 512));
  const randomEntry = (): bigint => {
    const k = rnd();
    const flags =
      BigInt(rnd() < 0.85 ? 1 + Math.floor(rnd() * 3) : 0) |
      (rnd() < 0.15 ? 0x80n : 0n) |
      (rnd() < 0.03 ? 0x800n : 0n) |
      (rnd() < 0.03 ? 1n << 62n : 0n);
    if (k < 0.5) return BigInt(pool[Math.floor(rnd() * pool.length)]) | (rnd() < 0.9 ? 3n : flags);
    if (k < 0.8) return (BigInt(Math.floor(rnd() * RAM_PAGES)) * 4096n) | flags;
    if (k < 0.9) return (BigInt(u32(rnd)) << 32n) | BigInt(u32(rnd));
    return 0n;
  };
  const RAM_PAGES = (64 << 20) / 4096;
  const out = new Translation();
  let translated = 0;
  let faulted = 0;
  let refMapped = 0;
  for (let round = 0; round < 40; round++) {
    for (let n = 0; n < 120; n++) {
      const page = pool[Math.floor(rnd() * pool.length)];
      r.memory.writeU64(page + index() * 8, randomEntry());
    }
    assert.ok(d.submitAndWait([D.iotlbGlobal()]));
    for (let n = 0; n < 60; n++) {
      const iova =
        index() * 2 ** 39 +
        index() * 2 ** 30 +
        index() * 2 ** 21 +
        index() * 2 ** 12 +
        Math.floor(rnd() * 4096);
      const access: Access = rnd() < 0.5 ? ACCESS_READ : ACCESS_WRITE;
      const f = r.unit.translate(SID, iova, access, out);
      const ref = referenceWalk(r.memory, pool[0], iova);
      if (ref !== null) refMapped++;
      if (f === null) {
        translated++;
        assert.ok(ref !== null, `iova 0x${iova.toString(16)} translated but the tables do not map it`);
        assert.equal(out.gpaBase + (iova - out.iovaBase), ref.gpa);
        assert.ok((ref.perms & access) !== 0);
        assert.ok(out.covers(iova));
      } else {
        faulted++;
        assert.ok(
          ref === null || (ref.perms & access) === 0,
          `iova 0x${iova.toString(16)} faulted (${f.detail}) but maps`,
        );
      }
      d.w32(REG.FSTS, 1);
      for (let i = 0; i < 4; i++) d.w32(REG.FRCD + 16 * i + 12, 0x80000000);
    }
  }
  console.log(`table fuzz: ${translated} translated, ${faulted} faulted, ${refMapped} mapped by reference`);
  assert.ok(translated > 50 && faulted > 50, `coverage: ${translated} translated, ${faulted} faulted`);
});

/** Independent first-stage walk (4-level, HAW 48, user request, no WPE) over bigints. */
function referenceFirstStage(
  mem: GuestMemory,
  root: number,
  iova: number,
): { gpa: number; perms: number } | null {
  if (iova >= 2 ** 47) return null;
  let table = BigInt(root);
  let writable = true;
  let user = true;
  const a = BigInt(iova);
  for (let level = 4; level >= 1; level--) {
    const shift = BigInt(12 + 9 * (level - 1));
    const addr = Number(table + ((a >> shift) & 511n) * 8n);
    if (!mem.isRam(addr, 8)) return null;
    const e = mem.readU64(addr);
    if ((e & 1n) === 0n) return null;
    if ((e >> 48n) & 0xfn) return null;
    const ps = level > 1 && (e & 0x80n) !== 0n;
    if (
      ps &&
      (level === 4 || (level === 3 && (e & 0x3fffe000n) !== 0n) || (level === 2 && (e & 0x1fe000n) !== 0n))
    ) {
      return null;
    }
    if ((e & 2n) === 0n) writable = false;
    if ((e & 4n) === 0n) user = false;
    const next = e & 0x000f_ffff_ffff_f000n;
    if (level === 1 || ps) {
      if (!user) return null;
      const size = 1n << shift;
      const gpa = Number((next & ~(size - 1n)) + (a & (size - 1n)));
      if (gpa >= 0xfee00000 && gpa <= 0xfeefffff) return null;
      return { gpa, perms: writable ? 3 : 1 };
    }
    table = next;
  }
  return null;
}

test("fuzz: random first-stage tables translate exactly as a reference walk says (seed 0x5eed04)", () => {
  const seed = 0x5eed04;
  console.log(`vtd first-stage fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const r = rig({ config: "scalable-mode=on" });
  const d = r.driver;
  d.enableQueuedInvalidation(true);
  d.setRootTable(true);
  const pool = Array.from({ length: 12 }, () => r.alloc.page());
  const SID = 0x0018;
  const dir = d.setScalableContext(SID);
  d.setPasidEntry(dir, 0, { pgtt: 1, did: 2, flptptr: pool[0] });
  r.unit.addEndpoint(SID);
  d.setPersistent(GCMD.TE, true);
  const hot = [0, 1, 255];
  const index = () => (rnd() < 0.9 ? hot[Math.floor(rnd() * hot.length)] : Math.floor(rnd() * 512));
  const RAM_PAGES = (64 << 20) / 4096;
  const randomEntry = (): bigint => {
    const k = rnd();
    const flags =
      (rnd() < 0.9 ? 1n : 0n) |
      (rnd() < 0.7 ? 2n : 0n) |
      (rnd() < 0.85 ? 4n : 0n) |
      (rnd() < 0.15 ? 0x80n : 0n) |
      (rnd() < 0.5 ? 0x20n : 0n) |
      (rnd() < 0.3 ? 1n << 63n : 0n);
    if (k < 0.5) return BigInt(pool[Math.floor(rnd() * pool.length)]) | (rnd() < 0.9 ? 7n : flags);
    if (k < 0.85) return (BigInt(Math.floor(rnd() * RAM_PAGES)) * 4096n) | flags;
    if (k < 0.93) return (BigInt(u32(rnd)) << 32n) | BigInt(u32(rnd));
    return 0n;
  };
  const out = new Translation();
  let translated = 0;
  let faulted = 0;
  for (let round = 0; round < 40; round++) {
    for (let n = 0; n < 120; n++) {
      r.memory.writeU64(pool[Math.floor(rnd() * pool.length)] + index() * 8, randomEntry());
    }
    assert.ok(d.submitAndWait([D.pasidIotlbAll(2, 0)]));
    for (let n = 0; n < 60; n++) {
      const iova =
        index() * 2 ** 39 +
        index() * 2 ** 30 +
        index() * 2 ** 21 +
        index() * 2 ** 12 +
        Math.floor(rnd() * 4096);
      const access: Access = rnd() < 0.5 ? ACCESS_READ : ACCESS_WRITE;
      const ref = referenceFirstStage(r.memory, pool[0], iova);
      const f = r.unit.translate(SID, iova, access, out);
      if (f === null) {
        translated++;
        assert.ok(ref !== null, `iova 0x${iova.toString(16)} translated but the tables do not map it`);
        assert.equal(out.gpaBase + (iova - out.iovaBase), ref.gpa);
        assert.ok((ref.perms & access) !== 0);
      } else {
        faulted++;
        assert.ok(
          ref === null || (ref.perms & access) === 0,
          `iova 0x${iova.toString(16)} faulted (${f.detail}) but maps`,
        );
      }
      d.w32(REG.FSTS, 1);
      for (let i = 0; i < 4; i++) d.w32(REG.FRCD + 16 * i + 12, 0x80000000);
    }
  }
  console.log(`first-stage fuzz: ${translated} translated, ${faulted} faulted`);
  assert.ok(translated > 50 && faulted > 50);
});

test("fuzz: random IRTEs and interrupt requests match a reference decode (seed 0x5eed05)", () => {
  const seed = 0x5eed05;
  console.log(`vtd interrupt remapping fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const r = rig({ config: "intremap=on" });
  const d = r.driver;
  d.enableQueuedInvalidation();
  const irt = r.alloc.page();
  d.w64(REG.IRTA, BigInt(irt) | 7n); // 256 entries
  d.oneShot(GCMD.SIRTP);
  d.setPersistent(GCMD.IRE, true);
  let remapped = 0;
  let faulted = 0;
  for (let n = 0; n < 3000; n++) {
    const index = Math.floor(rnd() * 256);
    const lo = (BigInt(u32(rnd) & (rnd() < 0.8 ? 0x00ff0fff : 0xffffffff)) | 1n) & (rnd() < 0.1 ? ~1n : ~0n);
    const hi = BigInt(rnd() < 0.8 ? u32(rnd) & 0xff00 : u32(rnd));
    const lo2 = BigInt(u32(rnd) & (rnd() < 0.8 ? 0x000fffff : 0xffffffff));
    const e0 = lo | (hi << 32n);
    r.memory.writeU64(irt + index * 16, e0);
    r.memory.writeU64(irt + index * 16 + 8, lo2);
    assert.ok(d.submitAndWait([D.iecIndex(index)]));
    const sid = rnd() < 0.5 ? Number(lo2 & 0xffffn) : Math.floor(rnd() * 65536);
    const res = r.unit.remap(sid, (0xfee00010 | (index << 5)) >>> 0, 0);
    // Reference (VT-d 9.10, xAPIC mode).
    let expect = 0;
    const svt = Number((lo2 >> 18n) & 3n);
    const sq = Number((lo2 >> 16n) & 3n);
    const irteSid = Number(lo2 & 0xffffn);
    if ((e0 & 1n) === 0n) expect = 0x22;
    else if ((e0 & 0xff00f000n) !== 0n || (e0 >> 32n) & 0xffff00ffn || lo2 >> 20n || svt === 3) expect = 0x24;
    else if (svt === 1) {
      const ignore = [0, 4, 6, 7][sq];
      if (((sid ^ irteSid) & ~ignore & 0xffff) !== 0) expect = 0x26;
    } else if (svt === 2 && (sid >> 8 < irteSid >> 8 || sid >> 8 > (irteSid & 0xff))) expect = 0x26;
    if (expect === 0) {
      remapped++;
      assert.ok(res.ok && res.interrupt, `index ${index}: expected remap`);
      assert.equal(res.interrupt?.vector, Number((e0 >> 16n) & 0xffn));
      assert.equal(res.interrupt?.destination, Number((e0 >> 40n) & 0xffn));
    } else {
      faulted++;
      assert.ok(!res.ok && res.reason === expect, `index ${index}: expected 0x${expect.toString(16)}`);
    }
    d.w32(REG.FSTS, 1);
    for (let i = 0; i < 4; i++) d.w32(REG.FRCD + 16 * i + 12, 0x80000000);
  }
  console.log(`interrupt remapping fuzz: ${remapped} remapped, ${faulted} faulted`);
  assert.ok(remapped > 100 && faulted > 100);
});
