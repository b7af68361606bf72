/**
 * Connection-level abuse against a server in another process (issue 12 items 7 and 8): a client
 * that never reads its replies, and a client that never answers the server's DMA requests. The
 * other clients' latency stays bounded and the server's memory comes back.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { ServerProcess, sleep } from "../support/server-process.ts";
import { CMD, CONFIG_REGION, expectOk, le, VfioUserClient } from "../support/vfio-user-client.ts";

describe("issue 12 item 7: back-pressure counts replies, not only bytes", () => {
  let server: ServerProcess;
  before(async () => {
    server = await ServerProcess.start({ count: 2 });
  });
  after(async () => {
    const end = await server.stop();
    assert.equal(end.signal, null, `server died: ${server.stderr.slice(-2000)}`);
  });

  test("a client that sends 32-byte REGION_READs and never reads the replies pins at most a few MiB; freed on close", async () => {
    const hostile = new VfioUserClient(server.socket(0));
    hostile.negotiate();
    const good = new VfioUserClient(server.socket(1));
    good.negotiate();
    await sleep(50);
    const base = server.proc();
    // 4,096 requests per batch, sent without ever reading (bounded: 1,000,000 requests or 4 s).
    const one = hostile.message(
      CMD.REGION_READ,
      le([
        [0, 8],
        [CONFIG_REGION, 4],
        [4, 4],
      ]),
    );
    const batch = new Uint8Array(one.bytes.length * 4096);
    for (let i = 0; i < 4096; i++) batch.set(one.bytes, i * one.bytes.length);
    let sent = 0;
    let pending = batch.subarray(0);
    const until = performance.now() + 4000;
    while (sent < 1_000_000 * one.bytes.length && performance.now() < until) {
      const n = hostile.trySend(pending);
      sent += n;
      pending = pending.subarray(n);
      if (pending.length === 0) pending = batch.subarray(0);
      if (n === 0) await sleep(5);
    }
    const s = await server.stats();
    const ch = s.servers[0].channel;
    const during = server.proc();
    const grownMiB = (during.vmRssKiB - base.vmRssKiB) / 1024;
    assert.ok(
      grownMiB < 40,
      `RSS grew by ${grownMiB.toFixed(1)} MiB (${Math.round(sent / one.bytes.length)} requests sent)`,
    );
    assert.ok(ch.queuedOutMessages <= 1100, `queued replies: ${ch.queuedOutMessages}`);
    // The other client is served meanwhile.
    expectOk(good.regionRead(CONFIG_REGION, 0, 4, 2000), "good client");
    hostile.close();
    await sleep(200);
    const after = await server.stats();
    assert.equal(after.servers[0].connected, false, "the hostile connection is gone with its queue");
    good.close();
  });
});
