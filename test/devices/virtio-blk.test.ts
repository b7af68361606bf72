import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { VirtioBlk } from "../../src/devices/virtio-blk.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { BlkDriver, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_WRITE_ZEROES } from "../support/blk-driver.ts";
import { DMA_IOVA_OFFSET, IommuMachine } from "../support/iommu-machine.ts";
import { checksum, prng, TestMachine } from "../support/machine.ts";
import {
  GuestAllocator,
  S_NEEDS_RESET,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VirtioPciDriver,
} from "../support/virtio-driver.ts";

const dir = mkdtempSync(join(tmpdir(), "viommu-blk-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
const F_FLUSH = 1n << 9n;
const F_DISCARD = 1n << 13n;
const F_WRITE_ZEROES = 1n << 14n;
const F_RO = 1n << 5n;
const BLK_FEATURES = F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_RO | (1n << 2n) | (1n << 6n);

function diskFile(sizeBytes: number, fill = 0): string {
  const path = join(dir, `disk${fileNo++}.img`);
  writeFileSync(path, new Uint8Array(sizeBytes).fill(fill));
  return path;
}

const BLK_BDF = { bus: 0, device: 2, fn: 0 };

/** iommu=off: the device DMAs with guest-physical addresses. */
function plainBlk(options: { readOnly?: boolean; serial?: string; features?: bigint } = {}) {
  const path = diskFile(1 << 20, 0x11);
  const m = new TestMachine();
  const blk = new VirtioBlk({ path, readOnly: options.readOnly, serial: options.serial, queueSize: 64 });
  m.add(blk.pci, 2);
  const alloc = new GuestAllocator(1 << 20, 12 << 20);
  const drv = new VirtioPciDriver(m, BLK_BDF, alloc);
  drv.bringUp(options.features ?? VIRTIO_F_VERSION_1 | BLK_FEATURES, 1);
  return { m, blk, path, drv, b: new BlkDriver(drv, alloc) };
}

/** iommu=on behind virtio-iommu-pci: the driver hands out IOVAs = gpa + DMA_IOVA_OFFSET. */
function translatedBlk() {
  const path = diskFile(4 << 20);
  const m = new IommuMachine();
  const blk = new VirtioBlk({ path, accessPlatform: true, queueSize: 64 });
  const rid = m.addBehindIommu(blk.pci, 2);
  m.mapDmaWindow(1, rid);
  const drv = new VirtioPciDriver(m, BLK_BDF, m.dmaAllocator, DMA_IOVA_OFFSET);
  drv.bringUp(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_F_INDIRECT_DESC | BLK_FEATURES, 1);
  return { m, blk, path, drv, rid, b: new BlkDriver(drv, m.dmaAllocator) };
}

function pattern(length: number, seed: number): Uint8Array {
  const r = prng(seed);
  return Uint8Array.from({ length }, () => Math.floor(r() * 256));
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

test("VIRTIO 1.3 5.2.4: capacity, seg_max and blk_size in the configuration space", () => {
  const { drv } = plainBlk();
  assert.equal(drv.deviceConfig(0, 4), (1 << 20) / 512);
  assert.equal(drv.deviceConfig(4, 4), 0);
  assert.equal(drv.deviceConfig(12, 4), 62);
  assert.equal(drv.deviceConfig(20, 4), 512);
  assert.equal(drv.deviceConfig(40, 4), 1, "max_discard_seg");
});

test("virtio-blk through virtio-iommu mappings: pattern written, read back, host file checksum equal, flush reaches the file", () => {
  const { b, blk, path } = translatedBlk();
  const data = pattern(64 * 1024, 7);
  const w = b.write(16, data, 16);
  assert.deepEqual(w, { status: 0, usedLen: 1 });
  assert.equal(b.submit(T_FLUSH, 0, [], []).status, 0);
  assert.equal(blk.stats().fsyncs, 1, "FLUSH negotiated: write-back, one fsync for the flush");
  const { result, data: back } = b.read(16, 64 * 1024, 8);
  assert.deepEqual(result, { status: 0, usedLen: 64 * 1024 + 1 });
  assert.equal(sha(back), sha(data));
  const file = readFileSync(path);
  assert.equal(sha(file.subarray(16 * 512, 16 * 512 + 64 * 1024)), sha(data));
});

test("virtio-blk through virtio-iommu with indirect descriptor tables (as Linux posts multi-segment requests)", () => {
  const { b, path } = translatedBlk();
  b.indirect = true;
  const data = pattern(32 * 1024, 11);
  assert.deepEqual(b.write(64, data, 8), { status: 0, usedLen: 1 });
  const { result, data: back } = b.read(64, 32 * 1024, 4);
  assert.deepEqual(result, { status: 0, usedLen: 32 * 1024 + 1 });
  assert.equal(sha(back), sha(data));
  assert.equal(sha(readFileSync(path).subarray(64 * 512, 64 * 512 + 32 * 1024)), sha(data));
});

test("VIRTIO 1.3 5.2.6.2 / 6.1: a DMA to an unmapped IOVA faults, is reported on the eventq, and writes nothing", () => {
  const { m, b, rid, path } = translatedBlk();
  m.postEventBuffers(4);
  const fileBefore = sha(readFileSync(path));
  // A read whose data buffer lies at an IOVA the guest never mapped (past the window).
  const header = b.alloc.alloc(16);
  m.memory.writeU32(header, T_IN);
  m.memory.writeU64(header + 8, 0n);
  const status = b.alloc.alloc(1);
  m.memory.writeU8(status, 0xee);
  const badIova = DMA_IOVA_OFFSET + (12 << 20) + 0x3000;
  const q = b.drv.queues[0];
  q.addRaw([
    { addr: q.iova(header), len: 16, flags: 0 },
    { addr: badIova, len: 4096, flags: 2 },
    { addr: q.iova(status), len: 1, flags: 2 },
  ]);
  const before = m.memory.view(0, 16 << 20).slice();
  b.drv.kick(0);
  const ramAfter = m.memory.view(0, 16 << 20).slice();
  const used = q.takeUsed();
  assert.equal(used.length, 1);
  assert.equal(m.memory.readU8(status), 1, "VIRTIO_BLK_S_IOERR");
  // Only the status byte, the used ring and the eventq changed: compare everything else.
  const viommuArea = [1 << 20, 4 << 20];
  const usedRing = [q.usedGpa, q.usedGpa + 6 + 8 * q.size];
  const untouched = (a: Uint8Array) => {
    const c = a.slice();
    c.fill(0, viommuArea[0], viommuArea[1]);
    c.fill(0, usedRing[0], usedRing[1]);
    c[status] = 0;
    return checksum(c);
  };
  assert.equal(untouched(ramAfter), untouched(before));
  assert.equal(sha(readFileSync(path)), fileBefore);
  const faults = m.takeFaults();
  assert.equal(faults.length, 1);
  assert.equal(faults[0].reason, 2, "VIRTIO_IOMMU_FAULT_R_MAPPING");
  assert.equal(faults[0].endpoint, rid);
  assert.equal(faults[0].address, BigInt(badIova));
  assert.equal(faults[0].flags & 2, 2, "a device write (IN fills guest memory)");
  assert.equal(
    b.drv.status & S_NEEDS_RESET,
    0,
    "a buffer fault is answered per request, the queue stays usable",
  );
});

test("after UNMAP the device can no longer reach the pages (no stale translation survives)", () => {
  const { m, b } = translatedBlk();
  const data = pattern(4096, 3);
  assert.equal(b.write(0, data).status, 0);
  const first = b.read(0, 4096);
  assert.equal(sha(first.data), sha(data));
  // Unmap the whole window and re-map only the rings and the first 1 MiB of buffers.
  assert.equal(m.unmap(1, (4 << 20) + DMA_IOVA_OFFSET, 8 << 20), 0);
  assert.equal(m.map(1, (4 << 20) + DMA_IOVA_OFFSET, 1 << 20, 4 << 20), 0);
  m.dmaAllocator.alloc(1 << 20); // the next request lands beyond the re-mapped part
  const second = b.read(0, 4096);
  assert.equal(second.result.usedLen, 0, "not even the status byte is reachable");
  assert.equal(second.result.status, 0xee);
  assert.ok(
    second.data.every((x) => x === 0xcd),
    "the data buffer was not written",
  );
  assert.ok(m.takeFaults().length === 0, "no eventq buffers posted: records wait in the device");
  assert.ok(m.viommu.engine.pendingEvents > 0);
});

test("VIRTIO 1.3 5.2.6.2: a read-only device answers OUT with IOERR and writes nothing", () => {
  const { b, path, drv } = plainBlk({ readOnly: true });
  assert.equal(drv.deviceFeatures() & F_RO, F_RO);
  const before = sha(readFileSync(path));
  assert.equal(b.write(0, pattern(512, 1)).status, 1);
  assert.equal(b.rangeRequest(T_WRITE_ZEROES, [{ sector: 0, sectors: 1 }]).status, 1);
  assert.equal(sha(readFileSync(path)), before);
  assert.equal(b.read(0, 512).result.status, 0);
});

test("VIRTIO 1.3 5.2.6: GET_ID returns the serial NUL-padded to 20 bytes", () => {
  const { b, m } = plainBlk({ serial: "viommu-disk-0" });
  const buf = b.alloc.alloc(20);
  m.memory.fill(buf, 20, 0xff);
  const r = b.submit(T_GET_ID, 0, [], [{ gpa: buf, len: 20 }]);
  assert.deepEqual(r, { status: 0, usedLen: 21 });
  const id = m.memory.view(buf, 20);
  assert.equal(new TextDecoder().decode(id.subarray(0, 13)), "viommu-disk-0");
  assert.ok(id.subarray(13).every((x) => x === 0));
});

test("VIRTIO 1.3 5.2.6: an unknown request type is answered UNSUPP", () => {
  const { b } = plainBlk();
  assert.equal(b.submit(99, 0, [], []).status, 2);
});

test("VIRTIO 1.3 5.2.6.1: IN/OUT data not a multiple of 512 bytes, or beyond the capacity, is IOERR", () => {
  const { b } = plainBlk();
  assert.equal(b.write(0, pattern(500, 1)).status, 1);
  assert.equal(b.read(2047, 1024).result.status, 1);
  assert.equal(b.read(2 ** 40, 512).result.status, 1);
  assert.equal(b.read(2047, 512).result.status, 0);
});

test("VIRTIO 1.3 5.2.6.2: DISCARD with the unmap flag, or any unknown flag, is UNSUPP", () => {
  const { b } = plainBlk();
  assert.equal(b.rangeRequest(T_DISCARD, [{ sector: 0, sectors: 8, flags: 1 }]).status, 2);
  assert.equal(b.rangeRequest(T_WRITE_ZEROES, [{ sector: 0, sectors: 8, flags: 2 }]).status, 2);
  assert.equal(b.rangeRequest(T_DISCARD, [{ sector: 0, sectors: 8 }]).status, 0);
});

test("VIRTIO 1.3 5.2.6.2: after WRITE_ZEROES the range reads as zeroes (with or without unmap)", () => {
  const { b, path } = plainBlk();
  assert.equal(b.rangeRequest(T_WRITE_ZEROES, [{ sector: 4, sectors: 2, flags: 1 }]).status, 0);
  const { data } = b.read(3, 2048);
  assert.ok(data.subarray(0, 512).every((x) => x === 0x11));
  assert.ok(data.subarray(512, 1536).every((x) => x === 0));
  assert.ok(data.subarray(1536).every((x) => x === 0x11));
  assert.ok(
    readFileSync(path)
      .subarray(4 * 512, 6 * 512)
      .every((x) => x === 0),
  );
});

test("VIRTIO 1.3 5.2.4: DISCARD/WRITE_ZEROES beyond max_*_seg is UNSUPP, beyond the capacity IOERR", () => {
  const { b } = plainBlk();
  assert.equal(
    b.rangeRequest(T_WRITE_ZEROES, [
      { sector: 0, sectors: 1 },
      { sector: 8, sectors: 1 },
    ]).status,
    2,
  );
  assert.equal(b.rangeRequest(T_DISCARD, [{ sector: 2047, sectors: 2 }]).status, 1);
});

test("VIRTIO 1.3 5.2.6.2: without FLUSH negotiated the device is write-through (every write reaches the disk)", () => {
  const { b, blk } = plainBlk({ features: VIRTIO_F_VERSION_1 });
  assert.equal(b.write(0, pattern(1024, 2)).status, 0);
  assert.equal(blk.stats().fsyncs, 1);
});

test("a request without a status byte cannot be answered: DEVICE_NEEDS_RESET", () => {
  const { b, drv } = plainBlk();
  const h = b.alloc.alloc(16);
  drv.queues[0].add([{ gpa: h, len: 16, writable: false }]);
  drv.kick(0);
  assert.equal(drv.status & S_NEEDS_RESET, S_NEEDS_RESET);
});

test("fuzz: random descriptor chains on virtio-blk behind virtio-iommu never throw and never touch unmapped memory", () => {
  const seed = 0xb10c_5eed;
  console.log(`fuzz seed 0x${seed.toString(16)}`);
  const rnd = prng(seed);
  const { m, drv, blk } = translatedBlk();
  const mappedStart = 4 << 20;
  const mappedEnd = 12 << 20;
  const outside = () =>
    checksum(m.memory.view(0, 1 << 20)) ^ checksum(m.memory.view(mappedEnd, (16 << 20) - mappedEnd));
  const sum = outside();
  const iovaIn = () => DMA_IOVA_OFFSET + mappedStart + Math.floor(rnd() * (mappedEnd - mappedStart - 0x2000));
  for (let round = 0; round < 300; round++) {
    const q = drv.queues[0];
    // Random descriptors straight into the table: addresses mapped, unmapped, or guest-physical.
    const n = 1 + Math.floor(rnd() * 4);
    const head = Math.floor(rnd() * q.size);
    for (let k = 0; k < n; k++) {
      const i = (head + k) % q.size;
      const d = q.descGpa + 16 * i;
      const pick = rnd();
      const addr =
        pick < 0.6 ? iovaIn() : pick < 0.8 ? Math.floor(rnd() * (16 << 20)) : Math.floor(rnd() * 2 ** 53);
      m.memory.writeU64(d, BigInt(addr));
      m.memory.writeU32(d + 8, rnd() < 0.1 ? 0 : Math.floor(rnd() * 9000));
      m.memory.writeU16(d + 12, (k < n - 1 ? 1 : 0) | (rnd() < 0.6 ? 2 : 0) | (rnd() < 0.05 ? 4 : 0));
      m.memory.writeU16(d + 14, rnd() < 0.9 ? (i + 1) % q.size : Math.floor(rnd() * 0x10000));
    }
    // A valid request header in one of the readable buffers, sometimes.
    if (rnd() < 0.5) {
      const hdr = drv.allocator.alloc(16);
      m.memory.writeU32(hdr, [0, 1, 4, 8, 11, 13, 99][Math.floor(rnd() * 7)]);
      m.memory.writeU64(hdr + 8, BigInt(Math.floor(rnd() * 9000)));
      m.memory.writeU64(q.descGpa + 16 * head, BigInt(hdr + DMA_IOVA_OFFSET));
      m.memory.writeU32(q.descGpa + 16 * head + 8, 16);
      m.memory.writeU16(q.descGpa + 16 * head + 12, n > 1 ? 1 : 0);
    }
    q.publish(head);
    drv.kick(0);
    q.takeUsed();
    if ((drv.status & S_NEEDS_RESET) !== 0) {
      drv.bringUp(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_F_INDIRECT_DESC | BLK_FEATURES, 1);
    }
  }
  assert.equal(outside(), sum);
  const s = blk.stats();
  console.log(`fuzz: ${JSON.stringify(s.status)} dmaFaults=${s.dmaFaults}`);
});

test("VIRTIO 1.3 5.2.6.2: DISCARD deallocates the range where the host file system can punch holes", () => {
  const { b, blk, path } = plainBlk();
  assert.equal(b.rangeRequest(T_DISCARD, [{ sector: 8, sectors: 8 }]).status, 0);
  const region = readFileSync(path).subarray(8 * 512, 16 * 512);
  const deallocated = blk.stats().deallocatedBytes;
  console.log(`discard: ${deallocated} bytes deallocated on ${tmpdir()}`);
  if (deallocated > 0) {
    assert.equal(deallocated, 4096);
    assert.ok(
      region.every((x) => x === 0),
      "a punched hole reads as zeroes",
    );
  } else {
    assert.ok(
      region.every((x) => x === 0x11),
      "no deallocation: the data is unchanged",
    );
  }
  assert.equal(readFileSync(path).length, 1 << 20, "the disk keeps its size");
});

test("DISCARD and WRITE_ZEROES are UNSUPP when their feature was not negotiated", () => {
  const { b, path } = plainBlk({ features: VIRTIO_F_VERSION_1 | F_FLUSH });
  const before = sha(readFileSync(path));
  assert.equal(b.rangeRequest(T_DISCARD, [{ sector: 0, sectors: 8 }]).status, 2);
  assert.equal(b.rangeRequest(T_WRITE_ZEROES, [{ sector: 0, sectors: 8 }]).status, 2);
  assert.equal(sha(readFileSync(path)), before);
});

test("observability: requests answered IOERR or UNSUPP are trace events with type and sector", () => {
  const path = diskFile(1 << 20);
  const m = new TestMachine();
  const tracer = new Tracer();
  const events: string[] = [];
  tracer.listen(
    (e) => events.push(`${e.name}:${e.fields.type}:${e.fields.sector}:${e.fields.status}`),
    ["queue"],
  );
  const blk = new VirtioBlk({ path, readOnly: true, queueSize: 16, tracer });
  m.add(blk.pci, 2);
  const alloc = new GuestAllocator(1 << 20, 8 << 20);
  const drv = new VirtioPciDriver(m, BLK_BDF, alloc);
  drv.bringUp(VIRTIO_F_VERSION_1 | BLK_FEATURES, 1);
  const b = new BlkDriver(drv, alloc);
  b.write(5, pattern(512, 1));
  b.submit(42, 0, [], []);
  assert.ok(events.includes("request-error:1:5:IOERR"), events.join(","));
  assert.ok(events.includes("request-error:42:0:UNSUPP"), events.join(","));
});
