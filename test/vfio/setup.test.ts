/**
 * Assigning a host device: `--device vfio,host=BDF` and Cloud Hypervisor's `--device path=...`,
 * and the bad-input rules: a BDF that does not exist, a device not bound to vfio-pci, a device
 * without an IOMMU group, a group that is not viable, VT-d without caching mode. Each is one
 * line naming the fix, and `viommu run` exits 2. These run without /dev/kvm or VFIO: the checks
 * happen before either is opened (a fake sysfs tree stands for the host's).
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { parseRunOptions, RUN_USAGE } from "../../src/cli/run-options.ts";
import { findAssignableDevice, normalizeBdf } from "../../src/vfio/sysfs.ts";

test("--device vfio,host=BDF and --device path=/sys/bus/pci/devices/BDF/ name the same device", () => {
  const a = parseRunOptions(["--iommu", "virtio", "--device", "vfio,host=00:03.0,iommu=on"]);
  const b = parseRunOptions([
    "--iommu",
    "virtio",
    "--device",
    "path=/sys/bus/pci/devices/0000:00:03.0/,iommu=on",
  ]);
  assert.deepEqual(a.devices, [{ kind: "vfio", host: "0000:00:03.0", iommu: true }]);
  assert.deepEqual(b.devices, a.devices);
  assert.deepEqual(parseRunOptions(["--device", "vfio,host=0000:01:00.1"]).devices, [
    { kind: "vfio", host: "0000:01:00.1", iommu: false },
  ]);
});

test("--device vfio: a missing or malformed address is one line naming the syntax", () => {
  assert.throws(() => parseRunOptions(["--device", "vfio"]), /--device vfio needs host=BDF or path=/);
  assert.throws(() => parseRunOptions(["--device", "vfio,host=1,path=2"]), /one of them/);
  assert.throws(
    () => parseRunOptions(["--device", "vfio,host=00:33.0"]),
    /is not a PCI address: give host=DDDD:BB:DD.F/,
  );
  assert.throws(() => parseRunOptions(["--device", "path=/tmp/x"]), /is not a PCI address/);
  assert.throws(
    () => parseRunOptions(["--device", "vfio,host=00:03.0", "--device", "vfio,host=0000:00:03.0"]),
    /0000:00:03.0 is assigned twice/,
  );
});

test("VT-d without caching-mode=on refuses an assigned device behind it, as QEMU does", () => {
  assert.throws(
    () => parseRunOptions(["--iommu", "intel", "--device", "vfio,host=00:03.0,iommu=on"]),
    /needs caching-mode=on/,
  );
  const o = parseRunOptions(["--iommu", "intel,caching-mode=on", "--device", "vfio,host=00:03.0,iommu=on"]);
  assert.equal(o.devices[0].kind, "vfio");
  // Not behind the IOMMU: all guest RAM is mapped, no caching mode needed.
  assert.doesNotThrow(() => parseRunOptions(["--iommu", "intel", "--device", "vfio,host=00:03.0"]));
});

test("--help documents both spellings of the assigned device", () => {
  assert.match(RUN_USAGE, /--device vfio,host=BDF\[,iommu=on\]/);
  assert.match(RUN_USAGE, /--device path=\/sys\/bus\/pci\/devices\/BDF\/\[,iommu=on\]/);
});

test("normalizeBdf adds the PCI domain and lower-cases", () => {
  assert.equal(normalizeBdf("0A:1f.7"), "0000:0a:1f.7");
  assert.equal(normalizeBdf("/sys/bus/pci/devices/0001:00:02.0"), "0001:00:02.0");
});

/** A fake /sys with device `bdf` (driver, group) and other group members. */
function fakeSysfs(devices: { bdf: string; driver?: string; group?: number }[]): {
  root: string;
  done: () => void;
} {
  const root = mkdtempSync(join(tmpdir(), "viommu-sysfs-"));
  for (const d of devices) {
    const dir = join(root, "bus/pci/devices", d.bdf);
    mkdirSync(dir, { recursive: true });
    if (d.driver !== undefined) {
      mkdirSync(join(root, "bus/pci/drivers", d.driver), { recursive: true });
      symlinkSync(join(root, "bus/pci/drivers", d.driver), join(dir, "driver"));
    }
    if (d.group !== undefined) {
      const g = join(root, "kernel/iommu_groups", String(d.group));
      mkdirSync(join(g, "devices"), { recursive: true });
      symlinkSync(g, join(dir, "iommu_group"));
      symlinkSync(dir, join(g, "devices", d.bdf));
    }
  }
  return { root, done: () => rmSync(root, { recursive: true, force: true }) };
}

test("bad host devices: absent, unbound, bound elsewhere, no group, non-viable group; each names the fix", () => {
  const s = fakeSysfs([
    { bdf: "0000:00:03.0", driver: "vfio-pci", group: 5 },
    { bdf: "0000:00:04.0" },
    { bdf: "0000:00:05.0", driver: "e1000e", group: 6 },
    { bdf: "0000:00:06.0", driver: "vfio-pci" },
    { bdf: "0000:00:07.0", driver: "vfio-pci", group: 7 },
    { bdf: "0000:00:07.1", driver: "snd_hda_intel", group: 7 },
  ]);
  try {
    assert.deepEqual(findAssignableDevice("0000:00:03.0", s.root), {
      bdf: "0000:00:03.0",
      sysfsPath: join(s.root, "bus/pci/devices/0000:00:03.0"),
      group: 5,
    });
    assert.throws(
      () => findAssignableDevice("0000:00:09.0", s.root),
      /no PCI device 0000:00:09.0 on this host/,
    );
    assert.throws(
      () => findAssignableDevice("0000:00:04.0", s.root),
      /bound to no driver, not vfio-pci: modprobe vfio-pci; echo vfio-pci > .*driver_override/,
    );
    assert.throws(
      () => findAssignableDevice("0000:00:05.0", s.root),
      /bound to e1000e, not vfio-pci: echo 0000:00:05.0 > .*driver\/unbind/,
    );
    assert.throws(
      () => findAssignableDevice("0000:00:06.0", s.root),
      /has no IOMMU group: the host needs an IOMMU/,
    );
    assert.throws(
      () => findAssignableDevice("0000:00:07.0", s.root),
      /IOMMU group 7 of 0000:00:07.0 is not viable: 0000:00:07.1 is bound to snd_hda_intel/,
    );
  } finally {
    s.done();
  }
});

test("viommu run with a device that does not exist: one line, exit 2, before KVM is touched", () => {
  const err: string[] = [];
  const status = runVmm(
    ["--iommu", "virtio", "--device", "vfio,host=00:1f.7,iommu=on", "--kernel", "/dev/null"],
    {
      stdout: () => {},
      stderr: (t) => err.push(t),
    },
  );
  assert.equal(status, 2);
  const text = err.join("");
  assert.equal(text.trimEnd().split("\n").length, 1, text);
  assert.match(text, /^viommu run: (no PCI device 0000:00:1f.7 on this host|.*vfio-pci)/);
});
