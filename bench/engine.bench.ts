/**
 * Engine figures: the shared IOTLB's lookup cost (hit, miss), the one-entry cache in a DMA
 * address space, and the VFIO type1 host model's map/unmap rate with few and many live entries.
 */
import { ACCESS_READ, type Access, type DmaFault, dmaFault, PERM_RW } from "../src/engine/access.ts";
import { DmaAddressSpace } from "../src/engine/dma-space.ts";
import { GuestMemory } from "../src/engine/guest-memory.ts";
import { VfioType1Container } from "../src/engine/host-iommu.ts";
import { Iotlb } from "../src/engine/iotlb.ts";
import { type DmaTranslator, Translation } from "../src/engine/translation.ts";
import type { BenchCase } from "./harness.ts";

const K4 = 0x1000;
const M2 = 0x200000;

function filledIotlb(pages: number): Iotlb {
  const tlb = new Iotlb(4096);
  for (let i = 0; i < pages; i++) tlb.insert(1, i * K4, (i + 512) * K4, 12, PERM_RW);
  tlb.insert(1, 64 * M2, 128 * M2, 21, PERM_RW);
  return tlb;
}

const out = new Translation();
let sink = 0;

/** A translator backed only by an IOTLB, so a DMA-space access measures cache + IOTLB cost. */
class IotlbTranslator implements DmaTranslator {
  readonly tlb: Iotlb;
  constructor(tlb: Iotlb) {
    this.tlb = tlb;
  }
  get epoch(): number {
    return this.tlb.epoch;
  }
  translate(endpointId: number, iova: number, access: Access, t: Translation): DmaFault | null {
    return this.tlb.lookup(1, iova, t) ? null : dmaFault("unmapped", endpointId, iova, access);
  }
}

export const cases: BenchCase[] = [
  {
    group: "engine: IOTLB",
    name: "lookup hit, 4 KiB entry (2048 live)",
    run(n) {
      const tlb = hitTlb;
      for (let i = 0; i < n; i++) {
        tlb.lookup(1, ((i * 7) & 2047) * K4 + 8, out);
        sink += out.gpaBase;
      }
    },
  },
  {
    group: "engine: IOTLB",
    name: "lookup hit, 2 MiB entry (with 4 KiB entries present)",
    run(n) {
      const tlb = hitTlb;
      for (let i = 0; i < n; i++) {
        tlb.lookup(1, 64 * M2 + ((i * 4099) & (M2 - 1)), out);
        sink += out.gpaBase;
      }
    },
  },
  {
    group: "engine: IOTLB",
    name: "lookup miss (4 KiB and 2 MiB sizes probed)",
    run(n) {
      const tlb = hitTlb;
      for (let i = 0; i < n; i++) sink += tlb.lookup(2, i * K4, out) ? 1 : 0;
    },
  },
  {
    group: "engine: DMA address space",
    name: "translate, same page (one-entry cache hit)",
    run(n) {
      for (let i = 0; i < n; i++) {
        dmaSpace.translate(0x5000 + (i & 0xfff), ACCESS_READ, out);
        sink += out.gpaBase;
      }
    },
  },
  {
    group: "engine: DMA address space",
    name: "translate, alternating pages (IOTLB hit)",
    run(n) {
      for (let i = 0; i < n; i++) {
        dmaSpace.translate((i & 1023) * K4, ACCESS_READ, out);
        sink += out.gpaBase;
      }
    },
  },
  {
    group: "engine: DMA address space",
    name: "readUint32 through IOTLB (alternating pages)",
    run(n) {
      for (let i = 0; i < n; i++) sink += dmaSpace.readUint((i & 1023) * K4 + 16, 4);
    },
  },
  {
    group: "engine: VFIO type1 host model",
    name: "map + unmap 4 KiB, 1k live entries",
    run(n) {
      runMapUnmap(small, n);
    },
  },
  {
    group: "engine: VFIO type1 host model",
    name: "map + unmap 4 KiB, 60k live entries",
    run(n) {
      runMapUnmap(large, n);
    },
  },
];

const hitTlb = filledIotlb(2048);
const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 64 * M2 }]);
const dmaSpace = new DmaAddressSpace(memory, new IotlbTranslator(filledIotlb(2048)), 1);

function liveContainer(entries: number): VfioType1Container {
  const c = new VfioType1Container();
  for (let i = 0; i < entries; i++) c.map(2 * i * K4, i * K4, K4, PERM_RW);
  return c;
}
const small = liveContainer(1000);
const large = liveContainer(60000);

function runMapUnmap(c: VfioType1Container, n: number): void {
  // Odd pages are free: map one, unmap it, at spread-out positions among the live entries.
  const live = c.entryCount;
  for (let i = 0; i < n; i++) {
    const iova = (2 * ((i * 7919) % live) + 1) * K4;
    c.map(iova, 0, K4, PERM_RW);
    c.unmap(iova, K4);
  }
}

process.on("exit", () => {
  if (sink === 42) console.log("");
});
