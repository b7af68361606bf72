/**
 * The fault event queue: bounded depth, a per-endpoint limit on pending records (so one flooding
 * endpoint cannot hide the others' faults), counted drops, notification, reset; and the trace
 * events and statistics the device exposes.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { type TraceEvent, Tracer } from "../../src/engine/trace.ts";
import { decodeFaultRecord } from "../../src/virtio-iommu/fault-events.ts";
import { attach, makeRig, map, unmap } from "./driver.ts";

function fault(dev: ReturnType<typeof makeRig>["dev"], ep: number, iova: number): void {
  assert.notEqual(dev.endpointSpace(ep)!.read(iova, new Uint8Array(1)), null);
}

test("events: one endpoint is limited to its pending records; others still report", () => {
  const { dev } = makeRig({ maxPendingEventsPerEndpoint: 4, eventQueueDepth: 16 }, [1, 2]);
  let notified = 0;
  dev.onEvent = () => {
    notified++;
  };
  for (let i = 0; i < 100; i++) fault(dev, 1, i * 0x1000);
  fault(dev, 2, 0x5000);
  assert.equal(notified, 5);
  const s = dev.stats().events;
  assert.deepEqual([s.queued, s.pending, s.droppedEndpointLimit, s.droppedQueueFull], [5, 5, 96, 0]);
  const eps = [];
  for (let r = dev.takeEvent(); r !== undefined; r = dev.takeEvent())
    eps.push(decodeFaultRecord(r).endpointId);
  assert.deepEqual(eps, [1, 1, 1, 1, 2]);
  fault(dev, 1, 0x9000);
  assert.equal(dev.stats().events.pending, 1, "taking records lets the endpoint report again");
  assert.equal(dev.stats().faults.domain, 102, "every fault is counted, queued or not");
});

test("events: a token bucket limits each endpoint's report rate even when records are taken", () => {
  let now = 0;
  const { dev } = makeRig(
    { eventsPerSecondPerEndpoint: 10, eventBurstPerEndpoint: 2, clockMs: () => now },
    [1, 2],
  );
  const reported = () => {
    let n = 0;
    while (dev.takeEvent() !== undefined) n++;
    return n;
  };
  for (let i = 0; i < 5; i++) fault(dev, 1, 0x1000);
  assert.equal(reported(), 2, "the burst");
  fault(dev, 2, 0x1000);
  assert.equal(reported(), 1, "other endpoints have their own bucket");
  now = 100; // 100 ms at 10/s: one token
  fault(dev, 1, 0x1000);
  fault(dev, 1, 0x1000);
  assert.equal(reported(), 1);
  now = 10_000; // refills to the burst, not beyond
  for (let i = 0; i < 5; i++) fault(dev, 1, 0x1000);
  assert.equal(reported(), 2);
  const s = dev.stats();
  assert.equal(s.events.droppedRateLimit, 3 + 1 + 3);
  assert.equal(s.faults.domain, 13, "every fault is counted");
});

test("events: the queue depth bounds all endpoints together", () => {
  const { dev } = makeRig({ maxPendingEventsPerEndpoint: 8, eventQueueDepth: 10 }, [1, 2, 3]);
  for (const ep of [1, 2, 3]) for (let i = 0; i < 8; i++) fault(dev, ep, i * 0x1000);
  const s = dev.stats().events;
  assert.deepEqual([s.pending, s.droppedQueueFull], [10, 14]);
  dev.reset();
  assert.equal(dev.stats().events.pending, 0);
  assert.equal(dev.takeEvent(), undefined);
});

test("trace: map, unmap, attach and fault events carry their fields", () => {
  const tracer = new Tracer();
  const seen: TraceEvent[] = [];
  tracer.listen((e) => seen.push(e));
  const { dev } = makeRig({ tracer });
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x3000), "OK");
  assert.equal(unmap(dev, 1, 0x1000, 0x1fff), "OK");
  fault(dev, 8, 0x1000);
  const names = seen.map((e) => `${e.category}:${e.name}`);
  for (const n of ["attach:domain-create", "attach:attach", "map:map", "unmap:unmap", "fault:fault"]) {
    assert.ok(names.includes(n), n);
  }
  const m = seen.find((e) => e.name === "map")!;
  assert.deepEqual(m.fields, {
    domain: 1,
    iova: 0x1000,
    gpa: 0x3000,
    sizeBytes: 0x1000,
    perms: 3,
    mmio: false,
  });
  const f = seen.find((e) => e.name === "fault")!;
  assert.equal(f.fields.reason, "mapping");
  assert.equal(f.source, "virtio-iommu");
});

test("stats: requests by type and status, mappings, endpoints, IOTLB", () => {
  const { dev } = makeRig({}, [8, 9]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 1, 77), "NOENT");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "INVAL");
  assert.equal(dev.endpointSpace(8)!.readUint(0x1000, 1), 0);
  const s = dev.stats();
  assert.equal(s.requests.attach.OK, 1);
  assert.equal(s.requests.attach.NOENT, 1);
  assert.equal(s.requests.map.OK, 1);
  assert.equal(s.requests.map.INVAL, 1);
  assert.deepEqual([s.domains, s.endpoints, s.attachedEndpoints, s.mappings], [1, 2, 1, 1]);
  assert.equal(s.iotlb.misses, 1);
  assert.equal(s.internalErrors, 0);
});
