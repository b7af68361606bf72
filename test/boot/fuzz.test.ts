/**
 * Seeded corruption of the synthetic images: the parsers either accept an image or refuse it with
 * their own error class (BzImageError, ElfError); never a stray TypeError or an out-of-bounds read.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { BzImageError, parseBzImage } from "../../src/boot/bzimage.ts";
import { ElfError, elfLoadPlan, parseElf64 } from "../../src/boot/elf.ts";
import { findPvhEntry } from "../../src/boot/pvh.ts";
import { syntheticBzImage, syntheticVmlinux } from "./fixtures.ts";

/** xorshift32: reproducible corruption. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function mutate(image: Uint8Array, next: () => number, hotStart: number, hotEnd: number): Uint8Array {
  const out = image.slice(0, next() % 8 === 0 ? next() % image.length : image.length);
  const flips = 1 + (next() % 6);
  for (let i = 0; i < flips && out.length > 0; i++) {
    // Mostly inside the headers, where the parsers look.
    const at = next() % 4 === 0 ? next() % out.length : hotStart + (next() % (hotEnd - hotStart));
    if (at < out.length) out[at] = next() & 0xff;
  }
  return out;
}

test("fuzz: corrupted bzImages are accepted or refused with BzImageError", () => {
  const next = rng(0x5eed);
  const base = syntheticBzImage();
  let refused = 0;
  for (let i = 0; i < 3000; i++) {
    const image = mutate(base, next, 0x1f1, 0x268);
    try {
      parseBzImage(image);
    } catch (e) {
      assert.ok(e instanceof BzImageError, `case ${i}: ${String(e)}`);
      refused++;
    }
  }
  assert.ok(refused > 100 && refused < 3000, `refused ${refused}`);
});

test("fuzz: corrupted ELF images are accepted or refused with ElfError", () => {
  const next = rng(0xe1f);
  const base = syntheticVmlinux();
  let refused = 0;
  for (let i = 0; i < 3000; i++) {
    const image = mutate(base, next, 0, 0x260);
    try {
      const elf = parseElf64(image);
      findPvhEntry(elf);
      elfLoadPlan(elf);
    } catch (e) {
      assert.ok(e instanceof ElfError, `case ${i}: ${String(e)}`);
      refused++;
    }
  }
  assert.ok(refused > 100 && refused < 3000, `refused ${refused}`);
});
