/**
 * virtio-iommu benchmarks: translation cost per DMA access through a DmaAddressSpace (one-entry
 * cache hit, IOTLB hit, IOTLB miss on 4 KiB and 2 MiB mappings) and MAP+UNMAP request pairs with
 * 1k and 100k live mappings (with and without a host container to mirror).
 *
 * IOTLB misses are forced honestly: the walk covers four times more distinct pages than the
 * IOTLB holds, cyclically, so the clock eviction has dropped every page before it comes back;
 * a self-check at load time verifies that a full walk hits the IOTLB less than once per 1000
 * accesses (and that the IOTLB-hit case never misses).
 */
import { ACCESS_READ } from "../src/engine/access.ts";
import { GuestMemory } from "../src/engine/guest-memory.ts";
import { VfioType1Container } from "../src/engine/host-iommu.ts";
import { Iotlb } from "../src/engine/iotlb.ts";
import { writeU64Le } from "../src/engine/little-endian.ts";
import { Translation } from "../src/engine/translation.ts";
import { VirtioIommu } from "../src/virtio-iommu/device.ts";
import { encodeAttach, encodeMap, encodeUnmap } from "../src/virtio-iommu/requests.ts";
import type { BenchCase } from "./harness.ts";

const GROUP = "virtio-iommu";
const KIB4 = 0x1000;
const MIB2 = 0x20_0000;
const IOTLB_CAPACITY = 4096;

function request(dev: VirtioIommu, req: Uint8Array): void {
  const response = new Uint8Array(4);
  if (dev.handleRequest(req, response) !== 4 || response[0] !== 0) {
    throw new Error(`bench setup: request type ${req[0]} failed with status ${response[0]}`);
  }
}

function newDevice(): VirtioIommu {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 64 << 20 }]);
  const dev = new VirtioIommu(memory, { iotlb: new Iotlb(IOTLB_CAPACITY), reservedRegions: [] });
  dev.addEndpoint(8);
  dev.negotiate(dev.deviceFeatures);
  request(dev, encodeAttach(1, 8));
  return dev;
}

/** A device with `count` mappings of `pageBytes` at consecutive IOVAs (gpa cycling in 32 MiB). */
function mappedDevice(count: number, pageBytes: number): VirtioIommu {
  const dev = newDevice();
  for (let i = 0; i < count; i++) {
    const iova = i * pageBytes;
    request(dev, encodeMap(1, iova, iova + pageBytes - 1, (i * pageBytes) % (32 << 20), 3));
  }
  return dev;
}

function translateCase(
  name: string,
  dev: VirtioIommu,
  pages: number,
  pageBytes: number,
  expectMisses: boolean,
): BenchCase {
  const space = dev.endpointSpace(8)!;
  const out = new Translation();
  let page = 0;
  const walk = (n: number) => {
    for (let i = 0; i < n; i++) {
      if (space.translate(page * pageBytes + 0x80, ACCESS_READ, out) !== null)
        throw new Error("unexpected fault");
      page = page + 1 === pages ? 0 : page + 1;
    }
  };
  // Self-check: a full warm walk hits (or misses) the IOTLB as the case name says.
  walk(pages * 2);
  const before = dev.iotlb.stats();
  walk(pages);
  const after = dev.iotlb.stats();
  const hits = after.hits - before.hits;
  const misses = after.misses - before.misses;
  if (expectMisses ? hits > pages / 1000 : misses !== 0) {
    throw new Error(`${name}: walk of ${pages} pages gave ${hits} IOTLB hits and ${misses} misses`);
  }
  return { group: GROUP, name, run: walk, initialBatch: 10_000 };
}

function oneEntryCacheCase(): BenchCase {
  const dev = mappedDevice(16, KIB4);
  const space = dev.endpointSpace(8)!;
  const out = new Translation();
  return {
    group: GROUP,
    name: "translate: one-entry cache hit (same page)",
    run(n) {
      for (let i = 0; i < n; i++) space.translate(0x2000 + (i & 0xff), ACCESS_READ, out);
    },
    initialBatch: 100_000,
  };
}

function mapUnmapCase(live: number, withHost: boolean): BenchCase {
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 64 << 20 }]);
  const dev = new VirtioIommu(memory, { reservedRegions: [] });
  const host = withHost ? new VfioType1Container({ dmaEntryLimit: 1 << 20 }) : undefined;
  dev.addEndpoint(8, { host });
  dev.negotiate(dev.deviceFeatures);
  request(dev, encodeAttach(1, 8));
  // Live mappings on even pages; the measured pair maps and unmaps odd pages among them.
  for (let i = 0; i < live; i++) request(dev, encodeMap(1, 2 * i * KIB4, 2 * i * KIB4 + KIB4 - 1, 0, 3));
  const mapReq = encodeMap(1, 0, 0, 0x10_0000, 3);
  const unmapReq = encodeUnmap(1, 0, 0);
  const response = new Uint8Array(4);
  let slot = 0;
  return {
    group: GROUP,
    name: `MAP+UNMAP pair, ${live >= 1000 ? `${live / 1000}k` : live} live mappings${withHost ? ", VFIO mirror" : ""}`,
    run(n) {
      for (let i = 0; i < n; i++) {
        const iova = (2 * slot + 1) * KIB4;
        slot = slot + 1 === live ? 0 : slot + 1;
        writeU64Le(mapReq, 8, iova);
        writeU64Le(mapReq, 16, iova + KIB4 - 1);
        writeU64Le(unmapReq, 8, iova);
        writeU64Le(unmapReq, 16, iova + KIB4 - 1);
        dev.handleRequest(mapReq, response);
        const mapStatus = response[0];
        dev.handleRequest(unmapReq, response);
        if ((mapStatus | response[0]) !== 0) throw new Error("MAP/UNMAP failed");
      }
    },
    initialBatch: 10_000,
  };
}

export const cases: BenchCase[] = [
  oneEntryCacheCase(),
  translateCase("translate: IOTLB hit (256 pages round robin)", mappedDevice(256, KIB4), 256, KIB4, false),
  translateCase(
    "translate: IOTLB miss, 4 KiB maps (16k > 4k IOTLB)",
    mappedDevice(4 * IOTLB_CAPACITY, KIB4),
    4 * IOTLB_CAPACITY,
    KIB4,
    true,
  ),
  translateCase(
    "translate: IOTLB miss, 2 MiB maps (16k > 4k IOTLB)",
    mappedDevice(4 * IOTLB_CAPACITY, MIB2),
    4 * IOTLB_CAPACITY,
    MIB2,
    true,
  ),
  mapUnmapCase(1000, false),
  mapUnmapCase(100_000, false),
  mapUnmapCase(1000, true),
];
