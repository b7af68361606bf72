/**
 * The JavaScript build (tools/build/js-build.mjs) that bin/viommu.mjs runs: it works, its worker
 * files are where the code looks for them, and a build that no longer matches the sources is
 * never taken as current.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { Worker } from "node:worker_threads";
import { buildJs, checkBuild, MANIFEST_VERSION, REPO_ROOT } from "../../tools/build/js-build.mjs";

// Inside the repository: the build finds its packages (koffi) in the repository's node_modules.
mkdirSync(join(REPO_ROOT, "build"), { recursive: true });
const scratch = mkdtempSync(join(REPO_ROOT, "build", "test-js-build-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

let entry = "";
before(async () => {
  entry = (await buildJs({ outDir: join(scratch, "out") })).entry;
});

test("js-build: the built CLI runs without tsx and is current for the sources it was built from", () => {
  const r = spawnSync(process.execPath, [entry, "help"], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /serve +serve devices over vfio-user/);
  assert.deepEqual(checkBuild({ outDir: join(scratch, "out") }), { fresh: true, entry });
});

test("js-build: every file the build locates through import.meta.url exists beside it", () => {
  const dir = dirname(entry);
  const referenced: string[] = [];
  for (const name of readdirSync(dir).filter((n) => n.endsWith(".js"))) {
    const text = readFileSync(join(dir, name), "utf8");
    for (const m of text.matchAll(/new URL\(([^;]*?), import\.meta\.url\)/g)) {
      for (const s of m[1].matchAll(/"(\.\/[^"]+\.js)"/g)) referenced.push(s[1]);
    }
  }
  assert.ok(referenced.includes("./vcpu-worker.js"), `references found: ${referenced.join(", ")}`);
  for (const ref of referenced) assert.ok(existsSync(join(dir, ref)), `${ref} is not in ${dir}`);
});

test("js-build: the built vCPU worker loads (koffi included) and fails only at the KVM work", async () => {
  const worker = new Worker(join(dirname(entry), "vcpu-worker.js"), {
    workerData: {
      slot: new SharedArrayBuffer(8192),
      doorbell: new SharedArrayBuffer(4),
      kvmFd: -1,
      vcpuFd: -1,
      vcpuId: 0,
      vcpuMmapSizeBytes: 4096,
    },
  });
  const error = await new Promise<Error>((resolve, reject) => {
    worker.on("error", resolve);
    worker.on("exit", () => reject(new Error("the worker exited without the expected error")));
  });
  // A module that cannot be found would say ERR_MODULE_NOT_FOUND; fd -1 gets EBADF from mmap.
  assert.match(error.message, /EBADF/);
});

/** A fake tree with one input and a manifest describing it, for the staleness rules. */
function fakeTree(content: string) {
  const root = mkdtempSync(join(scratch, "tree-"));
  const outDir = join(root, "out");
  mkdirSync(join(outDir, "k"), { recursive: true });
  writeFileSync(join(outDir, "k", "main.js"), "");
  const file = join(root, "a.ts");
  writeFileSync(file, content);
  const input = {
    path: "a.ts",
    sizeBytes: Buffer.byteLength(content),
    mtimeMs: 1_000_000,
    sha256: createHash("sha256").update(content).digest("hex"),
  };
  utimesSync(file, 1000, 1000);
  writeFileSync(
    join(outDir, "current.json"),
    JSON.stringify({ version: MANIFEST_VERSION, key: "k", inputs: [input] }),
  );
  return { root, outDir, file };
}

test("js-build: an input with the same content but a new mtime keeps the build current", () => {
  const t = fakeTree("export const a = 1;\n");
  utimesSync(t.file, 2000, 2000);
  assert.equal(checkBuild(t).fresh, true);
  const manifest = JSON.parse(readFileSync(join(t.outDir, "current.json"), "utf8"));
  assert.equal(manifest.inputs[0].mtimeMs, 2_000_000, "the manifest remembers the new mtime");
});

test("js-build: a changed, resized or removed input makes the build stale", () => {
  const same = fakeTree("export const a = 1;\n");
  writeFileSync(same.file, "export const a = 2;\n"); // same size, new content
  assert.deepEqual(checkBuild(same), { fresh: false, reason: "a.ts changed" });

  const resized = fakeTree("export const a = 1;\n");
  writeFileSync(resized.file, "export const a = 10;\n");
  utimesSync(resized.file, 1000, 1000); // even with the recorded mtime
  assert.deepEqual(checkBuild(resized), { fresh: false, reason: "a.ts changed" });

  const removed = fakeTree("export const a = 1;\n");
  rmSync(removed.file);
  assert.deepEqual(checkBuild(removed), { fresh: false, reason: "a.ts was removed" });
});

test("js-build: a missing build or entry is stale, not an error", () => {
  const t = fakeTree("x");
  rmSync(join(t.outDir, "k", "main.js"));
  assert.equal(checkBuild(t).fresh, false);
  assert.deepEqual(checkBuild({ root: t.root, outDir: join(t.root, "nowhere") }), {
    fresh: false,
    reason: "no build in nowhere",
  });
});
