// vCPU threads (src/vmm/vcpu-threads.ts) start whatever way node was launched. A worker inherits
// the parent's Node options; started as `node --input-type=module -e CODE` (how the arm64 lab
// runs the build), a worker from the build never ran its own file nor became ready (the arm64 lab:
// "vCPU threads did not start within 180000 ms"). The live check is the arm64 lab's 2-vCPU run
// (test/guest/arm64-vmm.test.ts); here, the options the workers get.
import assert from "node:assert/strict";
import { test } from "node:test";
import { workerExecArgv } from "../../src/vmm/vcpu-threads.ts";

test("vCPU threads: workers get the parent's Node options without -e/-p, their code, and --input-type", () => {
  assert.deepEqual(workerExecArgv(["--input-type=module", "-e", "await main()"]), []);
  assert.deepEqual(workerExecArgv(["--input-type", "module", "--trace-warnings"]), ["--trace-warnings"]);
  assert.deepEqual(workerExecArgv(["--import", "tsx", "--eval", "x", "--print=y", "-p", "z"]), [
    "--import",
    "tsx",
  ]);
  assert.deepEqual(workerExecArgv(["--eval=code", "--max-old-space-size=512"]), ["--max-old-space-size=512"]);
  assert.deepEqual(workerExecArgv([]), []);
});
