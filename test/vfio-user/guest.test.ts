/**
 * Live Linux guest tests: `viommu serve` in a child process, QEMU 11 (the lab's, TCG) connecting
 * with vfio-user-pci, Linux 6.12 drivers driving our devices. Skipped, loudly, when the guest
 * lab is not provisioned (tools/provision/provision.sh).
 *
 * The IOMMU in front of the served edu is QEMU's own virtio-iommu here: QEMU's vfio-user client
 * then forwards the guest's IOMMU mappings to our server as DMA_MAP/DMA_UNMAP of IOVA ranges,
 * and our server must confine the device to them.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { describeRun, findResult, labAvailable, runGuest } from "../../tools/guest-lab/lab.ts";

const REPO = resolve(import.meta.dirname, "../..");
const lab = labAvailable();
if (!lab.ok) console.log(`# SKIP vfio-user guest tests: guest lab not provisioned (${lab.why})`);

interface Serve {
  child: ChildProcess;
  qemuArgs: string[];
  stderr: () => string;
  stop: () => Promise<Record<string, unknown>>;
}

/** Splits the printed argument line (single-quoted JSON words) into argv. */
export function splitArgs(line: string): string[] {
  const out: string[] = [];
  const re = /'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m !== null; m = re.exec(line)) out.push(m[1] ?? m[2]);
  return out;
}

async function startServe(dir: string, args: string[]): Promise<Serve> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(REPO, "src/cli/serve.ts"), "--socket-dir", dir, ...args],
    {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let out = "";
  let err = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    err += d;
  });
  const line = await new Promise<string>((res, rej) => {
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      if (out.includes("\n")) res(out.split("\n")[0]);
    });
    child.on("exit", (code) => rej(new Error(`serve exited ${code}: ${err}`)));
  });
  for (let i = 0; i < 100 && !err.includes("ready"); i++) await new Promise((r) => setTimeout(r, 20));
  return {
    child,
    qemuArgs: splitArgs(line),
    stderr: () => err,
    stop: async () => {
      const exited = new Promise((r) => child.on("exit", r));
      child.kill("SIGINT");
      await exited;
      const m = /viommu serve stats (\{.*\})/.exec(err);
      return m ? (JSON.parse(m[1]) as Record<string, unknown>) : {};
    },
  };
}

test("guest: vfio-edu-test drives our edu over vfio-user (QEMU virtio-iommu in front): MAP_DMA, DMA both ways, blocked after UNMAP_DMA", {
  skip: !lab.ok,
  timeout: 180_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-serve-"));
  const serve = await startServe(dir, ["--device", "edu"]);
  try {
    const run = await runGuest({
      qemuArgs: [...serve.qemuArgs, "-device", "virtio-iommu-pci"],
      cmdline: "vfio_iommu_type1.allow_unsafe_interrupts=1",
      timeoutMs: 150_000,
      script: [
        'v="$(cat /sys/bus/pci/devices/0000:00:10.0/vendor):$(cat /sys/bus/pci/devices/0000:00:10.0/device)"',
        'if [ "$v" = "0x1234:0x11e8" ]; then echo "RESULT name=edu-enumerated status=pass detail=$v"; else echo "RESULT name=edu-enumerated status=fail detail=$v"; fi',
        "vfio-edu-test 0000:00:10.0",
      ].join("\n"),
    });
    const stats = await serve.stop();
    const why = `${describeRun(run)}\n--- serve stderr ---\n${serve.stderr().slice(-3000)}`;
    for (const name of [
      "edu-enumerated",
      "vfio-open",
      "edu-id",
      "dma-map",
      "dma-roundtrip",
      "dma-roundtrip-2",
      "dma-unmap",
      "dma-after-unmap-blocked",
      "dma-read-after-unmap-blocked",
      "vfio-edu-test",
    ]) {
      assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
    }
    // The two DMAs after VFIO_IOMMU_UNMAP_DMA were stopped by our server (no client region there).
    const dev = (stats.devices as { device: { dmaFaults: number; dmaTransfers: number } }[])[0].device;
    assert.ok(dev.dmaFaults >= 2, `edu DMA faults ${dev.dmaFaults}\n${why}`);
    assert.ok(dev.dmaTransfers >= 4, `edu DMA transfers ${dev.dmaTransfers}`);
    console.log(`# edu over vfio-user: ${JSON.stringify(dev)}; boot ${run.bootMs} ms`);
  } finally {
    if (serve.child.exitCode === null) serve.child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

test("guest: virtio-rng over vfio-user: Linux virtio_rng binds, /dev/hwrng returns our bytes, MSI-X vectors fire through eventfds", {
  skip: !lab.ok,
  timeout: 180_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-serve-"));
  const serve = await startServe(dir, ["--rng"]);
  try {
    const run = await runGuest({
      qemuArgs: serve.qemuArgs,
      timeoutMs: 150_000,
      script: [
        'cur="$(cat /sys/class/misc/hw_random/rng_current)"',
        'case "$cur" in virtio_rng*) echo "RESULT name=rng-bound status=pass detail=$cur";; *) echo "RESULT name=rng-bound status=fail detail=$cur";; esac',
        "n=$(dd if=/dev/hwrng bs=512 count=8 2>/dev/null | wc -c)",
        'distinct=$(dd if=/dev/hwrng bs=256 count=1 2>/dev/null | od -An -v -tx1 | tr " " "\\n" | grep . | sort -u | wc -l)',
        'if [ "$n" = 4096 ] && [ "$distinct" -gt 100 ]; then s=pass; else s=fail; fi',
        'echo "RESULT name=rng-read status=$s detail=bytes=$n distinct_of_256=$distinct"',
        'irq=$(grep virtio0-input /proc/interrupts | awk "{print \\$2}")',
        'if [ -n "$irq" ] && [ "$irq" -gt 0 ]; then s=pass; else s=fail; fi',
        'echo "RESULT name=rng-msix status=$s detail=interrupts=$irq"',
      ].join("\n"),
    });
    const stats = await serve.stop();
    const why = `${describeRun(run)}\n--- serve stderr ---\n${serve.stderr().slice(-3000)}`;
    for (const name of ["rng-bound", "rng-read", "rng-msix"]) {
      assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
    }
    const server = (stats.devices as { server: { irqs: { signalled: { msix: number } } } }[])[0].server;
    assert.ok(server.irqs.signalled.msix > 0, why);
  } finally {
    if (serve.child.exitCode === null) serve.child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
