import assert from "node:assert/strict";
import { test } from "node:test";
import { buildMemoryMap, MIB } from "../../src/boot/e820.ts";
import { ElfError, elfLoadPlan, elfNotes, parseElf64 } from "../../src/boot/elf.ts";
import { buildStartInfo, findPvhEntry, HVM_START_MAGIC, pvhEntryState } from "../../src/boot/pvh.ts";
import { syntheticVmlinux } from "./fixtures.ts";
import { realVmlinux } from "./kernel-files.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("ELF64: program headers and the loading plan (p_paddr, file bytes, zero-filled tail)", () => {
  const elf = parseElf64(syntheticVmlinux());
  assert.equal(elf.programHeaders.length, 2);
  const plan = elfLoadPlan(elf);
  assert.equal(plan.length, 1);
  assert.equal(plan[0].gpa, 0x1000000);
  assert.equal(plan[0].bytes.length, 0x100);
  assert.equal(plan[0].memSizeBytes, 0x300);
  assert.ok(plan[0].bytes.every((b) => b === 0x90));
  assert.deepEqual(
    elfNotes(elf).map((n) => [n.name, n.type, n.desc.length]),
    [
      ["Linux", 6, 4],
      ["Xen", 18, 8],
    ],
  );
});

test("ELF64: malformed images are refused", () => {
  const bad = (corrupt: (f: Uint8Array, v: DataView) => void) => {
    const f = syntheticVmlinux();
    corrupt(f, new DataView(f.buffer));
    return () => parseElf64(f);
  };
  assert.throws(
    bad((f) => {
      f[0] = 0;
    }),
    ElfError,
  );
  assert.throws(
    bad((f) => {
      f[4] = 1;
    }),
    /ELFCLASS64/,
  );
  assert.throws(
    bad((_, v) => v.setUint16(18, 3, true)),
    /x86-64/,
  );
  assert.throws(
    bad((_, v) => v.setBigUint64(0x40 + 32, 0x10000n, true)),
    /past the file|p_filesz/,
  );
  assert.throws(
    bad((_, v) => v.setUint16(56, 1000, true)),
    /program headers/,
  );
});

test("XEN_ELFNOTE_PHYS32_ENTRY (type 18) gives the PVH entry; absent note means no PVH", () => {
  assert.equal(findPvhEntry(parseElf64(syntheticVmlinux())), 0x1000b20);
  assert.equal(findPvhEntry(parseElf64(syntheticVmlinux(null))), undefined);
  assert.throws(() => findPvhEntry(parseElf64(syntheticVmlinux(0x1_0000_0000n))), /32-bit/);
});

test("start_info.h: hvm_start_info v1, module list and memory map, golden bytes", () => {
  const memoryMap = buildMemoryMap({ ramSizeBytes: 256 * MIB }).entries;
  const block = buildStartInfo({
    startInfoGpa: 0x6000,
    cmdlineGpa: 0x20000,
    rsdpGpa: 0xe0000,
    memoryMap,
    modules: [{ gpa: 0x0f00_0000, sizeBytes: 0x80_0000 }],
  });
  assert.equal(block.modlistGpa, 0x6038);
  assert.equal(block.memmapGpa, 0x6058);
  const golden = [
    "78c56e33", // magic 0x336ec578
    "01000000", // version 1
    "00000000", // flags
    "01000000", // nr_modules 1
    "3860000000000000", // modlist_paddr 0x6038
    "0000020000000000", // cmdline_paddr 0x20000
    "00000e0000000000", // rsdp_paddr 0xE0000
    "5860000000000000", // memmap_paddr 0x6058
    "03000000", // memmap_entries 3
    "00000000", // reserved
    "0000000f00000000 0000800000000000 0000000000000000 0000000000000000", // module: initramfs, no cmdline
    "0000000000000000 00fc090000000000 01000000 00000000", // RAM [0, 0x9FC00)
    "00fc090000000000 0004060000000000 02000000 00000000", // reserved [0x9FC00, 1 MiB)
    "0000100000000000 0000f00f00000000 01000000 00000000", // RAM [1 MiB, 256 MiB)
  ];
  assert.equal(hex(block.bytes), golden.join("").replace(/\s+/g, ""));
  assert.equal(new DataView(block.bytes.buffer).getUint32(0, true), HVM_START_MAGIC);
  assert.throws(() => buildStartInfo({ startInfoGpa: 0x6004, cmdlineGpa: 0, rsdpGpa: 0, memoryMap: [] }));
});

test("PVH entry state: 32-bit flat protected mode, paging off, TR a 32-bit TSS, EBX = start_info", () => {
  const s = pvhEntryState({ entryGpa: 0x1000b20, startInfoGpa: 0x6000, gdtGpa: 0x500 });
  assert.equal(s.regs.rip, 0x1000b20);
  assert.equal(s.regs.rbx, 0x6000);
  assert.equal(s.regs.rflags & ((1 << 9) | (1 << 8) | (1 << 17)), 0, "IF, TF, VM clear");
  assert.equal(s.sregs.cr0, 1);
  assert.equal(s.sregs.cr4, 0);
  assert.equal(s.sregs.efer, 0);
  const cs = s.sregs.cs;
  assert.deepEqual([cs.base, cs.limit, cs.db, cs.l, cs.type & 0xa], [0, 0xffffffff, true, false, 0xa]);
  for (const seg of [s.sregs.ds, s.sregs.es, s.sregs.ss]) {
    assert.deepEqual([seg.base, seg.limit, seg.db, seg.type & 0xa], [0, 0xffffffff, true, 0x2]);
  }
  assert.deepEqual(
    [s.sregs.tr!.base, s.sregs.tr!.limit, s.sregs.tr!.type, s.sregs.tr!.s],
    [0, 0x67, 0xb, false],
  );
  assert.equal(
    hex(s.memoryWrites[0].bytes),
    `${"00".repeat(8)}ffff0000009bcf00ffff00000093cf0067000000008b0000`,
  );
  assert.throws(() => pvhEntryState({ entryGpa: 2 ** 32, startInfoGpa: 0, gdtGpa: 0 }));
});

const vmlinux = realVmlinux();
test("the real Debian 6.12 vmlinux carries the PVH entry note and loads at 16 MiB", {
  skip: vmlinux.skip,
}, () => {
  const elf = parseElf64(vmlinux.bytes!);
  const entry = findPvhEntry(elf);
  assert.ok(entry !== undefined, "XEN_ELFNOTE_PHYS32_ENTRY present (CONFIG_PVH=y)");
  const plan = elfLoadPlan(elf);
  assert.equal(plan[0].gpa, 0x1000000); // CONFIG_PHYSICAL_START
  const inText = plan.some((s) => entry >= s.gpa && entry < s.gpa + s.memSizeBytes);
  assert.ok(inText, `entry 0x${entry.toString(16)} inside a loaded segment`);
  for (const s of plan) assert.ok(s.gpa + s.memSizeBytes < 2 ** 32, "every segment below 4 GiB");
});
