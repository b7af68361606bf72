/**
 * The vfio-user server against a client written from the specification (spec-client.ts), over
 * real UNIX sockets, with a real memfd passed by SCM_RIGHTS as the DMA region, and QEMU's edu
 * device as the served function. Test names cite QEMU docs/interop/vfio-user.rst.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { EDU_ID_VALUE, EduDevice } from "../../src/devices/edu.ts";
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import {
  closeFd,
  connectUnix,
  createEventFd,
  drainEventFd,
  MAP_SHARED,
  MsgScratch,
  mapFile,
  mappingView,
  memfdCreate,
  NativeBuffer,
  PROT_READ,
  PROT_WRITE,
  socketPair,
} from "../../src/vfio-user/libc.ts";
import { VfioUserDeviceServer } from "../../src/vfio-user/server.ts";
import { SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";
import { payload, type Reply, SpecClient } from "./spec-client.ts";

const ENOENT = 2;
const E2BIG = 7;
const EEXIST = 17;
const EINVAL = 22;
const ENOSYS = 38;
const ERROR_FLAG = 0x20;
const REPLY = 0x1;
const NO_REPLY = 0x10;

const RAM_GPA = 0x100000;
const RAM_SIZE = 1 << 20;

interface Rig {
  dir: string;
  memory: SharedGuestMemory;
  edu: EduDevice;
  server: VfioUserDeviceServer;
  memfd: number;
  ram: Uint8Array;
}

/** The bound on one DMA_READ/DMA_WRITE round trip in these tests. */
const DMA_TIMEOUT_MS = 300;

function makeServer(dir: string, memory: SharedGuestMemory, name: string, slot: number) {
  const edu = new EduDevice({ name });
  const bdf = slot << 3;
  const server = new VfioUserDeviceServer({
    name,
    fn: edu.pci,
    socketPath: join(dir, `${name}.sock`),
    memory,
    dma: new DmaAddressSpace(memory, IDENTITY, bdf),
    requesterId: bdf,
    dmaTimeoutMs: DMA_TIMEOUT_MS,
  });
  server.listen();
  return { edu, server };
}

function versionPayload(major: number, minor: number, caps: object | null): Uint8Array {
  const json = caps === null ? new Uint8Array(0) : Buffer.from(`${JSON.stringify(caps)}\0`);
  const out = new Uint8Array(4 + json.length);
  new DataView(out.buffer).setUint16(0, major, true);
  new DataView(out.buffer).setUint16(2, minor, true);
  out.set(json, 4);
  return out;
}

async function negotiate(c: SpecClient): Promise<void> {
  const r = await c.request(
    1,
    versionPayload(0, 1, { capabilities: { max_msg_fds: 8, max_data_xfer_size: 1 << 20 } }),
  );
  assert.equal(r.flags & ERROR_FLAG, 0);
}

const regionRead = (c: SpecClient, region: number, offset: number, count: number) =>
  c.request(
    9,
    payload([
      [offset, 8],
      [region, 4],
      [count, 4],
    ]),
  );

function regionWrite(c: SpecClient, region: number, offset: number, count: number, value: number, flags = 0) {
  const p = new Uint8Array(16 + count);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setUint32(8, region, true);
  v.setUint32(12, count, true);
  if (count === 8) v.setBigUint64(16, BigInt(value), true);
  else if (count === 4) v.setUint32(16, value >>> 0, true);
  else if (count === 2) v.setUint16(16, value, true);
  else v.setUint8(16, value);
  return c.request(10, p, [], flags);
}

const dmaMap = (c: SpecClient, iova: number, size: number, offset: number, flags: number, fds: number[]) =>
  c.request(
    2,
    payload([
      [32, 4],
      [flags, 4],
      [offset, 8],
      [iova, 8],
      [size, 8],
    ]),
    fds,
  );
const dmaUnmap = (c: SpecClient, iova: number, size: number, flags = 0) =>
  c.request(
    3,
    payload([
      [24, 4],
      [flags, 4],
      [iova, 8],
      [size, 8],
    ]),
  );

/** Starts one edu DMA through BAR0 (QEMU edu.rst registers) and returns once it completed. */
async function eduDma(c: SpecClient, src: number, dst: number, count: number, toRam: boolean) {
  await regionWrite(c, 0, 0x80, 8, src);
  await regionWrite(c, 0, 0x88, 8, dst);
  await regionWrite(c, 0, 0x90, 8, count);
  await regionWrite(c, 0, 0x98, 8, 1 | (toRam ? 2 : 0));
}

describe("vfio-user server (edu over a UNIX socket)", () => {
  let rig: Rig;
  before(() => {
    const dir = mkdtempSync(join(tmpdir(), "vfio-user-test-"));
    const memory = new SharedGuestMemory();
    const { edu, server } = makeServer(dir, memory, "edu", 0x10);
    const memfd = memfdCreate("guest-ram", RAM_SIZE);
    const ram = mappingView(mapFile(memfd, 0, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED)!, 0, RAM_SIZE);
    rig = { dir, memory, edu, server, memfd, ram };
  });
  after(() => {
    rig.server.close();
    closeFd(rig.memfd);
    rmSync(rig.dir, { recursive: true, force: true });
  });
  const connect = () => new SpecClient(rig.server.socketPath);

  test("Version: reply has the proposed major, minor <= proposed, NUL-terminated JSON subset of the proposed capabilities", async () => {
    const c = connect();
    const r = await c.request(1, versionPayload(0, 7, { capabilities: { max_msg_fds: 8, pgsizes: 4096 } }));
    assert.equal(r.flags & 0xf, REPLY);
    assert.equal(r.flags & ERROR_FLAG, 0);
    assert.equal(r.view.getUint16(0, true), 0);
    assert.ok(r.view.getUint16(2, true) <= 7);
    assert.equal(r.payload[r.payload.length - 1], 0, "terminating NUL");
    const caps = JSON.parse(Buffer.from(r.payload.subarray(4, r.payload.length - 1)).toString()).capabilities;
    assert.deepEqual(Object.keys(caps).sort(), ["max_msg_fds", "pgsizes"]);
    assert.ok(!("migration" in caps) && !("twin_socket" in caps));
    c.close();
  });

  test("Version: an unsupported major version closes the connection", async () => {
    const c = connect();
    c.sendRaw(c.message(1, versionPayload(9, 0, null)).bytes);
    assert.equal(await c.waitClosed(), true);
  });

  test("Connection Initiation: a command before VFIO_USER_VERSION gets an error reply", async () => {
    const c = connect();
    const r = await c.request(
      4,
      payload([
        [16, 4],
        [0, 4],
        [0, 4],
        [0, 4],
      ]),
    );
    assert.equal(r.flags & ERROR_FLAG, ERROR_FLAG);
    assert.equal(r.error, EINVAL);
    assert.equal(r.payload.length, 0, "an error reply is the header only");
    c.close();
  });

  test("DEVICE_GET_INFO: PCI device with reset, 9 regions, 5 IRQ types", async () => {
    const c = connect();
    await negotiate(c);
    const r = await c.request(
      4,
      payload([
        [16, 4],
        [0, 4],
        [0, 4],
        [0, 4],
      ]),
    );
    assert.equal(r.view.getUint32(0, true), 16);
    assert.equal(r.view.getUint32(4, true), 0b11);
    assert.equal(r.view.getUint32(8, true), 9);
    assert.equal(r.view.getUint32(12, true), 5);
    c.close();
  });

  test("DEVICE_GET_REGION_INFO: BAR0 1 MiB read/write, config 256 bytes, absent BAR size 0, bad index EINVAL", async () => {
    const c = connect();
    await negotiate(c);
    const info = (index: number) =>
      c.request(
        5,
        payload([
          [32, 4],
          [0, 4],
          [index, 4],
          [0, 4],
          [0, 8],
          [0, 8],
        ]),
      );
    const bar0 = await info(0);
    assert.equal(bar0.view.getUint32(4, true), 0b11, "READ|WRITE, no MMAP");
    assert.equal(Number(bar0.view.getBigUint64(16, true)), 1 << 20);
    const cfg = await info(7);
    assert.equal(Number(cfg.view.getBigUint64(16, true)), 256);
    const bar1 = await info(1);
    assert.equal(Number(bar1.view.getBigUint64(16, true)), 0);
    const bad = await info(9);
    assert.equal(bad.error, EINVAL);
    c.close();
  });

  test("DEVICE_GET_IRQ_INFO: INTx maskable and automasked, MSI one vector, MSI-X none", async () => {
    const c = connect();
    await negotiate(c);
    const irq = (index: number) =>
      c.request(
        7,
        payload([
          [16, 4],
          [0, 4],
          [index, 4],
          [0, 4],
        ]),
      );
    const intx = await irq(0);
    assert.equal(intx.view.getUint32(4, true) & 0b111, 0b111);
    assert.equal(intx.view.getUint32(12, true), 1);
    assert.equal((await irq(1)).view.getUint32(12, true), 1);
    assert.equal((await irq(2)).view.getUint32(12, true), 0);
    assert.equal((await irq(5)).error, EINVAL);
    c.close();
  });

  test("REGION_READ/REGION_WRITE: config identity, BAR0 registers, reply echoes offset/region/count", async () => {
    const c = connect();
    await negotiate(c);
    const id = await regionRead(c, 7, 0, 4);
    assert.equal(id.view.getUint32(16, true), 0x11e81234);
    const bar = await regionRead(c, 0, 0, 4);
    assert.equal(Number(bar.view.getBigUint64(0, true)), 0);
    assert.equal(bar.view.getUint32(12, true), 4);
    assert.equal(bar.view.getUint32(16, true), EDU_ID_VALUE);
    const w = await regionWrite(c, 0, 4, 4, 0x12345678);
    assert.equal(w.payload.length, 16);
    assert.equal(w.view.getUint32(12, true), 4);
    assert.equal((await regionRead(c, 0, 4, 4)).view.getUint32(16, true), ~0x12345678 >>> 0);
    // A multi-dword config read (how QEMU reads the header at realize).
    const hdr = await regionRead(c, 7, 0, 64);
    assert.equal(hdr.payload.length, 16 + 64);
    assert.equal(hdr.view.getUint16(16 + 0x2c, true), 0x1af4);
    c.close();
  });

  test("REGION_READ: an access outside the region is EINVAL, above max_data_xfer_size E2BIG", async () => {
    const c = connect();
    await negotiate(c);
    assert.equal((await regionRead(c, 7, 254, 4)).error, EINVAL);
    assert.equal((await regionRead(c, 1, 0, 4)).error, EINVAL, "absent BAR");
    assert.equal((await regionRead(c, 0, 0, (1 << 20) + 4)).error, E2BIG);
    assert.equal((await regionRead(c, 0, 2 ** 60, 4)).error, EINVAL, "offset beyond 2^53");
    c.close();
  });

  test("DMA_MAP with a descriptor: device DMA reaches the client's memory both ways", async () => {
    const c = connect();
    await negotiate(c);
    await regionWrite(c, 7, 4, 2, 0x6); // memory decode + bus master
    const fd = memfdCreate("dup", 0); // a second fd of another file must not matter here
    closeFd(fd);
    const r = await dmaMap(c, RAM_GPA, RAM_SIZE, 0, 3, [rig.memfd]);
    assert.equal(r.flags & ERROR_FLAG, 0, `map failed errno ${r.error}`);
    for (let i = 0; i < 4096; i++) rig.ram[i] = (i * 7 + 3) & 0xff;
    await eduDma(c, RAM_GPA, 0x40000, 4096, false);
    await eduDma(c, 0x40000, RAM_GPA + 8192, 4096, true);
    assert.deepEqual(rig.ram.subarray(8192, 8192 + 4096), rig.ram.subarray(0, 4096));
    assert.equal(rig.memory.stats().regions, 1);
    c.close();
  });

  test("DMA_UNMAP: must match a previous map exactly; reply echoes the entry; afterwards DMA there writes nothing", async () => {
    const c = connect();
    await negotiate(c);
    await regionWrite(c, 7, 4, 2, 0x6);
    assert.equal((await dmaMap(c, RAM_GPA, RAM_SIZE, 0, 3, [rig.memfd])).error, 0);
    const partial = await dmaUnmap(c, RAM_GPA, 4096);
    assert.equal(partial.error, ENOENT);
    const ok = await dmaUnmap(c, RAM_GPA, RAM_SIZE);
    assert.equal(ok.flags & ERROR_FLAG, 0);
    assert.equal(Number(ok.view.getBigUint64(8, true)), RAM_GPA);
    assert.equal(Number(ok.view.getBigUint64(16, true)), RAM_SIZE);
    rig.ram.fill(0x5a, 0, 4096);
    const faults = rig.edu.dmaFaults;
    await eduDma(c, 0x40000, RAM_GPA, 4096, true);
    assert.equal(rig.edu.dmaFaults, faults + 1);
    assert.ok(
      rig.ram.subarray(0, 4096).every((b) => b === 0x5a),
      "memory untouched after unmap",
    );
    c.close();
  });

  test("DMA_MAP without a descriptor: the server reaches the region by DMA_READ/DMA_WRITE messages (edu both ways, split at the client's max_data_xfer_size, client requests meanwhile answered afterwards in order)", async () => {
    const iova = 0x4000000;
    const before = rig.server.stats();
    const transfers = rig.edu.stats().dmaTransfers;
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join(import.meta.dirname, "dma-message-client.ts"),
        rig.server.socketPath,
        `${iova}`,
        "1024",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    assert.equal(code, 0, `client failed: ${err}`);
    const report = JSON.parse(out) as {
      requests: { command: number; address: number; count: number; dataBytes: number }[];
      order: string[];
      pattern: boolean;
      landed: boolean;
      alive: number;
    };
    // 4 KiB each way in 1 KiB pieces (the client's max_data_xfer_size).
    const reads = report.requests.filter((r) => r.command === 11);
    const writes = report.requests.filter((r) => r.command === 12);
    assert.deepEqual(
      reads.map((r) => [r.address, r.count, r.dataBytes]),
      [0, 1, 2, 3].map((i) => [iova + i * 1024, 1024, 0]),
    );
    assert.deepEqual(
      writes.map((r) => [r.address, r.count, r.dataBytes]),
      [0, 1, 2, 3].map((i) => [iova + 8192 + i * 1024, 1024, 1024]),
    );
    // What came back by DMA_WRITE is what went out by DMA_READ (through the device's buffer).
    assert.ok(report.pattern && report.landed, "the data made the round trip through edu");
    assert.deepEqual(report.order, ["edu DMA command", "interleaved REGION_READ"]);
    assert.equal(report.alive, 0x11e81234);
    assert.equal(rig.edu.stats().dmaTransfers, transfers + 2);
    const after = rig.server.stats();
    assert.equal(after.dmaMessages - before.dmaMessages, 8);
    assert.equal(after.dmaMessageFailures, before.dmaMessageFailures);
    // Disconnect released the region.
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(rig.memory.stats().fdlessRegions, 0);
  });

  test("DMA_MAP without a descriptor: a client that never answers DMA_WRITE gets a DMA fault after the timeout; the server keeps serving and drops the late reply", async () => {
    // This client runs on the server's own event loop: it cannot answer while the server waits.
    const c = connect();
    await negotiate(c);
    await regionWrite(c, 7, 4, 2, 0x6);
    const seen: Reply[] = [];
    c.onRequest = (r) => seen.push(r);
    assert.equal((await dmaMap(c, 0x4000000, 1 << 20, 0, 3, [])).error, 0);
    assert.equal(rig.memory.stats().fdlessRegions, 1);
    assert.equal(rig.memory.stats().regions, 0, "no mapping without a descriptor");
    const faults = rig.edu.dmaFaults;
    const failures = rig.server.stats().dmaMessageFailures;
    const t0 = performance.now();
    await eduDma(c, 0x40000, 0x4000000, 64, true);
    assert.ok(performance.now() - t0 >= DMA_TIMEOUT_MS - 5, "the server waited for the reply");
    assert.equal(rig.edu.dmaFaults, faults + 1);
    assert.equal(rig.server.stats().dmaMessageFailures, failures + 1);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].command, 12);
    assert.equal(Number(seen[0].view.getBigUint64(0, true)), 0x4000000);
    assert.equal(Number(seen[0].view.getBigUint64(8, true)), 64);
    // The late reply is dropped; the connection stays usable.
    const unexpected = rig.server.stats().unexpectedReplies;
    await c.reply(seen[0], seen[0].payload.slice(0, 16));
    const id = await regionRead(c, 7, 0, 4);
    assert.equal(id.view.getUint32(16, true), 0x11e81234);
    assert.equal(rig.server.stats().unexpectedReplies, unexpected + 1);
    assert.equal((await dmaUnmap(c, 0x4000000, 1 << 20)).error, 0);
    assert.equal(rig.memory.stats().fdlessRegions, 0);
    c.close();
  });

  test("Header: descriptors stay with their message when several messages arrive in one read", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    const before = rig.memory.stats();
    // Four messages in the socket before the server reads (one event-loop turn): the second
    // carries the memfd, the fourth maps another range without one.
    const replies = [
      regionRead(c, 7, 0, 4),
      dmaMap(c, RAM_GPA, RAM_SIZE, 0, 3, [rig.memfd]),
      regionRead(c, 7, 0, 4),
      dmaMap(c, RAM_GPA + RAM_SIZE, 4096, 0, 3, []),
    ];
    const [r1, r2, r3, r4] = await Promise.all(replies);
    for (const r of [r1, r2, r3, r4]) assert.equal(r.flags & ERROR_FLAG, 0);
    const after = rig.memory.stats();
    assert.equal(after.regions, before.regions + 1, "one region backed by the descriptor");
    assert.equal(after.mappedBytes - before.mappedBytes, RAM_SIZE, "the descriptor went to the 1 MiB map");
    assert.equal(after.fdlessRegions, before.fdlessRegions + 1, "the last map has no descriptor");
    assert.equal((await dmaUnmap(c, RAM_GPA, RAM_SIZE)).error, 0);
    assert.equal((await dmaUnmap(c, RAM_GPA + RAM_SIZE, 4096)).error, 0);
    c.close();
  });

  test("DMA_MAP: a map over an existing region fails with EEXIST", async () => {
    const c = connect();
    await negotiate(c);
    assert.equal((await dmaMap(c, RAM_GPA, RAM_SIZE, 0, 3, [rig.memfd])).error, 0);
    assert.equal((await dmaMap(c, RAM_GPA + 4096, 4096, 4096, 3, [rig.memfd])).error, EEXIST);
    assert.equal((await dmaMap(c, RAM_GPA, RAM_SIZE, 0, 4, [rig.memfd])).error, EINVAL, "unknown flag");
    c.close();
  });

  test("DMA_UNMAP with VFIO_DMA_UNMAP_FLAG_ALL (QEMU's client) releases every region", async () => {
    const c = connect();
    await negotiate(c);
    assert.equal((await dmaMap(c, RAM_GPA, 8192, 0, 3, [rig.memfd])).error, 0);
    assert.equal((await dmaMap(c, RAM_GPA + 65536, 8192, 65536, 1, [rig.memfd])).error, 0);
    assert.equal((await dmaUnmap(c, 0, 0, 2)).error, 0);
    assert.equal(rig.memory.stats().regions, 0);
    assert.equal((await dmaUnmap(c, 0, 0, 4)).error, EINVAL, "vaddr flag refused");
    c.close();
  });

  test("Client Disconnection: all client memory regions are unmapped", async () => {
    const c = connect();
    await negotiate(c);
    assert.equal((await dmaMap(c, RAM_GPA, RAM_SIZE, 0, 3, [rig.memfd])).error, 0);
    assert.equal(rig.memory.stats().regions, 1);
    c.close();
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(rig.memory.stats().regions, 0);
  });

  test("Socket: a second client while one is attached is refused", async () => {
    const a = connect();
    await negotiate(a);
    const b = connect();
    assert.equal(await b.waitClosed(), true);
    assert.equal(
      (await regionRead(a, 0, 0, 4)).view.getUint32(16, true),
      EDU_ID_VALUE,
      "the first client is unaffected",
    );
    assert.equal(rig.server.rejectedConnections, 1);
    a.close();
  });

  test("Socket: a client that hung up is no longer attached, even before the server worked through its requests", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const rejected = rig.server.rejectedConnections;
    const [aServer, aClient] = socketPair();
    assert.equal(rig.server.serveConnection(aServer), true);
    // A sends a request and goes away before the server's event loop ran at all.
    const scratch = new MsgScratch();
    const buf = new NativeBuffer(64);
    const version = versionPayload(0, 1, null);
    const v = new DataView(buf.bytes.buffer, buf.bytes.byteOffset, 64);
    v.setUint16(2, 1, true);
    v.setUint32(4, 16 + version.length, true);
    buf.bytes.set(version, 16);
    assert.equal(scratch.send(aClient, buf, 0, 16 + version.length), 16 + version.length);
    closeFd(aClient);
    const [bServer, bClient] = socketPair();
    assert.equal(rig.server.serveConnection(bServer), true, "B is served: A hung up");
    assert.equal(rig.server.rejectedConnections, rejected);
    closeFd(bClient);
    scratch.free();
    buf.free();
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(rig.server.connected, false);
  });

  test("DEVICE_SET_IRQS: MSI eventfd is signalled when the device raises its interrupt", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    await regionWrite(c, 7, 4, 2, 0x6);
    const efd = createEventFd();
    const set = await c.request(
      8,
      payload([
        [24, 4],
        [0x24, 4],
        [1, 4],
        [0, 4],
        [1, 4],
      ]),
      [efd],
    );
    assert.equal(set.flags & ERROR_FLAG, 0, `errno ${set.error}`);
    await regionWrite(c, 7, 0x44, 4, 0xfee00000); // MSI address (capability at 0x40)
    await regionWrite(c, 7, 0x4c, 2, 0x41); // data
    await regionWrite(c, 7, 0x42, 2, 0x1); // enable
    await regionWrite(c, 0, 0x60, 4, 0x1); // edu: raise interrupt
    assert.equal(drainEventFd(efd), 1);
    closeFd(efd);
    c.close();
  });

  test("DEVICE_SET_IRQS: INTx is automasked after firing and fires again on UNMASK while asserted", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    await regionWrite(c, 7, 0x42, 2, 0x0); // MSI off
    await regionWrite(c, 0, 0x64, 4, 0xffffffff); // ack everything
    const efd = createEventFd();
    assert.equal(
      (
        await c.request(
          8,
          payload([
            [24, 4],
            [0x24, 4],
            [0, 4],
            [0, 4],
            [1, 4],
          ]),
          [efd],
        )
      ).error,
      0,
    );
    await regionWrite(c, 0, 0x60, 4, 0x1); // raise: INTx asserted
    assert.equal(drainEventFd(efd), 1);
    await regionWrite(c, 0, 0x60, 4, 0x2); // still asserted, line masked: no new signal
    assert.equal(drainEventFd(efd), 0);
    // UNMASK with DATA_NONE: 0x11
    assert.equal(
      (
        await c.request(
          8,
          payload([
            [20, 4],
            [0x11, 4],
            [0, 4],
            [0, 4],
            [1, 4],
          ]),
        )
      ).error,
      0,
    );
    assert.equal(drainEventFd(efd), 1, "re-fired: line still asserted");
    await regionWrite(c, 0, 0x64, 4, 0xffffffff); // deassert
    assert.equal(
      (
        await c.request(
          8,
          payload([
            [20, 4],
            [0x11, 4],
            [0, 4],
            [0, 4],
            [1, 4],
          ]),
        )
      ).error,
      0,
    );
    assert.equal(drainEventFd(efd), 0);
    closeFd(efd);
    c.close();
  });

  test("DEVICE_SET_IRQS: two action flags, start+count beyond the IRQ count, fd count mismatch are EINVAL", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    const set = (flags: number, index: number, start: number, count: number, fds: number[] = []) =>
      c.request(
        8,
        payload([
          [20, 4],
          [flags, 4],
          [index, 4],
          [start, 4],
          [count, 4],
        ]),
        fds,
      );
    assert.equal((await set(0x1 | 0x8 | 0x10, 0, 0, 1)).error, EINVAL);
    assert.equal((await set(0x1 | 0x20, 1, 0, 2)).error, EINVAL);
    const a = createEventFd();
    const b = createEventFd();
    assert.equal((await set(0x4 | 0x20, 1, 0, 1, [a, b])).error, EINVAL);
    assert.equal((await set(0x4 | 0x20, 2, 0, 1, [a])).error, EINVAL, "no MSI-X on edu");
    assert.equal((await set(0x1 | 0x20, 1, 0, 0)).error, 0, "count 0 + DATA_NONE disables the index");
    closeFd(a);
    closeFd(b);
    c.close();
  });

  test("Commands: an unsupported command gets ENOSYS; No_reply commands get no reply", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    assert.equal(
      (
        await c.request(
          16,
          payload([
            [8, 4],
            [0x10001, 4],
          ]),
        )
      ).error,
      ENOSYS,
    );
    // A posted write (No_reply) followed by a read: the read's reply is the next one to arrive.
    const before = rig.server.regionWrites;
    c.sendRaw(
      c.message(
        10,
        payload([
          [4, 8],
          [0, 4],
          [4, 4],
          [0xabcdef01, 4],
        ]),
        NO_REPLY,
      ).bytes,
    );
    const r = await regionRead(c, 0, 4, 4);
    assert.equal(r.view.getUint32(16, true), ~0xabcdef01 >>> 0);
    assert.equal(rig.server.regionWrites, before + 1);
    c.close();
  });

  test("Malformed input: short payloads are EINVAL, a header size below 16 closes the connection, the server keeps serving", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    assert.equal((await c.request(2, payload([[32, 4]]))).error, EINVAL, "DMA_MAP of 4 bytes");
    assert.equal((await c.request(9, payload([[0, 4]]))).error, EINVAL, "REGION_READ of 4 bytes");
    const bad = new Uint8Array(16);
    new DataView(bad.buffer).setUint32(4, 8, true); // size 8 < 16
    c.sendRaw(bad);
    assert.equal(await c.waitClosed(), true);
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const d = connect();
    await negotiate(d);
    assert.equal((await regionRead(d, 0, 0, 4)).view.getUint32(16, true), EDU_ID_VALUE);
    d.close();
  });

  test("Malformed input: a message larger than the receive limit is discarded with E2BIG", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const c = connect();
    await negotiate(c);
    const big = c.message(10, new Uint8Array((1 << 20) + 64));
    const p = new Promise<number>((resolve) => {
      // Raw: the reply carries the same ID.
      (c as unknown as { waiting: Map<number, (r: { error: number }) => void> }).waiting.set(big.id, (r) =>
        resolve(r.error),
      );
    });
    await c.sendRaw(big.bytes);
    assert.equal(await p, E2BIG);
    assert.equal((await regionRead(c, 0, 0, 4)).view.getUint32(16, true), EDU_ID_VALUE);
    c.close();
  });

  test("Security Considerations: a client that does not read its replies cannot grow the server's memory (back-pressure)", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const fd = connectUnix(rig.server.socketPath);
    const scratch = new MsgScratch();
    const buf = new NativeBuffer(1 << 20);
    const send = (cmd: number, body: Uint8Array) => {
      const v = new DataView(buf.bytes.buffer, buf.bytes.byteOffset, 64);
      v.setUint16(0, 7, true);
      v.setUint16(2, cmd, true);
      v.setUint32(4, 16 + body.length, true);
      v.setUint32(8, 0, true);
      buf.bytes.set(body, 16);
      assert.equal(scratch.send(fd, buf, 0, 16 + body.length), 16 + body.length);
    };
    send(1, versionPayload(0, 1, { capabilities: {} }));
    const REQUESTS = 40;
    for (let i = 0; i < REQUESTS; i++)
      send(
        9,
        payload([
          [0, 8],
          [0, 4],
          [1 << 20, 4],
        ]),
      ); // 1 MiB BAR0 reads
    await new Promise((r) => setTimeout(r, 300));
    const ch = rig.server.stats().channel!;
    assert.ok(ch.peakQueuedOutBytes <= (8 << 20) + (2 << 20), `queued ${ch.peakQueuedOutBytes} bytes`);
    assert.ok(ch.messagesIn < REQUESTS + 1, `reading stopped while backlogged (${ch.messagesIn} read)`);
    // Now read everything: every request is answered in the end.
    let got = 0;
    const want = 16 + 4 + 40 + REQUESTS * (16 + 16 + (1 << 20));
    for (let spins = 0; got < want && spins < 2000; spins++) {
      const r = scratch.recv(fd, buf, 0, 1 << 20, []);
      if (r.n > 0) got += r.n;
      else await new Promise((res) => setImmediate(res));
    }
    assert.ok(got >= REQUESTS * (16 + 16 + (1 << 20)), `received ${got} bytes`);
    closeFd(fd);
    scratch.free();
    buf.free();
  });

  test("Fuzz: random messages never crash the server (seed printed)", async () => {
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const seed = 0x5eed1234;
    console.log(`fuzz seed 0x${seed.toString(16)}`);
    let s = seed;
    const rand = () => {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      return (s >>> 0) / 2 ** 32;
    };
    const c = connect();
    await negotiate(c);
    for (let i = 0; i < 300; i++) {
      const cmd = 1 + Math.floor(rand() * 18);
      const len = Math.floor(rand() * 48);
      const body = new Uint8Array(len);
      for (let j = 0; j < len; j++) body[j] = Math.floor(rand() * 256);
      // Keep DMA maps out: random fds-less maps are harmless but would pile up.
      const r = await c.request(cmd === 2 ? 4 : cmd, body).catch((e) => {
        throw new Error(
          `fuzz step ${i} command ${cmd} len ${len}: ${(e as Error).message}; server: ${JSON.stringify(rig.server.stats())}`,
        );
      });
      assert.equal(r.flags & 0xf, REPLY);
    }
    c.close();
    for (let i = 0; i < 50 && rig.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
    const d = connect();
    await negotiate(d);
    d.close();
  });
});

describe("shared guest memory across devices", () => {
  test("every client maps the same guest RAM: one mapping, reference-counted, released with the last client; cross-client overlaps resolve to the newest", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vfio-user-test-"));
    const memory = new SharedGuestMemory();
    const a = makeServer(dir, memory, "a", 0x10);
    const b = makeServer(dir, memory, "b", 0x11);
    const memfd = memfdCreate("guest-ram", RAM_SIZE);
    try {
      const ca = new SpecClient(a.server.socketPath);
      const cb = new SpecClient(b.server.socketPath);
      await negotiate(ca);
      await negotiate(cb);
      assert.equal((await dmaMap(ca, RAM_GPA, RAM_SIZE, 0, 3, [memfd])).error, 0);
      assert.equal((await dmaMap(cb, RAM_GPA, RAM_SIZE, 0, 3, [memfd])).error, 0);
      assert.equal(memory.stats().regions, 1);
      assert.equal(memory.stats().sharedMaps, 1);
      // Another client's transient re-layout over a live region is accepted; the newest wins.
      const other = memfdCreate("other", RAM_SIZE);
      const otherRam = mappingView(mapFile(other, 0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED)!, 0, 8192);
      otherRam[0] = 0x77;
      assert.equal((await dmaUnmap(cb, RAM_GPA, RAM_SIZE)).error, 0);
      assert.equal((await dmaMap(cb, RAM_GPA + RAM_SIZE - 4096, 8192, 0, 3, [other])).error, 0);
      assert.equal(memory.stats().crossClientOverlaps, 1);
      assert.equal(memory.readU8(RAM_GPA + RAM_SIZE - 4096), 0x77);
      assert.equal((await dmaUnmap(cb, RAM_GPA + RAM_SIZE - 4096, 8192)).error, 0);
      assert.equal((await dmaMap(cb, RAM_GPA, RAM_SIZE, 0, 3, [memfd])).error, 0);
      closeFd(other);
      ca.close();
      for (let i = 0; i < 50 && a.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(memory.stats().regions, 1, "b still holds it");
      cb.close();
      for (let i = 0; i < 50 && b.server.connected; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(memory.stats().regions, 0);
    } finally {
      a.server.close();
      b.server.close();
      closeFd(memfd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
