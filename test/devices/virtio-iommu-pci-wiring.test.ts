/**
 * virtio-iommu-pci wiring that a guest only sees through the transport (issue 12 items 9-11):
 * DEVICE_NEEDS_RESET from the engine reaches the device status register, a request whose answer
 * cannot be written is not performed, and probe_size is bounded by what a request can carry.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { VirtioIommuPci } from "../../src/devices/virtio-iommu-pci.ts";
import type { HostIommu } from "../../src/engine/host-iommu.ts";
import { VfioType1Container } from "../../src/engine/host-iommu.ts";
import { MAX_PROBE_SIZE_BYTES } from "../../src/virtio-iommu/options.ts";
import { IommuMachine, VIOMMU_BDF } from "../support/iommu-machine.ts";
import { TestMachine } from "../support/machine.ts";
import { attachRequest } from "../support/viommu-requests.ts";
import {
  GuestAllocator,
  S_NEEDS_RESET,
  VIRTIO_F_VERSION_1,
  VirtioPciDriver,
} from "../support/virtio-driver.ts";

const S_OK = 0;
const S_INVAL = 4;
const F_MAP_UNMAP = 1n << 2n;
const F_PROBE = 1n << 4n;

/** An assigned endpoint whose host IOMMU can be told to refuse unmaps. */
function flakyHost(): { host: HostIommu; refuseUnmaps: () => void } {
  const inner = new VfioType1Container();
  let refuse = false;
  return {
    host: {
      map: (iova, gpa, size, perms) => inner.map(iova, gpa, size, perms),
      unmap: (iova, size) =>
        refuse ? { ok: false, errno: "EPERM", message: "refused" } : inner.unmap(iova, size),
    },
    refuseUnmaps: () => {
      refuse = true;
    },
  };
}

test("VIRTIO 1.3 2.1.2 / 5.13.6.6.2: a host IOMMU that refuses an UNMAP sets DEVICE_NEEDS_RESET in the PCI device status", () => {
  const m = new IommuMachine();
  const h = flakyHost();
  m.viommu.engine.addEndpoint(0x18, { host: h.host });
  const drv = m.viommuDriver;
  assert.equal(m.attach(1, 0x18), S_OK);
  assert.equal(m.map(1, 0x10000, 0x1000, 0x400000), S_OK);
  assert.equal(drv.status & S_NEEDS_RESET, 0);
  h.refuseUnmaps();
  m.unmap(1, 0x10000, 0x1000);
  assert.equal(drv.status & S_NEEDS_RESET, S_NEEDS_RESET, "the guest sees the device needs a reset");
  assert.match(m.viommu.transport.stats().lastError ?? "", /refused an unmap/);
  // Only a device reset clears it (and the engine forgets its reason).
  drv.w8(20, 0);
  assert.equal(drv.status & S_NEEDS_RESET, 0);
  assert.equal(m.viommu.engine.needsReset, false);
});

test("VIRTIO 1.3 2.1.2 / 5.13.6.4.2: a host IOMMU that refuses the DETACH teardown sets DEVICE_NEEDS_RESET", () => {
  const m = new IommuMachine();
  const h = flakyHost();
  m.viommu.engine.addEndpoint(0x18, { host: h.host });
  assert.equal(m.attach(1, 0x18), S_OK);
  assert.equal(m.map(1, 0x10000, 0x1000, 0x400000), S_OK);
  h.refuseUnmaps();
  m.request(new Uint8Array([2, 0, 0, 0, 1, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  assert.equal(m.viommuDriver.status & S_NEEDS_RESET, S_NEEDS_RESET);
});

test("VIRTIO 1.3 2.1.2: a request whose tail is outside guest RAM is not performed (ATTACH does not move the endpoint); DEVICE_NEEDS_RESET", () => {
  const m = new IommuMachine();
  m.viommu.engine.addEndpoint(0x18);
  const d = m.viommuDriver;
  const req = d.allocator.alloc(24);
  m.memory.write(req, attachRequest(1, 0x18));
  const q = d.queues[0];
  q.add([
    { gpa: req, len: 24, writable: false },
    { gpa: 0xf000_0000, len: 4, writable: true }, // not RAM
  ]);
  d.kick(0);
  const used = q.takeUsed();
  assert.equal(used.length, 1);
  assert.equal(used[0].len, 0);
  assert.equal(m.viommu.engine.endpointDomain(0x18), null, "the ATTACH was not performed");
  assert.equal(d.status & S_NEEDS_RESET, S_NEEDS_RESET);
  assert.equal(m.viommu.stats().requestsUnwritable, 1);
});

/** A machine with a virtio-iommu-pci of the given probe_size, its driver up with PROBE. */
function probeMachine(probeSizeBytes: number) {
  const m = new TestMachine();
  const viommu = new VirtioIommuPci(m.memory, { probeSizeBytes });
  m.add(viommu.pci, 1);
  const d = new VirtioPciDriver(m, VIOMMU_BDF, new GuestAllocator(1 << 20, 12 << 20));
  d.bringUp(VIRTIO_F_VERSION_1 | F_MAP_UNMAP | F_PROBE, 2, 64);
  viommu.engine.addEndpoint(0x18);
  /** PROBE endpoint 0x18 with a writable area of `writableBytes`: used length and the tail status. */
  const probe = (writableBytes: number) => {
    const req = d.allocator.alloc(72);
    const resp = d.allocator.alloc(writableBytes);
    const head = new Uint8Array(72);
    head[0] = 5;
    head[4] = 0x18;
    m.memory.write(req, head);
    m.memory.fill(resp, writableBytes, 0xff);
    const q = d.queues[0];
    q.add([
      { gpa: req, len: 72, writable: false },
      { gpa: resp, len: writableBytes, writable: true },
    ]);
    d.kick(0);
    const [u] = q.takeUsed();
    return { used: u.len, status: m.memory.readU8(resp + Math.min(probeSizeBytes, writableBytes - 4)) };
  };
  return { m, viommu, d, probe };
}

test("VIRTIO 1.3 5.13.6.7.2: probe_size at the transport's limit (65,532): a PROBE answer fills 64 KiB with its tail, status OK", () => {
  assert.equal(MAX_PROBE_SIZE_BYTES, 65_532);
  const { probe, d } = probeMachine(MAX_PROBE_SIZE_BYTES);
  assert.equal(d.deviceConfig(32, 4), 65_532, "config.probe_size");
  assert.deepEqual(probe(65_536), { used: 65_536, status: S_OK });
  // An area smaller than probe_size + 4: INVAL at its end, as for any probe_size.
  assert.deepEqual(probe(65_535), { used: 65_535, status: S_INVAL });
});

test("probe_size above 65,532 cannot be configured (the answer would not fit a request's 64 KiB)", () => {
  assert.throws(() => new VirtioIommuPci(new TestMachine().memory, { probeSizeBytes: 65_533 }), RangeError);
  assert.throws(() => new VirtioIommuPci(new TestMachine().memory, { probeSizeBytes: 70_000 }), RangeError);
});
