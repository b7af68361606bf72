/**
 * Domains and their mappings (5.13.6.3 - 5.13.6.6).
 *
 * A domain is created by the first ATTACH naming it and ceases to exist when its last endpoint
 * is detached (5.13.6.4). A mapping is the unit one MAP request created: UNMAP removes whole
 * mappings and never splits one (5.13.6.6).
 */
import { IntervalMap } from "../engine/interval-map.ts";
import type { Endpoint } from "./endpoints.ts";

export interface Mapping {
  readonly iovaStart: number;
  /** Last IOVA of the mapping (inclusive, as virt_end). */
  readonly iovaLast: number;
  readonly gpaStart: number;
  /** PERM_READ | PERM_WRITE from MAP_F_READ / MAP_F_WRITE. */
  readonly perms: number;
  /** MAP_F_MMIO: the target is device memory (a memory type, not a permission). */
  readonly mmio: boolean;
}

export function mappingSizeBytes(m: Mapping): number {
  return m.iovaLast - m.iovaStart + 1;
}

export class Domain {
  readonly id: number;
  /** Created with ATTACH_F_BYPASS: attached endpoints are in bypass mode (identity). */
  readonly bypass: boolean;
  readonly endpoints = new Set<Endpoint>();
  readonly mappings = new IntervalMap<Mapping>();

  constructor(id: number, bypass: boolean) {
    this.id = id;
    this.bypass = bypass;
  }

  /**
   * The mappings an UNMAP of [iovaStart, iovaLast] removes, or "split" when the range would
   * split a mapping at either end (5.13.6.6.2: S_RANGE and nothing removed).
   */
  mappingsToUnmap(iovaStart: number, iovaLast: number): Mapping[] | "split" {
    const hit = this.mappings.overlapping(iovaStart, iovaLast);
    if (hit.length === 0) return [];
    if (hit[0].start < iovaStart || hit[hit.length - 1].last > iovaLast) return "split";
    const out: Mapping[] = new Array(hit.length);
    for (let i = 0; i < hit.length; i++) out[i] = hit[i].value;
    return out;
  }
}

/** The live domains, with the mapping count across all of them (for the resource caps). */
export class DomainTable {
  private readonly byId = new Map<number, Domain>();
  private mappingCount = 0;

  get size(): number {
    return this.byId.size;
  }

  get totalMappings(): number {
    return this.mappingCount;
  }

  get(id: number): Domain | undefined {
    return this.byId.get(id);
  }

  create(id: number, bypass: boolean): Domain {
    const d = new Domain(id, bypass);
    this.byId.set(id, d);
    return d;
  }

  /** Removes a domain (its last endpoint left); its mappings go with it. */
  delete(domain: Domain): void {
    if (this.byId.get(domain.id) !== domain) return;
    this.byId.delete(domain.id);
    this.mappingCount -= domain.mappings.size;
  }

  addMapping(domain: Domain, m: Mapping): void {
    domain.mappings.insert(m.iovaStart, m.iovaLast, m);
    this.mappingCount++;
  }

  removeMapping(domain: Domain, m: Mapping): void {
    if (domain.mappings.remove(m.iovaStart) !== undefined) this.mappingCount--;
  }

  values(): IterableIterator<Domain> {
    return this.byId.values();
  }
}
