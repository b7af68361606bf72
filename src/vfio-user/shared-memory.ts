/**
 * The guest memory of a `viommu serve` instance: the engine's one `GuestMemory` interface over
 * the DMA regions vfio-user clients register (`SharedRegions`, shared-regions.ts: file-mapped,
 * pread/pwrite or message-backed regions that come and go, newest wins). Every device and model
 * reads and writes it like any other guest memory; the server manages its regions here.
 */
import { GuestMemory } from "../engine/guest-memory.ts";
import type { ClientDmaTable } from "./client-dma-table.ts";
import { FirstTouchPolicy } from "./first-touch.ts";
import { type DmaTransport, ResourceBudget } from "./region-backing.ts";
import { type SharedMemoryStats, SharedRegions } from "./shared-regions.ts";

export { ClientDmaTable, type DmaMapRequest, type MapResult } from "./client-dma-table.ts";
export { FirstTouchPolicy, type FirstTouchStats } from "./first-touch.ts";
export type { DmaTransport } from "./region-backing.ts";
export type { SharedMemoryStats } from "./shared-regions.ts";

export class SharedGuestMemory extends GuestMemory {
  /** The regions behind this memory, and their management (maps, references, releases). */
  readonly shared: SharedRegions;

  /**
   * `budget`: caps on mappings and descriptors (default: from the system's real limits);
   * `firstTouch`: how mapped regions are populated on first DMA (default: 2 MiB chunks).
   */
  constructor(
    budget: ResourceBudget = ResourceBudget.fromSystem(),
    firstTouch: FirstTouchPolicy = new FirstTouchPolicy(),
  ) {
    const shared = new SharedRegions(budget, firstTouch);
    super(shared);
    this.shared = shared;
  }

  get budget(): ResourceBudget {
    return this.shared.budget;
  }

  /** Per-client registration table; each connection owns one (and closes it on disconnect). */
  createClientTable(maxRegions: number, transport: DmaTransport | null = null): ClientDmaTable {
    return this.shared.createClientTable(maxRegions, transport);
  }

  /** Gives released mappings back at once (tests, shutdown); never while device code runs. */
  drainReleases(): void {
    this.shared.drainReleases();
  }

  stats(): SharedMemoryStats {
    return this.shared.stats();
  }
}
