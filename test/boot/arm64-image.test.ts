import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { Arm64ImageError, isArm64Image, parseArm64Image, planArm64Boot } from "../../src/boot/arm64-image.ts";

const MIB = 1024 * 1024;

function image(opts: {
  textOffset?: number;
  imageSize?: number;
  flags?: number;
  magic?: number;
  length?: number;
}): Uint8Array {
  const b = new Uint8Array(opts.length ?? 4096);
  const v = new DataView(b.buffer);
  v.setBigUint64(8, BigInt(opts.textOffset ?? 0), true);
  v.setBigUint64(16, BigInt(opts.imageSize ?? 32 * MIB), true);
  v.setBigUint64(24, BigInt(opts.flags ?? 0xa), true);
  v.setUint32(56, opts.magic ?? 0x644d5241, true);
  return b;
}

test("arm64 Image header (booting.rst): magic at 56, text_offset, image_size, flags", () => {
  const h = parseArm64Image(image({ textOffset: 0, imageSize: 37 * MIB, flags: 0xa }));
  assert.deepEqual(h, {
    textOffset: 0,
    imageSizeBytes: 37 * MIB,
    bigEndian: false,
    pageSizeKiB: 4,
    loadAnywhere: true,
  });
});

test("arm64 Image: image_size 0 is a pre-3.17 kernel with text_offset 0x80000 (booting.rst)", () => {
  const h = parseArm64Image(image({ textOffset: 0x1234, imageSize: 0 }));
  assert.equal(h.textOffset, 0x80000);
  assert.equal(h.imageSizeBytes, 4096);
});

test("arm64 Image: not an Image, big-endian, or text_offset beyond 2 MiB is refused in one line", () => {
  assert.equal(isArm64Image(new Uint8Array(10)), false);
  assert.throws(() => parseArm64Image(image({ magic: 0x12345678 })), /not an arm64 Linux Image/);
  assert.throws(() => parseArm64Image(image({ flags: 1 })), Arm64ImageError);
  assert.throws(() => parseArm64Image(image({ textOffset: 2 * MIB })), Arm64ImageError);
});

test("arm64 boot plan: Image 2 MiB-aligned + text_offset, initrd after it, DTB 2 MiB-aligned in the last 2 MiB", () => {
  const h = parseArm64Image(image({ textOffset: 0x80000, imageSize: 37 * MIB }));
  const p = planArm64Boot(h, { baseGpa: 0x4000_0000, sizeBytes: 512 * MIB }, 3 * MIB, 4096);
  assert.equal(p.kernelGpa, 0x4008_0000);
  assert.equal(p.kernelEndGpa, 0x4008_0000 + 37 * MIB);
  assert.equal(p.initrdGpa! % (2 * MIB), 0);
  assert.ok(p.initrdGpa! >= p.kernelEndGpa);
  assert.equal(p.dtbGpa, 0x4000_0000 + 510 * MIB);
  assert.throws(
    () => planArm64Boot(h, { baseGpa: 0x4000_0000, sizeBytes: 40 * MIB }, 3 * MIB, 4096),
    /too small/,
  );
  assert.throws(
    () => planArm64Boot(h, { baseGpa: 0x4000_0000, sizeBytes: 512 * MIB }, 0, 3 * MIB),
    /exceeds 2 MiB/,
  );
});

test("arm64 Image: the lab's Debian 6.12 kernel parses (LE, 4K pages, load anywhere)", (t) => {
  const path = join(
    process.env.VIOMMU_CACHE || join(homedir(), ".cache", "viommu"),
    "arm64",
    "kernel",
    "Image",
  );
  if (!existsSync(path)) {
    t.skip(`SKIPPED: arm64 lab kernel missing (${path}): run tools/provision/arm64.sh`);
    return;
  }
  const h = parseArm64Image(readFileSync(path));
  assert.equal(h.bigEndian, false);
  assert.equal(h.pageSizeKiB, 4);
  assert.equal(h.loadAnywhere, true);
  assert.ok(h.imageSizeBytes > 16 * MIB);
});
