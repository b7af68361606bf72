/**
 * Host propagation: an endpoint added with a host IOMMU (a VFIO type1 container model) gets
 * every mapping change of its domain, replays on ATTACH, unmaps on DETACH and domain death, maps
 * identity in bypass mode, and a host refusal fails the request everywhere.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { type HostIommu, type HostResult, VfioType1Container } from "../../src/engine/host-iommu.ts";
import { VirtioIommu, type VirtioIommuOptions } from "../../src/virtio-iommu/device.ts";
import { ATTACH_F_BYPASS, MAP_F_READ } from "../../src/virtio-iommu/wire.ts";
import { attach, detach, map, unmap } from "./driver.ts";

const RAM = 64 << 20;

function rig(hosts: VfioType1Container[], options: VirtioIommuOptions = {}) {
  const memory = GuestMemory.anonymous([
    { gpa: 0, sizeBytes: RAM / 2 },
    { gpa: 0x1_0000_0000, sizeBytes: RAM / 2 },
  ]);
  const dev = new VirtioIommu(memory, options);
  for (const [i, host] of hosts.entries()) dev.addEndpoint(0x10 + i, { host });
  dev.addEndpoint(0x100); // an emulated endpoint
  dev.negotiate(dev.deviceFeatures);
  return { memory, dev };
}

function entries(h: VfioType1Container): string[] {
  return h
    .list()
    .map((e) => `${e.iova.toString(16)}->${e.gpa.toString(16)}+${e.sizeBytes.toString(16)}:${e.perms}`);
}

test("host: each MAP is one host entry (a 1 GiB mapping included); UNMAP removes it", () => {
  const h = new VfioType1Container();
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.equal(map(dev, 1, 0x4000_0000, 0x7fff_ffff, 0x1_0000_0000, 3), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x5000, MAP_F_READ), "OK");
  assert.deepEqual(entries(h), ["1000->5000+1000:1", "40000000->100000000+40000000:3"]);
  assert.equal(unmap(dev, 1, 0, 0xffff_ffff), "OK");
  assert.deepEqual(entries(h), []);
  assert.equal(dev.stats().host.maps, 2);
  assert.equal(dev.stats().host.unmaps, 2);
});

test("host: ATTACH replays the domain's mappings; moving the endpoint switches its container", () => {
  const h = new VfioType1Container();
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x100), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x2fff, 0x1000), "OK");
  assert.equal(attach(dev, 2, 0x100), "OK");
  assert.equal(map(dev, 2, 0x8000, 0x8fff, 0x3000), "OK");
  assert.equal(attach(dev, 2, 0x100), "OK");
  assert.equal(attach(dev, 1, 0x10), "OK", "domain 1 was destroyed when 0x100 moved: recreated empty");
  assert.deepEqual(entries(h), []);
  assert.equal(attach(dev, 2, 0x10), "OK");
  assert.deepEqual(entries(h), ["8000->3000+1000:3"]);
  assert.equal(map(dev, 2, 0x9000, 0x9fff, 0x4000), "OK");
  assert.deepEqual(entries(h), ["8000->3000+1000:3", "9000->4000+1000:3"]);
});

test("host: DETACH and domain death leave the container empty", () => {
  const h = new VfioType1Container();
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.equal(attach(dev, 1, 0x100), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x1000), "OK");
  assert.equal(detach(dev, 1, 0x10), "OK");
  assert.deepEqual(entries(h), []);
  assert.equal(map(dev, 1, 0x2000, 0x2fff, 0x1000), "OK", "domain lives on with 0x100");
  assert.deepEqual(entries(h), [], "a detached host gets nothing");
});

test("host: bypass mode maps guest RAM identity; leaving it unmaps it", () => {
  const h = new VfioType1Container();
  const { dev } = rig([h], { bypassInitially: true });
  const identity = ["0->0+2000000:3", "100000000->100000000+2000000:3"];
  assert.deepEqual(entries(h), identity, "unattached with bypass = 1");
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.deepEqual(entries(h), []);
  assert.equal(attach(dev, 2, 0x10, ATTACH_F_BYPASS), "OK");
  assert.deepEqual(entries(h), identity, "bypass domain");
  assert.equal(detach(dev, 2, 0x10), "OK");
  assert.deepEqual(entries(h), identity);
  dev.writeConfig(36, 1, 0);
  assert.deepEqual(entries(h), []);
  dev.systemReset();
  assert.deepEqual(entries(h), identity);
});

test("host: a refused MAP is rolled back everywhere; ENOSPC answers S_NOMEM (5.13.6 'insufficient resources')", () => {
  const small = new VfioType1Container({ dmaEntryLimit: 2 });
  const big = new VfioType1Container();
  const { dev } = rig([big, small]);
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.equal(attach(dev, 1, 0x11), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "OK");
  assert.equal(map(dev, 1, 0x2000, 0x2fff, 0), "OK");
  assert.equal(map(dev, 1, 0x3000, 0x3fff, 0), "NOMEM");
  assert.equal(dev.stats().mappings, 2, "not in the domain");
  assert.equal(big.entryCount, 2, "not left in the container that accepted it");
  assert.equal(small.entryCount, 2);
  assert.notEqual(dev.endpointSpace(0x10)!.read(0x3000, new Uint8Array(1)), null, "not reachable");
});

test("host: a refusal other than resources (host page larger than the granule): MAP S_DEVERR, ATTACH S_UNSUPP", () => {
  const h = new VfioType1Container({ pageSizeBytes: 0x10000 });
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "DEVERR");
  assert.equal(map(dev, 1, 0x10000, 0x1ffff, 0), "OK");
  assert.equal(dev.stats().mappings, 1);
  // 5.13.6.3.2: a device that cannot attach the endpoint to the domain MUST answer S_UNSUPP.
  assert.equal(attach(dev, 2, 0x100), "OK");
  assert.equal(map(dev, 2, 0x1000, 0x1fff, 0), "OK");
  assert.equal(attach(dev, 2, 0x10), "UNSUPP");
  assert.equal(dev.endpointDomain(0x10), null);
  assert.deepEqual(entries(h), []);
});

test("host: a host that refuses an unmap makes the device ask for a reset (isolation lost)", () => {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const dev = new VirtioIommu(memory);
  const inner = new VfioType1Container();
  let refuse = false;
  const flaky: HostIommu = {
    map: (iova, gpa, size, perms) => inner.map(iova, gpa, size, perms),
    unmap: (iova, size) => (refuse ? { ok: false, errno: "EPERM", message: "no" } : inner.unmap(iova, size)),
  };
  dev.addEndpoint(1, { host: flaky });
  dev.negotiate(dev.deviceFeatures);
  const reasons: string[] = [];
  dev.onNeedsReset = (r) => reasons.push(r);
  assert.equal(attach(dev, 1, 1), "OK");
  assert.equal(map(dev, 1, 0, 0xfff, 0), "OK");
  refuse = true;
  assert.equal(unmap(dev, 1, 0, 0xfff), "OK", "the guest's view is unmapped");
  assert.equal(dev.needsReset, true);
  assert.equal(reasons.length, 1);
  assert.equal(dev.stats().host.teardownErrors, 1);
  dev.reset();
  assert.equal(dev.needsReset, false);
});

test("5.13.6.3.2: ATTACH to a domain with other endpoints whose replay the host refuses (out of entries) MUST be S_UNSUPP, leaving the endpoint detached", () => {
  const h = new VfioType1Container({ dmaEntryLimit: 1 });
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x100), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "OK");
  assert.equal(map(dev, 1, 0x2000, 0x2fff, 0), "OK");
  assert.equal(attach(dev, 2, 0x10), "OK");
  // Not S_NOMEM: "if it cannot do so, the device MUST set the request status to S_UNSUPP".
  assert.equal(attach(dev, 1, 0x10), "UNSUPP");
  assert.equal(dev.endpointDomain(0x10), null);
  assert.equal(dev.stats().domains, 1, "domain 2 died with the move, domain 1 untouched");
  assert.deepEqual(entries(h), []);
  assert.notEqual(dev.endpointSpace(0x10)!.read(0x1000, new Uint8Array(1)), null);
});

test("host: mappings without READ or WRITE reach no host; a host serves one endpoint", () => {
  const h = new VfioType1Container();
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0, 0), "OK");
  assert.deepEqual(entries(h), []);
  assert.equal(unmap(dev, 1, 0x1000, 0x1fff), "OK");
  assert.equal(dev.stats().host.teardownErrors, 0);
  assert.throws(() => dev.addEndpoint(0x200, { host: h }));
});

test("host: a host that throws is a refusal: S_DEVERR and the MAP is not applied", () => {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 20 }]);
  const dev = new VirtioIommu(memory);
  const hostile: HostIommu = {
    map(): HostResult {
      throw new Error("ioctl failed");
    },
    unmap(): HostResult {
      return { ok: true, bytes: 0 };
    },
  };
  dev.addEndpoint(1, { host: hostile });
  dev.negotiate(dev.deviceFeatures);
  assert.equal(attach(dev, 1, 1), "OK");
  assert.equal(map(dev, 1, 0, 0xfff, 0), "DEVERR");
  assert.equal(dev.stats().mappings, 0);
  assert.equal(dev.stats().host.refusals, 1);
  assert.equal(dev.stats().internalErrors, 0);
});

test("host: removing an endpoint (hot-unplug) empties and releases its container", () => {
  const h = new VfioType1Container();
  const { dev } = rig([h]);
  assert.equal(attach(dev, 1, 0x10), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x1000), "OK");
  const space = dev.endpointSpace(0x10)!;
  assert.equal(space.readUint(0x1000, 1), 0);
  assert.equal(dev.removeEndpoint(0x10), true);
  assert.deepEqual(entries(h), []);
  assert.equal(dev.stats().domains, 0, "its domain died with it");
  assert.equal(space.readUint(0x1000, 1), -1, "the old DMA space faults");
  assert.equal(attach(dev, 1, 0x10), "NOENT");
  assert.equal(dev.removeEndpoint(0x10), false);
  dev.addEndpoint(0x10, { host: h });
  assert.equal(attach(dev, 1, 0x10), "OK");
});
