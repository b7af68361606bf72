// The guest-lab harness itself: the newc writer (no lab needed), RESULT parsing, the hard
// timeout, shared guest memory (what vfio-user needs), and a QEMU UNIX socket in a host
// directory outside the trixie root.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { gunzipSync } from "node:zlib";
import { newcArchive, newcArchiveGz } from "../../tools/guest-lab/cpio.ts";
import { describeRun, findResult, parseResults, runGuest } from "../../tools/guest-lab/lab.ts";
import { skipWithoutLab } from "./lab-skip.ts";

/** Reads a newc archive back: [path, mode, data] for each entry before the trailer. */
function readNewc(buf: Buffer): { path: string; mode: number; data: Buffer }[] {
  const out: { path: string; mode: number; data: Buffer }[] = [];
  let off = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    assert.equal(buf.toString("ascii", off, off + 6), "070701", `magic at ${off}`);
    const field = (i: number) =>
      Number.parseInt(buf.toString("ascii", off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const fileSize = field(6);
    const nameSize = field(11);
    const path = buf.toString("utf8", off + 110, off + 110 + nameSize - 1);
    const dataOff = align(off + 110 + nameSize);
    if (path === "TRAILER!!!") break;
    out.push({ path, mode, data: buf.subarray(dataOff, dataOff + fileSize) });
    off = align(dataOff + fileSize);
  }
  return out;
}

test("newc archive: parent directories, modes, data and padding", () => {
  const archive = newcArchive([
    { path: "viommu/script.sh", data: "#!/bin/sh\necho hi\n", mode: 0o755 },
    { path: "viommu/data/x.bin", data: new Uint8Array([1, 2, 3]) },
  ]);
  assert.equal(archive.length % 512, 0);
  const entries = readNewc(archive);
  assert.deepEqual(
    entries.map((e) => [e.path, e.mode.toString(8)]),
    [
      ["viommu", "40755"],
      ["viommu/script.sh", "100755"],
      ["viommu/data", "40755"],
      ["viommu/data/x.bin", "100644"],
    ],
  );
  assert.equal(entries[1]!.data.toString(), "#!/bin/sh\necho hi\n");
  assert.deepEqual([...entries[3]!.data], [1, 2, 3]);
  assert.deepEqual(
    gunzipSync(newcArchiveGz([{ path: "a", data: "b" }])),
    newcArchive([{ path: "a", data: "b" }]),
  );
  assert.throws(() => newcArchive([{ path: "../etc/passwd", data: "" }]));
});

test("newc archive: cpio(1) lists it like the kernel would unpack it", (t) => {
  let listing: string;
  try {
    listing = execFileSync("cpio", ["-it", "--quiet"], {
      input: newcArchive([{ path: "viommu/script.sh", data: "echo\n" }]),
    }).toString();
  } catch {
    t.skip("cpio(1) not installed");
    return;
  }
  assert.deepEqual(listing.trim().split("\n"), ["viommu", "viommu/script.sh"]);
});

test("parseResults: RESULT lines amid kernel noise and carriage returns", () => {
  const log = [
    "[    1.0] virtio_iommu virtio0: input address: 39 bits\r",
    "RESULT name=a status=pass detail=x=1 y=2\r",
    "noise RESULT name=b status=fail detail=",
    "RESULT name=c status=skip",
    "RESULT name=d status=maybe detail=ignored",
  ].join("\n");
  const r = parseResults(log);
  assert.deepEqual(
    r.map((x) => [x.name, x.status, x.detail]),
    [
      ["a", "pass", "x=1 y=2"],
      ["b", "fail", ""],
      ["c", "skip", ""],
    ],
  );
  assert.equal(findResult(r, "b")?.status, "fail");
  assert.equal(findResult(r, "zzz"), undefined);
});

test("runGuest: the hard timeout kills QEMU and says so", { timeout: 120_000 }, async (t) => {
  if (skipWithoutLab(t)) return;
  const run = await runGuest({ script: 'result started pass ""\nsleep 600\n', timeoutMs: 30_000 });
  const why = describeRun(run);
  assert.equal(run.timedOut, true, why);
  assert.equal(run.scriptExit, null, why);
  assert.equal(findResult(run.results, "started")?.status, "pass", why);
  assert.ok(run.durationMs < 45_000, `took ${run.durationMs} ms`);
});

test("runGuest: shared memfd guest RAM, extra files, and a QEMU socket in a host directory", {
  timeout: 180_000,
}, async (t) => {
  if (skipWithoutLab(t)) return;
  // QEMU runs from the trixie root without chroot, so it reaches host paths directly: here a
  // chardev connects to a UNIX socket we listen on in a host temp directory (vfio-user will
  // use sockets the same way).
  const dir = mkdtempSync(join(tmpdir(), "viommu-sock-"));
  const sock = join(dir, "console.sock");
  let received = "";
  const server = createServer((c) => {
    c.setEncoding("utf8");
    c.on("data", (d: string) => {
      received += d;
    });
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  try {
    writeFileSync(join(dir, "unused"), "");
    const run = await runGuest({
      script: [
        'result extra-file "$(cat /viommu/hello.txt | grep -q hello && echo pass || echo fail)" "hello.txt"',
        "echo viommu-over-socket > /dev/hvc0",
        'result hvc-written pass ""',
      ].join("\n"),
      files: { "hello.txt": "hello\n" },
      sharedMemory: true,
      memMiB: 512,
      timeoutMs: 120_000,
      qemuArgs: [
        "-chardev",
        `socket,id=ext0,path=${sock}`,
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtconsole,chardev=ext0",
      ],
    });
    const why = describeRun(run);
    assert.equal(run.timedOut, false, why);
    assert.equal(run.scriptExit, 0, why);
    assert.equal(findResult(run.results, "extra-file")?.status, "pass", why);
    assert.equal(findResult(run.results, "hvc-written")?.status, "pass", why);
    await new Promise((r) => setTimeout(r, 200));
    assert.match(received, /viommu-over-socket/, `socket received: ${JSON.stringify(received)}\n${why}`);
  } finally {
    server.close();
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
});

test("runGuest: the extracted vmlinux boots through its PVH entry", { timeout: 120_000 }, async (t) => {
  if (skipWithoutLab(t)) return;
  const run = await runGuest({
    script: 'result pvh-boot pass "$(uname -r)"\n',
    kernelImage: "vmlinux",
    timeoutMs: 90_000,
  });
  const why = describeRun(run);
  t.diagnostic(`vmlinux (PVH) boot to ready ${run.bootMs} ms`);
  assert.equal(run.scriptExit, 0, why);
  assert.match(findResult(run.results, "pvh-boot")?.detail ?? "", /^6\.12\./, why);
});
