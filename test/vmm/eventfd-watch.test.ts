// EventfdWatch: a worker thread hears a blocking eventfd and the VMM's loop gets one call per
// signal from poll() (an assigned device's INTx under the split irqchip).
import assert from "node:assert/strict";
import { writeSync } from "node:fs";
import { test } from "node:test";
import { close } from "../../src/kvm/libc.ts";
import { EFD_CLOEXEC, eventfd } from "../../src/vfio/libc.ts";
import { EventfdWatch } from "../../src/vmm/eventfd-watch.ts";

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
