/**
 * Translation through the shared IOTLB (tag = domain ID) and honest invalidation: no stale
 * translation survives the UNMAP, DETACH, ATTACH, bypass change or reset that removed it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE } from "../../src/engine/access.ts";
import { Iotlb } from "../../src/engine/iotlb.ts";
import { Translation } from "../../src/engine/translation.ts";
import { ATTACH_F_BYPASS } from "../../src/virtio-iommu/wire.ts";
import { attach, detach, makeRig, map, unmap } from "./driver.ts";

test("translation: a miss fills the IOTLB with the largest page that fits; later misses of the one-entry cache hit it", () => {
  const iotlb = new Iotlb(64);
  const { dev } = makeRig({ iotlb }, [8]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x20_0000, 0x3f_ffff, 0x40_0000), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x7000), "OK");
  const space = dev.endpointSpace(8)!;
  const t = new Translation();
  assert.equal(space.translate(0x20_1234, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x20_1234 - t.iovaBase), 0x40_1234);
  assert.equal(space.translate(0x1010, ACCESS_WRITE, t), null);
  assert.equal(t.gpaBase, 0x7000);
  assert.equal(iotlb.entries, 2);
  assert.equal(space.translate(0x3f_fff0, ACCESS_WRITE, t), null);
  assert.equal(iotlb.stats().hits, 1, "the 2 MiB page served the third translation");
});

test("translation: UNMAP invalidates the IOTLB and the endpoints' caches at once", () => {
  const { dev } = makeRig({}, [8, 9]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 1, 9), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x7000), "OK");
  const t = new Translation();
  for (const ep of [8, 9]) assert.equal(dev.endpointSpace(ep)!.translate(0x1000, ACCESS_READ, t), null);
  assert.equal(unmap(dev, 1, 0x1000, 0x1fff), "OK");
  for (const ep of [8, 9])
    assert.equal(dev.endpointSpace(ep)!.translate(0x1000, ACCESS_READ, t)?.reason, "unmapped");
  assert.equal(dev.iotlb.entries, 0);
});

test("translation: a remap at the same IOVA is seen immediately (no stale gpa)", () => {
  const { dev, memory } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  memory.view(0x7000, 1)[0] = 0xaa;
  memory.view(0x9000, 1)[0] = 0xbb;
  const space = dev.endpointSpace(8)!;
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x7000), "OK");
  assert.equal(space.readUint(0x1000, 1), 0xaa);
  assert.equal(unmap(dev, 1, 0x1000, 0x1fff), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x9000), "OK");
  assert.equal(space.readUint(0x1000, 1), 0xbb);
});

test("translation: domain death clears its IOTLB entries; a reused domain ID starts empty", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0, 0x1f_ffff, 0), "OK");
  const space = dev.endpointSpace(8)!;
  assert.equal(space.readUint(0x1000, 1), 0);
  assert.ok(dev.iotlb.entries > 0);
  assert.equal(detach(dev, 1, 8), "OK");
  assert.equal(dev.iotlb.entries, 0);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(space.readUint(0x1000, 1), -1);
});

test("translation: moving to a bypass domain and back changes translations immediately", () => {
  const { dev } = makeRig({}, [8]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x8000), "OK");
  const t = new Translation();
  const space = dev.endpointSpace(8)!;
  assert.equal(space.translate(0x1000, ACCESS_READ, t), null);
  assert.equal(t.gpaBase, 0x8000);
  assert.equal(attach(dev, 2, 8, ATTACH_F_BYPASS), "OK");
  assert.equal(space.translate(0x1000, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x1000 - t.iovaBase), 0x1000, "identity");
  assert.equal(attach(dev, 3, 8), "OK");
  assert.equal(space.translate(0x1000, ACCESS_READ, t)?.reason, "unmapped");
  assert.ok(dev.stats().bypassTranslations >= 1);
});

test("translation: an IOTLB capacity smaller than the working set still translates exactly", () => {
  const iotlb = new Iotlb(8);
  const { dev, memory } = makeRig({ iotlb });
  assert.equal(attach(dev, 1, 8), "OK");
  for (let i = 0; i < 64; i++) {
    assert.equal(map(dev, 1, i * 0x1000, i * 0x1000 + 0xfff, (63 - i) * 0x1000), "OK");
    memory.view((63 - i) * 0x1000, 1)[0] = i;
  }
  const space = dev.endpointSpace(8)!;
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 64; i++) assert.equal(space.readUint(i * 0x1000, 1), i);
  }
  assert.ok(iotlb.stats().evictions > 0);
  assert.ok(iotlb.entries <= 8);
});
