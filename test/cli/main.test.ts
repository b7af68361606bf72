import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { REPO_ROOT } from "../../src/vmm/builtin-guest.ts";

const BIN = join(REPO_ROOT, "bin", "viommu.mjs");

function viommu(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 30_000 });
}

test("bin/viommu.mjs: unknown subcommand is one line on stderr and status 2", () => {
  const r = viommu(["frobnicate"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'viommu: unknown command "frobnicate" (run, serve, help)\n');
});

test("bin/viommu.mjs: help lists run and serve", () => {
  const r = viommu(["help"]);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /run +boot a guest/);
  assert.match(r.stdout, /serve +serve devices over vfio-user/);
});

test("bin/viommu.mjs run: a bad argument is one clear line and a nonzero status, no stack trace", () => {
  const r = viommu(["run", "--memory", "lots"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'viommu run: --memory: "lots" is not a size (examples: 512M, 2G, 65536K)\n');
});

test("bin/viommu.mjs run: a missing kernel file is one line", () => {
  const r = viommu(["run", "--kernel", "/nonexistent/kernel.elf"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^viommu run: ENOENT: no such file or directory.*\n$/);
});
