/**
 * A vfio-user client in its own process (the server blocks its event loop during a DMA_READ /
 * DMA_WRITE round trip, so an in-process client could never answer). It registers a region
 * without a descriptor, backs it with a local buffer, answers the server's DMA_READ/DMA_WRITE
 * requests from it, and drives edu DMA through BAR0. While the first DMA request is pending it
 * sends a REGION_READ of its own (the server must buffer it and answer it afterwards, in order).
 * Prints one JSON report on stdout.
 *
 * Usage: node --import tsx dma-message-client.ts <socket> <iova> <maxDataXferSize>
 */
import { payload, type Reply, SpecClient } from "./spec-client.ts";

const [socketPath, iovaArg, xferArg] = process.argv.slice(2);
const IOVA = Number(iovaArg);
const MAX_XFER = Number(xferArg);
const SIZE = 64 * 1024;
const memory = new Uint8Array(SIZE);
const requests: { command: number; address: number; count: number; dataBytes: number }[] = [];
const order: string[] = [];
let interleaved = false;

function ok(r: Reply, what: string): Reply {
  if ((r.flags & 0x20) !== 0) throw new Error(`${what}: error ${r.error}`);
  return r;
}

async function main(): Promise<void> {
  const c = new SpecClient(socketPath);
  c.onRequest = (req) => {
    const address = Number(req.view.getBigUint64(0, true));
    const count = Number(req.view.getBigUint64(8, true));
    requests.push({ command: req.command, address, count, dataBytes: req.payload.length - 16 });
    const off = address - IOVA;
    if (!interleaved) {
      // A request of ours while the server waits for this reply.
      interleaved = true;
      void regionRead(c, 7, 0, 4).then(() => order.push("interleaved REGION_READ"));
    }
    if (req.command === 11) {
      const body = new Uint8Array(16 + count);
      body.set(req.payload.subarray(0, 16), 0);
      body.set(memory.subarray(off, off + count), 16);
      void c.reply(req, body);
    } else if (req.command === 12) {
      memory.set(req.payload.subarray(16, 16 + count), off);
      void c.reply(req, req.payload.slice(0, 16));
    } else void c.reply(req, new Uint8Array(0), 38);
  };
  const version = Buffer.from(
    `${JSON.stringify({ capabilities: { max_msg_fds: 8, max_data_xfer_size: MAX_XFER } })}\0`,
  );
  const vp = new Uint8Array(4 + version.length);
  new DataView(vp.buffer).setUint16(2, 1, true);
  vp.set(version, 4);
  ok(await c.request(1, vp), "VERSION");
  await regionWrite(c, 7, 4, 2, 0x6);
  ok(
    await c.request(
      2,
      payload([
        [32, 4],
        [3, 4],
        [0, 8],
        [IOVA, 8],
        [SIZE, 8],
      ]),
    ),
    "DMA_MAP",
  );
  for (let i = 0; i < 4096; i++) memory[i] = (i * 13 + 5) & 0xff;
  // edu: RAM -> device buffer (DMA_READ), then device buffer -> RAM + 8 KiB (DMA_WRITE).
  await regionWrite(c, 0, 0x80, 8, IOVA);
  await regionWrite(c, 0, 0x88, 8, 0x40000);
  await regionWrite(c, 0, 0x90, 8, 4096);
  // Recorded on the reply itself (one hop, like the interleaved request's) so the order is the
  // order the replies arrived in.
  const start = new Uint8Array(24);
  new DataView(start.buffer).setBigUint64(0, 0x98n, true);
  new DataView(start.buffer).setUint32(12, 8, true);
  new DataView(start.buffer).setBigUint64(16, 1n, true);
  ok(
    await c.request(10, start).then((r) => {
      order.push("edu DMA command");
      return r;
    }),
    "edu DMA command",
  );
  await regionWrite(c, 0, 0x80, 8, 0x40000);
  await regionWrite(c, 0, 0x88, 8, IOVA + 8192);
  await regionWrite(c, 0, 0x90, 8, 4096);
  await regionWrite(c, 0, 0x98, 8, 1 | 2);
  const landed = memory.subarray(8192, 8192 + 4096).every((b, i) => b === memory[i]);
  const alive = ok(await regionRead(c, 7, 0, 4), "REGION_READ config").view.getUint32(16, true);
  c.close();
  process.stdout.write(
    `${JSON.stringify({
      requests,
      order,
      pattern: memory.subarray(0, 4096).every((b, i) => b === ((i * 13 + 5) & 0xff)),
      landed,
      alive,
    })}\n`,
  );
}

function regionRead(c: SpecClient, region: number, offset: number, count: number): Promise<Reply> {
  return c.request(
    9,
    payload([
      [offset, 8],
      [region, 4],
      [count, 4],
    ]),
  );
}

async function regionWrite(c: SpecClient, region: number, offset: number, count: 2 | 8, value: number) {
  const p = new Uint8Array(16 + count);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setUint32(8, region, true);
  v.setUint32(12, count, true);
  if (count === 8) v.setBigUint64(16, BigInt(value), true);
  else v.setUint16(16, value, true);
  return ok(await c.request(10, p), `REGION_WRITE ${region}:0x${offset.toString(16)}`);
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${(e as Error).stack ?? e}\n`);
    process.exit(1);
  },
);
