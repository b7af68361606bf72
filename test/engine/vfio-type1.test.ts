import assert from "node:assert/strict";
import { test } from "node:test";
import { PERM_READ, PERM_RW } from "../../src/engine/access.ts";
import { VFIO_DEFAULT_DMA_ENTRY_LIMIT, VfioType1Container } from "../../src/engine/host-iommu.ts";

const K4 = 0x1000;
const M2 = 0x200000;

test("default dma_entry_limit is Linux's U16_MAX and ENOSPC past it", () => {
  assert.equal(VFIO_DEFAULT_DMA_ENTRY_LIMIT, 65535);
  const c = new VfioType1Container({ dmaEntryLimit: 3 });
  for (let i = 0; i < 3; i++) assert.equal(c.map(i * K4, i * K4, K4, PERM_RW).ok, true);
  const r = c.map(10 * K4, 0, K4, PERM_RW);
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.errno, "ENOSPC");
  assert.equal(c.stats().refused.ENOSPC, 1);
});

test("with 4 KiB mappings a 256 MiB guest already exhausts the default limit", () => {
  const c = new VfioType1Container();
  const pages = (256 * 1024 * 1024) / K4;
  let refusedAt = -1;
  for (let i = 0; i < pages; i++) {
    if (!c.map(i * K4, i * K4, K4, PERM_RW).ok) {
      refusedAt = i;
      break;
    }
  }
  assert.equal(refusedAt, 65535);
  assert.equal(c.entryCount, 65535);
  // The same 256 MiB in 2 MiB mappings takes 128 entries.
  const huge = new VfioType1Container();
  for (let i = 0; i < (256 * 1024 * 1024) / M2; i++)
    assert.equal(huge.map(i * M2, i * M2, M2, PERM_RW).ok, true);
  assert.equal(huge.entryCount, 128);
  assert.equal(huge.mappedBytes, 256 * 1024 * 1024);
});

test("map: zero size, misalignment and no permission are EINVAL; overlap is EEXIST", () => {
  const c = new VfioType1Container();
  const errno = (r: ReturnType<typeof c.map>) => (r.ok ? "ok" : r.errno);
  assert.equal(errno(c.map(0, 0, 0, PERM_RW)), "EINVAL");
  assert.equal(errno(c.map(0x800, 0, K4, PERM_RW)), "EINVAL");
  assert.equal(errno(c.map(0, 0x800, K4, PERM_RW)), "EINVAL");
  assert.equal(errno(c.map(0, 0, K4 + 1, PERM_RW)), "EINVAL");
  assert.equal(errno(c.map(0, 0, K4, 0)), "EINVAL");
  assert.equal(errno(c.map(K4, 0, 2 * K4, PERM_READ)), "ok");
  assert.equal(errno(c.map(2 * K4, 0, K4, PERM_RW)), "EEXIST");
  assert.equal(errno(c.map(0, 0, 2 * K4, PERM_RW)), "EEXIST");
  assert.equal(c.entryCount, 1);
});

test("unmap may not split an entry at either end (type1 v2) and removes nothing then", () => {
  const c = new VfioType1Container();
  assert.ok(c.map(0x10000, 0, 0x4000, PERM_RW).ok);
  const head = c.unmap(0x11000, 0x3000);
  assert.equal(!head.ok && head.errno, "EINVAL");
  const tail = c.unmap(0x10000, 0x1000);
  assert.equal(!tail.ok && tail.errno, "EINVAL");
  assert.equal(c.entryCount, 1);
});

test("unmap covering several entries and holes removes all of them and reports the bytes", () => {
  const c = new VfioType1Container();
  assert.ok(c.map(0x0, 0x0, 0x1000, PERM_RW).ok);
  assert.ok(c.map(0x3000, 0x3000, 0x2000, PERM_RW).ok);
  assert.ok(c.map(0x9000, 0x9000, 0x1000, PERM_RW).ok);
  const r = c.unmap(0x0, 0x6000);
  assert.deepEqual(r, { ok: true, bytes: 0x3000 });
  assert.equal(c.entryCount, 1);
  assert.deepEqual(
    c.unmap(0x20000, 0x1000),
    { ok: true, bytes: 0 },
    "unmapping nothing succeeds with 0 bytes",
  );
  assert.equal(c.lookup(0x9abc)?.gpa, 0x9000);
  assert.equal(c.unmapAll().ok, true);
  assert.equal(c.entryCount, 0);
  assert.equal(c.mappedBytes, 0);
});
