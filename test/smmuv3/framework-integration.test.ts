import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ } from "../../src/engine/access.ts";
import { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import type { TraceEvent } from "../../src/engine/trace.ts";
import { Translation } from "../../src/engine/translation.ts";
import { EVT } from "../../src/smmuv3/events.ts";
import { attachS1, cmd, makeFixture, s1Attrs } from "./harness.ts";

test("hot-unplug: a released StreamID stops translating at once, even from the fast path", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const pt = attachS1(fx, 8);
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  const dma = new DmaAddressSpace(fx.memory, fx.smmu, 8);
  assert.equal(dma.readUint(0x1000, 4), 0);
  assert.ok(fx.registry.release("psmmu0", fx.viommu, 8));
  assert.equal(dma.readUint(0x1000, 4), -1);
  assert.equal(dma.lastFault?.code, EVT.C_BAD_STREAMID);
  // The freed pSID can go to another guest's vIOMMU on the same physical SMMU.
  const other = fx.registry.createViommu("guest1", "psmmu0", null);
  assert.ok(other.ok && fx.registry.assign("psmmu0", other.value, 8, 0x1008, "assigned", "nic").ok);
});

test("guest faults reach the framework's fault listeners with the endpoint", () => {
  const fx = makeFixture();
  fx.driver.probe();
  attachS1(fx, 9);
  const heard: string[] = [];
  fx.viommu.onFault((ep, f) => heard.push(`${ep.name}:${f.code}`));
  fx.smmu.translate(9, 0x5000, ACCESS_READ, new Translation());
  assert.deepEqual(heard, [`dev9:${EVT.F_TRANSLATION}`]);
  assert.equal(fx.viommu.stats().guestFaults, 1);
});

test("trace events name every invalidation, configuration change and fault", () => {
  const fx = makeFixture();
  const seen: TraceEvent[] = [];
  fx.tracer.listen((e) => seen.push(e));
  fx.driver.probe();
  attachS1(fx, 8);
  fx.driver.submit([cmd.tlbiNhVa(0, 1, 0x1000)]);
  fx.smmu.translate(8, 0x1000, ACCESS_READ, new Translation());
  const names = new Set(seen.map((e) => `${e.category}/${e.name}`));
  for (const want of [
    "config/cr0",
    "irq/irq_ctrl",
    "invalidate/cfgi_ste",
    "invalidate/tlbi_nh_va",
    "fault/f_translation",
  ]) {
    assert.ok(names.has(want), `missing ${want}: ${[...names].join(", ")}`);
  }
  assert.ok(seen.every((e) => e.source === "smmuv3"));
});

test("stats(): counters for translations, IOTLB hits and misses, commands and faults", () => {
  const fx = makeFixture();
  fx.driver.probe();
  const pt = attachS1(fx, 8);
  pt.map(0x1000, 0x20_0000, 3, s1Attrs());
  const t = new Translation();
  fx.smmu.translate(8, 0x1000, ACCESS_READ, t);
  fx.smmu.translate(8, 0x1008, ACCESS_READ, t);
  fx.smmu.translate(8, 0x9000, ACCESS_READ, t);
  const s = fx.smmu.stats();
  assert.equal(s.translations, 3);
  assert.equal(s.iotlb.hits, 1);
  assert.equal(s.iotlb.misses, 2, "a fast-path miss is not counted twice");
  assert.equal(s.faults.F_TRANSLATION, 1);
  assert.equal(s.commands.CFGI_STE, 1);
  assert.ok(s.steCache.hits >= 1 && s.cdCache.misses >= 1);
});
