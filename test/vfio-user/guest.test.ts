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
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { before, describe, test } from "node:test";
import {
  describeRun,
  findResult,
  labAvailable,
  type RunGuestOutcome,
  runGuest,
} from "../../tools/guest-lab/lab.ts";
import { guideRecipe, recipeText, shellCommands, viommuArgs } from "../support/guide.ts";

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
  // Arguments from docs/guide.md carry their own --socket-dir (and --stats-json) in `dir`.
  const own = [
    ...(args.includes("--socket-dir") ? [] : ["--socket-dir", dir]),
    ...(args.includes("--stats-json") ? [] : ["--stats-json", join(dir, "stats.json")]),
  ];
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(REPO, "src/cli/serve.ts"), ...own, ...args],
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
      // Every counter, written by --stats-json at exit.
      return JSON.parse(readFileSync(join(dir, "stats.json"), "utf8")) as Record<string, unknown>;
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
        'v="$(cat /sys/bus/pci/devices/0000:00:11.0/vendor):$(cat /sys/bus/pci/devices/0000:00:11.0/device)"',
        'if [ "$v" = "0x1234:0x11e8" ]; then echo "RESULT name=edu-enumerated status=pass detail=$v"; else echo "RESULT name=edu-enumerated status=fail detail=$v"; fi',
        "vfio-edu-test 0000:00:11.0",
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

/**
 * docs/guide.md's lab-run-served recipe: `xargs -a $DIR/qemu-args node --import tsx
 * tools/guest-lab/run.ts --append WORDS groups.sh --`; runGuest is what run.ts calls, and WORDS
 * is the kernel command line it passes.
 */
function labRunAppend(): string {
  const commands = shellCommands(guideRecipe("lab-run-served").text, { DIR: "/d" });
  assert.equal(commands.length, 1);
  const w = commands[0]!;
  assert.deepEqual(w.slice(0, 7), [
    "xargs",
    "-a",
    "/d/qemu-args",
    "node",
    "--import",
    "tsx",
    "tools/guest-lab/run.ts",
  ]);
  assert.equal(w.at(-1), "--", "xargs appends the served arguments after --");
  const append = w.indexOf("--append");
  assert.ok(append > 0 && w.length === 11, w.join(" "));
  return w[append + 1]!;
}

/** Deterministic pattern (xorshift32, seed printed) for the disk test. */
function pattern(sizeBytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(sizeBytes);
  let x = seed;
  for (let i = 0; i < sizeBytes; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
    out[i + 1] = (x >>> 8) & 0xff;
    out[i + 2] = (x >>> 16) & 0xff;
    out[i + 3] = x >>> 24;
  }
  return out;
}

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

interface ServeStats {
  devices: {
    name: string;
    server: { irqs: { signalled: { msix: number } } };
    device: Record<string, unknown>;
    host?: { entries: number; maps: number; unmaps: number };
  }[];
}

describe("guest: our virtio-iommu, edu, virtio-blk and virtio-rng over vfio-user, one Linux boot", {
  skip: !lab.ok,
}, () => {
  const PATTERN_BYTES = 4 << 20;
  const SEED = 0x1234abcd;
  let run: RunGuestOutcome;
  let stats: ServeStats;
  let why: string;
  let disk: string;
  let dir: string;
  const data = pattern(PATTERN_BYTES, SEED);

  before(async () => {
    console.log(`# disk pattern seed 0x${SEED.toString(16)}`);
    dir = mkdtempSync(join(tmpdir(), "viommu-serve-"));
    disk = join(dir, "disk.img");
    // docs/guide.md section 1: the recipe's commands (the disk image, then viommu serve).
    const [truncate, serveWords, ...rest] = shellCommands(guideRecipe("serve-virtio").text, { DIR: dir });
    assert.deepEqual(rest, []);
    assert.equal(truncate![0], "truncate");
    execFileSync(truncate![0]!, truncate!.slice(1));
    assert.deepEqual(serveWords!.slice(0, 3), ["node", "bin/viommu.mjs", "serve"]);
    const serve = await startServe(dir, viommuArgs("serve-virtio", "serve", { DIR: dir }));
    try {
      run = await runGuest({
        qemuArgs: serve.qemuArgs,
        cmdline: labRunAppend(),
        timeoutMs: 170_000,
        files: { "pattern.bin": data },
        script: [
          'r() { echo "RESULT name=$1 status=$2 detail=$3"; }',
          // (1) the driver binds to our virtio-iommu-pci (1af4:1057 at 00:10.0)
          'drv="$(readlink /sys/bus/pci/devices/0000:00:10.0/driver)"',
          'if [ -e /sys/bus/virtio/drivers/virtio_iommu/virtio0 ] || ls /sys/bus/virtio/drivers/virtio_iommu/ | grep -q virtio; then r viommu-bound pass "$drv"; else r viommu-bound fail "$drv"; fi',
          // (3) VFIO in the guest on our edu (this binds it to vfio-pci, which puts it in a group):
          // docs/guide.md section 3, then section 1's group listing, as written.
          recipeText("guest-vfio-edu"),
          recipeText("guest-groups"),
          // (1) groups: every iommu=on endpoint, no iommu=off one
          'for b in 0000:00:11.0 0000:00:12.0 0000:00:13.0; do if [ -e /sys/bus/pci/devices/$b/iommu_group ]; then g=$(basename $(readlink /sys/bus/pci/devices/$b/iommu_group)); else g=none; fi; echo "GROUP $b $g"; done',
          'echo "GROUPS $(ls /sys/kernel/iommu_groups/*/devices/ | tr "\n" " ")"',
          // (2) virtio-blk through the IOMMU
          "dd if=/viommu/pattern.bin of=/dev/vda bs=65536 conv=fsync 2>/dev/null && r blk-write pass fsync || r blk-write fail rc=$?",
          "echo 3 > /proc/sys/vm/drop_caches",
          `sum=$(dd if=/dev/vda bs=65536 count=${PATTERN_BYTES / 65536} 2>/dev/null | md5sum | cut -d" " -f1)`,
          `if [ "$sum" = "${md5(data)}" ]; then r blk-readback pass "md5=$sum"; else r blk-readback fail "md5=$sum"; fi`,
          // rng (iommu=off) still works
          "n=$(dd if=/dev/hwrng bs=256 count=4 2>/dev/null | wc -c)",
          '[ "$n" = 1024 ] && r rng-read pass "bytes=$n" || r rng-read fail "bytes=$n"',
          "dmesg | grep -E 'virtio_iommu|iommu group|VIOT' ",
        ].join("\n"),
      });
    } finally {
      stats = (await serve.stop()) as unknown as ServeStats;
      why = `${describeRun(run, 80)}\n--- serve stderr ---\n${serve.stderr().slice(-2000)}`;
    }
  });

  test("(1) the Linux virtio-iommu driver binds to our virtio-iommu-pci found through our VIOT", () => {
    assert.equal(findResult(run.results, "viommu-bound")?.status, "pass", why);
    assert.match(run.log, /ACPI: VIOT .* VIOMMU/, why);
    assert.match(run.log, /virtio_iommu virtio\d+: page mask: 0x40201000/, why);
  });

  test("(1) /sys/kernel/iommu_groups lists each iommu=on endpoint and no iommu=off one", () => {
    const group = (bdf: string) => new RegExp(`GROUP ${bdf} (\\S+)`).exec(run.log)?.[1];
    assert.notEqual(group("0000:00:11.0"), "none", `edu (iommu=on)\n${why}`);
    assert.notEqual(group("0000:00:12.0"), "none", `disk (iommu=on)\n${why}`);
    assert.equal(group("0000:00:13.0"), "none", `rng (iommu=off)\n${why}`);
    assert.notEqual(group("0000:00:11.0"), undefined, why);
    // What docs/guide.md section 1 says its guest-groups recipe prints.
    assert.match(run.log, /^0000:00:11\.0 group \d+\r?$/m, why);
    assert.match(run.log, /^0000:00:12\.0 group \d+\r?$/m, why);
    assert.match(run.log, /^0000:00:13\.0 no group\r?$/m, why);
    assert.match(run.log, /virtio_iommu virtio\d+: input address: 48 bits/, why);
  });

  test("(2) virtio-blk through the IOMMU: pattern written and read back, checksums equal the host file, flush persisted", () => {
    assert.equal(findResult(run.results, "blk-write")?.status, "pass", why);
    assert.equal(findResult(run.results, "blk-readback")?.status, "pass", why);
    const host = readFileSync(disk).subarray(0, PATTERN_BYTES);
    assert.equal(md5(host), md5(data), "the host file holds what the guest wrote");
    const blk = stats.devices.find((d) => d.name.startsWith("disk"))!.device as {
      requests: Record<string, number>;
      fsyncs: number;
      dmaFaults: number;
      bytesWritten: number;
    };
    assert.ok(blk.requests.flush > 0 && blk.fsyncs > 0, `flush reached the file: ${JSON.stringify(blk)}`);
    assert.ok(blk.bytesWritten >= PATTERN_BYTES);
    assert.equal(blk.dmaFaults, 0);
  });

  test("(3) VFIO in the guest: vfio-edu-test maps, edu DMAs both ways through our IOMMU, DMA after unmap is blocked and logged as a fault", () => {
    for (const name of [
      "vfio-open",
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
    // EP 136 = 0x88 = 00:11.0; the after-unmap write to iova+4K and the read from iova.
    assert.match(run.log, /virtio_iommu virtio\d+: page fault from EP 136 at 0x101000 \[W\]/, why);
    assert.match(run.log, /virtio_iommu virtio\d+: page fault from EP 136 at 0x100000 \[R\]/, why);
    const iommu = stats.devices.find((d) => d.name === "virtio-iommu")!.device as {
      engine: { faults: { mapping: number }; requests: { map: { OK: number }; unmap: { OK: number } } };
    };
    assert.ok(iommu.engine.faults.mapping >= 2, JSON.stringify(iommu.engine.faults));
    const edu = stats.devices.find((d) => d.name.startsWith("edu"))!;
    assert.ok((edu.device as { dmaFaults: number }).dmaFaults >= 2);
    // The host-propagation model saw the VFIO mappings come and go.
    assert.ok(edu.host !== undefined && edu.host.maps > 0 && edu.host.unmaps > 0, JSON.stringify(edu.host));
  });

  test("virtio-rng (iommu=off) over vfio-user works beside them, MSI-X through eventfds", () => {
    assert.equal(findResult(run.results, "rng-read")?.status, "pass", why);
    const rng = stats.devices.find((d) => d.name.startsWith("rng"))!;
    assert.ok(rng.server.irqs.signalled.msix > 0);
    rmSync(dir, { recursive: true, force: true });
  });
});

interface EngineStats {
  requests: { map: Record<string, number>; unmap: Record<string, number> };
}

interface HostStats {
  mapSizes: Record<string, number>;
  peakEntries: number;
  refusals: Record<string, number>;
  firstRefusal: string | null;
  dmaEntryLimit: number;
}

/** MAP requests that carried the hugepage buffer: multiples of 2 MiB up to 1 GiB (the 4 KiB maps and the bypass mirror of RAM are neither). */
function hugeMapRequests(host: HostStats): { count: number; bytes: number; sizes: Record<string, number> } {
  let count = 0;
  let bytes = 0;
  const sizes: Record<string, number> = {};
  for (const [size, n] of Object.entries(host.mapSizes)) {
    const s = Number(size);
    if (s % (2 << 20) !== 0 || s > 1 << 30) continue;
    count += n;
    bytes += s * n;
    sizes[size] = n;
  }
  return { count, bytes, sizes };
}

/**
 * One boot with a 1 GiB hugepage-backed VFIO mapping. `fromGuide`: the serve command, the guest
 * script and the count of docs/guide.md section 4 as written (the 4k:2m:1g case); otherwise
 * the same with the given page-size mask and 4 KiB map count.
 */
async function hugeRun(
  setup: { fromGuide: true } | { fromGuide: false; mask: string; count4k: number },
  extraCmdline: string,
) {
  const dir = mkdtempSync(join(tmpdir(), "viommu-serve-"));
  const serve = await startServe(
    dir,
    setup.fromGuide
      ? viommuArgs("huge-serve", "serve", { DIR: dir })
      : [
          "--iommu",
          `virtio,page-size-mask=${setup.mask}`,
          "--device",
          "edu,iommu=on",
          "--guest-ram-mib",
          "2048",
        ],
  );
  try {
    const run = await runGuest({
      qemuArgs: serve.qemuArgs,
      memMiB: 2048,
      cmdline: `vfio_iommu_type1.allow_unsafe_interrupts=1 hugepages=520 ${extraCmdline}`,
      timeoutMs: 400_000,
      script: setup.fromGuide
        ? recipeText("guest-huge")
        : `vfio-map-bench 0000:00:11.0 --count ${setup.count4k} --huge-mib 1024`,
    });
    const stats = (await serve.stop()) as unknown as ServeStats;
    const host = stats.devices.find((d) => d.name.startsWith("edu"))!.host as unknown as HostStats;
    const engine = (stats.devices.find((d) => d.name === "virtio-iommu")!.device as { engine: EngineStats })
      .engine;
    // The guide's way to count the mappings: its node one-liner over the stats file.
    let counted = "";
    if (setup.fromGuide) {
      const [count] = shellCommands(guideRecipe("huge-count").text, { DIR: dir });
      counted = execFileSync(count![0]!, count!.slice(1), { cwd: REPO }).toString();
    }
    return {
      run,
      host,
      engine,
      counted,
      why: `${describeRun(run, 40)}\n--- serve ---\n${serve.stderr().slice(-2000)}`,
    };
  } finally {
    if (serve.child.exitCode === null) serve.child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

test("(4) huge pages, page-size-mask 4k:2m:1g: a hugepage-backed 1 GiB VFIO mapping arrives as MAP requests of 2 MiB runs", {
  skip: !lab.ok,
  timeout: 420_000,
}, async () => {
  const { run, host, why, counted } = await hugeRun({ fromGuide: true }, "");
  assert.equal(findResult(run.results, "map-huge")?.status, "pass", why);
  assert.equal(findResult(run.results, "unmap-huge")?.status, "pass", why);
  const huge = hugeMapRequests(host);
  assert.equal(
    huge.bytes,
    1 << 30,
    `the MAP requests cover exactly the 1 GiB buffer: ${JSON.stringify(huge)}`,
  );
  assert.ok(huge.count >= 1 && huge.count <= 512, JSON.stringify(huge));
  // docs/guide.md's huge-count one-liner prints the same histogram.
  assert.match(counted, /^edu0 \{/, counted);
  for (const [size, n] of Object.entries(host.mapSizes)) {
    assert.match(counted, new RegExp(`'${size}': ${n}\\b`), counted);
  }
  console.log(
    `# huge pages, mask 4k:2m:1g: ${huge.count} MAP requests for 1 GiB, by size ${JSON.stringify(huge.sizes)}; host model peak ${host.peakEntries} entries (limit ${host.dmaEntryLimit}); ${findResult(run.results, "map-huge")?.detail}`,
  );
});

test("(4) huge pages, page-size-mask 4k: the 1 GiB mapping, and 4 KiB VFIO maps until the host model's 65,535-entry limit refuses", {
  skip: !lab.ok,
  timeout: 420_000,
}, async () => {
  // The guest's own type1 limit (also 65,535 by default) is raised so that the host model's
  // limit is the one reached: 66,000 separate 4 KiB VFIO_IOMMU_MAP_DMA calls.
  const COUNT = 66_000;
  const { run, host, engine, why } = await hugeRun(
    { fromGuide: false, mask: "4k", count4k: COUNT },
    "vfio_iommu_type1.dma_entry_limit=200000",
  );
  assert.equal(findResult(run.results, "map-huge")?.status, "pass", why);
  const huge = hugeMapRequests(host);
  assert.equal(
    huge.bytes,
    1 << 30,
    `the MAP requests cover exactly the 1 GiB buffer: ${JSON.stringify(huge)}`,
  );
  assert.equal(host.peakEntries, 65_535, JSON.stringify(host));
  assert.equal(host.mapSizes["4096"], 65_535, "4 KiB entries the host model accepted");
  assert.equal(host.refusals.ENOSPC, COUNT - 65_535, JSON.stringify(host));
  // VIRTIO 1.3 5.13.6: the device answers S_NOMEM ("insufficient resources") and maps nothing.
  assert.equal(engine.requests.map.NOMEM, COUNT - 65_535, JSON.stringify(engine.requests.map));
  const map4k = findResult(run.results, "map-4k");
  console.log(
    `# huge pages, mask 4k: ${huge.count} MAP requests for 1 GiB, by size ${JSON.stringify(huge.sizes)}; 4 KiB maps: host model peak ${host.peakEntries} entries, ${host.refusals.ENOSPC} refused ENOSPC -> ${engine.requests.map.NOMEM} MAP answered S_NOMEM; guest saw: ${map4k?.detail} (Linux queues MAP requests without checking their status)`,
  );
});

test("Client Disconnection: after a VM exits, a new VM connects to the same server, and VFIO and the disk work again", {
  skip: !lab.ok,
  timeout: 300_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-serve-"));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, pattern(1 << 20, 0x77));
  const serve = await startServe(dir, [
    "--iommu",
    "virtio",
    "--device",
    "edu,iommu=on",
    "--disk",
    `path=${disk},iommu=on`,
  ]);
  try {
    for (let round = 0; round < 2; round++) {
      const run = await runGuest({
        qemuArgs: serve.qemuArgs,
        cmdline: "vfio_iommu_type1.allow_unsafe_interrupts=1",
        timeoutMs: 120_000,
        script: [
          "vfio-edu-test 0000:00:11.0 > /tmp/edu.log; grep 'name=vfio-edu-test' /tmp/edu.log",
          `s=$(dd if=/dev/vda bs=65536 count=16 2>/dev/null | md5sum | cut -d" " -f1)`,
          `[ "$s" = "${md5(pattern(1 << 20, 0x77))}" ] && echo "RESULT name=disk-read status=pass detail=$s" || echo "RESULT name=disk-read status=fail detail=$s"`,
        ].join("\n"),
      });
      const why = `round ${round}\n${describeRun(run)}\n${serve.stderr().slice(-2000)}`;
      assert.equal(findResult(run.results, "vfio-edu-test")?.status, "pass", why);
      assert.equal(findResult(run.results, "disk-read")?.status, "pass", why);
      for (
        let i = 0;
        i < 100 &&
        /client connected/.test(serve.stderr()) &&
        serve.stderr().split("client disconnected").length - 1 < 3 * (round + 1);
        i++
      ) {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const stats = (await serve.stop()) as unknown as { memory: { regions: number } };
    assert.equal(stats.memory.regions, 0, "every client region released after the VMs exited");
    assert.equal(serve.stderr().split("client connected").length - 1, 6);
  } finally {
    if (serve.child.exitCode === null) serve.child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
