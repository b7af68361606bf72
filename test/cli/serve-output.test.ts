/**
 * What `viommu serve` tells a person: a short table at exit (every counter only with
 * --stats-json FILE), and errors a user can cause as one line that names the option and the fix,
 * with nothing left listening.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { parseServeArgs } from "../../src/cli/serve.ts";
import { formatTable } from "../../src/cli/serve-summary.ts";
import { REPO_ROOT } from "../../src/vmm/x86/builtin-guest.ts";
import { ensureBuild } from "../../tools/build/js-build.mjs";

const BIN = join(REPO_ROOT, "bin", "viommu.mjs");
const scratch = mkdtempSync(join(tmpdir(), "viommu-serve-out-"));
after(() => rmSync(scratch, { recursive: true, force: true }));
before(() => ensureBuild());

/** Runs `viommu serve ARGS` until its ready line, then SIGTERM; resolves with its output. */
function serveUntilReady(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [BIN, "serve", ...args], { stdio: "pipe" });
    let stdout = "";
    let stderr = "";
    let stopped = false;
    const watchdog = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.stdout!.on("data", (d) => {
      stdout += d;
    });
    child.stderr!.on("data", (d) => {
      stderr += d;
      if (!stopped && /ready: /.test(stderr)) {
        stopped = true; // once: a second SIGTERM during shutdown ends the process at once
        child.kill("SIGTERM");
      }
    });
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(watchdog);
      resolve({ status, stdout, stderr });
    });
  });
}

test("serve: at exit stderr has a short table, not the JSON; --stats-json FILE gets every counter", async () => {
  const dir = join(scratch, "s1");
  const statsFile = join(scratch, "stats.json");
  const r = await serveUntilReady([
    "--socket-dir",
    dir,
    "--iommu",
    "virtio",
    "--device",
    "edu,iommu=on",
    "--stats-json",
    statsFile,
  ]);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stderr.split("\n");
  assert.ok(
    lines.some((l) => /device +slot +iommu +connections/.test(l)),
    r.stderr,
  );
  assert.ok(
    lines.some((l) => /^viommu serve: edu0 +00:11\.0 +on /.test(l)),
    r.stderr,
  );
  assert.ok(!r.stderr.includes('{"'), "no JSON on stderr");
  assert.ok(
    lines.every((l) => l.length <= 200),
    "every line is readable in a terminal",
  );
  const stats = JSON.parse(readFileSync(statsFile, "utf8")) as { devices: { name: string }[] };
  assert.deepEqual(
    stats.devices.map((d) => d.name),
    ["virtio-iommu", "edu0"],
  );
  assert.match(r.stderr, /every counter in .*stats\.json/);
});

test("serve: a missing --disk file is one line naming the option and the fix, status 2, no socket left", () => {
  const dir = join(scratch, "s2");
  const r = spawnSync(
    process.execPath,
    [BIN, "serve", "--socket-dir", dir, "--iommu", "virtio", "--disk", `path=${join(scratch, "none.img")}`],
    { encoding: "utf8", timeout: 30_000 },
  );
  assert.equal(r.status, 2, r.stderr);
  assert.equal(
    r.stderr,
    `viommu serve: --disk path=${join(scratch, "none.img")}: no such file or directory (give an existing disk image, e.g. one made by truncate -s 64M FILE; or add readonly=on if it is not writable)\n`,
  );
  // The virtio-iommu was already listening when the disk failed: its socket is gone again.
  assert.deepEqual(readdirSync(dir), []);
});

test("serve: a --socket-dir that cannot be created names the directory and the fix", () => {
  const file = join(scratch, "a-file");
  writeFileSync(file, "");
  const r = spawnSync(
    process.execPath,
    [BIN, "serve", "--socket-dir", join(file, "sub"), "--device", "edu"],
    {
      encoding: "utf8",
      timeout: 30_000,
    },
  );
  assert.equal(r.status, 2);
  assert.equal(
    r.stderr,
    `viommu serve: --socket-dir ${join(file, "sub")}: cannot create it: a component of the path is not a directory (choose a directory you can write)\n`,
  );
});

test("serve: a --socket-dir too long for a UNIX socket path (sun_path, 108 bytes) is refused before anything listens", () => {
  const dir = join("/tmp", "d".repeat(96));
  assert.throws(
    () => parseServeArgs(["--socket-dir", dir, "--device", "edu"]),
    /too long for UNIX sockets \(a socket path would be 111 bytes, at most 107\): use a shorter directory/,
  );
  // 107 bytes exactly is allowed: "/tmp/" + 92 + "/edu0.sock".
  const fits = join("/tmp", "d".repeat(92));
  assert.equal(parseServeArgs(["--socket-dir", fits, "--device", "edu"]).socketDir, fits);
  assert.equal(existsSync(dir), false);
});

test("serve: a --stats-json file that could not be written at exit is refused at start", () => {
  const r = spawnSync(
    process.execPath,
    [
      BIN,
      "serve",
      "--socket-dir",
      join(scratch, "s3"),
      "--device",
      "edu",
      "--stats-json",
      "/nonexistent-dir/s.json",
    ],
    { encoding: "utf8", timeout: 30_000 },
  );
  assert.equal(r.status, 2);
  assert.equal(
    r.stderr,
    "viommu serve: --stats-json /nonexistent-dir/s.json: cannot write in /nonexistent-dir: no such file or directory (choose a file in a directory you can write)\n",
  );
});

test("serve: --stats-json takes a file name", () => {
  assert.equal(
    parseServeArgs(["--socket-dir", "/tmp/x", "--device", "edu", "--stats-json", "/tmp/s.json"])
      .statsJsonPath,
    "/tmp/s.json",
  );
  assert.throws(
    () => parseServeArgs(["--socket-dir", "/tmp/x", "--device", "edu", "--stats-json"]),
    /needs a value/,
  );
});

test("formatTable: the first column left-aligned, numbers right-aligned, two spaces between", () => {
  assert.deepEqual(
    formatTable([
      ["device", "reads"],
      ["edu0", "7"],
      ["virtio-iommu", "12345678"],
    ]),
    ["device           reads", "edu0                 7", "virtio-iommu  12345678"],
  );
});
