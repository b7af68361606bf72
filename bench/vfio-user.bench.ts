/**
 * vfio-user server costs, measured over a real UNIX socket against the real server: `viommu
 * serve --device edu` runs as a child process (as it does for QEMU); the client here issues
 * blocking round trips, so each operation is one full request/reply through the kernel, libuv
 * readiness, framing, dispatch into the edu model and back.
 *
 * The doorbell case drives `viommu serve --iommu virtio` the way QEMU 11 and Linux do
 * (test/support/remote-viommu.ts): rings in a memfd both processes map, each request announced
 * by one posted REGION_WRITE (no reply) and its completion polled on the used ring. That is the
 * path of a guest's VFIO map or unmap, without the guest. Its floor, the same two posted doorbells
 * answered in shared memory by a process that does nothing else (bench/support/doorbell-floor.ts),
 * shows what the round trip itself costs on this machine, and so what of the doorbell case is ours.
 *
 * The first-touch case DMAs each time into a page of the client's memfd that nobody has touched:
 * what a fresh guest's first virtio-blk reads cost in the server (page faults on its mapping).
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  closeFd,
  connectUnix,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MsgScratch,
  mapFile,
  mappingView,
  memfdCreate,
  NativeBuffer,
  PROT_READ,
  PROT_WRITE,
} from "../src/vfio-user/libc.ts";
import { RemoteViommuDriver } from "../test/support/remote-viommu.ts";
import type { BenchCase } from "./harness.ts";

interface Client {
  fd: number;
  scratch: MsgScratch;
  tx: NativeBuffer;
  rx: NativeBuffer;
  id: number;
  memfd: number;
  dmaReady: boolean;
}

let client: Client | undefined;

/** Run in order when the runner exits: servers killed, then their socket directories removed. */
const atExit: (() => void)[] = [];
process.on("exit", () => {
  for (const f of atExit) f();
});

/** A directory for a server's sockets, removed when the runner exits (after its servers). */
function socketDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "vfio-user-bench-"));
  atExit.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts `viommu serve` with `args` in a child process; returns the path of socket `name`. */
function startServe(args: string[], name: string): string {
  const dir = socketDir();
  const serve = fileURLToPath(new URL("../src/cli/serve.ts", import.meta.url));
  return startChild([serve, "--socket-dir", dir, ...args], join(dir, `${name}.sock`));
}

/** Runs `node --import tsx ...argv` and waits until it has created `socketPath`. */
function startChild(argv: string[], socketPath: string): string {
  const child = spawn(process.execPath, ["--import", "tsx", ...argv], {
    stdio: "ignore",
  });
  // The server must not keep the runner alive: it is killed when the runner exits.
  child.unref();
  atExit.unshift(() => child.kill("SIGKILL"));
  // The benchmark API is synchronous: wait for the socket without the event loop.
  const sleep = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 1000 && !existsSync(socketPath); i++) Atomics.wait(sleep, 0, 0, 10);
  if (!existsSync(socketPath)) throw new Error("viommu serve did not create its socket");
  Atomics.wait(sleep, 0, 0, 50); // bind happens before listen: let it listen
  return socketPath;
}

let viommu: RemoteViommuDriver | undefined;
let viommuFloor: RemoteViommuDriver | undefined;

/** A driver of `socketPath`'s virtio-iommu, its endpoint `endpoint` attached to domain 1. */
function driveViommu(socketPath: string, endpoint: number): RemoteViommuDriver {
  const d = new RemoteViommuDriver(socketPath);
  d.bringUp();
  if (d.attach(1, endpoint) !== 0) throw new Error("ATTACH refused");
  return d;
}

/** `viommu serve`: the edu behind the served virtio-iommu is at slot 0x11, endpoint ID = its BDF. */
function setupViommu(): RemoteViommuDriver {
  viommu ??= driveViommu(
    startServe(["--iommu", "virtio", "--device", "edu,iommu=on"], "virtio-iommu"),
    0x11 << 3,
  );
  return viommu;
}

/** bench/support/floor-serve.ts: MAP and UNMAP answered without the model; its edu is at 0x12. */
function setupViommuFloor(): RemoteViommuDriver {
  if (viommuFloor !== undefined) return viommuFloor;
  const dir = socketDir();
  const script = fileURLToPath(new URL("./support/floor-serve.ts", import.meta.url));
  viommuFloor = driveViommu(
    startChild([script, "--socket-dir", dir], join(dir, "virtio-iommu.sock")),
    0x12 << 3,
  );
  return viommuFloor;
}

/** `n` MAP+UNMAP pairs of 4 KiB through driver `d`. */
function mapUnmapPairs(d: RemoteViommuDriver, n: number): void {
  for (let i = 0; i < n; i++) {
    const iova = 0x10_0000 + (i & 63) * 4096;
    if (d.map(1, iova, 4096, 0x20_0000) !== 0 || d.unmap(1, iova, 4096) !== 0)
      throw new Error("MAP or UNMAP refused");
  }
}

function setup(): Client {
  client ??= connectClient(startServe(["--device", "edu"], "edu0"));
  return client;
}

/** A negotiated client of the server at `socketPath`. */
function connectClient(socketPath: string): Client {
  const c: Client = {
    fd: connectUnix(socketPath),
    scratch: new MsgScratch(),
    tx: new NativeBuffer(4096),
    rx: new NativeBuffer(4096),
    id: 0,
    memfd: memfdCreate("bench-ram", 1 << 20),
    dmaReady: false,
  };
  const json = Buffer.from('{"capabilities":{"max_msg_fds":8}}\0');
  const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
  v.setUint16(16, 0, true);
  v.setUint16(18, 1, true);
  c.tx.bytes.set(json, 20);
  roundTrip(c, 1, 4 + json.length);
  return c;
}

/** Sends the staged message (payload at tx[16..]) and blocks until its whole reply arrived. */
function roundTrip(c: Client, command: number, payloadBytes: number, fds: number[] = []): DataView {
  const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
  c.id = (c.id + 1) & 0xffff;
  v.setUint16(0, c.id, true);
  v.setUint16(2, command, true);
  v.setUint32(4, 16 + payloadBytes, true);
  v.setUint32(8, 0, true);
  v.setUint32(12, 0, true);
  if (c.scratch.send(c.fd, c.tx, 0, 16 + payloadBytes, fds) !== 16 + payloadBytes)
    throw new Error("short send");
  const r = new DataView(c.rx.bytes.buffer, c.rx.bytes.byteOffset, 4096);
  let have = 0;
  const got: number[] = [];
  while (have < 16 || have < r.getUint32(4, true)) {
    const { n } = c.scratch.recv(c.fd, c.rx, have, 4096 - have, got, true);
    if (n <= 0) throw new Error(`recv ${n}`);
    have += n;
  }
  if ((r.getUint32(8, true) & 0x20) !== 0)
    throw new Error(`error reply ${r.getUint32(12, true)} to ${command}`);
  return r;
}

function stageRegion(c: Client, region: number, offset: number, count: number, value?: number): number {
  const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
  v.setBigUint64(16, BigInt(offset), true);
  v.setUint32(24, region, true);
  v.setUint32(28, count, true);
  if (value !== undefined) v.setUint32(32, value, true);
  return 16 + (value !== undefined ? count : 0);
}

/** DMA_MAP of [iova, iova + sizeBytes) of `memfd` (read and write), then bus mastering on. */
function dmaMap(c: Client, memfd: number, iova: number, sizeBytes: number): void {
  const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
  v.setUint32(16, 32, true);
  v.setUint32(20, 3, true);
  v.setBigUint64(24, 0n, true);
  v.setBigUint64(32, BigInt(iova), true);
  v.setBigUint64(40, BigInt(sizeBytes), true);
  roundTrip(c, 2, 32, [memfd]);
}

function dmaUnmap(c: Client, iova: number, sizeBytes: number): void {
  const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
  v.setUint32(16, 24, true);
  v.setUint32(20, 0, true);
  v.setBigUint64(24, BigInt(iova), true);
  v.setBigUint64(32, BigInt(sizeBytes), true);
  roundTrip(c, 3, 24);
}

/**
 * First touches: an edu on its own server, DMAing from its buffer into RAM, each time into the
 * next page of a 128 MiB memfd nobody has touched (below edu's 2^28 DMA mask); a spent memfd is
 * unmapped and a fresh one mapped in its place.
 */
const FRESH_IOVA = 0x800_0000;
const FRESH_BYTES = 128 << 20;
let fresh: { c: Client; memfd: number; nextPage: number } | undefined;

function freshPage(): number {
  if (fresh === undefined) {
    const c = connectClient(startServe(["--device", "edu"], "edu0"));
    roundTrip(c, 10, stageRegion(c, 7, 4, 4, 0x6)); // command: memory space, bus master
    roundTrip(c, 10, stageRegion(c, 0, 0x80, 4, 0x40000)); // source: the edu buffer
    roundTrip(c, 10, stageRegion(c, 0, 0x90, 4, 4096));
    fresh = { c, memfd: -1, nextPage: FRESH_BYTES };
  }
  const f = fresh;
  if (f.nextPage * 4096 >= FRESH_BYTES) {
    if (f.memfd >= 0) {
      dmaUnmap(f.c, FRESH_IOVA, FRESH_BYTES);
      closeFd(f.memfd);
    }
    // Sealable, as QEMU's memfd backend: the server maps it (an unsealable one is reached by
    // pwrite, which takes no page faults).
    f.memfd = memfdCreate("bench-fresh", FRESH_BYTES, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    dmaMap(f.c, f.memfd, FRESH_IOVA, FRESH_BYTES);
    f.nextPage = 0;
  }
  return FRESH_IOVA + 4096 * f.nextPage++;
}

/** The doorbell floor: bench/support/doorbell-floor.ts, its counter in a memfd both map. */
let floor: { c: Client; counter: Uint32Array; answered: number } | undefined;

function setupFloor(): NonNullable<typeof floor> {
  if (floor !== undefined) return floor;
  const dir = socketDir();
  const script = fileURLToPath(new URL("./support/doorbell-floor.ts", import.meta.url));
  const fd = connectUnix(startChild([script, join(dir, "floor.sock")], join(dir, "floor.sock")));
  const c: Client = {
    fd,
    scratch: new MsgScratch(),
    tx: new NativeBuffer(4096),
    rx: new NativeBuffer(4096),
    id: 0,
    memfd: memfdCreate("bench-floor", 4096),
    dmaReady: false,
  };
  const m = mapFile(c.memfd, 0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED);
  if (m === null) throw new Error("mmap of the floor's memfd failed");
  const counter = new Uint32Array(mappingView(m, 0, 4096).buffer, 0, 1);
  floor = { c, counter, answered: 0 };
  // The first message hands over the memory; it is answered like the others.
  postAndPoll(floor, 16, [c.memfd]);
  return floor;
}

/** Sends one message of `bytes` (posted: no reply) and polls the counter until it moved. */
function postAndPoll(f: NonNullable<typeof floor>, bytes: number, fds: number[] = []): void {
  const v = new DataView(f.c.tx.bytes.buffer, f.c.tx.bytes.byteOffset, 4096);
  v.setUint32(4, bytes, true);
  if (f.c.scratch.send(f.c.fd, f.c.tx, 0, bytes, fds) !== bytes) throw new Error("short send");
  f.answered++;
  for (let i = 0; Atomics.load(f.counter, 0) !== f.answered; i++) {
    if ((i & 0xfffff) === 0xfffff && i > 0x4000000) throw new Error("the floor process does not answer");
  }
}

export const cases: BenchCase[] = [
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "REGION_READ 4 B (BAR0 identification)",
    initialBatch: 200,
    run(n) {
      const c = setup();
      for (let i = 0; i < n; i++) roundTrip(c, 9, stageRegion(c, 0, 0, 4));
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "REGION_WRITE 4 B (BAR0 liveness)",
    initialBatch: 200,
    run(n) {
      const c = setup();
      for (let i = 0; i < n; i++) roundTrip(c, 10, stageRegion(c, 0, 4, 4, i));
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "REGION_READ 4 B config (vendor/device)",
    initialBatch: 200,
    run(n) {
      const c = setup();
      for (let i = 0; i < n; i++) roundTrip(c, 9, stageRegion(c, 7, 0, 4));
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "REGION_WRITE starting a 4 KiB edu DMA (RAM to device)",
    initialBatch: 200,
    run(n) {
      const c = setup();
      if (!c.dmaReady) {
        // Map 1 MiB of guest RAM at 0x100000, enable bus mastering, program the DMA registers.
        const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
        v.setUint32(16, 32, true);
        v.setUint32(20, 3, true);
        v.setBigUint64(24, 0n, true);
        v.setBigUint64(32, 0x100000n, true);
        v.setBigUint64(40, 0x100000n, true);
        roundTrip(c, 2, 32, [c.memfd]);
        roundTrip(c, 10, stageRegion(c, 7, 4, 4, 0x6));
        roundTrip(c, 10, stageRegion(c, 0, 0x80, 4, 0x100000));
        roundTrip(c, 10, stageRegion(c, 0, 0x88, 4, 0x40000));
        roundTrip(c, 10, stageRegion(c, 0, 0x90, 4, 4096));
        c.dmaReady = true;
      }
      for (let i = 0; i < n; i++) roundTrip(c, 10, stageRegion(c, 0, 0x98, 4, 1));
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "DMA_MAP (memfd by SCM_RIGHTS, mmap) + DMA_UNMAP, 64 KiB",
    initialBatch: 50,
    run(n) {
      const c = setup();
      const v = new DataView(c.tx.bytes.buffer, c.tx.bytes.byteOffset, 4096);
      for (let i = 0; i < n; i++) {
        v.setUint32(16, 32, true);
        v.setUint32(20, 3, true);
        v.setBigUint64(24, 0n, true);
        v.setBigUint64(32, 0x10000000n, true);
        v.setBigUint64(40, 0x10000n, true);
        roundTrip(c, 2, 32, [c.memfd]);
        v.setUint32(16, 24, true);
        v.setUint32(20, 0, true);
        v.setBigUint64(24, 0x10000000n, true);
        v.setBigUint64(32, 0x10000n, true);
        roundTrip(c, 3, 24);
      }
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "edu DMA 4 KiB to RAM, into untouched pages",
    initialBatch: 50,
    run(n) {
      for (let i = 0; i < n; i++) {
        const page = freshPage();
        const c = (fresh as NonNullable<typeof fresh>).c;
        roundTrip(c, 10, stageRegion(c, 0, 0x88, 4, page));
        roundTrip(c, 10, stageRegion(c, 0, 0x98, 4, 0x3)); // start, buffer to RAM
      }
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "floor: 2 doorbells answered by a no-op process",
    initialBatch: 50,
    run(n) {
      const f = setupFloor();
      // The size of QEMU's doorbell: a REGION_WRITE of 4 bytes (header, offset, region, count, data).
      for (let i = 0; i < n; i++) {
        postAndPoll(f, 36);
        postAndPoll(f, 36);
      }
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "virtio-iommu MAP+UNMAP 4 KiB by doorbell (posted, as QEMU)",
    initialBatch: 50,
    run(n) {
      mapUnmapPairs(setupViommu(), n);
    },
  },
  {
    group: "vfio-user: server round trips over a UNIX socket (edu)",
    name: "floor: the same, MAP/UNMAP answered without the model",
    initialBatch: 50,
    run(n) {
      mapUnmapPairs(setupViommuFloor(), n);
    },
  },
];
