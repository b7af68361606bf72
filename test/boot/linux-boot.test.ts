import assert from "node:assert/strict";
import { test } from "node:test";
import { layoutAcpiTables } from "../../src/acpi/layout.ts";
import { buildMemoryMap, GIB, MIB } from "../../src/boot/e820.ts";
import { planLinuxBoot } from "../../src/boot/linux-boot.ts";
import { HVM_START_MAGIC } from "../../src/boot/pvh.ts";
import { syntheticBzImage, syntheticVmlinux } from "./fixtures.ts";
import { realVmlinux, realVmlinuz } from "./kernel-files.ts";

const acpi = layoutAcpiTables({ apicIds: [0], dual8259Present: false }, { rsdpGpa: 0xe0000 });
const map = buildMemoryMap({ ramSizeBytes: 512 * MIB });
const base = { e820: map.entries, backedRanges: map.ramRegions, acpi, cmdline: "console=ttyS0 panic=-1" };
const initrd = new Uint8Array(3 * MIB + 5).fill(7);

function written(plan: ReturnType<typeof planLinuxBoot>, what: string) {
  const w = plan.memoryWrites.find((x) => x.what === what);
  assert.ok(w !== undefined, `a write named ${what}`);
  return w;
}

test("bzImage plan: kernel at 1 MiB, zero page with cmdline/initrd/RSDP, 64-bit entry at load + 0x200", () => {
  const plan = planLinuxBoot({ ...base, kernel: syntheticBzImage(), initrd });
  assert.equal(plan.protocol, "bzimage-64");
  assert.equal(written(plan, "kernel").gpa, 0x100000);
  assert.equal(written(plan, "kernel").bytes.length, 0x800);
  const cmdline = written(plan, "command line");
  assert.equal(Buffer.from(cmdline.bytes).toString("latin1"), "console=ttyS0 panic=-1\0");
  const zp = new DataView(written(plan, "zero page").bytes.buffer);
  assert.equal(zp.getUint32(0x228, true), 0x20000); // cmd_line_ptr
  assert.equal(zp.getUint32(0x218, true), plan.initrdGpa); // ramdisk_image
  assert.equal(zp.getUint32(0x21c, true), initrd.length); // ramdisk_size
  assert.equal(zp.getBigUint64(0x70, true), 0xe0000n); // acpi_rsdp_addr
  assert.equal(plan.initrdGpa! + initrd.length <= 512 * MIB, true);
  assert.deepEqual([plan.entry.regs.rip, plan.entry.regs.rsi], [0x100200, 0x7000]);
  assert.equal(written(plan, "ACPI RSD PTR").gpa, 0xe0000);
});

test("PVH plan: ELF segments at p_paddr, bss zero fill, start_info with the initrd module, EBX", () => {
  const plan = planLinuxBoot({ ...base, kernel: syntheticVmlinux(), initrd });
  assert.equal(plan.protocol, "pvh");
  const segment = written(plan, "kernel segment 0x1000000");
  assert.equal(segment.bytes.length, 0x100);
  assert.deepEqual(plan.zeroFills, [{ gpa: 0x1000100, sizeBytes: 0x200, what: "kernel bss" }]);
  const si = written(plan, "hvm_start_info");
  const v = new DataView(si.bytes.buffer);
  assert.equal(v.getUint32(0, true), HVM_START_MAGIC);
  assert.equal(v.getUint32(12, true), 1); // nr_modules
  assert.equal(Number(v.getBigUint64(56, true)), plan.initrdGpa); // modlist[0].paddr
  assert.equal(v.getBigUint64(32, true), 0xe0000n); // rsdp_paddr
  assert.equal(v.getUint32(48, true), map.entries.length); // memmap_entries
  assert.deepEqual([plan.entry.regs.rip, plan.entry.regs.rbx, plan.entry.sregs.cr0], [0x1000b20, 0x6000, 1]);
});

test("plans refuse overlaps, memory the VMM does not back, and kernels without an entry", () => {
  assert.throws(
    () => planLinuxBoot({ ...base, kernel: syntheticBzImage(), addresses: { cmdlineGpa: 0x7800 } }),
    /overlaps/,
  );
  assert.throws(
    () =>
      planLinuxBoot({
        ...base,
        kernel: syntheticBzImage(),
        backedRanges: [{ gpa: 0x100000, sizeBytes: GIB }],
      }),
    /outside guest memory/,
  );
  assert.throws(() => planLinuxBoot({ ...base, kernel: syntheticVmlinux(null) }), /PHYS32_ENTRY/);
  // 40 MiB of RAM: the synthetic kernel runs at 16 MiB and needs init_size = 32 MiB from there.
  const small = buildMemoryMap({ ramSizeBytes: 40 * MIB });
  assert.throws(
    () =>
      planLinuxBoot({
        ...base,
        e820: small.entries,
        backedRanges: small.ramRegions,
        kernel: syntheticBzImage(),
      }),
    /init_size/,
  );
  // ACPI tables placed inside the decompression area are refused.
  const clash = layoutAcpiTables({ apicIds: [0], dual8259Present: false }, { rsdpGpa: 0x1800000 });
  assert.throws(() => planLinuxBoot({ ...base, acpi: clash, kernel: syntheticBzImage() }), /decompresses/);
  assert.throws(() => planLinuxBoot({ ...base, kernel: syntheticBzImage(), cmdline: "a\u00e9" }), /ASCII/);
});

const vmlinuz = realVmlinuz();
test("a plan for the real Debian bzImage in 512 MiB", { skip: vmlinuz.skip }, () => {
  const plan = planLinuxBoot({ ...base, kernel: vmlinuz.bytes!, initrd });
  assert.equal(plan.entry.sregs.cr3, 0x9000);
  assert.ok(plan.initrdGpa! >= 0x1000000 + 0x3000000, "initrd above the decompressor's init_size");
});

const vmlinux = realVmlinux();
test("a PVH plan for the real Debian vmlinux in 512 MiB", { skip: vmlinux.skip }, () => {
  const plan = planLinuxBoot({ ...base, kernel: vmlinux.bytes!, initrd });
  assert.equal(plan.protocol, "pvh");
  assert.equal(plan.memoryWrites.filter((w) => w.what.startsWith("kernel segment")).length, 4);
  assert.ok(plan.entry.regs.rip > 0x1000000 && plan.entry.regs.rip < 0x2000000);
});
