import assert from "node:assert/strict";
import { test } from "node:test";
import { byteSum } from "../../src/acpi/bytes.ts";
import { VIOMMU_SDT_IDENTITY as ID } from "../../src/acpi/sdt.ts";
import {
  bdfRuns,
  buildViot,
  buildVirtioPciIommuViot,
  describeVirtioPciIommu,
  slotRuns,
  VIOT_FIRST_NODE_OFFSET,
  viotLayout,
} from "../../src/acpi/viot.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
/** Compares with a golden hex string written in groups separated by spaces. */
const assertHex = (actual: Uint8Array, golden: string) =>
  assert.equal(hex(actual), golden.replace(/\s+/g, ""));

/**
 * The checks Linux's drivers/acpi/viot.c applies, written from its behaviour: node_offset inside
 * the table, every node inside it and at least its minimum size, PCI ranges non-empty with an
 * output node that is a virtio-iommu node.
 */
function parseViotLikeLinux(t: Uint8Array): { type: number; offset: number; output?: number }[] {
  const v = new DataView(t.buffer, t.byteOffset, t.byteLength);
  const count = v.getUint16(36, true);
  let at = v.getUint16(38, true);
  assert.ok(at >= 48, "node offset past the header");
  const nodes: { type: number; offset: number; output?: number }[] = [];
  for (let i = 0; i < count; i++) {
    const type = t[at];
    const length = v.getUint16(at + 2, true);
    assert.ok(at + length <= t.length, "node inside the table");
    const minimum = { 1: 24, 2: 24, 3: 16, 4: 16 }[type];
    assert.ok(minimum !== undefined && length >= minimum, `node type ${type} length ${length}`);
    if (type === 1) {
      assert.ok(v.getUint16(at + 8, true) <= v.getUint16(at + 10, true), "segment start <= end");
      assert.ok(v.getUint16(at + 12, true) <= v.getUint16(at + 14, true), "BDF start <= end");
    }
    const output = type === 1 || type === 2 ? v.getUint16(at + 16, true) : undefined;
    nodes.push({ type, offset: at, output });
    at += length;
  }
  assert.equal(at, t.length, "nodes fill the table");
  for (const n of nodes) {
    if (n.output !== undefined) {
      const target = nodes.find((m) => m.offset === n.output);
      assert.ok(target !== undefined && (target.type === 3 || target.type === 4), "output node is an IOMMU");
    }
  }
  return nodes;
}

test("VIOT: header, virtio-pci and virtio-mmio IOMMU nodes, PCI range and MMIO endpoint, golden bytes", () => {
  const viot = buildViot(
    {
      iommus: [
        { kind: "virtio-pci", segment: 0, bdf: 0x10 },
        { kind: "virtio-mmio", baseGpa: 0xd000_0000 },
      ],
      pciRanges: [
        { iommu: 0, endpointStart: 0x18, segmentStart: 0, segmentEnd: 0, bdfStart: 0x18, bdfEnd: 0x20 },
      ],
      mmioEndpoints: [{ iommu: 1, endpointId: 7, baseGpa: 0xd000_1000 }],
    },
    ID,
  );
  assertHex(
    viot,
    "56494f54 80000000 00 8f" + // "VIOT", 128 bytes, revision 0, checksum
      "56494f4d4d55 56494f4d4d55564d 01000000 56494f4d 01000000 0400 3000 0000000000000000" + // 36 node count 4, 38 node offset 48, 40 reserved
      "03 00 1000 0000 1000 0000000000000000" + // @48 virtio-pci IOMMU: seg 0, BDF 00:02.0
      "04 00 1000 00000000 000000d000000000" + // @64 virtio-mmio IOMMU at 0xD0000000
      "01 00 1800 18000000" + // @80 PCI range: endpoint start 0x18
      "0000 0000 1800 2000" + // segments 0-0, BDF 0x18-0x20
      "3000 000000000000" + // output node @48
      "02 00 1800 07000000 0010 00d0 00000000" + // @104 MMIO endpoint 7 at 0xD0001000
      "4000 000000000000", // output node @64
  );
  assert.equal(byteSum(viot), 0);
  const nodes = parseViotLikeLinux(viot);
  assert.deepEqual(
    nodes.map((n) => n.type),
    [3, 4, 1, 2],
  );
});

test("VIOT output node offsets are computed from the layout, not literals", () => {
  const layout = viotLayout({
    iommus: [
      { kind: "virtio-mmio", baseGpa: 0x1000 },
      { kind: "virtio-pci", segment: 1, bdf: 8 },
    ],
  });
  assert.deepEqual(layout.iommuNodeOffsets, [VIOT_FIRST_NODE_OFFSET, VIOT_FIRST_NODE_OFFSET + 16]);
  assert.throws(() =>
    buildViot(
      {
        iommus: [],
        pciRanges: [{ iommu: 0, endpointStart: 0, segmentStart: 0, segmentEnd: 0, bdfStart: 0, bdfEnd: 0 }],
      },
      ID,
    ),
  );
});

test("VIOT PCI ranges: contiguous BDFs merge, endpoint start = BDF start", () => {
  assert.deepEqual(bdfRuns([0x18, 0x10, 0x11, 0x12, 0x11]), [
    [0x10, 0x12],
    [0x18, 0x18],
  ]);
  assert.deepEqual(slotRuns([0x18, 0x11, 0x21]), [[0x10, 0x27]]);
  const d = describeVirtioPciIommu({ iommuBdf: 0x08, endpointBdfs: [0x10, 0x11] });
  assert.deepEqual(d.pciRanges, [
    { iommu: 0, endpointStart: 0x10, segmentStart: 0, segmentEnd: 0, bdfStart: 0x10, bdfEnd: 0x11 },
  ]);
  assert.throws(
    () => describeVirtioPciIommu({ iommuBdf: 0x13, endpointBdfs: [0x10], coverWholeSlots: true }),
    /covers the IOMMU/,
  );
  assert.throws(() => describeVirtioPciIommu({ iommuBdf: 0x08, endpointBdfs: [0x10000] }));
});

test("VIOT drop-in for the vfio-user builder: same bytes as src/vfio-user/viot.ts at fa1e17f", () => {
  // Produced by src/vfio-user/viot.ts buildViot({iommuBdf: 8, endpointBdfs: [0x18, 0x10, 0x11, 0x12]})
  // (ranges per device slot, OEM table ID "VIOMMUTS").
  const theirs = [
    "56494f54 58000000 00 f3", // "VIOT", 88 bytes, revision 0, checksum
    "56494f4d4d55 56494f4d4d555453 01000000 56494f4d 01000000", // VIOMMU VIOMMUTS 1 VIOM 1
    "0200 3000 0000000000000000", // 2 nodes from offset 48
    "03 00 1000 0000 0800 0000000000000000", // @48 virtio-pci IOMMU at 00:01.0
    "01 00 1800 10000000 0000 0000 1000 1f00 3000 000000000000", // PCI range 00:02.0-00:03.7 -> @48
  ].join("");
  const ours = buildVirtioPciIommuViot({
    iommuBdf: 8,
    endpointBdfs: [0x18, 0x10, 0x11, 0x12],
    oemTableId: "VIOMMUTS",
    coverWholeSlots: true,
  });
  assertHex(ours, theirs);
  parseViotLikeLinux(ours);
});
