/**
 * The contract between an endpoint's DMA address space and the IOMMU model behind it.
 */
import type { Access, DmaFault } from "./access.ts";

/**
 * One translated block: `[iovaBase, iovaBase + sizeBytes)` maps linearly onto
 * `[gpaBase, gpaBase + sizeBytes)` with `perms`. Reused by callers to avoid allocation.
 */
export class Translation {
  iovaBase = 0;
  gpaBase = 0;
  sizeBytes = 0;
  perms = 0;

  set(iovaBase: number, gpaBase: number, sizeBytes: number, perms: number): this {
    this.iovaBase = iovaBase;
    this.gpaBase = gpaBase;
    this.sizeBytes = sizeBytes;
    this.perms = perms;
    return this;
  }

  covers(iova: number): boolean {
    return iova >= this.iovaBase && iova - this.iovaBase < this.sizeBytes;
  }
}

/**
 * Implemented by each IOMMU model (once per model, for all its endpoints).
 *
 * `translate` resolves the block containing `iova` for `endpointId` and access kind `access`:
 * it fills `out` and returns null, or returns the fault. The model reports the fault in its own
 * architected way (event queue, fault record) before returning it; `translate` never throws.
 *
 * `epoch` must change whenever any translation the model ever returned may have become stale
 * (an unmap, a detach, an invalidation). Address spaces keep a one-entry cache that is valid only
 * while `epoch` is unchanged, so a stale translation never outlives the change that removed it.
 */
export interface DmaTranslator {
  readonly epoch: number;
  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null;
}
