/**
 * Coverage-guided fuzz target (Jazzer.js, libFuzzer) for the vfio-user server's message decoding
 * and validation: each input becomes one connection (a socketpair) to a real server serving
 * QEMU's edu, negotiated, then a stream of messages built from the input. Each message: command
 * (u8), flags (u8), payload length (u16), payload; a set flags bit 7 makes the header's size
 * field lie by the next byte. The server must never throw, never reach its internal-error path,
 * and must close or keep the connection cleanly.
 */
import { EduDevice } from "../src/devices/edu.ts";
import { DmaAddressSpace, IDENTITY } from "../src/engine/dma-space.ts";
import { ResourceBudget } from "../src/vfio-user/region-backing.ts";
import { closeFd, MsgScratch, NativeBuffer, socketPair } from "../src/vfio-user/libc.ts";
import { VfioUserDeviceServer } from "../src/vfio-user/server.ts";
import { SharedGuestMemory } from "../src/vfio-user/shared-memory.ts";

const memory = new SharedGuestMemory(new ResourceBudget(64, 16));
const edu = new EduDevice({ name: "edu", dmaMask: Number.MAX_SAFE_INTEGER });
const server = new VfioUserDeviceServer({
  name: "edu",
  fn: edu.pci,
  socketPath: "/nonexistent/fuzz.sock", // never listened on: connections come from serveConnection
  memory,
  dma: new DmaAddressSpace(memory, IDENTITY, 0x88),
  requesterId: 0x88,
  dmaTimeoutMs: 5,
  maxDataXferSize: 4096, // small per-connection buffers: many connections per second
});
const scratch = new MsgScratch();
const tx = new NativeBuffer(1 << 20);
const rx = new NativeBuffer(1 << 20);

const VERSION = (() => {
  const json = Buffer.from(`${JSON.stringify({ capabilities: { max_msg_fds: 8, max_data_xfer_size: 4096 } })}\0`);
  const m = Buffer.alloc(16 + 4 + json.length);
  m.writeUInt16LE(1, 2);
  m.writeUInt32LE(m.length, 4);
  m.writeUInt16LE(1, 18);
  json.copy(m, 20);
  return m;
})();

/** The input as a stream of framed messages (see the file comment). */
function messages(data: Buffer): Buffer {
  const out: Buffer[] = [VERSION];
  let at = 0;
  let id = 2;
  while (at + 4 <= data.length && out.length < 64) {
    const command = data[at];
    const flags = data[at + 1];
    const len = Math.min(data.readUInt16LE(at + 2), data.length - at - 4);
    const lie = (flags & 0x80) !== 0 && at + 4 + len < data.length ? data[at + 4 + len] : 0;
    const m = Buffer.alloc(16 + len);
    m.writeUInt16LE(id++ & 0xffff, 0);
    m.writeUInt16LE(command, 2);
    m.writeUInt32LE(Math.max(0, 16 + len + (lie === 0 ? 0 : lie - 128)), 4);
    m.writeUInt32LE(flags & 0x3f, 8);
    data.copy(m, 16, at + 4, at + 4 + len);
    out.push(m);
    at += 4 + len + (lie === 0 ? 0 : 1);
  }
  return Buffer.concat(out);
}

const turn = () => new Promise<void>((r) => setImmediate(r));

export async function fuzz(data: Buffer): Promise<void> {
  const [serverEnd, clientEnd] = socketPair();
  server.serveConnection(serverEnd);
  const stream = messages(data);
  tx.bytes.set(stream.subarray(0, Math.min(stream.length, tx.sizeBytes)), 0);
  let sent = 0;
  for (let spins = 0; sent < stream.length && spins < 64; spins++) {
    const n = scratch.send(clientEnd, tx, sent, Math.min(stream.length, tx.sizeBytes) - sent);
    if (n > 0) sent += n;
    // Drain replies (and server requests) so the server is never back-pressured by us.
    const fds: number[] = [];
    while (scratch.recv(clientEnd, rx, 0, rx.sizeBytes, fds).n > 0) for (const fd of fds.splice(0)) closeFd(fd);
    await turn();
    if (n <= 0 && !server.connected) break;
  }
  for (let i = 0; i < 4; i++) await turn();
  closeFd(clientEnd);
  for (let i = 0; i < 4 && server.connected; i++) await turn();
  if (server.connected) throw new Error("the server did not notice the client leaving");
  if (server.stats().internalErrors !== 0) throw new Error("internal error at the command boundary");
}
