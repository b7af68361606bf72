/**
 * `viommu serve` argument handling and the QEMU argument line it prints.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { parsePageSizeMask, parseServeArgs, qemuArgsLine } from "../../src/cli/serve.ts";

test("serve: devices in command-line order with their iommu setting; an IOMMU with the default page-size mask", () => {
  const o = parseServeArgs([
    "--socket-dir",
    "/tmp/x",
    "--iommu",
    "virtio",
    "--disk",
    "path=d.img,iommu=on",
    "--rng",
    "--device",
    "edu,iommu=on",
  ]);
  assert.equal(o.iommuPageSizeMask, (1n << 12n) | (1n << 21n) | (1n << 30n));
  assert.equal(o.iommuBootBypass, true);
  assert.deepEqual(
    o.devices.map((d) => [d.kind, d.iommu]),
    [
      ["disk", true],
      ["rng", false],
      ["edu", true],
    ],
  );
});

test("serve: page-size-mask accepts granule lists and numbers; the lowest granule must be at least 4 KiB", () => {
  assert.equal(parsePageSizeMask("4k"), 1n << 12n);
  assert.equal(parsePageSizeMask("2m:1g"), (1n << 21n) | (1n << 30n));
  assert.equal(parsePageSizeMask("0x201000"), 0x201000n);
  assert.throws(() => parsePageSizeMask("512"));
  assert.throws(() => parsePageSizeMask("0"));
  assert.throws(() => parsePageSizeMask("3k"));
});

test("serve: iommu=on without --iommu, unknown options and missing values are refused", () => {
  assert.throws(
    () => parseServeArgs(["--socket-dir", "/tmp/x", "--device", "edu,iommu=on"]),
    /needs --iommu/,
  );
  assert.throws(() => parseServeArgs(["--socket-dir", "/tmp/x", "--device", "nic"]), /unknown device/);
  assert.throws(() => parseServeArgs(["--socket-dir", "/tmp/x", "--disk", "iommu=on"]), /path=FILE/);
  assert.throws(() => parseServeArgs(["--device", "edu"]), /--socket-dir/);
  assert.throws(() => parseServeArgs(["--socket-dir"]), /needs a value/);
});

test("serve: the QEMU line uses vfio-user-pci's JSON socket syntax, the shared memory backend, and the VIOT", () => {
  const line = qemuArgsLine(2048, [{ slot: 0x10, socketPath: "/s/a.sock" }], "/s/viot.bin");
  assert.equal(
    line,
    `-object memory-backend-memfd,id=viommu-ram,size=2048M,share=on -machine memory-backend=viommu-ram -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/s/a.sock"},"addr":"0x10"}' -acpitable file=/s/viot.bin`,
  );
});

test("serve: --guest-ram-backend hugetlb prints a memfd of 2 MiB huge pages; an odd size or another backend is refused", () => {
  const opts = parseServeArgs([
    "--socket-dir",
    "/tmp/x",
    "--device",
    "edu",
    "--guest-ram-backend",
    "hugetlb",
  ]);
  assert.equal(opts.guestRamBackend, "hugetlb");
  assert.equal(parseServeArgs(["--socket-dir", "/tmp/x", "--device", "edu"]).guestRamBackend, "memfd");
  const line = qemuArgsLine(128, [{ slot: 0x11, socketPath: "/s/b.sock" }], undefined, "hugetlb");
  assert.ok(
    line.startsWith(
      "-object memory-backend-memfd,id=viommu-ram,size=128M,share=on,hugetlb=on,hugetlbsize=2M -machine memory-backend=viommu-ram ",
    ),
    line,
  );
  assert.throws(
    () =>
      parseServeArgs([
        "--socket-dir",
        "/tmp/x",
        "--device",
        "edu",
        "--guest-ram-mib",
        "129",
        "--guest-ram-backend",
        "hugetlb",
      ]),
    /even --guest-ram-mib/,
  );
  assert.throws(
    () => parseServeArgs(["--socket-dir", "/tmp/x", "--device", "edu", "--guest-ram-backend", "file"]),
    /available: memfd, hugetlb/,
  );
});
