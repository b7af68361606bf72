/**
 * vfio-user server costs, measured over a real UNIX socket against the real server: `viommu
 * serve --device edu` runs as a child process (as it does for QEMU); the client here issues
 * blocking round trips, so each operation is one full request/reply through the kernel, libuv
 * readiness, framing, dispatch into the edu model and back.
 *
 * The doorbell case drives `viommu serve --iommu virtio` the way QEMU 11 and Linux do
 * (test/support/remote-viommu.ts): rings in a memfd both processes map, each request announced
 * by one posted REGION_WRITE (no reply) and its completion polled on the used ring. That is the
 * path of a guest's VFIO map or unmap, without the guest.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connectUnix, MsgScratch, memfdCreate, NativeBuffer } from "../src/vfio-user/libc.ts";
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

/** Starts `viommu serve` with `args` in a child process; returns the path of socket `name`. */
function startServe(args: string[], name: string): string {
  const dir = mkdtempSync(join(tmpdir(), "vfio-user-bench-"));
  const socketPath = join(dir, `${name}.sock`);
  const serve = fileURLToPath(new URL("../src/cli/serve.ts", import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", serve, "--socket-dir", dir, ...args], {
    stdio: "ignore",
  });
  // The server must not keep the runner alive: it is killed when the runner exits.
  child.unref();
  process.on("exit", () => child.kill("SIGKILL"));
  // The benchmark API is synchronous: wait for the socket without the event loop.
  const sleep = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 1000 && !existsSync(socketPath); i++) Atomics.wait(sleep, 0, 0, 10);
  if (!existsSync(socketPath)) throw new Error("viommu serve did not create its socket");
  Atomics.wait(sleep, 0, 0, 50); // bind happens before listen: let it listen
  return socketPath;
}

let viommu: RemoteViommuDriver | undefined;
/** The edu behind the served virtio-iommu: slot 0x11, endpoint ID = its BDF. */
const EDU_ENDPOINT = 0x11 << 3;

function setupViommu(): RemoteViommuDriver {
  if (viommu !== undefined) return viommu;
  const d = new RemoteViommuDriver(
    startServe(["--iommu", "virtio", "--device", "edu,iommu=on"], "virtio-iommu"),
  );
  d.bringUp();
  if (d.attach(1, EDU_ENDPOINT) !== 0) throw new Error("ATTACH refused");
  viommu = d;
  return d;
}

function setup(): Client {
  if (client !== undefined) return client;
  const socketPath = startServe(["--device", "edu"], "edu0");
  const c: Client = {
    fd: connectUnix(socketPath),
    scratch: new MsgScratch(),
    tx: new NativeBuffer(4096),
    rx: new NativeBuffer(4096),
    id: 0,
    memfd: memfdCreate("bench-ram", 1 << 20),
    dmaReady: false,
  };
  client = c;
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
    name: "virtio-iommu MAP+UNMAP 4 KiB by doorbell (posted, as QEMU)",
    initialBatch: 50,
    run(n) {
      const d = setupViommu();
      for (let i = 0; i < n; i++) {
        const iova = 0x10_0000 + (i & 63) * 4096;
        if (d.map(1, iova, 4096, 0x20_0000) !== 0 || d.unmap(1, iova, 4096) !== 0)
          throw new Error("MAP or UNMAP refused");
      }
    },
  },
];
