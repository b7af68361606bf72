// EventfdWatch: a worker thread hears a blocking eventfd and the VMM's loop gets one call per
// signal from poll() (an assigned device's INTx under the split irqchip).
import assert from "node:assert/strict";
import { writeSync } from "node:fs";
import { test } from "node:test";
import { close } from "../../src/kvm/libc.ts";
import { EFD_CLOEXEC, eventfd } from "../../src/vfio/libc.ts";
import { EventfdWatch } from "../../src/vmm/eventfd-watch.ts";
import { waitForDoorbell } from "../../src/vmm/vcpu-threads.ts";

function signal(fd: number): void {
  const one = Buffer.alloc(8);
  one.writeBigUint64LE(1n);
  writeSync(fd, one);
}

/** Polls `watch` until `calls()` reaches `want` or `ms` pass. */
async function pollUntil(
  watch: EventfdWatch,
  calls: () => number,
  want: number,
  ms: number,
): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    watch.poll();
    if (calls() === want || Date.now() >= end) return calls() === want;
    await new Promise((r) => setTimeout(r, 5));
  }
}

test("EventfdWatch: each signal seen by the worker is one poll() call; nothing before poll()", async () => {
  const fd = eventfd(0, EFD_CLOEXEC);
  assert.ok(fd >= 0);
  let calls = 0;
  const watch = new EventfdWatch(fd, () => calls++);
  try {
    watch.poll();
    assert.equal(calls, 0);
    signal(fd);
    assert.ok(await pollUntil(watch, () => calls, 1, 5000), "the first signal reached poll()");
    signal(fd);
    assert.ok(await pollUntil(watch, () => calls, 2, 5000), "and the second");
    await new Promise((r) => setTimeout(r, 50));
    watch.poll();
    assert.equal(calls, 2, "no call without a signal");
  } finally {
    watch.close();
    close(fd);
  }
});

// With --cpus > 1 the device thread sleeps on the vCPU threads' doorbell (vcpu-threads.ts); an
// INTx signal must wake it at once, not at the sleep's timeout (it was 50 ms: the INTx latency).
test("EventfdWatch: a signal rings the device thread's doorbell, waking a waitForDoorbell sleeper before its timeout", () => {
  const fd = eventfd(0, EFD_CLOEXEC);
  assert.ok(fd >= 0);
  const doorbellBuffer = new SharedArrayBuffer(4);
  const doorbell = new Int32Array(doorbellBuffer);
  let calls = 0;
  const watch = new EventfdWatch(fd, () => calls++, doorbellBuffer);
  try {
    const seen = Atomics.load(doorbell, 0);
    signal(fd);
    // A timeout far beyond any worker start-up: reaching it means the doorbell was never rung.
    const timeoutMs = 20_000;
    const t0 = Date.now();
    const rung = waitForDoorbell(doorbell, seen, timeoutMs);
    const elapsedMs = Date.now() - t0;
    assert.ok(rung, `the doorbell was not rung within ${timeoutMs} ms`);
    assert.ok(elapsedMs < timeoutMs / 2, `woken after ${elapsedMs} ms`);
    watch.poll();
    assert.equal(calls, 1, "the signal that rang is the one poll() reports");
    assert.equal(Atomics.load(doorbell, 0), seen + 1, "one ring per signal");
  } finally {
    watch.close();
    close(fd);
  }
});

test("waitForDoorbell: not rung, it returns false at its timeout", () => {
  const doorbell = new Int32Array(new SharedArrayBuffer(4));
  const t0 = Date.now();
  assert.equal(waitForDoorbell(doorbell, 0, 30), false);
  assert.ok(Date.now() - t0 >= 25);
  Atomics.store(doorbell, 0, 7);
  assert.equal(waitForDoorbell(doorbell, 0, 30), true, "moved before the wait: no sleep");
});
