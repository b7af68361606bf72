/**
 * SMMUv3 model costs: translation on an IOTLB hit versus a full stage-1 walk and a nested walk
 * (every stage-1 table address through stage 2), and command queue throughput.
 */
import { ACCESS_READ } from "../src/engine/access.ts";
import { DmaAddressSpace } from "../src/engine/dma-space.ts";
import { Translation } from "../src/engine/translation.ts";
import { ptrIncrement } from "../src/smmuv3/queue.ts";
import { REG } from "../src/smmuv3/regs.ts";
import {
  attachS1,
  cdWords,
  cmd,
  type Fixture,
  makeFixture,
  PageTables,
  s1Attrs,
  s2Attrs,
  writeWords,
} from "../test/smmuv3/harness.ts";
import type { BenchCase } from "./harness.ts";

const PAGES = 256;

function s1Fixture(iotlbCapacity: number): Fixture {
  const fx = makeFixture({ smmu: { iotlbCapacity } });
  fx.driver.probe();
  const pt = attachS1(fx, 8, { asid: 1 });
  for (let i = 0; i < PAGES; i++) pt.map(0x4000_0000 + i * 4096, 0x20_0000 + i * 4096, 3, s1Attrs());
  return fx;
}

function nestedFixture(iotlbCapacity: number): Fixture {
  const fx = makeFixture({ smmu: { iotlbCapacity } });
  fx.driver.probe();
  const G = 2 ** 30;
  // Stage 2 with 4K pages only (IPA = PA + 1 GiB) so that every stage-1 table fetch walks it.
  const s2 = new PageTables(fx.alloc, 12, 40, 1);
  for (let pa = 0; pa < 8 << 20; pa += 4096) s2.map(G + pa, pa, 3, s2Attrs());
  const s1 = new PageTables(fx.alloc, 12, 48);
  for (let i = 0; i < PAGES; i++) s1.map(0x4000_0000 + i * 4096, G + 0x20_0000 + i * 4096, 3, s1Attrs());
  // Turn the stage-1 table pointers into IPAs.
  const seen = new Set<number>();
  for (let i = 0; i < PAGES; i++) {
    for (const level of [0, 1, 2]) {
      const slot = s1.slot(0x4000_0000 + i * 4096, level);
      if (seen.has(slot)) continue;
      seen.add(slot);
    }
  }
  for (const slot of seen) {
    const next = fx.memory.readU32(slot + 4) * 2 ** 32 + fx.memory.readU32(slot) + G;
    fx.memory.writeU32(slot, next % 2 ** 32);
    fx.memory.writeU32(slot + 4, Math.floor(next / 2 ** 32));
  }
  const cd = fx.alloc.alloc(64, 64);
  writeWords(fx.memory, cd, cdWords({ asid: 2, ttb0: s1.root + G }));
  fx.driver.writeSte(8, { config: 0b111, cdTable: cd + G, vmid: 3, s2t0sz: 24, s2sl0: 1, s2ttb: s2.root });
  fx.driver.submit([cmd.cfgiSte(8)]);
  return fx;
}

function translateLoop(fx: Fixture): (n: number) => void {
  const t = new Translation();
  let i = 0;
  return (n: number) => {
    for (let k = 0; k < n; k++) {
      const f = fx.smmu.translate(8, 0x4000_0000 + (i % PAGES) * 4096 + 0x10, ACCESS_READ, t);
      if (f !== null) throw new Error(`unexpected fault ${f.detail}`);
      i++;
    }
  };
}

/** A command queue pre-filled with `make(i)`; each run advances PROD over it in batches. */
function commandLoop(make: (i: number) => readonly number[], batch: number): (n: number) => void {
  const fx = makeFixture();
  const log2 = 12;
  fx.driver.probe({ cmdqLog2: log2 });
  const size = 1 << log2;
  for (let i = 0; i < size; i++) writeWords(fx.memory, fx.driver.cmdq + i * 16, make(i));
  let prod = fx.smmu.read(REG.CMDQ_PROD, 4);
  return (n: number) => {
    for (let done = 0; done < n; ) {
      const step = Math.min(batch, n - done);
      for (let k = 0; k < step; k++) prod = ptrIncrement(prod, log2);
      fx.smmu.write(REG.CMDQ_PROD, 4, prod);
      done += step;
    }
  };
}

/**
 * The unmap path with real work: one page of ASID 1 is cached (one walk), then TLBI_NH_VA or
 * TLBI_NH_ASID + CMD_SYNC removes it while ASID 2 keeps 256 entries resident.
 */
function unmapLoop(kind: "va" | "asid"): (n: number) => void {
  const fx = s1Fixture(4096);
  const other = attachS1(fx, 9, { asid: 2 });
  for (let i = 0; i < PAGES; i++) other.map(0x4000_0000 + i * 4096, 0x20_0000 + i * 4096, 3, s1Attrs());
  const t = new Translation();
  for (let i = 0; i < PAGES; i++) fx.smmu.translate(9, 0x4000_0000 + i * 4096, ACCESS_READ, t);
  const log2 = fx.driver.cmdqLog2;
  const size = 1 << log2;
  for (let i = 0; i < size; i++) {
    const c =
      i % 2
        ? cmd.sync(1, 0x10_0000, 0)
        : kind === "va"
          ? cmd.tlbiNhVa(0, 1, 0x4000_0000)
          : cmd.tlbiNhAsid(0, 1);
    writeWords(fx.memory, fx.driver.cmdq + i * 16, c);
  }
  let prod = fx.smmu.read(REG.CMDQ_PROD, 4);
  return (n: number) => {
    for (let k = 0; k < n; k++) {
      fx.smmu.translate(8, 0x4000_0000, ACCESS_READ, t);
      prod = ptrIncrement(ptrIncrement(prod, log2), log2);
      fx.smmu.write(REG.CMDQ_PROD, 4, prod);
    }
  };
}

const hit = s1Fixture(4096);
const miss = s1Fixture(1);
const nestedHit = nestedFixture(4096);
const nestedMiss = nestedFixture(1);
const dmaFx = s1Fixture(4096);
const dma = new DmaAddressSpace(dmaFx.memory, dmaFx.smmu, 8);

export const cases: BenchCase[] = [
  { group: "smmuv3: translation", name: "stage 1, IOTLB hit (256 pages)", run: translateLoop(hit) },
  { group: "smmuv3: translation", name: "stage 1, 4-level walk (IOTLB miss)", run: translateLoop(miss) },
  { group: "smmuv3: translation", name: "nested S1+S2, IOTLB hit", run: translateLoop(nestedHit) },
  {
    group: "smmuv3: translation",
    name: "nested S1+S2, full walk (4 S1 levels x 3 S2 levels)",
    run: translateLoop(nestedMiss),
    initialBatch: 100,
  },
  {
    group: "smmuv3: translation",
    name: "DmaAddressSpace.readUint(4) same page (one-entry cache)",
    run: (n) => {
      for (let i = 0; i < n; i++) dma.readUint(0x4000_0010, 4);
    },
  },
  {
    group: "smmuv3: command queue",
    name: "TLBI_NH_VA, batches of 32",
    run: commandLoop((i) => cmd.tlbiNhVa(0, 1, 0x4000_0000 + (i % 64) * 4096), 32),
  },
  {
    group: "smmuv3: command queue",
    name: "CFGI_STE, batches of 32",
    run: commandLoop(() => cmd.cfgiSte(8), 32),
  },
  {
    group: "smmuv3: command queue",
    name: "walk + TLBI_NH_VA + CMD_SYNC, 256 other entries live",
    run: unmapLoop("va"),
  },
  {
    group: "smmuv3: command queue",
    name: "walk + TLBI_NH_ASID + CMD_SYNC, 256 other entries live",
    run: unmapLoop("asid"),
  },
  {
    group: "smmuv3: command queue",
    name: "TLBI_NH_ASID (nothing cached) + CMD_SYNC (MSI write) pairs",
    run: commandLoop((i) => (i % 2 ? cmd.sync(1, 0x10_0000, 0) : cmd.tlbiNhAsid(0, 1)), 2),
  },
];
