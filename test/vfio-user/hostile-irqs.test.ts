/**
 * Interrupt descriptors from a hostile client (issue 12 item 3), against a server in another
 * process: only eventfds are accepted, and a full eventfd counter never blocks the server.
 * vfio-user.rst "VFIO_USER_DEVICE_SET_IRQS"; <linux/vfio.h> vfio_irq_set.
 */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { closeFd, createEventFd, ERRNO, socketPair } from "../../src/vfio-user/libc.ts";
import { ServerProcess } from "../support/server-process.ts";
import { CMD, CONFIG_REGION, expectOk, FLAG_ERROR, le, VfioUserClient } from "../support/vfio-user-client.ts";

const INTX = 0;
const MSI = 1;
const EDU_IRQ_RAISE = 0x60;
const EDU_IRQ_ACK = 0x64;
/** SET_IRQS ACTION_UNMASK | DATA_NONE for INTx (the client's EOI). */
const unmaskIntx = (c: VfioUserClient) =>
  c.request(
    CMD.DEVICE_SET_IRQS,
    le([
      [20, 4],
      [0x10 | 0x1, 4],
      [INTX, 4],
      [0, 4],
      [1, 4],
    ]),
  );

describe("issue 12 item 3: interrupt eventfds", () => {
  let server: ServerProcess;
  let dir: string;
  before(async () => {
    server = await ServerProcess.start({});
    dir = mkdtempSync(join(tmpdir(), "viommu-irq-"));
  });
  after(async () => {
    rmSync(dir, { recursive: true, force: true });
    const end = await server.stop();
    assert.equal(end.signal, null, `server died: ${server.stderr.slice(-2000)}`);
  });

  test("SET_IRQS with a descriptor that is not an eventfd (socket, regular file) is EINVAL", async () => {
    const c = new VfioUserClient(server.socket());
    c.negotiate();
    const [a, b] = socketPair();
    const file = openSync(join(dir, "not-an-eventfd"), "w+");
    try {
      for (const [what, fd, index] of [
        ["socket", a, INTX],
        ["regular file", file, INTX],
        ["socket", b, MSI],
      ] as const) {
        const r = c.setIrqEventfds(index, 0, [fd]);
        assert.equal(r.flags & FLAG_ERROR, FLAG_ERROR, `${what} accepted for index ${index}`);
        assert.equal(r.error, ERRNO.EINVAL);
      }
      const s = await server.stats();
      assert.equal(s.servers[0].irqs.refusedDescriptors, 3);
    } finally {
      c.close();
      closeFd(a);
      closeFd(b);
      closeSync(file);
    }
  });

  test("a blocking eventfd preloaded to its maximum: signals are coalesced (nothing lost), the server never blocks", () => {
    const c = new VfioUserClient(server.socket());
    c.negotiate();
    const efd = createEventFd(false); // blocking, as a hostile client would pass it
    const good = createEventFd(true);
    try {
      // The counter's maximum is 2^64 - 2: one more write would block (or EAGAIN).
      writeSync(efd, new Uint8Array(new BigUint64Array([0xffff_ffff_ffff_fffen]).buffer));
      expectOk(c.setIrqEventfds(INTX, 0, [efd]), "SET_IRQS preloaded eventfd");
      for (let i = 0; i < 5; i++) {
        expectOk(c.regionWrite(0, EDU_IRQ_RAISE, 4, 1, 2000), "edu raise (INTx fires into the full eventfd)");
        expectOk(unmaskIntx(c), "unmask (the line is still asserted: fires again)");
        expectOk(c.regionWrite(0, EDU_IRQ_ACK, 4, 1, 2000), "edu acknowledge");
      }
      expectOk(c.regionRead(CONFIG_REGION, 0, 4, 2000), "server still answers");
      // A well-behaved eventfd on the same index afterwards gets its signal.
      expectOk(c.setIrqEventfds(INTX, 0, [good]), "SET_IRQS good eventfd");
      expectOk(c.regionWrite(0, EDU_IRQ_RAISE, 4, 1, 2000), "edu raise");
      const counter = new BigUint64Array(1);
      assert.equal(readSync(good, new Uint8Array(counter.buffer)), 8);
      assert.equal(counter[0], 1n);
    } finally {
      c.close();
      closeFd(efd);
      closeFd(good);
    }
  });

  test("the full-counter signals were counted as coalesced, not failures", async () => {
    const s = await server.stats();
    assert.ok(s.servers[0].irqs.coalesced >= 5, JSON.stringify(s.servers[0].irqs));
    assert.equal(s.servers[0].irqs.signalFailures, 0);
  });
});
