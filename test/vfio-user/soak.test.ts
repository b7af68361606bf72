/**
 * Soak (issue 12 "How to verify"): a hostile client process (test/support/hostile-client.ts)
 * and a good client at once against one server process, for a fixed number of rounds. The good
 * client's DMA keeps landing and its latency stays bounded; afterwards the server's descriptors,
 * RSS and VmSize are back near their baseline and it never crashed. Bounded to seconds.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import {
  closeFd,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  mapFile,
  mappingView,
  memfdCreate,
  PROT_READ,
  PROT_WRITE,
} from "../../src/vfio-user/libc.ts";
import { ServerProcess, sleep } from "../support/server-process.ts";
import { CONFIG_REGION, EDU_BUFFER, eduDma, expectOk, VfioUserClient } from "../support/vfio-user-client.ts";

const ROUNDS = Number(process.env.VIOMMU_SOAK_ROUNDS ?? 24);
const HOSTILE = new URL("../support/hostile-client.ts", import.meta.url).pathname;

test(`soak: a hostile client (${ROUNDS} rounds) and a good client at once; the good one is served, the server returns to its baseline`, async () => {
  const server = await ServerProcess.start({ count: 2, dmaTimeoutMs: 300 });
  const RAM = 0x100000;
  const fd = memfdCreate("good", 16 << 20, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  const ram = mappingView(mapFile(fd, 0, 16 << 20, PROT_READ | PROT_WRITE, MAP_SHARED)!, 0, 16 << 20);
  const good = new VfioUserClient(server.socket(1));
  good.negotiate();
  expectOk(good.regionWrite(CONFIG_REGION, 4, 2, 0x6), "bus master");
  expectOk(good.dmaMap(RAM, 16 << 20, 0, 3, [fd]), "good DMA_MAP");
  await sleep(200);
  const base = server.proc();
  const child = spawn(
    process.execPath,
    ["--import", "tsx", HOSTILE, server.socket(0), String(ROUNDS), "12"],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let report = "";
  child.stdout.on("data", (d) => {
    report += d;
  });
  const done = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  let exited = false;
  void done.then(() => {
    exited = true;
  });
  let worst = 0;
  let copies = 0;
  const deadline = performance.now() + 120_000;
  try {
    while (!exited && performance.now() < deadline) {
      const t0 = performance.now();
      const pattern = (copies * 7 + 1) & 0xff;
      ram.fill(pattern, 0, 4096);
      expectOk(eduDma(good, RAM, EDU_BUFFER, 4096, false, 10_000), "good DMA in");
      expectOk(eduDma(good, EDU_BUFFER, RAM + 0x8000, 4096, true, 10_000), "good DMA out");
      assert.ok(
        ram.subarray(0x8000, 0x9000).every((b) => b === pattern),
        "the good client's DMA landed",
      );
      copies++;
      worst = Math.max(worst, performance.now() - t0);
      await sleep(1); // let the child's exit be noticed
    }
  } finally {
    if (!exited) child.kill("SIGKILL");
    if (performance.now() >= deadline || !exited) await server.stop();
  }
  assert.equal(await done, 0, "the hostile client finished its rounds");
  const hostile = JSON.parse(report) as { messages: number; did: Record<string, number> };
  good.close();
  closeFd(fd);
  await sleep(1000); // releases in slices, GC
  const end = server.proc();
  const stats = await server.stats();
  const stop = await server.stop();
  const mib = (kib: number) => (kib / 1024).toFixed(1);
  console.log(
    `# soak: ${hostile.messages} hostile messages in ${ROUNDS} rounds ${JSON.stringify(hostile.did)}; good client ${copies} DMA round trips, worst ${worst.toFixed(1)} ms; server fds ${base.fds} -> ${end.fds}, RSS ${mib(base.vmRssKiB)} -> ${mib(end.vmRssKiB)} MiB, VmSize ${mib(base.vmSizeKiB)} -> ${mib(end.vmSizeKiB)} MiB; crashes: ${stop.signal === null && stop.code === 0 ? 0 : 1}`,
  );
  assert.equal(stop.signal, null, `the server died: ${server.stderr.slice(-2000)}`);
  assert.equal(stats.servers[0].internalErrors + stats.servers[1].internalErrors, 0);
  assert.ok(copies > 0);
  assert.ok(worst < 5000, `the good client waited ${worst.toFixed(1)} ms at worst`);
  // The good client's region is gone too, so the server holds no more than at the baseline.
  assert.ok(end.fds <= base.fds + 2, `descriptors ${base.fds} -> ${end.fds}`);
  assert.equal(stats.memory.regions, 0);
  assert.equal(stats.memory.pendingReleaseBytes, 0);
  assert.ok(
    end.vmSizeKiB - base.vmSizeKiB < 512 * 1024,
    `VmSize grew by ${mib(end.vmSizeKiB - base.vmSizeKiB)} MiB`,
  );
  assert.ok(
    end.vmRssKiB - base.vmRssKiB < 128 * 1024,
    `RSS grew by ${mib(end.vmRssKiB - base.vmRssKiB)} MiB`,
  );
});
