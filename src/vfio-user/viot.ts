/**
 * The ACPI Virtual I/O Translation table (VIOT, ACPI 6.4 5.2.30) describing a virtio-iommu PCI
 * device and the PCI endpoints it translates, for QEMU's `-acpitable file=...`.
 *
 * Layout: the 36-byte SDT header ("VIOT", revision 0), node_count u16 @36, node_offset u16 @38
 * (48: the first node follows 8 reserved bytes @40), then the nodes, each starting
 * {type u8, reserved u8, length u16}:
 *   type 3 virtio-iommu PCI (16 bytes): segment u16 @4, bdf u16 @6, reserved 8 @8
 *   type 1 PCI range (24 bytes): endpoint_start u32 @4, segment_start u16 @8, segment_end u16 @10,
 *     bdf_start u16 @12, bdf_end u16 @14, output_node u16 @16 (byte offset of the IOMMU node
 *     from the start of the table), reserved 6 @18
 * The checksum byte @9 makes the whole table sum to zero (mod 256). Endpoint IDs are the BDFs
 * (the convention QEMU, Cloud Hypervisor and Linux's viot.c use).
 */

export const VIOT_HEADER_SIZE = 48;
export const VIOT_NODE_PCI_RANGE = 1;
export const VIOT_NODE_VIRTIO_IOMMU_PCI = 3;
export const VIOT_PCI_RANGE_SIZE = 24;
export const VIOT_VIRTIO_IOMMU_PCI_SIZE = 16;

export interface ViotOptions {
  /** BDF of the virtio-iommu PCI function. */
  readonly iommuBdf: number;
  /** Endpoint BDFs translated by it; adjacent device slots are merged into one range node. */
  readonly endpointBdfs: readonly number[];
  readonly segment?: number;
  readonly oemId?: string;
  readonly oemTableId?: string;
}

/**
 * Ranges [bdfStart, bdfEnd] covering whole devices (functions 0-7) of the given endpoints, with
 * adjacent device slots merged. A slot never appears unless one of its BDFs was given, so an
 * endpoint outside the list (iommu=off) is never covered.
 */
export function bdfRuns(bdfs: readonly number[]): [number, number][] {
  const slots = [...new Set(bdfs.map((b) => b >> 3))].sort((a, b) => a - b);
  const runs: [number, number][] = [];
  for (const s of slots) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] + 1 === s << 3) last[1] = (s << 3) | 7;
    else runs.push([s << 3, (s << 3) | 7]);
  }
  return runs;
}

export function buildViot(options: ViotOptions): Uint8Array {
  const segment = options.segment ?? 0;
  for (const b of [options.iommuBdf, ...options.endpointBdfs]) {
    if (!Number.isInteger(b) || b < 0 || b > 0xffff) throw new Error(`BDF ${b} out of range`);
  }
  const runs = bdfRuns(options.endpointBdfs);
  const iommuNodeOffset = VIOT_HEADER_SIZE;
  const length = VIOT_HEADER_SIZE + VIOT_VIRTIO_IOMMU_PCI_SIZE + runs.length * VIOT_PCI_RANGE_SIZE;
  const t = new Uint8Array(length);
  const v = new DataView(t.buffer);
  const ascii = (at: number, s: string, n: number) => {
    for (let i = 0; i < n; i++) t[at + i] = i < s.length ? s.charCodeAt(i) & 0x7f : 0x20;
  };
  ascii(0, "VIOT", 4);
  v.setUint32(4, length, true);
  t[8] = 0; // revision
  ascii(10, options.oemId ?? "VIOMMU", 6);
  ascii(16, options.oemTableId ?? "VIOMMUTS", 8);
  v.setUint32(24, 1, true); // OEM revision
  ascii(28, "VIOM", 4); // creator ID
  v.setUint32(32, 1, true); // creator revision
  v.setUint16(36, 1 + runs.length, true);
  v.setUint16(38, iommuNodeOffset, true);
  // virtio-iommu PCI node
  let at = iommuNodeOffset;
  t[at] = VIOT_NODE_VIRTIO_IOMMU_PCI;
  v.setUint16(at + 2, VIOT_VIRTIO_IOMMU_PCI_SIZE, true);
  v.setUint16(at + 4, segment, true);
  v.setUint16(at + 6, options.iommuBdf, true);
  at += VIOT_VIRTIO_IOMMU_PCI_SIZE;
  for (const [start, end] of runs) {
    t[at] = VIOT_NODE_PCI_RANGE;
    v.setUint16(at + 2, VIOT_PCI_RANGE_SIZE, true);
    v.setUint32(at + 4, start, true); // endpoint_start = BDF
    v.setUint16(at + 8, segment, true);
    v.setUint16(at + 10, segment, true);
    v.setUint16(at + 12, start, true);
    v.setUint16(at + 14, end, true);
    v.setUint16(at + 16, iommuNodeOffset, true);
    at += VIOT_PCI_RANGE_SIZE;
  }
  let sum = 0;
  for (const b of t) sum = (sum + b) & 0xff;
  t[9] = (256 - sum) & 0xff;
  return t;
}
