/**
 * Every DMA-remapping fault reason produced by a crafted table, with the recorded FRCD checked
 * (source id, reason, page address, request type, PASID) (VT-d 7.1.3, 11.4.14).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE, type Access } from "../../src/engine/access.ts";
import type { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { Translation } from "../../src/engine/translation.ts";
import { FR } from "../../src/vtd/fault-reasons.ts";
import { GCMD, REG } from "../../src/vtd/registers.ts";
import { decodeFrcd, frcd, type GuestDriver, PageTable, type Rig, rig } from "./guest.ts";

const SID = 0x0318; // 03:03.0
const HIGH_SID = 0x0388; // 03:11.0 (devfn >= 128: upper scalable context table)
const OUTSIDE_RAM = 0x10000000;

interface Case {
  readonly name: string;
  readonly reason: number;
  readonly config: string;
  readonly scalable: boolean;
  /** Builds tables; returns the address space to fault through and the iova/access to use. */
  readonly setup: (
    r: Rig,
    d: GuestDriver,
  ) => { dma: DmaAddressSpace; iova: number; access?: Access; pasid?: number };
}

function legacy(r: Rig, d: GuestDriver, ctx: { aw?: number; tt?: number; did?: number } = {}, sid = SID) {
  const pt = new PageTable(r.memory, r.alloc, ctx.aw === 1 ? 3 : 4);
  d.setLegacyContext(sid, { did: ctx.did ?? 5, aw: ctx.aw ?? 2, tt: ctx.tt ?? 0, slptptr: pt.root });
  return pt;
}

function scalableSs(r: Rig, d: GuestDriver, sid = SID, ctx: { paside?: boolean } = {}) {
  const pt = new PageTable(r.memory, r.alloc, 4);
  const dir = d.setScalableContext(sid, { paside: ctx.paside });
  const pte = d.setPasidEntry(dir, 0, { pgtt: 2, did: 9, aw: 2, slptptr: pt.root });
  return { pt, dir, pte };
}

const L = "aw-bits=48";
const S = "scalable-mode=on,pasid=on,aw-bits=48";

const cases: Case[] = [
  {
    name: "root entry not present",
    reason: FR.ROOT_NOT_PRESENT,
    config: L,
    scalable: false,
    setup: (r) => ({ dma: r.unit.addEndpoint(SID), iova: 0x1000 }),
  },
  {
    name: "context entry not present",
    reason: FR.CONTEXT_NOT_PRESENT,
    config: L,
    scalable: false,
    setup: (r, d) => {
      d.legacyContextGpa(SID);
      return { dma: r.unit.addEndpoint(SID), iova: 0x1000 };
    },
  },
  {
    name: "context entry TT=11 is invalid programming",
    reason: FR.CONTEXT_INVALID,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d, { tt: 3 });
      return { dma: r.unit.addEndpoint(SID), iova: 0x1000 };
    },
  },
  {
    name: "context entry AW=57-bit on a 48-bit unit is invalid programming",
    reason: FR.CONTEXT_INVALID,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d, { aw: 3 });
      return { dma: r.unit.addEndpoint(SID), iova: 0x1000 };
    },
  },
  {
    name: "context entry TT=01 without ECAP.DT is invalid programming",
    reason: FR.CONTEXT_INVALID,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d, { tt: 1 });
      return { dma: r.unit.addEndpoint(SID), iova: 0x1000 };
    },
  },
  {
    name: "SLPTPTR outside RAM is an invalid context entry",
    reason: FR.CONTEXT_INVALID,
    config: L,
    scalable: false,
    setup: (r, d) => {
      d.setLegacyContext(SID, { did: 5, slptptr: OUTSIDE_RAM });
      return { dma: r.unit.addEndpoint(SID), iova: 0x1000 };
    },
  },
  {
    name: "input address beyond the context's AGAW",
    reason: FR.ADDRESS_BEYOND_MGAW,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d, { aw: 1 });
      return { dma: r.unit.addEndpoint(SID), iova: 2 ** 40 };
    },
  },
  {
    name: "write to a read-only page",
    reason: FR.WRITE_DENIED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d).map(0x5000, 0x100000, 1, PageTable.ss(true, false));
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000, access: ACCESS_WRITE };
    },
  },
  {
    name: "read of a write-only page",
    reason: FR.READ_DENIED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d).map(0x5000, 0x100000, 1, PageTable.ss(false, true));
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "non-leaf entry pointing outside RAM",
    reason: FR.PAGING_ENTRY_ACCESS,
    config: L,
    scalable: false,
    setup: (r, d) => {
      const pt = legacy(r, d);
      r.memory.writeU64(pt.root, BigInt(OUTSIDE_RAM) | 3n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "root table outside RAM",
    reason: FR.ROOT_TABLE_ACCESS,
    config: L,
    scalable: false,
    setup: (r, d) => {
      d.w64(REG.RTADDR, BigInt(OUTSIDE_RAM));
      d.oneShot(GCMD.SRTP);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "root entry pointing at a context table outside RAM",
    reason: FR.CONTEXT_TABLE_ACCESS,
    config: L,
    scalable: false,
    setup: (r, d) => {
      r.memory.writeU64(d.rootTable + (SID >> 8) * 16, BigInt(OUTSIDE_RAM) | 1n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "root entry reserved bit 1",
    reason: FR.ROOT_RESERVED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d);
      const e = d.rootTable + (SID >> 8) * 16;
      r.memory.writeU64(e, r.memory.readU64(e) | 2n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "context entry reserved bit 4",
    reason: FR.CONTEXT_RESERVED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d);
      const e = d.legacyContextGpa(SID);
      r.memory.writeU64(e, r.memory.readU64(e) | 0x10n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "paging entry reserved bit 62",
    reason: FR.PAGING_ENTRY_RESERVED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      const pt = legacy(r, d);
      const e = pt.map(0x5000, 0x100000, 1, PageTable.ss(true, true));
      r.memory.writeU64(e, r.memory.readU64(e) | (1n << 62n));
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "paging entry PS set at level 4",
    reason: FR.PAGING_ENTRY_RESERVED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      const pt = legacy(r, d);
      r.memory.writeU64(pt.root, 0x83n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "2 MiB leaf with address bits 20:12 set",
    reason: FR.PAGING_ENTRY_RESERVED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d).map(0x200000, 0x201000, 2, PageTable.ss(true, true));
      return { dma: r.unit.addEndpoint(SID), iova: 0x200000 };
    },
  },
  {
    name: "leaf SNP bit without ECAP.SC",
    reason: FR.PAGING_ENTRY_RESERVED,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d).map(0x5000, 0x100000, 1, PageTable.ss(true, true) | 0x800n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "output address in the interrupt window",
    reason: FR.INTERRUPT_ADDRESS,
    config: L,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d).map(0x5000, 0xfee00000, 1, PageTable.ss(true, true));
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  // ---- scalable mode ----
  {
    name: "RTADDR.TTM reserved encoding",
    reason: FR.SM_RTADDR_INVALID,
    config: S,
    scalable: true,
    setup: (r, d) => {
      d.w64(REG.RTADDR, BigInt(d.rootTable) | 0xc00n);
      d.oneShot(GCMD.SRTP);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "request with PASID in legacy mode",
    reason: FR.SM_TTM0_WITH_PASID,
    config: S,
    scalable: false,
    setup: (r, d) => {
      legacy(r, d);
      r.unit.addEndpoint(SID);
      return { dma: r.unit.pasidAddressSpace(SID, 5), iova: 0x5000, pasid: 5 };
    },
  },
  {
    name: "scalable root table outside RAM",
    reason: FR.SM_ROOT_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      d.w64(REG.RTADDR, BigInt(OUTSIDE_RAM) | 0x400n);
      d.oneShot(GCMD.SRTP);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "scalable root entry upper half not present (devfn >= 128)",
    reason: FR.SM_ROOT_NOT_PRESENT,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d, SID);
      return { dma: r.unit.addEndpoint(HIGH_SID), iova: 0x5000 };
    },
  },
  {
    name: "scalable root entry reserved bits",
    reason: FR.SM_ROOT_RESERVED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d);
      const e = d.rootTable + (SID >> 8) * 16;
      r.memory.writeU64(e, r.memory.readU64(e) | 0x10n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "scalable context table outside RAM",
    reason: FR.SM_CONTEXT_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      r.memory.writeU64(d.rootTable + (SID >> 8) * 16, BigInt(OUTSIDE_RAM) | 1n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "scalable context entry not present",
    reason: FR.SM_CONTEXT_NOT_PRESENT,
    config: S,
    scalable: true,
    setup: (r, d) => {
      d.scalableContextGpa(SID);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "scalable context entry reserved bit 5",
    reason: FR.SM_CONTEXT_RESERVED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d);
      const e = d.scalableContextGpa(SID);
      r.memory.writeU64(e, r.memory.readU64(e) | 0x20n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "request with PASID while the context's PASIDE is clear",
    reason: FR.SM_CONTEXT_PASIDE_CLEAR,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d);
      r.unit.addEndpoint(SID);
      return { dma: r.unit.pasidAddressSpace(SID, 3), iova: 0x5000, pasid: 3 };
    },
  },
  {
    name: "PASID beyond the directory size (PDTS)",
    reason: FR.SM_PASID_OVER_PDTS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d, SID, { paside: true });
      r.unit.addEndpoint(SID);
      return { dma: r.unit.pasidAddressSpace(SID, 128 * 64), iova: 0x5000, pasid: 128 * 64 };
    },
  },
  {
    name: "PASID directory outside RAM",
    reason: FR.SM_PASID_DIR_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d);
      const e = d.scalableContextGpa(SID);
      r.memory.writeU64(e, BigInt(OUTSIDE_RAM) | 1n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "PASID directory entry not present",
    reason: FR.SM_PASID_DIR_NOT_PRESENT,
    config: S,
    scalable: true,
    setup: (r, d) => {
      d.setScalableContext(SID);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "PASID directory entry reserved bits",
    reason: FR.SM_PASID_DIR_RESERVED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const { dir } = scalableSs(r, d);
      r.memory.writeU64(dir, r.memory.readU64(dir) | 0x4n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "PASID table outside RAM",
    reason: FR.SM_PASID_ENTRY_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const { dir } = scalableSs(r, d);
      r.memory.writeU64(dir, BigInt(OUTSIDE_RAM) | 1n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "PASID table entry not present",
    reason: FR.SM_PASID_ENTRY_NOT_PRESENT,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const { pte } = scalableSs(r, d);
      r.memory.writeU64(pte, 0n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "PASID table entry reserved bits (qword 1 bits 22:16)",
    reason: FR.SM_PASID_ENTRY_RESERVED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const { pte } = scalableSs(r, d);
      r.memory.writeU64(pte + 8, r.memory.readU64(pte + 8) | (1n << 16n));
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "PASID table entry with nested PGTT (ECAP.NEST clear)",
    reason: FR.SM_PASID_ENTRY_INVALID,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 3, did: 1 });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "supervisor request with PASID while SRE is clear",
    reason: FR.SM_PASID_SRE_CLEAR,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const pt = new PageTable(r.memory, r.alloc, 4);
      const dir = d.setScalableContext(SID, { paside: true });
      d.setPasidEntry(dir, 7, { pgtt: 2, did: 2, slptptr: pt.root });
      r.unit.addEndpoint(SID);
      return { dma: r.unit.pasidAddressSpace(SID, 7, true), iova: 0x5000, pasid: 7 };
    },
  },
  {
    name: "first-stage table root outside RAM",
    reason: FR.SM_FS_ROOT_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: OUTSIDE_RAM });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "first-stage non-leaf pointing outside RAM",
    reason: FR.SM_FS_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const fs = new PageTable(r.memory, r.alloc, 4, true);
      r.memory.writeU64(fs.root, BigInt(OUTSIDE_RAM) | 7n);
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: fs.root });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "first-stage entry not present",
    reason: FR.SM_FS_NOT_PRESENT,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const fs = new PageTable(r.memory, r.alloc, 4, true);
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: fs.root });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "first-stage PS bit in a PML4 entry is reserved",
    reason: FR.SM_FS_RESERVED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const fs = new PageTable(r.memory, r.alloc, 4, true);
      r.memory.writeU64(fs.root, 0x87n);
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: fs.root });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "first-stage non-canonical input address (4-level, >= 2^47)",
    reason: FR.SM_NON_CANONICAL,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const fs = new PageTable(r.memory, r.alloc, 4, true);
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: fs.root });
      return { dma: r.unit.addEndpoint(SID), iova: 2 ** 47 };
    },
  },
  {
    name: "user request to a supervisor-only first-stage page",
    reason: FR.SM_USER_TO_SUPERVISOR,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const fs = new PageTable(r.memory, r.alloc, 4, true);
      fs.map(0x5000, 0x100000, 1, 3n);
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: fs.root });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "first-stage write to a read-only page",
    reason: FR.SM_WRITE_DENIED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const fs = new PageTable(r.memory, r.alloc, 4, true);
      fs.map(0x5000, 0x100000, 1, 5n);
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 1, did: 1, flptptr: fs.root });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000, access: ACCESS_WRITE };
    },
  },
  {
    name: "second-stage table root outside RAM",
    reason: FR.SM_SS_ROOT_INVALID,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const dir = d.setScalableContext(SID);
      d.setPasidEntry(dir, 0, { pgtt: 2, did: 1, slptptr: OUTSIDE_RAM });
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "second-stage non-leaf pointing outside RAM",
    reason: FR.SM_SS_ACCESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const { pt } = scalableSs(r, d);
      r.memory.writeU64(pt.root, BigInt(OUTSIDE_RAM) | 3n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "second-stage entry with R=W=0",
    reason: FR.SM_SS_NOT_PRESENT,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "second-stage entry reserved bit 62",
    reason: FR.SM_SS_RESERVED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      const { pt } = scalableSs(r, d);
      pt.map(0x5000, 0x100000, 1, 3n | (1n << 62n));
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
  {
    name: "second-stage input beyond the PASID entry's AGAW",
    reason: FR.SM_ADDRESS_BEYOND_AW,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d);
      return { dma: r.unit.addEndpoint(SID), iova: 2 ** 48 };
    },
  },
  {
    name: "second-stage write to a read-only page",
    reason: FR.SM_WRITE_DENIED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d).pt.map(0x5000, 0x100000, 1, 1n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000, access: ACCESS_WRITE };
    },
  },
  {
    name: "second-stage read of a write-only page",
    reason: FR.SM_READ_DENIED,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d).pt.map(0x5000, 0x100000, 1, 2n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000, access: ACCESS_READ };
    },
  },
  {
    name: "scalable output address in the interrupt window",
    reason: FR.SM_INTERRUPT_ADDRESS,
    config: S,
    scalable: true,
    setup: (r, d) => {
      scalableSs(r, d).pt.map(0x5000, 0xfee01000, 1, 3n);
      return { dma: r.unit.addEndpoint(SID), iova: 0x5000 };
    },
  },
];

for (const c of cases) {
  test(`fault 0x${c.reason.toString(16)}: ${c.name}`, () => {
    const r = rig({ config: c.config });
    const d = r.driver;
    d.setRootTable(c.scalable);
    const { dma, iova, access = ACCESS_READ, pasid } = c.setup(r, d);
    d.setPersistent(GCMD.TE, true);
    const buf = new Uint8Array(4);
    const f = access === ACCESS_WRITE ? dma.write(iova, buf) : dma.read(iova, buf);
    assert.ok(f !== null, "DMA must fault");
    assert.equal(f.code, c.reason, `engine fault carries reason 0x${f.code.toString(16)}`);
    const rec = decodeFrcd(frcd(r.unit, 0));
    assert.equal(rec.f, true);
    assert.equal(rec.reason, c.reason);
    assert.equal(rec.sid, dma.endpointId % 65536);
    assert.equal(rec.address, BigInt(iova - (iova % 4096)));
    assert.equal(rec.read, access === ACCESS_READ);
    assert.equal(rec.at, 0);
    assert.equal(rec.pp, pasid !== undefined);
    if (pasid !== undefined) assert.equal(rec.pasid, pasid);
    assert.ok(r.unit.read(REG.FSTS, 4) & 2, "PPF set");
  });
}

test("FPD in the context entry suppresses recording of qualified faults (VT-d 7.1.2)", () => {
  const r = rig();
  r.driver.setRootTable(false);
  const pt = new PageTable(r.memory, r.alloc, 4);
  r.driver.setLegacyContext(SID, { did: 1, slptptr: pt.root, fpd: true });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(0x5000, 4), -1);
  assert.equal(r.unit.read(REG.FSTS, 4), 0);
  assert.equal(r.unit.stats().faults.suppressedByFpd, 1);
});

test("FPD in the PASID entry suppresses recording of second-stage faults", () => {
  const r = rig({ config: S });
  r.driver.setRootTable(true);
  const pt = new PageTable(r.memory, r.alloc, 4);
  const dir = r.driver.setScalableContext(SID);
  r.driver.setPasidEntry(dir, 0, { pgtt: 2, did: 1, slptptr: pt.root, fpd: true });
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  assert.equal(dma.readUint(0x5000, 4), -1);
  assert.equal(r.unit.read(REG.FSTS, 4), 0);
});

test("faults with a non-present context are recorded even when nothing says FPD", () => {
  const r = rig();
  r.driver.setRootTable(false);
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  dma.readUint(0, 4);
  assert.equal(decodeFrcd(frcd(r.unit, 0)).reason, FR.ROOT_NOT_PRESENT);
});

test("an IOVA at or above 2^53 is an address-width fault (engine limit, documented)", () => {
  const r = rig();
  r.driver.setRootTable(false);
  legacy(r, r.driver);
  r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  const out = {
    iovaBase: 0,
    gpaBase: 0,
    sizeBytes: 0,
    perms: 0,
    set() {
      return this;
    },
    covers() {
      return false;
    },
  };
  const f = r.unit.translate(SID, 2 ** 60, ACCESS_READ, out as never);
  assert.equal(f?.code, FR.ADDRESS_BEYOND_MGAW);
  assert.equal(decodeFrcd(frcd(r.unit, 0)).address, 1n << 60n);
});

test("a request without PASID to input 0xFEEx_xxxx is an interrupt request, never DMA (VT-d 3.14)", () => {
  const r = rig();
  r.driver.setRootTable(false);
  const pt = legacy(r, r.driver);
  // A 1 GiB leaf covering the interrupt window maps it like any other memory.
  pt.map(0xc0000000, 0x0, 3, PageTable.ss(true, true));
  const dma = r.unit.addEndpoint(SID);
  r.driver.setPersistent(GCMD.TE, true);
  r.memory.writeU32(0x1000, 5);
  assert.equal(dma.readUint(0xc0001000, 4), 5);
  // The block handed to the address space must not cover the window (its one-entry cache).
  assert.equal(dma.readUint(0xfee00000, 4), -1);
  assert.equal(dma.lastFault?.code, FR.INTERRUPT_ADDRESS);
  const rec = decodeFrcd(frcd(r.unit, 0));
  assert.equal(rec.reason, FR.INTERRUPT_ADDRESS);
  assert.equal(rec.address, 0xfee00000n);
  // Pages next to the window still translate through the same superpage, 4 KiB at a time.
  const out = new Translation();
  assert.equal(r.unit.translate(SID, 0xfef00010, ACCESS_READ, out), null);
  assert.deepEqual([out.iovaBase, out.gpaBase, out.sizeBytes], [0xfef00000, 0x3ef00000, 4096]);
  assert.equal(r.unit.translate(SID, 0xc0001000, ACCESS_READ, out), null);
  // The 1 GiB block contains the window, so it is handed out 4 KiB at a time everywhere.
  assert.deepEqual([out.iovaBase, out.gpaBase, out.sizeBytes], [0xc0001000, 0x1000, 4096]);
});
