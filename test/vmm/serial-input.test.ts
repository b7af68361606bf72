// SerialInput (COM1's host input): a worker reads the fd into a shared ring; with --cpus > 1 it
// also rings the device thread's doorbell, so typed input is polled at once rather than at the
// end of the device thread's sleep (vcpu-threads.ts, waitForDoorbell).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { waitForDoorbell } from "../../src/vmm/vcpu-threads.ts";
import { SerialInput } from "../../src/vmm/x86/serial-input.ts";

test("SerialInput: bytes read from the fd ring the device thread's doorbell, waking a sleeper before its timeout", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-serial-input-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, "in");
  execFileSync("mkfifo", [fifo]);
  // The reader's end non-blocking (the worker retries on EAGAIN), the writer's end separate:
  // closing it is end of file, which ends the worker, so nothing is left blocked in read().
  const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const writeFd = openSync(fifo, constants.O_WRONLY);
  const doorbell = new Int32Array(new SharedArrayBuffer(4));
  const input = new SerialInput(readFd);
  try {
    assert.equal(input.take(16).length, 0, "nothing before start");
    input.start(doorbell.buffer as SharedArrayBuffer);
    writeSync(writeFd, "hi");
    const t0 = Date.now();
    assert.ok(waitForDoorbell(doorbell, 0, 20_000), "the doorbell was rung");
    assert.ok(Date.now() - t0 < 10_000, "well before the sleep's timeout");
    const got = Buffer.from(input.take(16)).toString();
    assert.equal(got, "hi");
  } finally {
    closeSync(writeFd);
    input.close();
    closeSync(readFd);
  }
});
