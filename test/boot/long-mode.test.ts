import assert from "node:assert/strict";
import { test } from "node:test";
import { GIB } from "../../src/boot/e820.ts";
import {
  BOOT_CS_SELECTOR,
  BOOT_DS_SELECTOR,
  identityPageTables,
  linux64EntryState,
} from "../../src/boot/long-mode.ts";
import { decodeDescriptor, GDT_ENTRY } from "../../src/boot/segments.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("SDM 4.5: identity map with 2 MiB pages: PML4E -> PDPT, PDPTE -> PD, PDE = address | PS | RW | P", () => {
  const t = identityPageTables(0x9000, 2 * GIB);
  assert.equal(t.bytes.length, 4 * 4096);
  const v = new DataView(t.bytes.buffer);
  assert.equal(v.getBigUint64(0, true), 0xa003n); // PML4[0] -> PDPT 0xA000, RW, P
  assert.equal(v.getBigUint64(8, true), 0n); // PML4[1] absent
  assert.equal(v.getBigUint64(4096, true), 0xb003n); // PDPT[0] -> PD 0xB000
  assert.equal(v.getBigUint64(4096 + 8, true), 0xc003n); // PDPT[1] -> PD 0xC000
  assert.equal(v.getBigUint64(4096 + 16, true), 0n);
  assert.equal(v.getBigUint64(2 * 4096, true), 0x83n); // PD0[0]: 0 MiB, PS | RW | P
  assert.equal(v.getBigUint64(2 * 4096 + 8, true), 0x200083n); // PD0[1]: 2 MiB
  assert.equal(v.getBigUint64(2 * 4096 + 511 * 8, true), 0x3fe00083n); // PD0[511]: 1022 MiB
  assert.equal(v.getBigUint64(3 * 4096, true), 0x40000083n); // PD1[0]: 1 GiB
  assert.throws(() => identityPageTables(0x9001, GIB));
  assert.throws(() => identityPageTables(0x9000, GIB + 1));
});

test("SDM 3.4.5: the flat descriptors decode to the segment state KVM needs", () => {
  assert.deepEqual(decodeDescriptor(GDT_ENTRY.code64, 0x10), {
    base: 0,
    limit: 0xffffffff,
    selector: 0x10,
    type: 0xb,
    s: true,
    dpl: 0,
    present: true,
    avl: false,
    l: true,
    db: false,
    g: true,
  });
  const data = decodeDescriptor(GDT_ENTRY.data, 0x18);
  assert.deepEqual([data.type, data.db, data.l, data.limit], [0x3, true, false, 0xffffffff]);
  const tss = decodeDescriptor(GDT_ENTRY.tss32Busy, 0x18);
  assert.deepEqual([tss.type, tss.s, tss.limit, tss.g, tss.present], [0xb, false, 0x67, false, true]);
  // base bits are scattered: base 0x12345678, limit 0xABCDE, G = 0
  const odd = decodeDescriptor(0x120a_9334_5678_bcden, 0);
  assert.deepEqual([odd.base.toString(16), odd.limit.toString(16), odd.g], ["12345678", "abcde", false]);
});

test("boot.rst 64-bit protocol: __BOOT_CS 0x10, __BOOT_DS 0x18, RSI = zero page, RIP = load + 0x200, paging on", () => {
  const s = linux64EntryState({
    kernelLoadGpa: 0x100000,
    kernelInitSizeBytes: 0x3800000,
    zeroPageGpa: 0x7000,
    cmdline: { gpa: 0x20000, sizeBytes: 2048 },
    gdtGpa: 0x500,
    pageTablesGpa: 0x9000,
    stackGpa: 0x8ff0,
  });
  assert.deepEqual(s.regs, { rip: 0x100200, rsi: 0x7000, rbx: 0, rsp: 0x8ff0, rflags: 2 });
  assert.equal(s.sregs.cs.selector, BOOT_CS_SELECTOR);
  assert.equal(s.sregs.cs.l, true);
  for (const seg of [s.sregs.ds, s.sregs.es, s.sregs.ss]) assert.equal(seg.selector, BOOT_DS_SELECTOR);
  assert.equal(s.sregs.cr0, 0x80000001); // PG | PE
  assert.equal(s.sregs.cr4, 0x20); // PAE
  assert.equal(s.sregs.efer, 0x500); // LME | LMA
  assert.equal(s.sregs.cr3, 0x9000);
  assert.deepEqual(s.sregs.gdt, { base: 0x500, limit: 31 });
  const gdt = s.memoryWrites.find((w) => w.what === "boot GDT")!;
  assert.equal(gdt.gpa, 0x500);
  // GDT: null, null, code64 (__BOOT_CS), data (__BOOT_DS)
  assert.equal(hex(gdt.bytes), `${"00".repeat(16)}ffff0000009baf00ffff00000093cf00`);
  const tables = s.memoryWrites.find((w) => w.gpa === 0x9000)!;
  assert.equal(tables.bytes.length, 3 * 4096);
});

test("boot.rst: the kernel's init_size, the zero page and the command line must be identity-mapped", () => {
  const base = { kernelLoadGpa: 0x100000, zeroPageGpa: 0x7000, gdtGpa: 0x500, pageTablesGpa: 0x9000 };
  assert.throws(() => linux64EntryState({ ...base, kernelInitSizeBytes: GIB }), /init_size/);
  assert.doesNotThrow(() =>
    linux64EntryState({ ...base, kernelInitSizeBytes: GIB, identityMapBytes: 2 * GIB }),
  );
  assert.throws(
    () => linux64EntryState({ ...base, kernelInitSizeBytes: 0x100000, cmdline: { gpa: GIB, sizeBytes: 1 } }),
    /command line/,
  );
  assert.throws(
    () => linux64EntryState({ ...base, kernelInitSizeBytes: 0x100000, gdtGpa: 0xa000 }),
    /overlaps/,
  );
});
