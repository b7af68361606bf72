import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE, dmaFault, PERM_READ, PERM_RW } from "../../src/engine/access.ts";
import { VfioType1Container } from "../../src/engine/host-iommu.ts";
import { Translation } from "../../src/engine/translation.ts";
import { HostStage2 } from "../../src/framework/host-stage2.ts";
import { ViommuRegistry } from "../../src/framework/registry.ts";
import { RecordingBackend } from "../../src/framework/viommu.ts";

function registry(): { reg: ViommuRegistry; a: RecordingBackend; b: RecordingBackend } {
  const reg = new ViommuRegistry();
  const a = new RecordingBackend("smmu-a");
  const b = new RecordingBackend("smmu-b");
  assert.ok(reg.registerPhysical({ id: "smmu-a", backend: a, idBits: 16, vmidCount: 4 }).ok);
  assert.ok(reg.registerPhysical({ id: "smmu-b", backend: b, idBits: 16, vmidCount: 4 }).ok);
  return { reg, a, b };
}

test("a physical IOMMU registers once", () => {
  const { reg, a } = registry();
  assert.equal(reg.registerPhysical({ id: "smmu-a", backend: a, idBits: 16, vmidCount: 4 }).ok, false);
  assert.equal(reg.physicalIommus().length, 2);
});

test("one vIOMMU per physical IOMMU per guest", () => {
  const { reg } = registry();
  assert.ok(reg.createViommu("g1", "smmu-a", null).ok);
  assert.equal(reg.createViommu("g1", "smmu-a", null).ok, false);
  assert.ok(reg.createViommu("g1", "smmu-b", null).ok, "a second physical IOMMU gets its own instance");
  assert.equal(reg.createViommu("g1", "smmu-x", null).ok, false);
});

test("each vIOMMU gets its own host VMID on its physical IOMMU; VMID 0 stays with the host", () => {
  const { reg } = registry();
  const vmids = ["g1", "g2", "g3"].map((g) => {
    const r = reg.createViommu(g, "smmu-a", null);
    assert.ok(r.ok);
    return r.value.hostVmid;
  });
  assert.deepEqual(vmids, [1, 2, 3]);
  assert.equal(reg.createViommu("g4", "smmu-a", null).ok, false, "VMIDs exhausted");
  const g2 = reg.instances("smmu-a").find((i) => i.guestId === "g2");
  assert.ok(g2 !== undefined && reg.destroyViommu("smmu-a", g2));
  const again = reg.createViommu("g4", "smmu-a", null);
  assert.ok(again.ok && again.value.hostVmid === 2);
});

test("vSID -> pSID tables are per instance: the same vSID maps to different pSIDs per physical IOMMU", () => {
  const { reg } = registry();
  const ia = reg.createViommu("g1", "smmu-a", null);
  const ib = reg.createViommu("g1", "smmu-b", null);
  assert.ok(ia.ok && ib.ok);
  assert.ok(reg.assign("smmu-a", ia.value, 8, 0x100, "assigned", "nic").ok);
  assert.ok(reg.assign("smmu-b", ib.value, 8, 0x200, "assigned", "gpu").ok);
  assert.equal(ia.value.endpoint(8)?.pId, 0x100);
  assert.equal(ib.value.endpoint(8)?.pId, 0x200);
  assert.equal(ia.value.endpoint(9), undefined);
});

test("a physical ID belongs to at most one guest; release frees it", () => {
  const { reg } = registry();
  const g1 = reg.createViommu("g1", "smmu-a", null);
  const g2 = reg.createViommu("g2", "smmu-a", null);
  assert.ok(g1.ok && g2.ok);
  assert.ok(reg.assign("smmu-a", g1.value, 1, 0x42, "assigned", "dev").ok);
  const stolen = reg.assign("smmu-a", g2.value, 1, 0x42, "assigned", "dev");
  assert.equal(stolen.ok, false);
  assert.equal(reg.assign("smmu-a", g1.value, 1, 0x43, "assigned", "dup").ok, false, "vSID reused");
  assert.ok(reg.release("smmu-a", g1.value, 1));
  assert.ok(reg.assign("smmu-a", g2.value, 1, 0x42, "assigned", "dev").ok);
});

test("IDs outside the physical IOMMU's width are refused", () => {
  const { reg } = registry();
  const g = reg.createViommu("g1", "smmu-a", null);
  assert.ok(g.ok);
  assert.equal(reg.assign("smmu-a", g.value, 1, 1 << 16, "assigned", "x").ok, false);
  assert.equal(reg.assign("smmu-a", g.value, -1, 1, "assigned", "x").ok, false);
  assert.equal(reg.assign("smmu-a", g.value, 1.5, 1, "assigned", "x").ok, false);
  assert.equal(reg.assign("smmu-b", g.value, 1, 1, "assigned", "x").ok, false, "instance of another IOMMU");
});

test("forwarded invalidations, violations and faults reach the backend and are counted", () => {
  const { reg, a } = registry();
  const r = reg.createViommu("g1", "smmu-a", null);
  assert.ok(r.ok);
  const inst = r.value;
  const ep = reg.assign("smmu-a", inst, 3, 0x33, "assigned", "nvme");
  assert.ok(ep.ok);
  const heard: string[] = [];
  inst.onFault((e, f) => heard.push(`${e.name}:${f.reason}`));
  inst.forward({ scope: "asid", asid: 5 });
  inst.forward({ scope: "all" });
  inst.violation(77, "CFGI_STE");
  inst.hostFault(ep.value, dmaFault("unmapped", 3, 0x1000, ACCESS_READ));
  inst.guestFault(ep.value, dmaFault("permission", 3, 0x2000, ACCESS_WRITE));
  assert.equal(a.invalidationCount, 2);
  assert.equal(a.invalidations[0].hostVmid, inst.hostVmid);
  assert.equal(a.violations[0].vId, 77);
  assert.equal(a.hostFaultCount, 1);
  assert.deepEqual(heard, ["nvme:unmapped", "nvme:permission"]);
  const s = inst.stats();
  assert.equal(s.forwardedInvalidations.asid, 1);
  assert.equal(s.forwardedInvalidations.all, 1);
  assert.equal(s.violations, 1);
  assert.equal(s.hostFaults, 1);
  assert.equal(s.guestFaults, 1);
});

test("RecordingBackend keeps bounded lists but exact counts", () => {
  const b = new RecordingBackend("x", 4);
  for (let i = 0; i < 10; i++) b.forwardInvalidation(1, { scope: "asid", asid: i });
  assert.equal(b.invalidations.length, 4);
  assert.equal(b.invalidationCount, 10);
  assert.deepEqual(b.invalidations[0].inv, { scope: "asid", asid: 6 });
});

test("host stage 2: translates IPA -> PA per host entry, refuses unmapped IPAs and forbidden accesses", () => {
  const hs2 = new HostStage2(new VfioType1Container());
  assert.ok(hs2.map(0x10_0000, 0x80_0000, 0x2_0000, PERM_RW).ok);
  assert.ok(hs2.map(0x20_0000, 0x90_0000, 0x1000, PERM_READ).ok);
  const t = new Translation();
  assert.equal(hs2.translate(1, 0x10_1234, ACCESS_READ, t), null);
  assert.equal(t.gpaBase + (0x10_1234 - t.iovaBase), 0x80_1234);
  assert.equal(hs2.translate(1, 0x30_0000, ACCESS_READ, t)?.reason, "unmapped");
  assert.equal(hs2.translate(1, 0x20_0000, ACCESS_WRITE, t)?.reason, "permission");
  assert.equal(hs2.stats().faults, 2);
});

test("host stage 2: an unmap bumps the epoch and tells every listener; a refused unmap does not", () => {
  const hs2 = new HostStage2(new VfioType1Container());
  hs2.map(0, 0, 0x4000, PERM_RW);
  const seen: number[] = [];
  const off = hs2.onUnmap((ipa, size) => seen.push(ipa, size));
  assert.equal(hs2.unmap(0x1000, 0x1000).ok, false, "type1 refuses to split an entry");
  assert.equal(hs2.epoch, 0);
  assert.ok(hs2.unmap(0, 0x4000).ok);
  assert.equal(hs2.epoch, 1);
  assert.deepEqual(seen, [0, 0x4000]);
  off();
  hs2.map(0, 0, 0x1000, PERM_RW);
  hs2.unmap(0, 0x1000);
  assert.equal(seen.length, 2);
});

test("a model that refuses an endpoint recorded before it was bound is not bound, and what it built is undone", () => {
  const { reg } = registry();
  const r = reg.createViommu<string, undefined>("g1", "smmu-a", null);
  assert.ok(r.ok);
  const inst = r.value;
  assert.ok(reg.assign("smmu-a", inst, 1, 0x10, "emulated", "ok").ok);
  assert.ok(reg.assign("smmu-a", inst, 2, 0x20, "emulated", "refused").ok);
  const undone: number[] = [];
  const model = {
    modelName: "test",
    plugEndpoint(e: { vId: number; name: string }) {
      if (e.name === "refused") throw new Error("cannot serve it");
      return { space: null as never, state: `state ${e.vId}` };
    },
    unplugEndpoint(e: { vId: number }) {
      undone.push(e.vId);
    },
  };
  assert.throws(() => inst.bindModel(model), /cannot serve it/);
  assert.deepEqual(undone, [1]);
  assert.equal(inst.states.size, 0);
  assert.equal(inst.space(1), undefined);
  // Still unbound: a model that serves both binds.
  inst.bindModel({
    ...model,
    plugEndpoint: (e: { vId: number }) => ({ space: null as never, state: `s${e.vId}` }),
  });
  assert.equal(inst.states.get(2), "s2");
});
