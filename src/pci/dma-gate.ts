/**
 * The bus-master gate: the one place where a PCI function's DMA is allowed or refused.
 *
 * PCI Local Bus 3.0 6.2.2: with Bus Master Enable (command bit 2) clear, a function must not
 * initiate memory or I/O transactions. A `BusMasterGate` wraps the translator of the function's
 * DMA address space (an IOMMU model, or IDENTITY) and answers every translation with a
 * "blocked" fault while the gate is closed, before the IOMMU sees anything (no transaction
 * reaches it, so the IOMMU records no fault either). Opening or closing the gate changes its
 * epoch, so no cached translation survives a close.
 */
import { type Access, type DmaFault, dmaFault } from "../engine/access.ts";
import type { DmaTranslator, Translation } from "../engine/translation.ts";

/** A translator for functions whose host has not connected a DMA space: everything is blocked. */
export const NO_DMA: DmaTranslator = {
  epoch: 0,
  translate(endpointId: number, iova: number, access: Access, _out: Translation): DmaFault | null {
    return dmaFault("blocked", endpointId, iova, access, 0, "no DMA space connected");
  },
};

export class BusMasterGate implements DmaTranslator {
  readonly inner: DmaTranslator;
  private open = false;
  private changes = 0;
  /** DMA translations refused because bus mastering was off. */
  refused = 0;

  constructor(inner: DmaTranslator) {
    this.inner = inner;
  }

  /** Monotonic: the inner epoch plus the number of gate changes. */
  get epoch(): number {
    return this.inner.epoch + this.changes;
  }

  get isOpen(): boolean {
    return this.open;
  }

  setOpen(open: boolean): void {
    if (open === this.open) return;
    this.open = open;
    this.changes++;
  }

  translate(endpointId: number, iova: number, access: Access, out: Translation): DmaFault | null {
    if (!this.open) {
      this.refused++;
      return dmaFault("blocked", endpointId, iova, access, 0, "bus master disabled");
    }
    return this.inner.translate(endpointId, iova, access, out);
  }
}
