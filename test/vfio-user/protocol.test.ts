/**
 * vfio-user codec (QEMU docs/interop/vfio-user.rst "Header", "VFIO_USER_VERSION") and the ACPI
 * VIOT table (ACPI 6.4 5.2.30), byte-checked.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { buildVirtioPciIommuViot, slotRuns } from "../../src/acpi/viot.ts";
import {
  decodeHeader,
  encodeHeader,
  encodeVersion,
  parseVersion,
  readU64,
  writeU64,
} from "../../src/vfio-user/protocol.ts";

test("Header: 16 bytes, ID @0, command @2, size @4, flags @8, error @12, little-endian", () => {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  encodeHeader(v, 0, 0xbeef, 9, 0x20, 0x21, 22);
  assert.deepEqual([...b], [0xef, 0xbe, 9, 0, 0x20, 0, 0, 0, 0x21, 0, 0, 0, 22, 0, 0, 0]);
  assert.deepEqual(decodeHeader(v), { id: 0xbeef, command: 9, sizeBytes: 0x20, flags: 0x21, error: 22 });
});

test("Version: absent capabilities take the spec defaults (max_msg_fds 1, max_data_xfer_size 1 MiB, max_dma_maps 65535, pgsizes 4 KiB)", () => {
  const v = parseVersion(new Uint8Array([0, 0, 1, 0]));
  assert.ok(v.ok);
  if (v.ok)
    assert.deepEqual(v.caps, { maxMsgFds: 1, maxDataXferSize: 1 << 20, maxDmaMaps: 65535, pgsizes: 4096 });
});

test("Version: capabilities are read from NUL-terminated JSON; wrong types are refused", () => {
  const ok = parseVersion(
    encodeVersion(0, 1, { max_msg_fds: 8, pgsizes: 0x201000, migration: { pgsize: 4096 } }),
  );
  assert.ok(ok.ok);
  if (ok.ok) {
    assert.equal(ok.caps.maxMsgFds, 8);
    assert.equal(ok.caps.pgsizes, 0x201000);
  }
  assert.equal(parseVersion(encodeVersion(0, 1, { max_msg_fds: "8" })).ok, false);
  assert.equal(parseVersion(new Uint8Array([0, 0, 1, 0, 0x7b, 0])).ok, false, "truncated JSON");
  assert.equal(parseVersion(new Uint8Array([0, 0])).ok, false, "shorter than major+minor");
  const enc = encodeVersion(0, 1, { max_msg_fds: 16 });
  assert.equal(enc[enc.length - 1], 0, "version data includes the terminating NUL");
});

test("u64 fields: values of 2^53 and above are rejected, not truncated", () => {
  const v = new DataView(new ArrayBuffer(8));
  writeU64(v, 0, 2 ** 52 + 5);
  assert.equal(readU64(v, 0), 2 ** 52 + 5);
  v.setBigUint64(0, 1n << 60n, true);
  assert.equal(readU64(v, 0), -1);
});

test("VIOT: header, virtio-iommu PCI node at offset 48, PCI range nodes per run of adjacent slots, checksum zero", () => {
  // IOMMU at 00:10.0, endpoints at 00:11.0, 00:12.0, 00:13.0 and 00:15.0 (00:14.0 is iommu=off).
  const t = buildVirtioPciIommuViot({
    iommuBdf: 0x80,
    endpointBdfs: [0x88, 0x90, 0x98, 0xa8],
    coverWholeSlots: true,
  });
  const expected = [
    // SDT header: "VIOT", length 112, revision 0, checksum, "VIOMMU", "VIOMMUVM", OEM rev 1, "VIOM", 1
    0x56,
    0x49,
    0x4f,
    0x54,
    112,
    0,
    0,
    0,
    0,
    t[9],
    0x56,
    0x49,
    0x4f,
    0x4d,
    0x4d,
    0x55,
    0x56,
    0x49,
    0x4f,
    0x4d,
    0x4d,
    0x55,
    0x56,
    0x4d,
    1,
    0,
    0,
    0,
    0x56,
    0x49,
    0x4f,
    0x4d,
    1,
    0,
    0,
    0,
    // node_count 3, node_offset 48, reserved[8]
    3,
    0,
    48,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    // @48 virtio-iommu PCI: type 3, length 16, segment 0, BDF 0x0080, reserved[8]
    3,
    0,
    16,
    0,
    0,
    0,
    0x80,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    // @64 PCI range: type 1, length 24, endpoint_start 0x88, segments 0..0, BDF 0x88..0x9f, output 48
    1,
    0,
    24,
    0,
    0x88,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0x88,
    0,
    0x9f,
    0,
    48,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    // @88 PCI range: endpoint_start 0xa8, BDF 0xa8..0xaf
    1,
    0,
    24,
    0,
    0xa8,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0xa8,
    0,
    0xaf,
    0,
    48,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
  ];
  assert.deepEqual([...t], expected);
  assert.equal(
    t.reduce((a, b) => (a + b) & 0xff, 0),
    0,
    "checksum: the table sums to zero",
  );
});

test("VIOT ranges never cover a slot that was not listed", () => {
  assert.deepEqual(slotRuns([0x88, 0x98]), [
    [0x88, 0x8f],
    [0x98, 0x9f],
  ]);
  assert.deepEqual(slotRuns([]), []);
});
