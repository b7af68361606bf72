import assert from "node:assert/strict";
import { test } from "node:test";
import { parseBzImage } from "../../src/boot/bzimage.ts";
import { buildMemoryMap, E820_TYPE, MIB } from "../../src/boot/e820.ts";
import { buildZeroPage, chooseInitrdGpa, ZERO_PAGE_SIZE } from "../../src/boot/zero-page.ts";
import { syntheticBzImage } from "./fixtures.ts";
import { realVmlinuz } from "./kernel-files.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("zero-page.rst: header copied, loader ID, cmdline, ramdisk, e820 and RSDP at their offsets", () => {
  const image = syntheticBzImage();
  const kernel = parseBzImage(image);
  const e820 = buildMemoryMap({ ramSizeBytes: 512 * MIB }).entries;
  const page = buildZeroPage({
    kernel,
    cmdlineGpa: 0x20000,
    cmdlineLengthBytes: 30,
    initrd: { gpa: 0x1f00_0000, sizeBytes: 0x12_3456 },
    e820,
    acpiRsdpGpa: 0xe0000,
  });
  assert.equal(page.length, ZERO_PAGE_SIZE);
  const v = new DataView(page.buffer);
  // The setup header [0x1F1, 0x268) is the image's, but for the fields the loader fills in.
  const expectedHeader = image.slice(0x1f1, 0x268);
  expectedHeader[0x210 - 0x1f1] = 0xff;
  new DataView(expectedHeader.buffer).setUint32(0x218 - 0x1f1, 0x1f00_0000, true);
  new DataView(expectedHeader.buffer).setUint32(0x21c - 0x1f1, 0x12_3456, true);
  new DataView(expectedHeader.buffer).setUint32(0x228 - 0x1f1, 0x20000, true);
  assert.equal(hex(page.subarray(0x1f1, 0x268)), hex(expectedHeader));
  assert.ok(
    page.subarray(0x268, 0x2d0).every((b) => b === 0),
    "nothing copied past the header end",
  );
  assert.equal(v.getBigUint64(0x070, true), 0xe0000n); // acpi_rsdp_addr
  assert.equal(v.getUint32(0x0c0, true), 0); // ext_ramdisk_image
  assert.equal(v.getUint32(0x0c8, true), 0); // ext_cmd_line_ptr
  assert.equal(page[0x1ef], 0, "sentinel stays zero");
  assert.equal(page[0x1e8], 3); // e820_entries
  // e820_table @0x2D0: {addr u64, size u64, type u32} x 3
  assert.equal(
    hex(page.subarray(0x2d0, 0x2d0 + 60)),
    [
      "0000000000000000 00fc090000000000 01000000",
      "00fc090000000000 0004060000000000 02000000",
      "0000100000000000 0000f01f00000000 01000000",
    ]
      .join("")
      .replace(/\s+/g, ""),
  );
  assert.ok(page.subarray(0x2d0 + 60).every((b) => b === 0));
});

test("zero page: addresses above 4 GiB go to the ext_ fields", () => {
  const kernel = parseBzImage(syntheticBzImage());
  const page = buildZeroPage({
    kernel,
    cmdlineGpa: 0x1_2345_6000,
    cmdlineLengthBytes: 1,
    initrd: { gpa: 0x2_0000_0000, sizeBytes: 0x1_0000_1000 },
    e820: [],
  });
  const v = new DataView(page.buffer);
  assert.equal(v.getUint32(0x228, true), 0x2345_6000);
  assert.equal(v.getUint32(0x0c8, true), 1);
  assert.equal(v.getUint32(0x218, true), 0);
  assert.equal(v.getUint32(0x0c0, true), 2);
  assert.equal(v.getUint32(0x21c, true), 0x1000);
  assert.equal(v.getUint32(0x0c4, true), 1);
  assert.equal(v.getBigUint64(0x070, true), 0n, "no RSDP address: Linux scans the BIOS area");
});

test("zero page: a command line longer than cmdline_size and more than 128 e820 entries are refused", () => {
  const kernel = parseBzImage(syntheticBzImage());
  assert.throws(
    () => buildZeroPage({ kernel, cmdlineGpa: 0x20000, cmdlineLengthBytes: 0x800, e820: [] }),
    /cmdline_size/,
  );
  const many = Array.from({ length: 129 }, (_, i) => ({
    gpa: i * 0x2000,
    sizeBytes: 0x1000,
    type: E820_TYPE.ram,
  }));
  assert.throws(
    () => buildZeroPage({ kernel, cmdlineGpa: 0x20000, cmdlineLengthBytes: 1, e820: many }),
    /128/,
  );
});

test("initrd placement: highest page-aligned RAM below initrd_addr_max, above the kernel's init_size", () => {
  const kernel = parseBzImage(syntheticBzImage());
  const e820 = buildMemoryMap({ ramSizeBytes: 512 * MIB }).entries;
  const gpa = chooseInitrdGpa(kernel, 0x100000, 5 * MIB + 7, e820);
  assert.equal(gpa, 512 * MIB - 5 * MIB - 4096); // 5 MiB + 7 bytes rounds down to the page below
  assert.equal(gpa % 4096, 0);
  // 48 MiB of RAM: the kernel runs at 16 MiB and needs 32 MiB (init_size): nothing left.
  assert.throws(() =>
    chooseInitrdGpa(kernel, 0x100000, MIB, buildMemoryMap({ ramSizeBytes: 48 * MIB }).entries),
  );
});

const vmlinuz = realVmlinuz();
test("zero page from the real Debian kernel: the whole setup header is carried over", {
  skip: vmlinuz.skip,
}, () => {
  const kernel = parseBzImage(vmlinuz.bytes!);
  const page = buildZeroPage({ kernel, cmdlineGpa: 0x20000, cmdlineLengthBytes: 100, e820: [] });
  assert.equal(kernel.header.headerEnd, 0x202 + vmlinuz.bytes![0x201]);
  assert.equal(hex(page.subarray(0x202, 0x206)), "48647253"); // "HdrS"
  assert.equal(hex(page.subarray(0x260, 0x264)), hex(vmlinuz.bytes!.subarray(0x260, 0x264))); // init_size
  assert.equal(page[0x210], 0xff);
});
