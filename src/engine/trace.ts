/**
 * Named trace events for everything an IOMMU does (maps, unmaps, invalidations, faults,
 * configuration), in the spirit of QEMU's trace-events: off by default and cheap when off,
 * switched on by category (`VIOMMU_TRACE=map,fault` or `VIOMMU_TRACE=all`), or observed by tests.
 */

export type TraceCategory =
  | "map"
  | "unmap"
  | "attach"
  | "invalidate"
  | "fault"
  | "config"
  | "queue"
  | "irq"
  | "unclaimed";

export interface TraceEvent {
  readonly category: TraceCategory;
  /** The emitting component, e.g. "virtio-iommu", "vtd", "smmuv3". */
  readonly source: string;
  readonly name: string;
  readonly fields: Readonly<Record<string, number | string | boolean>>;
}

export type TraceListener = (event: TraceEvent) => void;

const ALL: TraceCategory[] = [
  "map",
  "unmap",
  "attach",
  "invalidate",
  "fault",
  "config",
  "queue",
  "irq",
  "unclaimed",
];

export class Tracer {
  private readonly enabledMask: Set<TraceCategory>;
  private readonly listeners: TraceListener[] = [];

  constructor(categories: Iterable<TraceCategory> = []) {
    this.enabledMask = new Set(categories);
  }

  /** Categories from a spec like "map,fault" or "all". Unknown names are ignored. */
  static fromSpec(spec: string | undefined): Tracer {
    if (!spec) return new Tracer();
    const names = spec.split(",").map((s) => s.trim());
    if (names.includes("all")) return new Tracer(ALL);
    return new Tracer(ALL.filter((c) => names.includes(c)));
  }

  enable(category: TraceCategory): void {
    this.enabledMask.add(category);
  }

  /** True when events of `category` are wanted: check this before building an event. */
  on(category: TraceCategory): boolean {
    return this.enabledMask.has(category);
  }

  /** Registers a listener and enables `categories` for it. Returns a function that removes it. */
  listen(listener: TraceListener, categories: Iterable<TraceCategory> = ALL): () => void {
    for (const c of categories) this.enabledMask.add(c);
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  emit(category: TraceCategory, source: string, name: string, fields: TraceEvent["fields"]): void {
    if (!this.enabledMask.has(category)) return;
    const event: TraceEvent = { category, source, name, fields };
    for (const l of this.listeners) l(event);
  }
}

/** Formats an event as one line: `virtio-iommu: map domain=1 iova=0x1000 ...`. */
export function formatTraceEvent(e: TraceEvent): string {
  const parts = Object.entries(e.fields).map(([k, v]) =>
    typeof v === "number" && Number.isInteger(v) && v >= 4096 ? `${k}=0x${v.toString(16)}` : `${k}=${v}`,
  );
  return `${e.source}: ${e.name} ${parts.join(" ")}`.trimEnd();
}
