/**
 * Hostile requests: short buffers, unknown types, reserved fields, huge and wrapping ranges,
 * addresses above 2^53, and a seeded fuzz loop. Each gets the specified answer; nothing throws.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ACCESS_READ } from "../../src/engine/access.ts";
import { Translation } from "../../src/engine/translation.ts";
import { VirtioIommu } from "../../src/virtio-iommu/device.ts";
import { decodeFaultRecord } from "../../src/virtio-iommu/fault-events.ts";
import {
  encodeAttach,
  encodeDetach,
  encodeMap,
  encodeProbe,
  encodeUnmap,
  readableBytesFor,
} from "../../src/virtio-iommu/requests.ts";
import {
  FAULT_F_ADDRESS,
  FAULT_R_MAPPING,
  REQ_ATTACH,
  REQ_DETACH,
  REQ_MAP,
  REQ_PROBE,
  REQ_UNMAP,
} from "../../src/virtio-iommu/wire.ts";
import { attach, makeRig, map, prng, send, unmap } from "./driver.ts";

const TOP = (1n << 64n) - 1n;

test("malformed: every truncation of every request type gets S_INVAL when the tail fits", () => {
  const { dev } = makeRig();
  const full = [
    encodeAttach(1, 8),
    encodeDetach(1, 8),
    encodeMap(1, 0, 0xfff, 0, 3),
    encodeUnmap(1, 0, 0xfff),
  ];
  for (const req of full) {
    for (let len = 1; len < req.length; len++) {
      assert.equal(send(dev, req.subarray(0, len)), "INVAL", `type ${req[0]} truncated to ${len}`);
    }
  }
  assert.equal(dev.stats().domains, 0);
  assert.equal(dev.stats().mappings, 0);
});

test("malformed: a truncated PROBE gets S_INVAL at probe_size with zeroed properties", () => {
  const { dev } = makeRig();
  for (let len = 1; len < readableBytesFor(REQ_PROBE); len += 7) {
    const response = new Uint8Array(516).fill(0xee);
    assert.equal(dev.handleRequest(encodeProbe(8).subarray(0, len), response), 516);
    assert.equal(response[512], 4);
    assert.ok(response.subarray(0, 512).every((b) => b === 0));
  }
});

test("malformed: no room for the tail: used length 0, nothing written", () => {
  const { dev } = makeRig();
  for (const req of [encodeAttach(1, 8), encodeMap(1, 0, 0xfff, 0, 3), encodeProbe(8)]) {
    for (let w = 0; w < 4; w++) assert.equal(send(dev, req, w), "unanswered");
  }
  assert.equal(dev.endpointDomain(8), null);
});

test("malformed: a larger writable area still gets the tail first and used length 4", () => {
  const { dev } = makeRig();
  const response = new Uint8Array(64).fill(0xee);
  assert.equal(dev.handleRequest(encodeAttach(1, 8), response), 4);
  assert.deepEqual([...response.subarray(0, 5)], [0, 0, 0, 0, 0xee]);
});

test("malformed: extra readable bytes after a request are ignored", () => {
  const { dev } = makeRig();
  const req = new Uint8Array(100).fill(0xff);
  req.set(encodeAttach(1, 8));
  assert.equal(send(dev, req), "OK");
});

test("malformed: huge, wrapping and above-2^53 MAP ranges get S_RANGE or S_INVAL, nothing mapped", () => {
  const { dev } = makeRig({ inputRange: { start: 0, end: TOP }, reservedRegions: [] });
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0, TOP, 0), "RANGE", "the whole 64-bit space exceeds what is represented");
  assert.equal(map(dev, 1, 1n << 53n, (1n << 53n) + 0xfffn, 0), "RANGE");
  assert.equal(map(dev, 1, 0, 0xfff, 1n << 63n), "RANGE", "phys above 2^53");
  assert.equal(map(dev, 1, 0, 0x1fff, (1n << 53n) - 0x1000n), "RANGE", "phys end overflows");
  assert.equal(map(dev, 1, TOP - 0xfffn, TOP, 0), "RANGE");
  assert.equal(map(dev, 1, TOP - 0xfffn, 0xfff, 0), "INVAL", "wraps: virt_end < virt_start");
  assert.equal(map(dev, 1, 0x2000, 0x0fff, 0), "INVAL");
  assert.equal(map(dev, 1, (1n << 53n) + 0x1000n, 1n << 53n, 0), "INVAL", "exact 64-bit ordering");
  assert.equal(map(dev, 1, 0, (1n << 53n) - 1n, 0), "OK", "the largest representable mapping");
  assert.equal(unmap(dev, 1, 0, TOP), "OK");
  assert.equal(dev.stats().mappings, 0);
});

test("malformed: default input range is 48 bits; a MAP above it is S_RANGE", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 2 ** 48, 2 ** 48 + 0xfff, 0), "RANGE");
  assert.equal(map(dev, 1, 2 ** 48 - 0x1000, 2 ** 48 - 1, 0), "OK");
});

test("malformed: UNMAP with wrapping or above-2^53 ranges", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  assert.equal(map(dev, 1, 0x1000, 0x1fff, 0), "OK");
  assert.equal(unmap(dev, 1, 0x2000, 0x1000), "INVAL");
  assert.equal(unmap(dev, 1, TOP, 0), "INVAL");
  assert.equal(unmap(dev, 1, 1n << 60n, TOP), "OK", "nothing can be mapped there");
  assert.equal(dev.stats().mappings, 1);
  assert.equal(unmap(dev, 1, 0x1000, TOP), "OK");
  assert.equal(dev.stats().mappings, 0);
});

test("malformed: reserved fields: ATTACH INVAL, DETACH and PROBE ignored, UNMAP INVAL", () => {
  const { dev } = makeRig();
  const a = encodeAttach(1, 8);
  a[19] = 0x80;
  assert.equal(send(dev, a), "INVAL");
  assert.equal(attach(dev, 1, 8), "OK");
  const u = encodeUnmap(1, 0, 0xfff);
  u[24] = 1;
  assert.equal(send(dev, u), "INVAL");
  const d = encodeDetach(1, 8);
  d[12] = 1;
  assert.equal(send(dev, d), "OK");
});

test("malformed: endpoint and domain IDs at the 32-bit extremes", () => {
  const { dev } = makeRig({ domainRange: { start: 0, end: 0xffff_ffff } }, [0, 0xffff_ffff]);
  assert.equal(attach(dev, 0xffff_ffff, 0xffff_ffff), "OK");
  assert.equal(attach(dev, 0, 0), "OK");
  assert.equal(map(dev, 0xffff_ffff, 0, 0xfff, 0), "OK");
  assert.ok(dev.endpointSpace(0xffff_ffff)!.write(0, new Uint8Array(1)) === null);
  assert.throws(() => dev.addEndpoint(2 ** 32));
  assert.throws(() => dev.addEndpoint(-1));
});

test("malformed: resource caps answer S_NOMEM (mappings per domain, total mappings, domains)", () => {
  const { dev } = makeRig({ maxMappingsPerDomain: 4, maxMappingsTotal: 6, maxDomains: 2 }, [1, 2, 3]);
  assert.equal(attach(dev, 1, 1), "OK");
  assert.equal(attach(dev, 2, 2), "OK");
  assert.equal(attach(dev, 3, 3), "NOMEM");
  assert.equal(dev.endpointDomain(3), null);
  for (let i = 0; i < 4; i++) assert.equal(map(dev, 1, i * 0x1000, i * 0x1000 + 0xfff, 0), "OK");
  assert.equal(map(dev, 1, 0x10000, 0x10fff, 0), "NOMEM");
  assert.equal(map(dev, 2, 0, 0xfff, 0), "OK");
  assert.equal(map(dev, 2, 0x1000, 0x1fff, 0), "OK");
  assert.equal(map(dev, 2, 0x2000, 0x2fff, 0), "NOMEM", "total cap");
  assert.equal(unmap(dev, 1, 0, 0xfff), "OK");
  assert.equal(map(dev, 2, 0x2000, 0x2fff, 0), "OK", "room again");
  assert.equal(attach(dev, 3, 1), "OK", "moving the last endpoint of domain 1 frees its slot");
  assert.equal(dev.stats().mappings, 3);
});

test("fuzz: random requests and writable sizes never throw and always answer per the spec", () => {
  const seed = 0x5eed_1234;
  console.log(`virtio-iommu fuzz seed ${seed}`);
  const rand = prng(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const { dev } = makeRig({ offerMmio: true, maxMappingsPerDomain: 64 }, [0, 1, 2, 3]);
  const types = [REQ_ATTACH, REQ_DETACH, REQ_MAP, REQ_UNMAP, REQ_PROBE];
  const addr = () => (rand() < 0.05 ? BigInt(int(2 ** 32)) << 32n : BigInt(int(0x400) * 0x1000));
  let answered = 0;
  for (let i = 0; i < 20000; i++) {
    const type = rand() < 0.95 ? types[int(5)] : int(256);
    const domain = int(4);
    const endpoint = int(5);
    let req: Uint8Array;
    if (type === REQ_ATTACH) req = encodeAttach(domain, endpoint, rand() < 0.2 ? 1 : 0);
    else if (type === REQ_DETACH) req = encodeDetach(domain, endpoint);
    else if (type === REQ_MAP) {
      const start = addr();
      req = encodeMap(domain, start, start + BigInt(int(16) * 0x1000 + 0xfff), addr(), int(8));
    } else if (type === REQ_UNMAP) {
      const start = addr();
      req = encodeUnmap(domain, start, start + BigInt(int(64) * 0x1000 + 0xfff));
    } else if (type === REQ_PROBE) req = encodeProbe(endpoint);
    else req = new Uint8Array(int(80)).fill(type);
    // Corrupt some: flip bytes, truncate, extend.
    if (rand() < 0.3 && req.length > 0) {
      for (let k = 1 + int(3); k > 0; k--) req[int(req.length)] = int(256);
      req[0] = rand() < 0.9 ? type : req[0];
    }
    if (rand() < 0.1) req = req.subarray(0, int(req.length + 1));
    else if (rand() < 0.05) {
      const longer = new Uint8Array(req.length + int(16));
      longer.set(req);
      req = longer;
    }
    const writable = req[0] === REQ_PROBE ? [516, 600, 100, 3, 0][int(5)] : [4, 4, 4, 8, 2, 0][int(6)];
    const response = new Uint8Array(writable).fill(0xee);
    const used = dev.handleRequest(req, response);
    if (used > 0) answered++;
    if (req.length === 0 || req[0] < 1 || req[0] > 5) assert.equal(used, 0);
    if (writable < 4) assert.equal(used, 0);
    assert.ok(used === 0 || used === 4 || used === 516 || used === 100, `used ${used}`);
    if (used === 0) assert.ok(response.every((b) => b === 0xee));
    else assert.ok(response[used - 4] <= 8);
    if (i % 7 === 0) {
      const space = dev.endpointSpace(int(4))!;
      space.write(int(0x200) * 0x1000, new Uint8Array(1 + int(64)));
      space.read(int(0x200) * 0x1000, new Uint8Array(1 + int(64)));
    }
    dev.takeEvent();
    if (i % 5000 === 4999) {
      dev.reset();
      dev.negotiate(dev.deviceFeatures);
    }
  }
  const s = dev.stats();
  assert.equal(s.internalErrors, 0);
  assert.ok(answered > 10000);
  console.log(JSON.stringify(s.requests));
  assert.ok(s.requests.map.OK > 50 && s.requests.unmap.OK > 50 && s.requests.attach.OK > 50);
  assert.ok(s.events.pending <= 64);
});

test("malformed: handleRequest is safe on views into larger buffers", () => {
  const dev = new VirtioIommu(makeRig().memory);
  dev.addEndpoint(8);
  dev.negotiate(dev.deviceFeatures);
  const backing = new Uint8Array(200).fill(0x33);
  backing.set(encodeAttach(1, 8), 50);
  const response = backing.subarray(150, 154);
  assert.equal(dev.handleRequest(backing.subarray(50, 70), response), 4);
  assert.equal(backing[150], 0);
  assert.equal(backing[154], 0x33);
});

test("malformed: a response area aliasing the request bytes (hostile chain) is decoded first", () => {
  const { dev } = makeRig();
  const shared = new Uint8Array(600);
  shared.set(encodeAttach(1, 8));
  assert.equal(dev.handleRequest(shared.subarray(0, 20), shared.subarray(0, 4)), 4);
  assert.equal(shared[0], 0);
  assert.equal(dev.endpointDomain(8), 1);
  shared.set(encodeProbe(8));
  assert.equal(dev.handleRequest(shared.subarray(0, 72), shared.subarray(0, 516)), 516);
  assert.equal(shared[512], 0, "S_OK for endpoint 8");
  assert.equal(dev.stats().internalErrors, 0);
});

test("malformed: a non-integer or non-finite input address faults without throwing; the record carries no address (5.13.6.9)", () => {
  const { dev } = makeRig();
  assert.equal(attach(dev, 1, 8), "OK");
  for (const iova of [0.5, 4096.5, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
    const f = dev.translate(8, iova, ACCESS_READ, new Translation());
    assert.equal(f?.reason, "unmapped", String(iova));
    const rec = decodeFaultRecord(dev.takeEvent()!);
    assert.equal(rec.reason, FAULT_R_MAPPING);
    assert.equal(rec.flags & FAULT_F_ADDRESS, 0, `no address for ${iova}`);
    assert.equal(rec.address, 0n);
  }
  // An integer address is still reported exactly.
  dev.translate(8, 0x1234, ACCESS_READ, new Translation());
  const rec = decodeFaultRecord(dev.takeEvent()!);
  assert.equal(rec.flags & FAULT_F_ADDRESS, FAULT_F_ADDRESS);
  assert.equal(rec.address, 0x1234n);
});
