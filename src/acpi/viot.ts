/**
 * The Virtual I/O Translation Table (signature "VIOT", revision 0; ACPI 6.4 reserves the signature
 * in the table of 5.2.6, the layout comes from the VIOT specification as ACPICA's actbl3.h
 * `acpi_table_viot` and QEMU's hw/acpi/viot.c implement it): which
 * paravirtualized IOMMU translates which endpoints. Linux parses it in drivers/acpi/viot.c (x86
 * since 5.14).
 *
 * Layout: SDT header; Node Count u16 @36; Node Offset u16 @38 (offset of the first node from the
 * start of the table); 8 reserved bytes @40; nodes from @48, each {Type u8, Reserved u8,
 * Length u16}:
 *   1 PCI Range (24 bytes): Endpoint Start u32 @4, PCI Segment Start u16 @8, PCI Segment End u16
 *     @10, PCI BDF Start u16 @12, PCI BDF End u16 @14, Output Node u16 @16, Reserved[6] @18
 *   2 MMIO Endpoint (24 bytes): Endpoint ID u32 @4, Base Address u64 @8, Output Node u16 @16,
 *     Reserved[6] @18
 *   3 virtio-iommu based on virtio-pci (16 bytes): PCI Segment u16 @4, PCI BDF u16 @6,
 *     Reserved[8] @8
 *   4 virtio-iommu based on virtio-mmio (16 bytes): Reserved[4] @4, Base Address u64 @8
 * "Output Node" is the byte offset, from the start of the table, of the IOMMU node the endpoints
 * are translated by. Here it is computed from the layout: callers name IOMMUs by index.
 * Endpoint IDs of a PCI range: Endpoint Start + (BDF - BDF Start); by convention (QEMU, Cloud
 * Hypervisor) Endpoint Start = BDF Start, so endpoint ID = BDF.
 */

import type { U64 } from "./bytes.ts";
import { beginSdt, finishSdt, SDT_HEADER_SIZE, type SdtIdentity, VIOMMU_SDT_IDENTITY } from "./sdt.ts";

export const VIOT_REVISION = 0;
/** The SDT header plus Node Count, Node Offset and 8 reserved bytes. */
export const VIOT_FIRST_NODE_OFFSET = SDT_HEADER_SIZE + 12;

export const VIOT_NODE = {
  pciRange: { type: 1, length: 24 },
  mmioEndpoint: { type: 2, length: 24 },
  virtioPciIommu: { type: 3, length: 16 },
  virtioMmioIommu: { type: 4, length: 16 },
} as const;

export type ViotIommu =
  | { readonly kind: "virtio-pci"; readonly segment: number; readonly bdf: number }
  | { readonly kind: "virtio-mmio"; readonly baseGpa: U64 };

/** A typed reference to an entry of `ViotDescription.iommus`. */
export type ViotIommuIndex = number;

export interface ViotPciRange {
  readonly iommu: ViotIommuIndex;
  readonly endpointStart: number;
  readonly segmentStart: number;
  readonly segmentEnd: number;
  readonly bdfStart: number;
  readonly bdfEnd: number;
}

export interface ViotMmioEndpoint {
  readonly iommu: ViotIommuIndex;
  readonly endpointId: number;
  readonly baseGpa: U64;
}

export interface ViotDescription {
  readonly iommus: readonly ViotIommu[];
  readonly pciRanges?: readonly ViotPciRange[];
  readonly mmioEndpoints?: readonly ViotMmioEndpoint[];
}

export interface ViotLayout {
  /** Byte offset of each IOMMU node (the value endpoint nodes put in Output Node). */
  readonly iommuNodeOffsets: readonly number[];
  readonly nodeCount: number;
  readonly sizeBytes: number;
}

/** IOMMU nodes first, then PCI ranges, then MMIO endpoints. */
export function viotLayout(description: ViotDescription): ViotLayout {
  const iommuNodeOffsets: number[] = [];
  let offset = VIOT_FIRST_NODE_OFFSET;
  for (const iommu of description.iommus) {
    iommuNodeOffsets.push(offset);
    offset +=
      iommu.kind === "virtio-pci" ? VIOT_NODE.virtioPciIommu.length : VIOT_NODE.virtioMmioIommu.length;
  }
  const ranges = description.pciRanges?.length ?? 0;
  const mmio = description.mmioEndpoints?.length ?? 0;
  offset += ranges * VIOT_NODE.pciRange.length + mmio * VIOT_NODE.mmioEndpoint.length;
  return { iommuNodeOffsets, nodeCount: description.iommus.length + ranges + mmio, sizeBytes: offset };
}

export function buildViot(description: ViotDescription, identity: SdtIdentity): Uint8Array {
  const layout = viotLayout(description);
  const outputNode = (index: ViotIommuIndex): number => {
    const offset = layout.iommuNodeOffsets[index];
    if (offset === undefined) throw new RangeError(`VIOT: no IOMMU #${index}`);
    return offset;
  };
  const w = beginSdt("VIOT", VIOT_REVISION, identity);
  w.u16(layout.nodeCount, "node count").u16(VIOT_FIRST_NODE_OFFSET).zeros(8);
  for (const iommu of description.iommus) {
    if (iommu.kind === "virtio-pci") {
      const n = VIOT_NODE.virtioPciIommu;
      w.u8(n.type).u8(0).u16(n.length).u16(iommu.segment, "segment").u16(iommu.bdf, "BDF").zeros(8);
    } else {
      const n = VIOT_NODE.virtioMmioIommu;
      w.u8(n.type).u8(0).u16(n.length).zeros(4).u64(iommu.baseGpa, "virtio-mmio base");
    }
  }
  for (const r of description.pciRanges ?? []) {
    if (r.segmentStart > r.segmentEnd || r.bdfStart > r.bdfEnd) {
      throw new RangeError(`VIOT: empty PCI range ${JSON.stringify(r)}`);
    }
    const n = VIOT_NODE.pciRange;
    w.u8(n.type).u8(0).u16(n.length).u32(r.endpointStart, "endpoint start");
    w.u16(r.segmentStart, "segment start").u16(r.segmentEnd, "segment end");
    w.u16(r.bdfStart, "BDF start").u16(r.bdfEnd, "BDF end");
    w.u16(outputNode(r.iommu)).zeros(6);
  }
  for (const e of description.mmioEndpoints ?? []) {
    const n = VIOT_NODE.mmioEndpoint;
    w.u8(n.type).u8(0).u16(n.length).u32(e.endpointId, "endpoint ID").u64(e.baseGpa, "MMIO base");
    w.u16(outputNode(e.iommu)).zeros(6);
  }
  return finishSdt(w);
}

/** Merges BDFs into sorted, de-duplicated [start, end] runs (one PCI range node each). */
export function bdfRuns(bdfs: readonly number[]): [number, number][] {
  const sorted = [...new Set(bdfs)].sort((a, b) => a - b);
  const runs: [number, number][] = [];
  for (const bdf of sorted) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] + 1 === bdf) last[1] = bdf;
    else runs.push([bdf, bdf]);
  }
  return runs;
}

/** BDF bits 2:0 are the function: a device slot spans 8 consecutive BDFs. */
const FUNCTIONS_PER_SLOT = 8;

/**
 * Runs covering whole device slots (functions 0-7) of the given BDFs, adjacent slots merged: a
 * slot appears only if one of its BDFs was given (the vfio-user server's choice, so that
 * functions a device adds later are covered too).
 */
export function slotRuns(bdfs: readonly number[]): [number, number][] {
  const slots = bdfs.map((bdf) => bdf - (bdf % FUNCTIONS_PER_SLOT));
  return bdfRuns(slots.flatMap((first) => Array.from({ length: FUNCTIONS_PER_SLOT }, (_, fn) => first + fn)));
}

/** One virtio-iommu PCI function translating a set of endpoint BDFs on one segment. */
export interface VirtioPciIommuTopology {
  readonly iommuBdf: number;
  readonly endpointBdfs: readonly number[];
  readonly segment?: number;
  /** Cover whole device slots (functions 0-7) instead of exactly the BDFs given. */
  readonly coverWholeSlots?: boolean;
}

/**
 * The common case: one virtio-pci IOMMU, endpoints given as BDFs, contiguous BDFs (or slots)
 * merged into one PCI range node each, endpoint ID = BDF. A range that would also cover the
 * IOMMU's own BDF is refused: Linux would make the IOMMU an endpoint of itself.
 */
export function describeVirtioPciIommu(topology: VirtioPciIommuTopology): ViotDescription {
  const segment = topology.segment ?? 0;
  for (const bdf of [topology.iommuBdf, ...topology.endpointBdfs]) {
    if (!Number.isInteger(bdf) || bdf < 0 || bdf > 0xffff) throw new RangeError(`BDF ${bdf} out of range`);
  }
  const runs =
    topology.coverWholeSlots === true ? slotRuns(topology.endpointBdfs) : bdfRuns(topology.endpointBdfs);
  for (const [start, end] of runs) {
    if (topology.iommuBdf >= start && topology.iommuBdf <= end) {
      throw new RangeError(
        `VIOT: endpoint range [${start}, ${end}] covers the IOMMU at BDF ${topology.iommuBdf}`,
      );
    }
  }
  return {
    iommus: [{ kind: "virtio-pci", segment, bdf: topology.iommuBdf }],
    pciRanges: runs.map(([bdfStart, bdfEnd]) => ({
      iommu: 0,
      endpointStart: bdfStart,
      segmentStart: segment,
      segmentEnd: segment,
      bdfStart,
      bdfEnd,
    })),
  };
}

/**
 * Drop-in for src/vfio-user/viot.ts `buildViot(options)`: the same options; with
 * `coverWholeSlots: true` and identity {VIOMMU, VIOMMUTS} the same bytes.
 */
export function buildVirtioPciIommuViot(
  topology: VirtioPciIommuTopology & { readonly oemId?: string; readonly oemTableId?: string },
  identity: SdtIdentity = VIOMMU_SDT_IDENTITY,
): Uint8Array {
  return buildViot(describeVirtioPciIommu(topology), {
    ...identity,
    oemId: topology.oemId ?? identity.oemId,
    oemTableId: topology.oemTableId ?? identity.oemTableId,
  });
}
