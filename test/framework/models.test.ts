/**
 * The generic vIOMMU layer drives every model the same way: one registry, one endpoint table
 * per guest vIOMMU, one place to plug and unplug. Each test runs the same steps against
 * virtio-iommu, VT-d and SMMUv3, each the backend of a vIOMMU on its own physical IOMMU of ONE
 * registry; only the guest's programming and the model's architected fault report differ.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { DmaFault } from "../../src/engine/access.ts";
import type { DmaAddressSpace } from "../../src/engine/dma-space.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { VfioType1Container } from "../../src/engine/host-iommu.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { ViommuRegistry } from "../../src/framework/registry.ts";
import {
  type Endpoint,
  type EndpointKind,
  RecordingBackend,
  type RegistryResult,
  type ViommuInstance,
} from "../../src/framework/viommu.ts";
import { IoBus } from "../../src/platform/bus.ts";
import { RecordingInterruptSink } from "../../src/platform/interrupts.ts";
import { SMMU_FRAME_BYTES } from "../../src/smmuv3/regs.ts";
import { SmmuV3 } from "../../src/smmuv3/smmu.ts";
import type {
  Endpoint as VirtioEndpoint,
  VirtioIommuEndpointOptions,
} from "../../src/virtio-iommu/endpoints.ts";
import { decodeFaultRecord } from "../../src/virtio-iommu/fault-events.ts";
import type { EndpointOptions, EndpointState } from "../../src/vtd/options.ts";
import { GCMD } from "../../src/vtd/registers.ts";
import type { VtdUnit } from "../../src/vtd/vtd.ts";
import {
  attachS1,
  type Fixture,
  LinuxLikeDriver,
  PageAllocator,
  SMMU_BASE,
  RAM_BYTES as SMMU_RAM_BYTES,
  s1Attrs,
} from "../smmuv3/harness.ts";
import { attach, makeRig, map } from "../virtio-iommu/driver.ts";
import { D, decodeFrcd, frcd, PageTable, rig } from "../vtd/guest.ts";

const IOVA = 0x4000;
const GPA = 0x20_0000;
const UNMAPPED_IOVA = 0x9000;

/** A guest-visible fault record, decoded the model's way. */
interface GuestRecord {
  readonly vId: number;
  readonly address: number;
}

/** One model behind one vIOMMU instance of the shared registry. */
interface ModelRig {
  readonly name: string;
  readonly physicalId: string;
  readonly instance: ViommuInstance<unknown, unknown>;
  readonly memory: GuestMemory;
  /** Plugs `vId` through the registry; `host`: the host IOMMU of an assigned device, if the model has one. */
  plug(vId: number, pId: number, kind: EndpointKind, host?: VfioType1Container): RegistryResult<Endpoint>;
  /** Whether an assigned endpoint has a host IOMMU the model keeps in step. */
  readonly mirrorsHost: boolean;
  /** The guest attaches `vId` and maps IOVA -> GPA (one 4 KiB page, read/write), its model's way. */
  mapPage(vId: number): void;
  /** Every fault record the guest has been given so far. */
  guestRecords(): GuestRecord[];
  /** What DMA of an unplugged endpoint's old address space gets. */
  readonly afterUnplug: "fault" | "translates";
  /** A plug of `vId` the model refuses for a reason of its own (null: its plugs take no options). */
  readonly refusedPlug: ((vId: number, pId: number) => RegistryResult<Endpoint>) | null;
}

function virtioRig(registry: ViommuRegistry, physicalId: string): ModelRig {
  const created = registry.createViommu<VirtioEndpoint, VirtioIommuEndpointOptions>(
    "guest",
    physicalId,
    null,
  );
  assert.ok(created.ok);
  const inst = created.value;
  const { memory, dev } = makeRig({ viommu: inst }, []);
  const records: GuestRecord[] = [];
  return {
    name: "virtio-iommu",
    physicalId,
    instance: inst,
    memory,
    mirrorsHost: true,
    plug: (vId, pId, kind, host) =>
      registry.plug(physicalId, inst, { vId, pId, kind, options: host === undefined ? {} : { host } }),
    mapPage(vId) {
      assert.equal(attach(dev, vId, vId), "OK");
      assert.equal(map(dev, vId, IOVA, IOVA + 0xfff, GPA), "OK");
    },
    guestRecords() {
      // VIRTIO 1.3 5.13.6.9: struct virtio_iommu_fault on the event queue.
      for (let r = dev.takeEvent(); r !== undefined; r = dev.takeEvent()) {
        const f = decodeFaultRecord(r);
        records.push({ vId: f.endpointId, address: Number(f.address) });
      }
      return records;
    },
    afterUnplug: "fault",
    refusedPlug(vId, pId) {
      // One host IOMMU (VFIO container) serves one endpoint.
      const host = new VfioType1Container();
      assert.ok(registry.plug(physicalId, inst, { vId: vId + 1, pId: pId + 1, options: { host } }).ok);
      return registry.plug(physicalId, inst, { vId, pId, kind: "assigned", options: { host } });
    },
  };
}

function vtdRig(registry: ViommuRegistry, physicalId: string): ModelRig {
  const created = registry.createViommu<EndpointState, EndpointOptions>("guest", physicalId, null);
  assert.ok(created.ok);
  const inst = created.value;
  const r = rig({ config: "caching-mode=on", viommu: inst });
  const unit: VtdUnit = r.unit;
  r.driver.enableQueuedInvalidation();
  r.driver.setRootTable(false);
  r.driver.setPersistent(GCMD.TE, true);
  return {
    name: "vt-d",
    physicalId,
    instance: inst,
    memory: r.memory,
    mirrorsHost: true,
    plug: (vId, pId, kind, host) =>
      registry.plug(physicalId, inst, { vId, pId, kind, options: host === undefined ? {} : { host } }),
    mapPage(vId) {
      const pt = new PageTable(r.memory, r.alloc, 4);
      pt.map(IOVA, GPA, 1, PageTable.ss(true, true));
      r.driver.setLegacyContext(vId, { did: vId, slptptr: pt.root });
      // Caching mode: the guest invalidates after making an entry present (VT-d 6.1).
      assert.ok(r.driver.submitAndWait([D.contextDevice(vId, vId), D.iotlbDomain(vId)]));
    },
    guestRecords() {
      // VT-d 10.4.14: the fault recording registers.
      const out: GuestRecord[] = [];
      for (let i = 0; i < 4; i++) {
        const f = decodeFrcd(frcd(unit, i));
        if (f.f) out.push({ vId: f.sid, address: Number(f.address) });
      }
      return out;
    },
    // VT-d has no notion of a removed requester: its tables decide (vtd.ts removeEndpoint).
    afterUnplug: "translates",
    // A device-TLB needs device-iotlb=on.
    refusedPlug: (vId, pId) =>
      registry.plug(physicalId, inst, { vId, pId, options: { ats: { invalidate: () => {} } } }),
  };
}

function smmuRig(registry: ViommuRegistry, physicalId: string, backend: RecordingBackend): ModelRig {
  const created = registry.createViommu("guest", physicalId, null);
  assert.ok(created.ok);
  const viommu = created.value;
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: SMMU_RAM_BYTES, name: "ram" }]);
  const alloc = new PageAllocator(memory);
  const sink = new RecordingInterruptSink();
  const tracer = new Tracer();
  const smmu = new SmmuV3({ memory, viommu, interrupts: sink, tracer });
  const bus = new IoBus("mmio");
  bus.register(SMMU_BASE, SMMU_FRAME_BYTES, smmu, "smmuv3");
  const driver = new LinuxLikeDriver(bus, SMMU_BASE, memory, alloc);
  driver.probe();
  const fx: Fixture = { memory, alloc, registry, backend, viommu, smmu, sink, bus, driver, tracer };
  const records: GuestRecord[] = [];
  return {
    name: "smmuv3",
    physicalId,
    instance: viommu,
    memory,
    mirrorsHost: false,
    plug: (vId, pId, kind) => registry.plug(physicalId, viommu, { vId, pId, kind }),
    mapPage(vId) {
      const pt = attachS1(fx, vId, { asid: vId });
      pt.map(IOVA, GPA, 3, s1Attrs());
    },
    guestRecords() {
      // SMMUv3 7.3: event records in the event queue.
      for (const e of driver.drainEvents()) records.push({ vId: e.streamId, address: Number(e.inputAddr) });
      return records;
    },
    afterUnplug: "fault",
    refusedPlug: null,
  };
}

/** One registry, three physical IOMMUs, one guest vIOMMU on each, each backed by its model. */
function threeModels(): { registry: ViommuRegistry; rigs: ModelRig[] } {
  const registry = new ViommuRegistry();
  const backends = ["virtio0", "vtd0", "smmu0"].map((id) => {
    const backend = new RecordingBackend(id);
    assert.ok(registry.registerPhysical({ id, backend, idBits: 16, vmidCount: 16 }).ok);
    return backend;
  });
  const rigs = [
    virtioRig(registry, "virtio0"),
    vtdRig(registry, "vtd0"),
    smmuRig(registry, "smmu0", backends[2]!),
  ];
  return { registry, rigs };
}

function space(r: ModelRig, vId: number): DmaAddressSpace {
  const s = r.instance.space(vId);
  assert.ok(s !== undefined, `${r.name}: no address space for ${vId}`);
  return s;
}

test("every model: endpoints are plugged through the registry into the one endpoint table", () => {
  const { registry, rigs } = threeModels();
  for (const r of rigs) {
    const plugged = r.plug(0x10, 0x110, "emulated");
    assert.ok(plugged.ok, r.name);
    assert.deepEqual(r.instance.endpoint(0x10), plugged.value);
    assert.equal(r.instance.endpoint(0x10)?.pId, 0x110);
    assert.ok(r.instance.states.has(0x10), `${r.name}: the model's state lives in the framework's table`);
    assert.ok(r.instance.space(0x10) !== undefined);
    assert.equal(r.plug(0x10, 0x111, "emulated").ok, false, `${r.name}: vId reused`);
    assert.equal(r.plug(1 << 16, 0x112, "emulated").ok, false, `${r.name}: vId wider than the IOMMU's IDs`);
    assert.equal(r.instance.stats().plugs, 1);
    assert.deepEqual(
      r.instance.endpoints().map((e) => e.vId),
      [0x10],
    );
  }
  // Another guest on the same physical IOMMU cannot take a physical ID that is owned.
  for (const r of rigs) {
    const other = registry.createViommu("other", r.physicalId, null);
    assert.ok(other.ok);
    assert.equal(registry.assign(r.physicalId, other.value, 0x10, 0x110, "emulated", "x").ok, false, r.name);
  }
});

test("every model: after the guest attaches and maps, the endpoint's DMA reaches guest memory", () => {
  const { rigs } = threeModels();
  for (const r of rigs) {
    assert.ok(r.plug(0x18, 0x18, "emulated").ok);
    r.mapPage(0x18);
    r.memory.writeU32(GPA + 0x24, 0xc0ffee00 + rigs.indexOf(r));
    const dma = space(r, 0x18);
    assert.equal(dma.readUint(IOVA + 0x24, 4), 0xc0ffee00 + rigs.indexOf(r), r.name);
    assert.equal(dma.lastFault, null, r.name);
  }
});

test("every model: a DMA fault is reported the model's way, and the framework's listeners hear it", () => {
  const { rigs } = threeModels();
  for (const r of rigs) {
    assert.ok(r.plug(0x20, 0x20, "emulated").ok);
    r.mapPage(0x20);
    const heard: { endpoint: Endpoint; fault: DmaFault }[] = [];
    r.instance.onFault((endpoint, fault) => heard.push({ endpoint, fault }));
    const dma = space(r, 0x20);
    assert.equal(dma.readUint(UNMAPPED_IOVA, 4), -1, `${r.name}: unmapped IOVA`);
    // The engine's kind is the model's mapping of its reason (VT-d legacy mode has no "not
    // present": an entry with R=W=0 is a read-denied fault, so "permission").
    assert.ok(dma.lastFault !== null, r.name);
    // The guest's own report: virtio event, VT-d fault record, SMMU event record.
    const records = r.guestRecords();
    assert.equal(records.length, 1, r.name);
    assert.equal(records[0]!.vId, 0x20, r.name);
    assert.equal(records[0]!.address, UNMAPPED_IOVA, r.name);
    // And the generic layer's: the endpoint it came from, the same fault.
    assert.equal(heard.length, 1, r.name);
    assert.equal(heard[0]!.endpoint.vId, 0x20);
    assert.equal(heard[0]!.fault.iova, UNMAPPED_IOVA);
    assert.equal(r.instance.stats().guestFaults, 1, r.name);
  }
});

test("every model: unplug through the registry frees the IDs, empties the host IOMMU, and ends the endpoint", () => {
  const { registry, rigs } = threeModels();
  for (const r of rigs) {
    const host = r.mirrorsHost ? new VfioType1Container() : undefined;
    assert.ok(r.plug(0x28, 0x128, "assigned", host).ok, r.name);
    r.mapPage(0x28);
    const dma = space(r, 0x28);
    assert.equal(dma.readUint(IOVA, 4), 0, r.name);
    if (host !== undefined) assert.ok(host.mappedBytes > 0, `${r.name}: the host IOMMU mirrors the mapping`);

    assert.ok(registry.unplug(r.physicalId, r.instance, 0x28), r.name);
    assert.equal(registry.unplug(r.physicalId, r.instance, 0x28), false, `${r.name}: already gone`);
    assert.equal(r.instance.endpoint(0x28), undefined);
    assert.equal(r.instance.states.has(0x28), false);
    assert.equal(r.instance.space(0x28), undefined);
    assert.equal(r.instance.stats().unplugs, 1);
    if (host !== undefined) assert.equal(host.mappedBytes, 0, `${r.name}: the host IOMMU is emptied`);
    const after = dma.readUint(IOVA, 4);
    if (r.afterUnplug === "fault") assert.equal(after, -1, `${r.name}: DMA of an unplugged endpoint faults`);
    else assert.equal(after, 0, `${r.name}: DMA still follows the guest's tables`);
    // The physical ID is free for another guest's vIOMMU on the same physical IOMMU.
    const other = registry.createViommu("other", r.physicalId, null);
    assert.ok(
      other.ok && registry.assign(r.physicalId, other.value, 0x28, 0x128, "assigned", "x").ok,
      r.name,
    );
  }
});

test("every model: destroying the guest's vIOMMU unplugs its endpoints through the model", () => {
  const { registry, rigs } = threeModels();
  for (const r of rigs) {
    const host = r.mirrorsHost ? new VfioType1Container() : undefined;
    assert.ok(r.plug(0x30, 0x30, "assigned", host).ok, r.name);
    r.mapPage(0x30);
    assert.ok(registry.destroyViommu(r.physicalId, r.instance), r.name);
    assert.equal(r.instance.endpoints().length, 0, r.name);
    assert.equal(r.instance.states.size, 0, r.name);
    if (host !== undefined) assert.equal(host.mappedBytes, 0, `${r.name}: the host IOMMU is emptied`);
  }
});

test("every model: a plug the model refuses leaves the table and the physical IDs untouched", () => {
  const { registry, rigs } = threeModels();
  let refusals = 0;
  for (const r of rigs) {
    if (r.refusedPlug === null) continue;
    refusals++;
    const res = r.refusedPlug(0x40, 0x140);
    assert.equal(res.ok, false, r.name);
    assert.equal(r.instance.endpoint(0x40), undefined, r.name);
    assert.equal(r.instance.states.has(0x40), false, r.name);
    assert.equal(r.instance.stats().plugs, r.instance.endpoints().length, r.name);
    // pId 0x140 was never taken: another guest gets it.
    const other = registry.createViommu("other", r.physicalId, null);
    assert.ok(
      other.ok && registry.assign(r.physicalId, other.value, 0x40, 0x140, "emulated", "x").ok,
      r.name,
    );
  }
  assert.equal(refusals, 2, "virtio-iommu and VT-d have plug options to refuse; SMMUv3 has none");
});
