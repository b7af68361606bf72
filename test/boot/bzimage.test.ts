import assert from "node:assert/strict";
import { test } from "node:test";
import {
  BzImageError,
  HEADER_OFFSET,
  kernelRuntimeStartGpa,
  parseBzImage,
  XLOADFLAGS,
} from "../../src/boot/bzimage.ts";
import { syntheticBzImage } from "./fixtures.ts";
import { realVmlinuz } from "./kernel-files.ts";

test("boot.rst setup header: the fields a 64-bit loader needs are parsed", () => {
  const k = parseBzImage(syntheticBzImage());
  assert.deepEqual(k.header, {
    version: 0x020f,
    setupSects: 3,
    loadflags: 1,
    xloadflags: 3,
    initrdAddrMax: 0x7fffffff,
    kernelAlignment: 0x200000,
    relocatable: true,
    cmdlineSize: 0x7ff,
    payloadOffset: 0x100,
    payloadLengthBytes: 0x400,
    prefAddress: 0x1000000,
    initSizeBytes: 0x2000000,
    headerEnd: 0x268,
  });
  assert.equal(k.protectedModeKernel.length, 0x800);
  assert.ok(
    k.protectedModeKernel.every((b) => b === 0xcc),
    "kernel starts at (setup_sects + 1) * 512",
  );
});

test("boot.rst: setup_sects 0 means 4", () => {
  const image = new Uint8Array(5 * 512 + 0x800);
  image.set(syntheticBzImage().subarray(0, 0x300));
  image[0x1f1] = 0;
  assert.equal(parseBzImage(image).header.setupSects, 4);
  assert.equal(parseBzImage(image).protectedModeKernel.length, 0x800);
});

test("boot.rst: images without HdrS, older than 2.12, without XLF_KERNEL_64 or LOADED_HIGH are refused", () => {
  const cases: [string, (i: Uint8Array) => void, RegExp][] = [
    [
      "no HdrS",
      (i) => {
        i[0x202] = 0;
      },
      /HdrS/,
    ],
    [
      "boot flag",
      (i) => {
        i[0x1fe] = 0;
      },
      /0xAA55/,
    ],
    [
      "protocol 2.11",
      (i) => {
        new DataView(i.buffer).setUint16(HEADER_OFFSET.version, 0x020b, true);
      },
      /2\.12/,
    ],
    [
      "32-bit only",
      (i) => {
        i[HEADER_OFFSET.xloadflags] &= ~XLOADFLAGS.KERNEL_64;
      },
      /XLF_KERNEL_64/,
    ],
    [
      "zImage",
      (i) => {
        i[HEADER_OFFSET.loadflags] = 0;
      },
      /LOADED_HIGH/,
    ],
    [
      "alignment",
      (i) => {
        new DataView(i.buffer).setUint32(HEADER_OFFSET.kernelAlignment, 0x300000, true);
      },
      /power of two/,
    ],
    [
      "payload",
      (i) => {
        new DataView(i.buffer).setUint32(HEADER_OFFSET.payloadLength, 0x10000, true);
      },
      /payload/,
    ],
  ];
  for (const [what, corrupt, message] of cases) {
    const image = syntheticBzImage();
    corrupt(image);
    assert.throws(
      () => parseBzImage(image),
      (e: unknown) => e instanceof BzImageError && message.test(e.message),
      what,
    );
  }
  assert.throws(() => parseBzImage(new Uint8Array(100)), BzImageError);
});

test("head_64.S: a relocatable kernel runs at max(align_up(load, kernel_alignment), pref_address)", () => {
  const h = parseBzImage(syntheticBzImage()).header;
  assert.equal(kernelRuntimeStartGpa(h, 0x100000), 0x1000000);
  assert.equal(kernelRuntimeStartGpa(h, 0x2100000), 0x2200000);
  assert.equal(kernelRuntimeStartGpa({ ...h, relocatable: false }, 0x2100000), 0x1000000);
});

const vmlinuz = realVmlinuz();
test("the real Debian 6.12 bzImage parses: protocol 2.15, 64-bit entry, relocatable", {
  skip: vmlinuz.skip,
}, () => {
  const k = parseBzImage(vmlinuz.bytes!);
  assert.ok(k.header.version >= 0x020f, `protocol ${k.header.version.toString(16)}`);
  assert.ok((k.header.xloadflags & XLOADFLAGS.KERNEL_64) !== 0);
  assert.equal(k.header.relocatable, true);
  assert.equal(k.header.kernelAlignment, 0x200000);
  assert.equal(k.header.prefAddress, 0x1000000); // CONFIG_PHYSICAL_START
  assert.ok(k.header.initSizeBytes > k.protectedModeKernel.length);
  assert.ok(k.header.cmdlineSize >= 2047);
  // The payload is the compressed vmlinux: Debian uses xz (FD 37 7A 58 5A 00) or zstd (28 B5 2F FD).
  const payload = k.protectedModeKernel.subarray(k.header.payloadOffset, k.header.payloadOffset + 6);
  const magic = Buffer.from(payload).toString("hex");
  assert.ok(
    magic.startsWith("fd377a585a00") || magic.startsWith("28b52ffd") || magic.startsWith("1f8b"),
    magic,
  );
});
