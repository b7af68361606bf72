/**
 * The doorbell path as QEMU 11 and Linux use it, against `viommu serve --iommu virtio` in
 * another process: rings in shared guest RAM, each request announced by one posted
 * REGION_WRITE (VFIO_USER_NO_REPLY) and its completion polled on the used ring
 * (test/support/remote-viommu.ts; the driver of bench/vfio-user.bench.ts's doorbell case).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { POLLIN, pollFd } from "../../src/vfio-user/libc.ts";
import { RemoteViommuDriver } from "../support/remote-viommu.ts";

const REPO = resolve(import.meta.dirname, "../..");
const EDU_ENDPOINT = 0x11 << 3;
// VIRTIO 1.3 5.13.6: request status values.
const S_OK = 0;
const S_NOENT = 6;

let dir = "";
let child: ChildProcess;
let driver: RemoteViommuDriver;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "doorbell-test-"));
  child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      join(REPO, "src/cli/serve.ts"),
      "--socket-dir",
      dir,
      "--iommu",
      "virtio",
      "--device",
      "edu,iommu=on",
    ],
    { stdio: ["ignore", "pipe", "ignore"], cwd: REPO },
  );
  await new Promise<void>((ready, fail) => {
    child.stdout!.setEncoding("utf8").once("data", () => ready());
    child.once("exit", (code) => fail(new Error(`viommu serve exited (${code})`)));
  });
  driver = new RemoteViommuDriver(join(dir, "virtio-iommu.sock"));
  driver.bringUp();
});

after(async () => {
  driver?.close();
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
  rmSync(dir, { recursive: true, force: true });
});

test("posted doorbells: ATTACH, MAP and UNMAP complete on the used ring with their statuses, and no reply crosses the socket", () => {
  assert.equal(driver.attach(1, EDU_ENDPOINT), S_OK);
  for (let i = 0; i < 100; i++) {
    assert.equal(driver.map(1, 0x10_0000 + i * 4096, 4096, 0x20_0000), S_OK);
    assert.equal(driver.unmap(1, 0x10_0000 + i * 4096, 4096), S_OK);
  }
  // VIRTIO 1.3 5.13.6.5: a MAP for a domain that does not exist is answered NOENT.
  assert.equal(driver.map(7, 0x10_0000, 4096, 0x20_0000), S_NOENT);
  assert.equal(driver.requests, 202);
  // vfio-user.rst: a message with the No_reply flag gets no reply.
  assert.equal(pollFd(driver.client.fd, POLLIN, 50), 0, "nothing for the client to read");
});
