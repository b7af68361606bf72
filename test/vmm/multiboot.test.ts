import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { ImageError } from "../../src/vmm/elf.ts";
import { E820_RAM, E820_RESERVED, e820Bytes, e820Map, ramLayout } from "../../src/vmm/x86/layout.ts";
import { findMultibootHeader, loadMultiboot, MB_INFO_GPA } from "../../src/vmm/x86/multiboot.ts";

const MiB = 1 << 20;

/** An a.out-kludge image: header at file offset 0 describing a load at 1 MiB. */
function kludgeImage(opts: { bssEnd?: number; flags?: number; checksumDelta?: number } = {}): Uint8Array {
  const img = new Uint8Array(0x40);
  const v = new DataView(img.buffer);
  const flags = opts.flags ?? 0x00010003;
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, (-(0x1badb002 + flags) + (opts.checksumDelta ?? 0)) >>> 0, true);
  v.setUint32(12, 0x100000, true); // header_addr
  v.setUint32(16, 0x100000, true); // load_addr
  v.setUint32(20, 0x100040, true); // load_end_addr
  v.setUint32(24, opts.bssEnd ?? 0x101000, true); // bss_end_addr
  v.setUint32(28, 0x100020, true); // entry_addr
  img.fill(0x90, 0x20, 0x40);
  return img;
}

function memory(sizeBytes = 16 * MiB) {
  const layout = ramLayout(sizeBytes);
  const mem = GuestMemory.anonymous(layout.regions.map((r) => ({ gpa: r.gpa, sizeBytes: r.sizeBytes })));
  return { mem, map: e820Map(layout) };
}

test("multiboot header: found 4-byte aligned in the first 8 KiB only with a valid checksum", () => {
  assert.notEqual(findMultibootHeader(kludgeImage()), null);
  assert.equal(findMultibootHeader(kludgeImage({ checksumDelta: 1 })), null);
  const late = new Uint8Array(8192 + 64);
  late.set(kludgeImage(), 8192);
  assert.equal(findMultibootHeader(late), null);
});

test("a.out kludge: loads [load_addr, load_end_addr) from the header's file offset, zeroes bss, enters at entry_addr", () => {
  const { mem, map } = memory();
  mem.fill(0x100040, 0x1000, 0xee);
  const boot = loadMultiboot(mem, kludgeImage(), { cmdline: "", modules: [], memoryMap: map });
  assert.equal(boot.loadedBy, "aout-kludge");
  assert.equal(boot.entry, 0x100020);
  assert.equal(mem.readU32(0x100000), 0x1badb002);
  assert.equal(mem.readU8(0x100020), 0x90);
  assert.equal(mem.readU8(0x100040), 0, "bss zeroed");
  assert.equal(mem.readU8(0x100fff), 0);
  assert.equal(boot.kernelEnd, 0x101000);
});

test("boot information: flags, mem_lower/mem_upper in KiB, memory map entries with size 20, cmdline, loader name", () => {
  const { mem, map } = memory(16 * MiB);
  loadMultiboot(mem, kludgeImage(), { cmdline: "console=ttyS0 x", modules: [], memoryMap: map });
  const info = MB_INFO_GPA;
  const flags = mem.readU32(info);
  assert.equal(flags & 0x24d, 0x24d, "mem, cmdline, mods, mmap, loader name");
  assert.equal(mem.readU32(info + 4), 639, "mem_lower: below the EBDA");
  assert.equal(mem.readU32(info + 8), 15 * 1024, "mem_upper: 1 MiB .. 16 MiB");
  const str = (gpa: number) => {
    let s = "";
    for (let a = gpa; mem.readU8(a) !== 0; a++) s += String.fromCharCode(mem.readU8(a));
    return s;
  };
  assert.equal(str(mem.readU32(info + 16)), "console=ttyS0 x");
  assert.equal(str(mem.readU32(info + 64)), "viommu");
  const len = mem.readU32(info + 44);
  const addr = mem.readU32(info + 48);
  assert.equal(len, map.length * 24);
  const entries = [];
  for (let o = addr; o < addr + len; o += mem.readU32(o) + 4) {
    entries.push({
      size: mem.readU32(o),
      base: Number(mem.readU64(o + 4)),
      len: Number(mem.readU64(o + 12)),
      type: mem.readU32(o + 20),
    });
  }
  assert.ok(entries.every((e) => e.size === 20));
  assert.deepEqual(
    entries.map((e) => [e.base, e.len, e.type]),
    [
      [0, 0x9fc00, E820_RAM],
      [0x9fc00, 0x400, E820_RESERVED],
      [0xf0000, 0x10000, E820_RESERVED],
      [MiB, 15 * MiB, E820_RAM],
    ],
  );
});

test("modules: page-aligned after the kernel, with their command lines", () => {
  const { mem, map } = memory();
  const boot = loadMultiboot(mem, kludgeImage(), {
    cmdline: "k",
    modules: [
      { data: new Uint8Array([1, 2, 3]), cmdline: "mod1 a=b" },
      { data: new Uint8Array(5000).fill(4), cmdline: "mod2" },
    ],
    memoryMap: map,
  });
  assert.equal(mem.readU32(MB_INFO_GPA + 20), 2);
  const mods = mem.readU32(MB_INFO_GPA + 24);
  assert.equal(mem.readU32(mods), 0x101000);
  assert.equal(mem.readU32(mods + 4), 0x101003);
  assert.equal(mem.readU32(mods + 16), 0x102000);
  assert.equal(mem.readU32(mods + 20), 0x102000 + 5000);
  assert.equal(mem.readU8(0x102000 + 4999), 4);
  assert.equal(boot.modules.length, 2);
});

test("unsupported requirement bits in the header are refused", () => {
  const { mem, map } = memory();
  assert.throws(
    () =>
      loadMultiboot(mem, kludgeImage({ flags: 0x00010008 }), { cmdline: "", modules: [], memoryMap: map }),
    ImageError,
  );
});

test("a kernel that does not fit in RAM is refused, not loaded partially", () => {
  const { mem, map } = memory(16 * MiB);
  assert.throws(
    () =>
      loadMultiboot(mem, kludgeImage({ bssEnd: 0x2000000 }), { cmdline: "", modules: [], memoryMap: map }),
    /not inside guest RAM/,
  );
});

test("ELF kernels load by program headers (the built-in guest links at 1 MiB)", async () => {
  const { builtinGuestImage } = await import("../../src/vmm/x86/builtin-guest.ts");
  const { mem, map } = memory();
  const boot = loadMultiboot(mem, builtinGuestImage(), { cmdline: "", modules: [], memoryMap: map });
  assert.equal(boot.loadedBy, "elf");
  assert.equal(boot.kernelStart, 0x100000);
  assert.equal(mem.readU32(0x100000), 0x1badb002);
  assert.ok(boot.entry > 0x100000 && boot.entry < boot.kernelEnd);
});

test("non-multiboot images are refused with a reason", () => {
  const { mem, map } = memory();
  assert.throws(
    () => loadMultiboot(mem, new Uint8Array(4096), { cmdline: "", modules: [], memoryMap: map }),
    /no multiboot header/,
  );
});

test("etc/e820 bytes: packed 20-byte entries, little-endian", () => {
  const bytes = e820Bytes([{ gpa: 0x100000, sizeBytes: 0x200000, type: 1 }]);
  assert.equal(bytes.length, 20);
  const v = new DataView(bytes.buffer);
  assert.equal(v.getBigUint64(0, true), 0x100000n);
  assert.equal(v.getBigUint64(8, true), 0x200000n);
  assert.equal(v.getUint32(16, true), 1);
});

test("RAM above 3 GiB continues at 4 GiB, leaving the 32-bit MMIO hole", () => {
  const layout = ramLayout(4 * 1024 * MiB);
  assert.deepEqual(
    layout.regions.map((r) => [r.gpa, r.sizeBytes]),
    [
      [0, 0xc0000000],
      [0x1_0000_0000, 0x40000000],
    ],
  );
});
