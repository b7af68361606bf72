import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { readIntoViews, writeFromViews } from "../../src/devices/vectored-io.ts";

function withFile(content: Uint8Array, body: (fd: number, path: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "vectored-io-"));
  const path = join(dir, "f.bin");
  writeFileSync(path, content);
  const fd = openSync(path, "r+");
  try {
    body(fd, path);
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `count` views of `size` bytes scattered over one buffer (every other slot, in reverse order). */
function scattered(count: number, size: number): { views: Uint8Array[]; backing: Uint8Array } {
  const backing = new Uint8Array(2 * count * size).fill(0xee);
  const views: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const slot = 2 * (count - 1 - i) + 1;
    views.push(backing.subarray(slot * size, slot * size + size));
  }
  return { views, backing };
}

test("readIntoViews fills scattered views in order from the position, across more than IOV_MAX views", () => {
  const file = new Uint8Array(3000 * 16).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
  withFile(file, (fd) => {
    const { views, backing } = scattered(2500, 16);
    readIntoViews(fd, views, 160);
    const got = Buffer.concat(views);
    assert.deepEqual(new Uint8Array(got), file.subarray(160, 160 + 2500 * 16));
    // The bytes between the views are untouched.
    for (let i = 0; i < 2500; i++) assert.equal(backing[2 * i * 16], 0xee);
  });
});

test("readIntoViews: bytes past the end of the file read as zeroes (a file that shrank)", () => {
  const file = new Uint8Array(100).fill(0x5a);
  withFile(file, (fd) => {
    const { views } = scattered(4, 64);
    readIntoViews(fd, views, 10);
    const got = new Uint8Array(Buffer.concat(views));
    assert.ok(got.subarray(0, 90).every((b) => b === 0x5a));
    assert.ok(got.subarray(90).every((b) => b === 0));
  });
});

test("writeFromViews writes scattered views in order at the position, across more than IOV_MAX views", () => {
  withFile(new Uint8Array(64 * 1024), (fd, path) => {
    const { views } = scattered(1500, 8);
    for (const [i, v] of views.entries()) v.fill(i & 0xff);
    writeFromViews(fd, views, 1000);
    const after = readFileSync(path);
    for (let i = 0; i < 1500; i++) {
      assert.ok(
        after.subarray(1000 + 8 * i, 1008 + 8 * i).every((b) => b === (i & 0xff)),
        `view ${i}`,
      );
    }
    assert.ok(after.subarray(0, 1000).every((b) => b === 0));
    assert.ok(after.subarray(1000 + 1500 * 8).every((b) => b === 0));
  });
});
