import assert from "node:assert/strict";
import { test } from "node:test";
import { parseRunOptions, parseSize, RUN_USAGE, RunOptionError } from "../../src/cli/run-options.ts";
import { devicesFor } from "../../src/vmm/device-choice.ts";

test("defaults: one vCPU, 256 MiB, built-in guest, no IOMMU, serial on the tty, the machine's debug-exit ports", () => {
  const o = parseRunOptions([]);
  assert.equal(o.cpus, 1);
  assert.equal(o.memorySizeBytes, 256 << 20);
  assert.equal(o.kernel, undefined);
  assert.deepEqual(o.iommu, { kind: "none" });
  assert.deepEqual(o.serial, { kind: "tty" });
  // Not given: the machine's default (test/cli/run-machine-checks.test.ts), tracked as absent.
  assert.equal(o.debugExit, undefined);
  assert.deepEqual(parseRunOptions(["--debug-exit", "iobase=0x501,iosize=2"]).debugExit, {
    iobase: 0x501,
    iosize: 2,
  });
  assert.deepEqual(parseRunOptions(["--debug-exit", "iosize=4"]).debugExit, { iobase: 0x501, iosize: 4 });
});

test("sizes: K/M/G suffixes are binary; a bare number is MiB as QEMU's -m", () => {
  assert.equal(parseSize("512M", "x"), 512 << 20);
  assert.equal(parseSize("2G", "x"), 2 * 1024 ** 3);
  assert.equal(parseSize("65536K", "x"), 64 << 20);
  assert.equal(parseSize("64", "x"), 64 << 20);
  assert.throws(() => parseSize("12Q", "--memory"), /--memory: "12Q" is not a size/);
});

test("--memory size=S,file=F", () => {
  const o = parseRunOptions(["--memory", "size=512M,file=/dev/hugepages/vm0"]);
  assert.equal(o.memorySizeBytes, 512 << 20);
  assert.equal(o.memoryFile, "/dev/hugepages/vm0");
  assert.throws(() => parseRunOptions(["--memory", "size=512M,color=red"]), /unknown property "color"/);
  assert.throws(() => parseRunOptions(["--memory", "8M"]), /at least 16M/);
});

test("--iommu intel takes QEMU intel-iommu properties, validated by the VT-d model", () => {
  const o = parseRunOptions(["--iommu", "intel,intremap=on,caching-mode=on,aw-bits=48"]);
  assert.deepEqual(o.iommu, { kind: "intel", spec: "intremap=on,caching-mode=on,aw-bits=48" });
  assert.throws(
    () => parseRunOptions(["--iommu", "intel,aw-bits=40"]),
    /--iommu intel-iommu: aw-bits=40: supported values are 39, 48 and 57/,
  );
  assert.throws(() => parseRunOptions(["--iommu", "amd"]), /unknown IOMMU "amd"/);
  assert.throws(() => parseRunOptions(["--iommu", "virtio,x=1"]), /unknown property "x"/);
  assert.deepEqual(parseRunOptions(["--iommu", "virtio,page-size-mask=4k:2m"]).iommu, {
    kind: "virtio",
    pageSizeMask: (1n << 12n) | (1n << 21n),
  });
  assert.throws(
    () => parseRunOptions(["--iommu", "virtio,page-size-mask=3k"]),
    /--iommu virtio: page-size-mask/,
  );
});

test("--device edu[,iommu=on] and --rng [iommu=on]; iommu=on needs an --iommu", () => {
  const o = parseRunOptions([
    "--iommu",
    "virtio",
    "--device",
    "edu,iommu=on",
    "--device",
    "edu",
    "--rng",
    "iommu=on",
  ]);
  assert.deepEqual(o.devices, [
    { kind: "edu", iommu: true },
    { kind: "edu", iommu: false },
    { kind: "rng", iommu: true },
  ]);
  assert.deepEqual(parseRunOptions(["--rng"]).devices, [{ kind: "rng", iommu: false }]);
  assert.throws(() => parseRunOptions(["--device", "edu,iommu=on"]), /no --iommu/);
  assert.throws(() => parseRunOptions(["--device", "gpu"]), /unknown device "gpu"/);
  assert.throws(
    () => parseRunOptions(["--iommu", "virtio", "--device", "edu,iommu=maybe"]),
    /expected on or off/,
  );
});

test("--disk path=F[,iommu=on][,readonly=on]", () => {
  const o = parseRunOptions([
    "--iommu",
    "intel",
    "--disk",
    "path=/tmp/d.img,iommu=on,readonly=on",
    "--disk",
    "path=/tmp/e.img",
  ]);
  assert.deepEqual(o.devices, [
    { kind: "disk", path: "/tmp/d.img", iommu: true, readOnly: true },
    { kind: "disk", path: "/tmp/e.img", iommu: false, readOnly: false },
  ]);
  assert.throws(() => parseRunOptions(["--disk", "iommu=on"]), /--disk needs path=FILE/);
  assert.throws(() => parseRunOptions(["--disk", "path=x,cache=none"]), /unknown property "cache"/);
});

test("the built-in guest gets an edu behind the IOMMU when one is configured", () => {
  assert.deepEqual(devicesFor(parseRunOptions(["--iommu", "virtio"])), [{ kind: "edu", iommu: true }]);
  assert.deepEqual(devicesFor(parseRunOptions([])), [{ kind: "edu", iommu: false }]);
  assert.deepEqual(devicesFor(parseRunOptions(["--kernel", "k"])), []);
});

test("--serial tty|file=F|null; --debug-exit iobase/iosize; --timeout; --cmdline; --initramfs needs --kernel", () => {
  assert.deepEqual(parseRunOptions(["--serial", "file=/tmp/x"]).serial, { kind: "file", path: "/tmp/x" });
  assert.deepEqual(parseRunOptions(["--serial=null"]).serial, { kind: "null" });
  assert.throws(() => parseRunOptions(["--serial", "pty"]), /--serial: expected tty, null or file=PATH/);
  assert.deepEqual(parseRunOptions(["--debug-exit", "iobase=0xf4,iosize=4"]).debugExit, {
    iobase: 0xf4,
    iosize: 4,
  });
  assert.throws(() => parseRunOptions(["--debug-exit", "iobase=0x1ffff"]), /iobase must be a port/);
  assert.equal(parseRunOptions(["--timeout", "5"]).timeoutSeconds, 5);
  assert.equal(parseRunOptions(["--kernel", "k", "--cmdline", "a b"]).cmdline, "a b");
  assert.deepEqual(parseRunOptions(["--kernel", "k", "--initramfs", "m1 x", "--initramfs", "m2"]).modules, [
    "m1 x",
    "m2",
  ]);
  assert.throws(() => parseRunOptions(["--initramfs", "m"]), /--initramfs needs --kernel/);
});

test("--stdin feeds COM1 and needs --serial tty", () => {
  assert.equal(parseRunOptions(["--stdin"]).stdin, true);
  assert.equal(parseRunOptions([]).stdin, false);
  assert.throws(() => parseRunOptions(["--stdin", "--serial", "null"]), /--stdin needs --serial tty/);
});

test("bad arguments are one line naming the option", () => {
  for (const argv of [
    ["--bogus"],
    ["--cpus"],
    ["--cpus", "x"],
    ["--cpus", "0"],
    ["--kernel", "a", "--kernel", "b"],
  ]) {
    assert.throws(
      () => parseRunOptions(argv),
      (e: unknown) => e instanceof RunOptionError && !e.message.includes("\n"),
    );
  }
});

test("--help says which devices accept iommu=on", () => {
  assert.ok(parseRunOptions(["--help"]).help);
  assert.match(RUN_USAGE, /Devices that accept iommu=on .*: edu, rng, disk/);
});

test("--help says which devices the DMAR and VIOT list (issue 10 item 6)", () => {
  assert.match(RUN_USAGE, /DMAR's\s+device scopes \(--iommu intel; no INCLUDE_PCI_ALL\)/);
  assert.match(RUN_USAGE, /untranslated DMA/);
});

test("--debug-exit: any iobase QEMU allows is parsed (the machine checks its own port map)", () => {
  for (const [iobase, iosize] of [
    [0xf4, 4],
    [0x501, 2],
    [0x80, 1],
    [0xbffc, 4],
    [0x3fc, 4],
  ]) {
    assert.deepEqual(parseRunOptions(["--debug-exit", `iobase=${iobase},iosize=${iosize}`]).debugExit, {
      iobase,
      iosize,
    });
  }
});
