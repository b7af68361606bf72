// The nested lab's one retry of a timed-out L2 run (tools/guest-lab/nested-assign.ts): the L1
// script runs a `viommu run` again only when it exited 124 and only when asked, and the outcome
// of a retried run holds the second attempt alone, marked as retried.
import assert from "node:assert/strict";
import { test } from "node:test";
import { l1Script, splitRuns } from "../../tools/guest-lab/nested-assign.ts";

const ours = { iommu: "virtio" as const, command: "node bin/viommu.mjs run --timeout 240" };
const qemu = { iommu: "virtio" as const, vmm: "qemu" as const };

test("L1 script: a timed-out viommu run is run once more only when retryTimedOutOnce is set, never QEMU's", () => {
  const runs = [
    { run: ours, initrd: "/tmp/a.cpio.gz" },
    { run: qemu, initrd: "/tmp/b.cpio.gz" },
  ];
  const plain = l1Script("/repo", runs, undefined, false);
  assert.doesNotMatch(plain, /retry/);
  const retrying = l1Script("/repo", runs, undefined, true);
  const retries = retrying.split("\n").filter((l) => l.includes("retry"));
  assert.equal(retries.length, 1, retrying);
  assert.match(
    retries[0],
    /if \[ "\$rc" -eq 124 \]; then echo "NESTED-ASSIGN-RUN 0 retry"; node bin\/viommu\.mjs run --timeout 240 2>&1; rc=\$\?; fi/,
  );
});

test("splitRuns: a retried run keeps only its second attempt's RESULT lines and says it was retried", () => {
  const stdout = [
    "NESTED-ASSIGN-RUN 0 start",
    "RESULT name=vfio-open status=pass detail=first",
    "stop: timed out after 240 s; exit status 124",
    "NESTED-ASSIGN-RUN 0 retry",
    "RESULT name=vfio-open status=fail detail=second",
    "NESTED-ASSIGN-RUN 0 exit=1",
    "NESTED-ASSIGN-RUN 1 start",
    "RESULT name=vfio-open status=pass detail=other",
    "NESTED-ASSIGN-RUN 1 exit=0",
    "",
  ].join("\n");
  const [a, b] = splitRuns(stdout, [ours, ours]);
  assert.equal(a.retried, true);
  assert.equal(a.exitCode, 1);
  assert.deepEqual(
    a.results.map((r) => `${r.name}=${r.status}`),
    ["vfio-open=fail"],
  );
  assert.doesNotMatch(a.output, /first/);
  assert.equal(b.retried, false);
  assert.equal(b.exitCode, 0);
  assert.deepEqual(
    b.results.map((r) => r.status),
    ["pass"],
  );
});
