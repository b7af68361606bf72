/**
 * A hostile vfio-user client process for soak tests: for a fixed number of rounds it connects to
 * the server and does one of several bad things, each bounded in count and time, then goes away
 * without cleaning up. Prints one JSON line: rounds, messages sent, what it did.
 *
 * Usage: node --import tsx hostile-client.ts SOCKET ROUNDS SEED
 */
import {
  closeFd,
  createEventFd,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  memfdCreate,
  socketPair,
} from "../../src/vfio-user/libc.ts";
import { prngU32 } from "./prng.ts";
import { CMD, CONFIG_REGION, le, VfioUserClient } from "./vfio-user-client.ts";

const [socketPath, roundsArg, seedArg] = process.argv.slice(2);
const rounds = Number(roundsArg);
const next = prngU32(Number(seedArg));
let messages = 0;
const did: Record<string, number> = {};

function connect(): VfioUserClient {
  const c = new VfioUserClient(socketPath);
  c.negotiate();
  messages++;
  return c;
}

const scenarios: Record<string, (c: VfioUserClient) => void> = {
  /** 2,000 descriptor-less maps, pipelined, then gone. */
  fdlessFlood(c) {
    for (let i = 0; i < 2000; i++) {
      c.sendRaw(
        c.message(
          CMD.DMA_MAP,
          le([
            [32, 4],
            [3, 4],
            [0, 8],
            [0x2_0000_0000 + i * 8192, 8],
            [4096, 8],
          ]),
        ).bytes,
      );
      messages++;
      if (i % 256 === 255) c.pump(0);
    }
  },
  /** Big sparse sealed regions (1 GiB each), never unmapped. */
  bigRegions(c) {
    const fd = memfdCreate("hostile", 8 << 30, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    for (let i = 0; i < 8; i++) {
      c.dmaMap(0x4_0000_0000 + i * 2 ** 30, 2 ** 30, i * 2 ** 30, 3, [fd]);
      messages++;
    }
    closeFd(fd);
  },
  /** Requests without ever reading a reply. */
  neverRead(c) {
    const one = c.message(
      CMD.REGION_READ,
      le([
        [0, 8],
        [CONFIG_REGION, 4],
        [4, 4],
      ]),
    ).bytes;
    const until = performance.now() + 300;
    while (performance.now() < until && messages < 10_000_000) {
      if (c.trySend(one) === 0) break;
      messages++;
    }
  },
  /** Malformed messages: random commands, sizes and payloads (the header size is honest). */
  garbage(c) {
    for (let i = 0; i < 500; i++) {
      const len = next() % 96;
      const p = new Uint8Array(len);
      for (let j = 0; j < len; j++) p[j] = next() & 0xff;
      const m = c.message(next() % 20, p, next() & 0x31);
      c.sendRaw(m.bytes);
      messages++;
      if (i % 64 === 63) c.pump(0);
    }
  },
  /** Interrupt descriptors that are not eventfds, and a blocking eventfd at its maximum. */
  badEventfds(c) {
    const [a, b] = socketPair();
    c.setIrqEventfds(0, 0, [a]);
    const e = createEventFd(false);
    c.setIrqEventfds(0, 0, [e]);
    c.regionWrite(0, 0x60, 4, 1);
    messages += 3;
    closeFd(a);
    closeFd(b);
    closeFd(e);
  },
  /** A descriptor-less region and an edu DMA into it whose DMA_READ is never answered. */
  silentDma(c) {
    c.regionWrite(CONFIG_REGION, 4, 2, 0x6);
    c.dmaMap(0x4000_0000, 0x10000, 0, 3);
    for (const [off, v] of [
      [0x80, 0x4000_0000],
      [0x88, 0x40000],
      [0x90, 4096],
    ] as const)
      c.regionWrite(0, off, 8, v);
    c.sendRaw(
      c.message(
        CMD.REGION_WRITE,
        le([
          [0x98, 8],
          [0, 4],
          [8, 4],
          [1, 8],
        ]),
      ).bytes,
    );
    messages += 6;
  },
};

const names = Object.keys(scenarios);
for (let r = 0; r < rounds; r++) {
  const name = names[r % names.length];
  const c = connect();
  try {
    scenarios[name](c);
  } catch {
    // A refusal or a closed connection is the server's right; the round still counts.
  }
  c.close();
  did[name] = (did[name] ?? 0) + 1;
}
process.stdout.write(`${JSON.stringify({ rounds, messages, did })}\n`);
