/**
 * Message-backed guest memory (regions a vfio-user client registers without a descriptor,
 * reached by VFIO_USER_DMA_READ/WRITE) through the engine's address space, with an in-process
 * transport standing in for the client.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { VirtioBlk } from "../../src/devices/virtio-blk.ts";
import { ACCESS_READ } from "../../src/engine/access.ts";
import { DmaAddressSpace, IDENTITY, SgList } from "../../src/engine/dma-space.ts";
import { GuestMemoryError } from "../../src/engine/guest-memory.ts";
import { type DmaTransport, SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";
import { RingWindow } from "../../src/virtio/ring-window.ts";
import { BlkDriver } from "../support/blk-driver.ts";
import { TestMachine } from "../support/machine.ts";
import { GuestAllocator, VIRTIO_F_VERSION_1, VirtioPciDriver } from "../support/virtio-driver.ts";

const BASE = 0x200000;
const SIZE = 0x10000;

function rig(flags = 3) {
  const client = new Uint8Array(SIZE);
  const calls: string[] = [];
  let failing = false;
  const transport: DmaTransport = {
    read(gpa, dest) {
      calls.push(`r ${gpa.toString(16)} ${dest.length}`);
      if (failing) return "no reply";
      dest.set(client.subarray(gpa - BASE, gpa - BASE + dest.length));
      return null;
    },
    write(gpa, src) {
      calls.push(`w ${gpa.toString(16)} ${src.length}`);
      if (failing) return "no reply";
      client.set(src, gpa - BASE);
      return null;
    },
  };
  const memory = new SharedGuestMemory();
  const table = memory.createClientTable(8, transport);
  const r = table.map({
    iova: BASE,
    sizeBytes: SIZE,
    fileOffset: 0,
    readable: true,
    writable: (flags & 2) !== 0,
    fd: -1,
  });
  assert.ok(r.ok);
  const dma = new DmaAddressSpace(memory, IDENTITY, 0x10);
  return { client, calls, memory, table, dma, fail: (f: boolean) => (failing = f) };
}

test("message-backed region: RAM for the address space; bulk and scalar DMA go through the transport", () => {
  const { client, calls, memory, dma } = rig();
  assert.ok(memory.isRam(BASE, SIZE));
  assert.equal(memory.contiguousBytesAt(BASE + 16), SIZE - 16);
  client.set([1, 2, 3, 4, 5, 6, 7, 8], 0x100);
  const dest = new Uint8Array(8);
  assert.equal(dma.read(BASE + 0x100, dest), null);
  assert.deepEqual([...dest], [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(dma.write(BASE + 0x200, new Uint8Array([9, 9, 9])), null);
  assert.deepEqual([...client.subarray(0x200, 0x203)], [9, 9, 9]);
  assert.equal(dma.readUint(BASE + 0x100, 4), 0x04030201);
  assert.equal(dma.writeUint(BASE + 0x300, 2, 0xbeef), null);
  assert.equal(client[0x300] | (client[0x301] << 8), 0xbeef);
  assert.equal(dma.writeU64(BASE + 0x308, 0x1122334455667788n), null);
  assert.equal(dma.readU64(BASE + 0x308), 0x1122334455667788n);
  assert.ok(calls.length >= 6);
  assert.equal(memory.stats().messageFailures, 0);
  assert.equal(memory.stats().regions, 0);
  assert.equal(memory.stats().fdlessRegions, 1);
});

test("message-backed region: a transport failure is a DMA fault, never an exception", () => {
  const { dma, fail, memory } = rig();
  fail(true);
  assert.equal(dma.read(BASE, new Uint8Array(16))?.reason, "not-ram");
  assert.equal(dma.write(BASE, new Uint8Array(16))?.reason, "not-ram");
  assert.equal(dma.readUint(BASE, 4), -1);
  assert.equal(dma.writeUint(BASE, 4, 1)?.reason, "not-ram");
  assert.equal(dma.readU64(BASE), null);
  assert.equal(dma.faults, 5);
  assert.equal(memory.stats().messageFailures, 5);
});

test("message-backed region: no views (GuestMemoryError); a virtio ring window falls back to copying accesses", () => {
  const { client, memory, dma, calls } = rig();
  const sg = new SgList();
  assert.equal(dma.translateRange(BASE, 64, ACCESS_READ, sg), null);
  assert.throws(() => dma.views(sg), GuestMemoryError);
  assert.throws(() => memory.view(BASE, 4), GuestMemoryError);
  const ring = new RingWindow(true);
  ring.bind(dma, BASE, 0x1000);
  client[0x10] = 0x34;
  client[0x11] = 0x12;
  const before = calls.length;
  assert.equal(ring.read16(BASE + 0x10), 0x1234);
  assert.ok(ring.write16(BASE + 0x20, 0xabcd));
  assert.equal(client[0x20] | (client[0x21] << 8), 0xabcd);
  assert.ok(calls.length > before, "went through the transport");
});

test("message-backed region registered read-only: device writes are dropped, not sent", () => {
  const { client, calls, dma, memory } = rig(1);
  assert.equal(dma.write(BASE, new Uint8Array([7, 7])), null);
  assert.equal(client[0], 0);
  assert.equal(calls.length, 0);
  assert.equal(memory.stats().droppedReadOnlyWrites, 1);
});

test("message-backed region: unmap removes it (DMA there then faults as not RAM, nothing sent)", () => {
  const { dma, table, calls, memory } = rig();
  assert.ok(table.unmap(BASE, SIZE).ok);
  assert.equal(memory.stats().fdlessRegions, 0);
  assert.equal(dma.write(BASE, new Uint8Array(4))?.reason, "not-ram");
  assert.equal(calls.length, 0);
});

test("virtio-blk over message-backed memory: rings work through copying accesses, data (views) is IOERR, nothing throws", () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-msg-blk-"));
  try {
    const path = join(dir, "disk.img");
    writeFileSync(path, new Uint8Array(1 << 20).fill(0x11));
    const m = new TestMachine();
    // The whole of the machine's RAM, reached only by "messages" (the transport copies).
    const shared = new SharedGuestMemory();
    const transport: DmaTransport = {
      read(gpa, dest) {
        m.memory.read(gpa, dest);
        return null;
      },
      write(gpa, src) {
        m.memory.write(gpa, src);
        return null;
      },
    };
    const ramBytes = m.memory.totalBytes;
    assert.ok(
      shared
        .createClientTable(8, transport)
        .map({ iova: 0, sizeBytes: ramBytes, fileOffset: 0, readable: true, writable: true, fd: -1 }).ok,
    );
    const blk = new VirtioBlk({ path, queueSize: 64 });
    m.add(blk.pci, 2, (rid) => new DmaAddressSpace(shared, IDENTITY, rid));
    const alloc = new GuestAllocator(1 << 20, 12 << 20);
    const drv = new VirtioPciDriver(m, { bus: 0, device: 2, fn: 0 }, alloc);
    drv.bringUp(VIRTIO_F_VERSION_1, 1);
    const b = new BlkDriver(drv, alloc);
    const r = b.read(0, 512);
    assert.equal(r.result.status, 1, "VIRTIO_BLK_S_IOERR");
    assert.equal(b.write(0, new Uint8Array(512).fill(0x22)).status, 1, "VIRTIO_BLK_S_IOERR");
    assert.ok(
      readFileSync(path)
        .subarray(0, 512)
        .every((x) => x === 0x11),
      "disk untouched",
    );
    assert.ok(shared.stats().messageReads > 0 && shared.stats().messageWrites > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
