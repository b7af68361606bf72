/**
 * One test per normative device statement of VIRTIO 1.3 section 5.13 (IOMMU device), named after
 * the statement. Section numbers follow the 1.3 layout: 5.13.3.2 feature bits, 5.13.4.2 config,
 * 5.13.6.2 operations, 5.13.6.3.2 ATTACH, 5.13.6.4.2 DETACH, 5.13.6.5.2 MAP, 5.13.6.6.2 UNMAP,
 * 5.13.6.7.2 PROBE, 5.13.6.8.1.2 RESV_MEM, 5.13.6.9.2 fault reporting.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ, ACCESS_WRITE } from "../../src/engine/access.ts";
import { Translation } from "../../src/engine/translation.ts";
import { VirtioIommu } from "../../src/virtio-iommu/device.ts";
import { decodeFaultRecord } from "../../src/virtio-iommu/fault-events.ts";
import { parseProbeProperties, parseResvMem } from "../../src/virtio-iommu/probe-properties.ts";
import { encodeAttach, encodeDetach, encodeProbe, encodeUnmap } from "../../src/virtio-iommu/requests.ts";
import {
  ATTACH_F_BYPASS,
  F_BYPASS,
  F_BYPASS_CONFIG,
  F_MAP_UNMAP,
  F_MMIO,
  F_PROBE,
  FAULT_F_ADDRESS,
  FAULT_F_READ,
  FAULT_F_WRITE,
  FAULT_R_DOMAIN,
  FAULT_R_MAPPING,
  MAP_F_MMIO,
  MAP_F_READ,
  MAP_F_WRITE,
  PROBE_T_RESV_MEM,
  RESV_MEM_T_MSI,
  RESV_MEM_T_RESERVED,
} from "../../src/virtio-iommu/wire.ts";
import { attach, detach, makeMemory, makeRig, map, probe, send, unmap } from "./driver.ts";

const R = MAP_F_READ;
const W = MAP_F_WRITE;
const RW = R | W;

function canWrite(dev: VirtioIommu, endpointId: number, iova: number): boolean {
  return dev.endpointSpace(endpointId)!.write(iova, new Uint8Array([0x5a])) === null;
}
function canRead(dev: VirtioIommu, endpointId: number, iova: number): boolean {
  return dev.endpointSpace(endpointId)!.read(iova, new Uint8Array(1)) === null;
}

// ---- 5.13.3.2 Feature bits ----------------------------------------------------------------

test("5.13.3.2: device SHOULD offer VIRTIO_IOMMU_F_MAP_UNMAP", () => {
  const { dev } = makeRig();
  assert.notEqual(dev.deviceFeatures & F_MAP_UNMAP, 0n);
  assert.equal(dev.deviceFeatures >> 7n, 0n, "only device-specific bits 0..6");
});

test("5.13.3.2: new devices SHOULD NOT offer VIRTIO_IOMMU_F_BYPASS (BYPASS_CONFIG instead)", () => {
  const { dev } = makeRig();
  assert.equal(dev.deviceFeatures & F_BYPASS, 0n);
  assert.notEqual(dev.deviceFeatures & F_BYPASS_CONFIG, 0n);
});

test("5.13.3.2: devices SHOULD NOT offer both VIRTIO_IOMMU_F_BYPASS and BYPASS_CONFIG", () => {
  const { dev } = makeRig({ offerLegacyBypass: true });
  assert.notEqual(dev.deviceFeatures & F_BYPASS, 0n);
  assert.equal(dev.deviceFeatures & F_BYPASS_CONFIG, 0n);
  assert.throws(() => new VirtioIommu(makeMemory(), { offerLegacyBypass: true, bypassInitially: true }));
});

// ---- 5.13.4.2 Device configuration layout -------------------------------------------------

test("5.13.4.2: device MUST set at least one bit in page_size_mask", () => {
  const { dev } = makeRig();
  assert.equal(dev.readConfig(0, 4), 0x4020_1000);
  assert.equal(dev.readConfig(4, 4), 0);
  assert.throws(() => new VirtioIommu(makeMemory(), { pageSizeMask: 0n }));
});

test("5.13.4.2: device MAY initialize bypass to 1 when it offers BYPASS_CONFIG", () => {
  const { dev } = makeRig({ bypassInitially: true }, [8], false);
  assert.equal(dev.readConfig(36, 1), 1);
  // 5.13.6: applies even before the driver accepts BYPASS_CONFIG.
  assert.ok(canWrite(dev, 8, 0x1000));
});

test("5.13.4.2: bypass SHOULD NOT change on device reset but SHOULD be restored on system reset", () => {
  const { dev } = makeRig({ bypassInitially: true });
  dev.writeConfig(36, 1, 0);
  assert.equal(dev.readConfig(36, 1), 0);
  dev.reset();
  assert.equal(dev.readConfig(36, 1), 0, "survives device reset");
  dev.systemReset();
  assert.equal(dev.readConfig(36, 1), 1, "restored on system reset");
});

test("5.13.4.2: device MUST NOT present a value different than 0 or 1 in bypass", () => {
  const { dev } = makeRig();
  for (const v of [2, 3, 0x80, 0xff]) {
    dev.writeConfig(36, 1, v);
    assert.ok(dev.readConfig(36, 1) <= 1);
  }
  dev.writeConfig(36, 4, 0xffff_ff01); // bypass = 1, reserved bytes ignored
  assert.equal(dev.readConfig(36, 4), 1);
});

test("5.13.4.1: bypass is writable only with BYPASS_CONFIG negotiated; other fields never", () => {
  const { dev } = makeRig({}, [8], false);
  dev.negotiate(F_MAP_UNMAP | F_PROBE);
  dev.writeConfig(36, 1, 1);
  assert.equal(dev.readConfig(36, 1), 0, "ignored without BYPASS_CONFIG");
  dev.negotiate(dev.deviceFeatures);
  const before = [0, 4, 8, 12, 16, 20, 24, 28, 32].map((o) => dev.readConfig(o, 4));
  for (let o = 0; o < 36; o += 4) dev.writeConfig(o, 4, 0x1234_5678);
  assert.deepEqual(
    [0, 4, 8, 12, 16, 20, 24, 28, 32].map((o) => dev.readConfig(o, 4)),
    before,
  );
  dev.writeConfig(36, 1, 1);
  assert.equal(dev.readConfig(36, 1), 1);
});

test("5.13.4: config space is 40 bytes laid out as struct virtio_iommu_config", () => {
  const { dev } = makeRig({
    inputRange: { start: 0x1000, end: 2 ** 40 - 1 },
    domainRange: { start: 3, end: 99 },
    probeSizeBytes: 256,
  });
  assert.equal(dev.configSizeBytes, 40);
  assert.equal(dev.readConfig(8, 4), 0x1000);
  assert.equal(dev.readConfig(12, 4), 0);
  assert.equal(dev.readConfig(16, 4), 0xffff_ffff);
  assert.equal(dev.readConfig(20, 4), 0xff);
  assert.equal(dev.readConfig(24, 4), 3);
  assert.equal(dev.readConfig(28, 4), 99);
  assert.equal(dev.readConfig(32, 4), 256);
  assert.equal(dev.readConfig(36, 4), 0);
  assert.equal(dev.readConfig(40, 4), 0, "beyond the space reads 0");
  assert.equal(dev.readConfig(38, 4), 0);
  assert.equal(dev.readConfig(-1, 1), 0);
});

test("5.13.4: an input range end above 2^53 - 1 is clamped to what the engine represents", () => {
  const { dev } = makeRig({ inputRange: { start: 0, end: (1n << 64n) - 1n } });
  assert.equal(dev.readConfig(16, 4), 0xffff_ffff);
  assert.equal(dev.readConfig(20, 4), 0x1f_ffff);
});

// ---- 5.13.5 Device initialization ----------------------------------------------------------

test("5.13.5: when the device is reset, endpoints are not attached to any domain", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x1000), "OK");
  assert.ok(canWrite(dev, 8, 0x1000));
  dev.reset();
  assert.equal(dev.endpointDomain(8), null);
  assert.equal(dev.stats().domains, 0);
  assert.equal(dev.stats().mappings, 0);
  assert.ok(!canWrite(dev, 8, 0x1000), "no stale translation survives reset");
});

// ---- 5.13.6.2 Device operations ------------------------------------------------------------

test("5.13.6.2: device SHOULD set status to VIRTIO_IOMMU_S_OK if a request succeeds", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0, 0xfff, 0), "OK");
  assert.equal(unmap(dev, 1, 0, 0xfff), "OK");
  assert.equal(detach(dev, 1, 8), "OK");
  assert.equal(probe(dev, 8).status, "OK");
});

test("5.13.6.2: unrecognized request type: SHOULD NOT write the buffer, used length 0", () => {
  const { dev } = makeRig();
  for (const type of [0, 6, 7, 0x80, 0xff]) {
    const req = new Uint8Array(64);
    req[0] = type;
    assert.equal(send(dev, req), "unanswered");
  }
  assert.equal(send(dev, new Uint8Array(0)), "unanswered");
  assert.equal(dev.stats().requestsUnanswered, 6);
});

test("5.13.6.2: device MUST ignore reserved of the head and SHOULD zero reserved of the tail", () => {
  const { dev } = makeRig();
  const req = encodeAttach(1, 8);
  req[1] = 0xff;
  req[2] = 0x12;
  req[3] = 0x34;
  const response = new Uint8Array(4).fill(0xaa);
  assert.equal(dev.handleRequest(req, response), 4);
  assert.deepEqual([...response], [0, 0, 0, 0]);
});

test("5.13.6.2: device SHOULD NOT let unattached endpoints that are not in bypass mode access memory", () => {
  const { dev, memory } = makeRig();
  memory.view(0x1000, 1)[0] = 0x11;
  assert.ok(!canWrite(dev, 8, 0x1000));
  assert.ok(!canRead(dev, 8, 0x1000));
  assert.equal(memory.view(0x1000, 1)[0], 0x11);
});

test("5.13.6: a request too small for its type whose tail cannot be found is returned unwritten", () => {
  const { dev } = makeRig();
  assert.equal(send(dev, encodeAttach(1, 8).subarray(0, 10), 0), "unanswered");
  assert.equal(send(dev, encodeAttach(1, 8), 3), "unanswered");
});

test("5.13.6: a request too small for its type with room for the tail gets VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  assert.equal(send(dev, encodeAttach(1, 8).subarray(0, 19)), "INVAL");
  assert.equal(dev.endpointDomain(8), null);
});

test("5.13.6: with BYPASS_CONFIG offered, unattached endpoints are in bypass iff config bypass is 1", () => {
  const { dev, memory } = makeRig();
  assert.ok(!canWrite(dev, 8, 0x2000));
  dev.writeConfig(36, 1, 1);
  assert.ok(canWrite(dev, 8, 0x2000), "identity once bypass = 1");
  assert.equal(memory.view(0x2000, 1)[0], 0x5a);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.ok(!canWrite(dev, 8, 0x2000), "attached to a translated domain: no longer bypass");
  assert.equal(detach(dev, 1, 8), "OK");
  assert.ok(canWrite(dev, 8, 0x2000), "detached: back in bypass");
  dev.writeConfig(36, 1, 0);
  assert.ok(!canWrite(dev, 8, 0x2000));
});

test("5.13.6: an endpoint attached to a domain with ATTACH_F_BYPASS is in bypass mode", () => {
  const { dev, memory } = makeRig();
  assert.equal(attach(dev, 5, 8, ATTACH_F_BYPASS), "OK");
  assert.ok(canWrite(dev, 8, 0x3000));
  assert.equal(memory.view(0x3000, 1)[0], 0x5a);
});

test("5.13.6: with legacy BYPASS negotiated, unattached endpoints are in bypass mode", () => {
  const { dev } = makeRig({ offerLegacyBypass: true }, [8], false);
  assert.ok(!canWrite(dev, 8, 0x1000), "not before negotiation");
  dev.negotiate(dev.deviceFeatures);
  assert.ok(canWrite(dev, 8, 0x1000));
  dev.reset();
  assert.ok(!canWrite(dev, 8, 0x1000), "features are renegotiated after reset");
  dev.negotiate(F_MAP_UNMAP);
  assert.ok(!canWrite(dev, 8, 0x1000), "not when the driver declines BYPASS");
});

test("5.13.6: any mapping request to virtual addresses outside input_range fails", () => {
  const { dev } = makeRig({ inputRange: { start: 0x10000, end: 0xfff_ffff } });
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0xf000, 0xffff, 0), "RANGE");
  assert.equal(map(dev, 1, 0xfff_f000, 0x1000_0fff, 0), "RANGE");
  assert.equal(map(dev, 1, 0x10000, 0x10fff, 0), "OK");
});

test("5.13.6: domain values outside domain_range are refused with VIRTIO_IOMMU_S_RANGE", () => {
  const { dev } = makeRig({ domainRange: { start: 1, end: 10 } });
  assert.equal(attach(dev, 0, 8), "RANGE");
  assert.equal(attach(dev, 11, 8), "RANGE");
  assert.equal(attach(dev, 10, 8), "OK");
  assert.equal(map(dev, 11, 0, 0xfff, 0), "RANGE");
});

// ---- 5.13.6.3.2 ATTACH -------------------------------------------------------------------

test("5.13.6.3.2: ATTACH with non-zero reserved MUST be rejected with VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  for (let i = 16; i < 20; i++) {
    const req = encodeAttach(1, 8);
    req[i] = 1;
    assert.equal(send(dev, req), "INVAL");
  }
  assert.equal(dev.endpointDomain(8), null);
});

test("5.13.6.3.2: ATTACH with an unrecognized flags bit MUST be rejected with VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  for (const flags of [2, 0x8000_0000, 0xffff_fffe]) assert.equal(attach(dev, 1, 8, flags), "INVAL");
  const legacy = makeRig({}, [8], false).dev;
  legacy.negotiate(F_MAP_UNMAP);
  assert.equal(attach(legacy, 1, 8, ATTACH_F_BYPASS), "INVAL", "ATTACH_F_BYPASS needs BYPASS_CONFIG");
});

test("5.13.6.3.2: ATTACH of an endpoint that doesn't exist MUST be VIRTIO_IOMMU_S_NOENT", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 9), "NOENT");
  assert.equal(dev.stats().domains, 0, "no domain created");
});

test("5.13.6.3.2: another endpoint already attached: the device MAY attach (it does)", () => {
  const { dev } = makeRig({}, [8, 16]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 1, 16), "OK");
  assert.equal(map(dev, 1, 0x4000, 0x4fff, 0x8000), "OK");
  assert.ok(canWrite(dev, 8, 0x4000));
  assert.ok(canWrite(dev, 16, 0x4000));
});

test("5.13.6.3.2: ATTACH_F_BYPASS inconsistent with the existing domain SHOULD be VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig({}, [8, 16]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 1, 16, ATTACH_F_BYPASS), "INVAL");
  assert.equal(attach(dev, 2, 8, ATTACH_F_BYPASS), "OK");
  assert.equal(attach(dev, 2, 16), "INVAL");
  assert.equal(dev.endpointDomain(16), null);
});

test("5.13.6.3.2: endpoint attached to another domain SHOULD be detached first, then attached", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x1000), "OK");
  assert.ok(canWrite(dev, 8, 0x1000));
  assert.equal(attach(dev, 2, 8), "OK");
  assert.equal(dev.endpointDomain(8), 2);
  assert.ok(!canWrite(dev, 8, 0x1000), "domain 1's mappings are unreachable");
  assert.equal(dev.domainMappings(1), undefined, "domain 1 lost its last endpoint and ceased to exist");
});

test("5.13.6.3.2: incompatible endpoint properties SHOULD be VIRTIO_IOMMU_S_UNSUPP", () => {
  const memory = makeMemory();
  const dev = new VirtioIommu(memory, { reservedRegions: [] });
  dev.addEndpoint(8);
  dev.addEndpoint(16, { reservedRegions: [{ iovaStart: 0x10000, iovaLast: 0x1ffff, subtype: "reserved" }] });
  dev.negotiate(dev.deviceFeatures);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x10000, 0x10fff, 0), "OK");
  assert.equal(attach(dev, 1, 16), "UNSUPP", "16 reserves an IOVA the domain maps");
  assert.equal(attach(dev, 2, 16), "OK");
});

test("5.13.6.3.2: a device that does not reject the request MUST attach the endpoint", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 7, 8), "OK");
  assert.equal(dev.endpointDomain(8), 7);
  assert.equal(attach(dev, 7, 8), "OK", "re-attaching to the same domain is a no-op");
  assert.equal(dev.endpointDomain(8), 7);
});

// ---- 5.13.6.4.2 DETACH -------------------------------------------------------------------

test("5.13.6.4.2: device MUST ignore reserved of DETACH", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  const req = encodeDetach(1, 8);
  req.fill(0xff, 12, 20);
  assert.equal(send(dev, req), "OK");
  assert.equal(dev.endpointDomain(8), null);
});

test("5.13.6.4.2: DETACH of an endpoint that doesn't exist MUST be VIRTIO_IOMMU_S_NOENT", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(detach(dev, 1, 9), "NOENT");
});

test("5.13.6.4.2: DETACH from a missing domain or one the endpoint is not in MAY be VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig({}, [8, 16]);
  assert.equal(detach(dev, 1, 8), "INVAL");
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 2, 16), "OK");
  assert.equal(detach(dev, 2, 8), "INVAL");
  assert.equal(dev.endpointDomain(8), 1, "nothing changed");
});

test("5.13.6.4.2: after DETACH the endpoint MUST NOT access any mapping from that domain", () => {
  const { dev } = makeRig({}, [8, 16]);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 1, 16), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x5000), "OK");
  const t = new Translation();
  assert.equal(dev.endpointSpace(8)!.translate(0x1000, ACCESS_WRITE, t), null); // warm caches
  assert.equal(detach(dev, 1, 8), "OK");
  assert.ok(!canWrite(dev, 8, 0x1000));
  assert.ok(!canRead(dev, 8, 0x1000));
  assert.ok(canWrite(dev, 16, 0x1000), "the other endpoint keeps the domain");
  dev.writeConfig(36, 1, 1);
  assert.ok(canWrite(dev, 8, 0x1000), "may then be in bypass mode (identity)");
  assert.equal(dev.memory.view(0x1000, 1)[0], 0x5a);
});

test("5.13.6.4: a domain ceases to exist after its last endpoint is detached; its ID can be reused", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x1000), "OK");
  assert.equal(detach(dev, 1, 8), "OK");
  assert.equal(dev.stats().domains, 0);
  assert.equal(map(dev, 1, 0x2000, 0x2fff, 0x1000), "NOENT");
  assert.equal(attach(dev, 1, 8, ATTACH_F_BYPASS), "OK", "reused as a bypass domain");
  assert.equal(attach(dev, 1, 8, ATTACH_F_BYPASS), "OK");
  assert.equal(detach(dev, 1, 8), "OK");
  assert.equal(attach(dev, 1, 8), "OK");
  assert.ok(!canWrite(dev, 8, 0x1000), "the old mapping did not come back");
});

// ---- 5.13.6.5.2 MAP ----------------------------------------------------------------------

test("5.13.6.5.2: virt_start, phys_start or virt_end + 1 not aligned on the granule SHOULD be RANGE", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1001, 0x1fff, 0), "RANGE");
  assert.equal(map(dev, 1, 0x1000, 0x1ffe, 0), "RANGE");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x10), "RANGE");
  assert.equal(map(dev, 1, 0x1000, 0x1000, 0x1000), "RANGE");
  assert.equal(dev.stats().mappings, 0);
  const fine = makeRig({ pageSizeMask: 1n }).dev;
  assert.equal(attach(fine, 1, 8), "OK");
  assert.equal(map(fine, 1, 0x1001, 0x1001, 0x3), "OK", "one byte at a time with bit 0 set");
});

test("5.13.6.5.2: a mapping already in the requested range SHOULD be VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x2000, 0x3fff, 0x2000), "OK");
  assert.equal(map(dev, 1, 0x2000, 0x3fff, 0x2000), "INVAL");
  assert.equal(map(dev, 1, 0x1000, 0x2fff, 0), "INVAL");
  assert.equal(map(dev, 1, 0x3000, 0x4fff, 0), "INVAL");
  assert.equal(map(dev, 1, 0, 0xffff, 0), "INVAL");
  assert.equal(map(dev, 1, 0x4000, 0x4fff, 0), "OK");
  assert.equal(dev.stats().mappings, 2);
});

test("5.13.6.5.2: MAP with an unrecognized flags bit MUST be VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0, 0xfff, 0, RW | 8), "INVAL");
  assert.equal(map(dev, 1, 0, 0xfff, 0, 0x8000_0000), "INVAL");
  assert.equal(map(dev, 1, 0, 0xfff, 0, RW | MAP_F_MMIO), "INVAL", "MMIO is unknown without F_MMIO");
  const mmio = makeRig({ offerMmio: true }).dev;
  assert.notEqual(mmio.deviceFeatures & F_MMIO, 0n);
  assert.equal(attach(mmio, 1, 8), "OK");
  assert.equal(map(mmio, 1, 0, 0xfff, 0xfeb0_0000, RW | MAP_F_MMIO), "OK");
  assert.equal(mmio.domainMappings(1)![0].mmio, true);
});

test("5.13.6.5.2: MAP to a domain that does not exist SHOULD be VIRTIO_IOMMU_S_NOENT", () => {
  const { dev } = makeRig();
  assert.equal(map(dev, 3, 0, 0xfff, 0), "NOENT");
});

test("5.13.6.5.2: MAP on a bypass domain SHOULD be VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8, ATTACH_F_BYPASS), "OK");
  assert.equal(map(dev, 1, 0, 0xfff, 0), "INVAL");
});

test("5.13.6.5.2: device MUST NOT allow writes to a range mapped without VIRTIO_IOMMU_MAP_F_WRITE", () => {
  const { dev, memory } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0x9000, R), "OK");
  memory.view(0x9000, 1)[0] = 0x77;
  assert.ok(canRead(dev, 8, 0x1000));
  assert.ok(!canWrite(dev, 8, 0x1000));
  assert.ok(!canWrite(dev, 8, 0x1000), "also after the IOTLB holds the read-only page");
  assert.equal(memory.view(0x9000, 1)[0], 0x77);
  assert.equal(map(dev, 1, 0x2000, 0x2fff, 0xa000, W), "OK");
  assert.ok(canWrite(dev, 8, 0x2000));
  assert.ok(!canRead(dev, 8, 0x2000), "write-only mappings are exact: no read");
  assert.equal(map(dev, 1, 0x3000, 0x3fff, 0xb000, 0), "OK");
  assert.ok(!canRead(dev, 8, 0x3000) && !canWrite(dev, 8, 0x3000));
});

test("5.13.6.5: MAP is only available when VIRTIO_IOMMU_F_MAP_UNMAP has been negotiated", () => {
  const { dev } = makeRig({}, [8], false);
  dev.negotiate(F_BYPASS_CONFIG);
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0, 0xfff, 0), "UNSUPP");
  assert.equal(unmap(dev, 1, 0, 0xfff), "UNSUPP");
});

test("5.13.6.5: virt_end < virt_start is VIRTIO_IOMMU_S_INVAL (virt_end MUST be greater)", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x2000, 0xfff, 0), "INVAL");
  assert.equal(map(dev, 1, (1n << 64n) - 0x1000n, 0xfff, 0), "INVAL", "a wrapping range");
});

// ---- 5.13.6.6.2 UNMAP --------------------------------------------------------------------

test("5.13.6.6.2: UNMAP with non-zero reserved MAY be VIRTIO_IOMMU_S_INVAL (and is not performed)", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "OK");
  const req = encodeUnmap(1, 0x1000, 0x1fff);
  req[27] = 1;
  assert.equal(send(dev, req), "INVAL");
  assert.equal(dev.stats().mappings, 1);
});

test("5.13.6.6.2: UNMAP on a domain that does not exist SHOULD be VIRTIO_IOMMU_S_NOENT", () => {
  const { dev } = makeRig();
  assert.equal(unmap(dev, 4, 0, 0xfff), "NOENT");
});

test("5.13.6.6.2: UNMAP on a bypass domain SHOULD be VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8, ATTACH_F_BYPASS), "OK");
  assert.equal(unmap(dev, 1, 0, 0xfff), "INVAL");
});

test("5.13.6.6.2: UNMAP that would split a mapping SHOULD be RANGE and SHOULD NOT remove any mapping", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x0000, 0x0fff, 0), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x2fff, 0), "OK");
  assert.equal(map(dev, 1, 0x3000, 0x3fff, 0), "OK");
  assert.ok(canWrite(dev, 8, 0x0000));
  assert.equal(unmap(dev, 1, 0, 0x1fff), "RANGE", "splits the middle mapping at its end");
  assert.equal(unmap(dev, 1, 0x2000, 0x3fff), "RANGE", "splits it at its start");
  assert.equal(dev.stats().mappings, 3, "nothing removed, not even the fully covered ones");
  assert.ok(canWrite(dev, 8, 0x0000));
  assert.ok(canWrite(dev, 8, 0x3000));
});

test("5.13.6.6.2: UNMAP over unmapped space removes every mapping affected and is VIRTIO_IOMMU_S_OK", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x10000, 0x10fff, 0), "OK");
  assert.equal(map(dev, 1, 0x20000, 0x21fff, 0), "OK");
  assert.ok(canRead(dev, 8, 0x20000));
  assert.equal(unmap(dev, 1, 0, 0xfffff), "OK");
  assert.equal(dev.stats().mappings, 0);
  assert.ok(!canRead(dev, 8, 0x10000) && !canRead(dev, 8, 0x20000) && !canRead(dev, 8, 0x21000));
  assert.equal(unmap(dev, 1, 0, (1n << 64n) - 1n), "OK", "the whole 64-bit space");
});

test("5.13.6.6: the seven UNMAP examples of the specification", () => {
  // The spec's examples use byte addresses; a 1-byte granule makes them literal.
  const cases: [string, [number, number][], [number, number], string, number][] = [
    ["(1)", [], [0, 4], "OK", 0],
    ["(2)", [[0, 9]], [0, 9], "OK", 0],
    [
      "(3)",
      [
        [0, 4],
        [5, 9],
      ],
      [0, 9],
      "OK",
      0,
    ],
    ["(4)", [[0, 9]], [0, 4], "RANGE", 1],
    [
      "(5)",
      [
        [0, 4],
        [5, 9],
      ],
      [0, 4],
      "OK",
      1,
    ],
    ["(6)", [[0, 4]], [0, 9], "OK", 0],
    [
      "(7)",
      [
        [0, 4],
        [10, 14],
      ],
      [0, 14],
      "OK",
      0,
    ],
  ];
  for (const [name, maps, [s, e], status, left] of cases) {
    const { dev } = makeRig({ pageSizeMask: 1n });
    assert.equal(attach(dev, 1, 8), "OK");
    for (const [ms, me] of maps) assert.equal(map(dev, 1, ms, me, 0x100), "OK");
    assert.equal(unmap(dev, 1, s, e), status, name);
    assert.equal(dev.stats().mappings, left, name);
  }
});

// ---- 5.13.6.7.2 PROBE --------------------------------------------------------------------

test("5.13.6.7.2: device MUST ignore reserved of a PROBE request", () => {
  const { dev } = makeRig();
  const req = encodeProbe(8);
  req.fill(0xa5, 8, 72);
  const response = new Uint8Array(516);
  assert.equal(dev.handleRequest(req, response), 516);
  assert.equal(response[512], 0);
  assert.equal(parseProbeProperties(response.subarray(0, 512)).length, 1);
});

test("5.13.6.7.2: PROBE of an endpoint that doesn't exist SHOULD be VIRTIO_IOMMU_S_NOENT", () => {
  const { dev } = makeRig();
  const a = probe(dev, 99);
  assert.equal(a.status, "NOENT");
  assert.equal(a.used, 516);
  assert.ok(a.response.subarray(0, 512).every((b) => b === 0));
});

test("5.13.6.7.2: PROBE without VIRTIO_IOMMU_F_PROBE offered: no write, used length 0", () => {
  const { dev } = makeRig({ offerProbe: false });
  assert.equal(dev.deviceFeatures & F_PROBE, 0n);
  const a = probe(dev, 8, 516);
  assert.equal(a.used, 0);
  assert.ok(a.response.every((b) => b === 0xee));
});

test("5.13.6.7.2: property reserved bits SHOULD be zero and length MUST exclude the header", () => {
  const { dev } = makeRig();
  const props = parseProbeProperties(probe(dev, 8).response.subarray(0, 512));
  assert.equal(props.length, 1);
  assert.equal(props[0].type, PROBE_T_RESV_MEM);
  assert.equal(props[0].reservedBits, 0);
  assert.equal(props[0].length, 20);
});

test("5.13.6.7.2: the next property MUST start exactly length + 4 bytes after the previous", () => {
  const memory = makeMemory();
  const dev = new VirtioIommu(memory, {
    reservedRegions: [
      { iovaStart: 0xfee0_0000, iovaLast: 0xfeef_ffff, subtype: "msi" },
      { iovaStart: 0, iovaLast: 0xfff, subtype: "reserved" },
    ],
  });
  dev.addEndpoint(8, {
    reservedRegions: [{ iovaStart: 0x8000_0000, iovaLast: 0x8fff_ffff, subtype: "reserved" }],
  });
  const r = probe(dev, 8).response;
  const view = new DataView(r.buffer);
  let off = 0;
  const starts: bigint[] = [];
  for (let i = 0; i < 3; i++) {
    assert.equal(view.getUint16(off, true), PROBE_T_RESV_MEM);
    const length = view.getUint16(off + 2, true);
    starts.push(view.getBigUint64(off + 8, true));
    off += length + 4;
  }
  assert.equal(off, 72);
  assert.deepEqual(starts, [0n, 0x8000_0000n, 0xfee0_0000n]);
  assert.equal(view.getUint16(off, true), 0, "list ends with type 0");
});

test("5.13.6.7.2: properties smaller than probe_size: no property written, VIRTIO_IOMMU_S_INVAL", () => {
  const { dev } = makeRig();
  const a = probe(dev, 8, 100);
  assert.equal(a.status, "INVAL");
  assert.equal(a.used, 100);
  assert.ok(
    a.response.subarray(0, 96).every((b) => b === 0),
    "no property",
  );
  assert.equal(probe(dev, 8, 3).status, "unanswered", "no room for a tail");
});

test("5.13.6.7.2: bytes of properties not filled SHOULD be zero", () => {
  const { dev } = makeRig();
  const a = probe(dev, 8);
  assert.equal(a.status, "OK");
  assert.ok(a.response.subarray(24, 512).every((b) => b === 0));
});

// ---- 5.13.6.8.1.2 RESV_MEM ---------------------------------------------------------------

test("5.13.6.8.1.2: device SHOULD set RESV_MEM reserved to zero; x86 MSI window reported as MSI", () => {
  const { dev } = makeRig();
  const props = parseProbeProperties(probe(dev, 8).response.subarray(0, 512));
  assert.deepEqual([...props[0].value.subarray(1, 4)], [0, 0, 0]);
  const resv = parseResvMem(props[0])!;
  assert.equal(resv.subtype, RESV_MEM_T_MSI);
  assert.equal(resv.start, 0xfee0_0000n);
  assert.equal(resv.end, 0xfeef_ffffn);
  const custom = new VirtioIommu(makeMemory(), {
    reservedRegions: [{ iovaStart: 0x1000, iovaLast: 0x1fff, subtype: "reserved" }],
  });
  custom.addEndpoint(1);
  const p = parseResvMem(parseProbeProperties(probe(custom, 1).response.subarray(0, 512))[0])!;
  assert.equal(p.subtype, RESV_MEM_T_RESERVED);
});

test("5.13.6.8.1.2: device SHOULD NOT present more than one RESV_MEM_T_MSI property per endpoint", () => {
  const msi = { iovaStart: 0xfee0_0000, iovaLast: 0xfeef_ffff, subtype: "msi" as const };
  const dev = new VirtioIommu(makeMemory());
  assert.throws(() =>
    dev.addEndpoint(1, { reservedRegions: [{ iovaStart: 0x1000, iovaLast: 0x1fff, subtype: "msi" }] }),
  );
  assert.throws(() => new VirtioIommu(makeMemory(), { reservedRegions: [msi, { ...msi, iovaStart: 0 }] }));
});

test("5.13.6.8.1.2: device SHOULD NOT present overlapping RESV_MEM properties for one endpoint", () => {
  const dev = new VirtioIommu(makeMemory());
  assert.throws(() =>
    dev.addEndpoint(1, {
      reservedRegions: [{ iovaStart: 0xfeef_f000, iovaLast: 0xfef0_0fff, subtype: "reserved" }],
    }),
  );
  dev.addEndpoint(2, {
    reservedRegions: [{ iovaStart: 0xfef0_0000, iovaLast: 0xfef0_0fff, subtype: "reserved" }],
  });
});

test("5.13.6.8.1.2: device SHOULD reject a MAP request that overlaps a RESV_MEM region", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0xfee0_0000, 0xfee0_0fff, 0), "INVAL");
  assert.equal(map(dev, 1, 0xfed0_0000, 0xfeff_ffff, 0), "INVAL");
  assert.equal(map(dev, 1, 0xfef0_0000, 0xfef0_0fff, 0), "OK");
});

test("5.13.6.8.1.2: accesses to RESV_MEM regions SHOULD NOT affect other components", () => {
  const { dev, memory } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  const before = memory.view(0, 0x10000).slice();
  assert.notEqual(dev.endpointSpace(8)!.write(0xfee0_0000, new Uint8Array(4).fill(1)), null);
  assert.deepEqual(memory.view(0, 0x10000), before);
});

// ---- 5.13.6.9.2 Fault reporting ----------------------------------------------------------

test("5.13.6.9.2: fault records have reserved, reserved1 and undefined flags zero, a valid endpoint", () => {
  const { dev } = makeRig({}, [8, 0x1234]);
  let notified = 0;
  dev.onEvent = () => {
    notified++;
  };
  assert.notEqual(dev.endpointSpace(0x1234)!.read(0x7000, new Uint8Array(1)), null);
  assert.equal(notified, 1);
  const rec = dev.takeEvent()!;
  assert.equal(rec.length, 24);
  const f = decodeFaultRecord(rec);
  assert.equal(f.reservedNonZero, false);
  assert.equal(f.reason, FAULT_R_DOMAIN);
  assert.equal(f.flags & ~(FAULT_F_READ | FAULT_F_WRITE | FAULT_F_ADDRESS), 0);
  assert.equal(f.flags, FAULT_F_READ | FAULT_F_ADDRESS);
  assert.equal(f.endpointId, 0x1234);
  assert.equal(f.address, 0x7000n);
  assert.equal(dev.takeEvent(), undefined);
});

test("5.13.6.9: a mapping fault reports reason MAPPING with the access direction and address", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0, R), "OK");
  const t = new Translation();
  const f1 = dev.endpointSpace(8)!.translate(0x1800, ACCESS_WRITE, t);
  assert.equal(f1?.reason, "permission");
  assert.equal(f1?.code, FAULT_R_MAPPING);
  const f2 = dev.endpointSpace(8)!.translate(0x2000, ACCESS_READ, t);
  assert.equal(f2?.reason, "unmapped");
  const e1 = decodeFaultRecord(dev.takeEvent()!);
  const e2 = decodeFaultRecord(dev.takeEvent()!);
  assert.deepEqual(
    [e1.reason, e1.flags, e1.address],
    [FAULT_R_MAPPING, FAULT_F_WRITE | FAULT_F_ADDRESS, 0x1800n],
  );
  assert.deepEqual(
    [e2.reason, e2.flags, e2.address],
    [FAULT_R_MAPPING, FAULT_F_READ | FAULT_F_ADDRESS, 0x2000n],
  );
  assert.deepEqual(dev.stats().faults, { unknown: 0, domain: 0, mapping: 2 });
});
