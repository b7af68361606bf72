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

export const TRACE_CATEGORIES: readonly TraceCategory[] = [
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
const ALL = TRACE_CATEGORIES;

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

// -------------------------------------------------------------------------------------------------
// Trace points declared in one place per folder (as QEMU's trace-events files)

type TraceFieldValue = number | string | boolean;

/** One trace point: its category, its fields in order, and what it means. */
export interface TracePointSpec {
  readonly category: TraceCategory;
  readonly fields: readonly string[];
  readonly doc: string;
  /** The event name when it is not the key (names with dashes, or names shared by sources). */
  readonly name?: string;
}

/** A trace point's emitter: the field values in declaration order; nothing is built when off. */
export interface TracePoint<F extends readonly string[]> {
  (tracer: Tracer, ...values: { -readonly [K in keyof F]: TraceFieldValue }): void;
  /** True when the point's category is on: guard field values that cost to compute. */
  enabled(tracer: Tracer): boolean;
}

export interface TraceCatalogueEntry {
  readonly source: string;
  readonly name: string;
  readonly category: TraceCategory;
  readonly fields: readonly string[];
  readonly doc: string;
}

const CATALOGUE: TraceCatalogueEntry[] = [];
/** Emitters take at most this many fields (fixed parameters: no array per call). */
const MAX_TRACE_FIELDS = 8;

/** Every trace point declared so far (by the modules loaded), in declaration order. */
export function traceCatalogue(): readonly TraceCatalogueEntry[] {
  return CATALOGUE;
}

function tracePoint(source: string, name: string, spec: TracePointSpec): TracePoint<readonly string[]> {
  const { category, fields: names } = spec;
  if (names.length > MAX_TRACE_FIELDS) throw new Error(`trace point ${source}.${name}: too many fields`);
  const emit = (
    tracer: Tracer,
    a?: TraceFieldValue,
    b?: TraceFieldValue,
    c?: TraceFieldValue,
    d?: TraceFieldValue,
    e?: TraceFieldValue,
    f?: TraceFieldValue,
    g?: TraceFieldValue,
    h?: TraceFieldValue,
  ): void => {
    if (!tracer.on(category)) return;
    const values = [a, b, c, d, e, f, g, h];
    const fields: Record<string, TraceFieldValue> = {};
    for (let i = 0; i < names.length; i++) fields[names[i]] = values[i] as TraceFieldValue;
    tracer.emit(category, source, name, fields);
  };
  return Object.assign(emit, { enabled: (tracer: Tracer) => tracer.on(category) }) as TracePoint<
    readonly string[]
  >;
}

/**
 * Declares the trace points of one source (a model or device folder) and returns their typed
 * emitters. Each point also enters the catalogue `viommu run --trace help` prints.
 */
export function defineTracePoints<const P extends Record<string, TracePointSpec>>(
  source: string,
  points: P,
): { readonly [K in keyof P]: TracePoint<P[K]["fields"]> } {
  const out: Record<string, TracePoint<readonly string[]>> = {};
  for (const [key, spec] of Object.entries(points)) {
    const name = spec.name ?? key;
    out[key] = tracePoint(source, name, spec);
    CATALOGUE.push({ source, name, category: spec.category, fields: spec.fields, doc: spec.doc });
  }
  return out as { readonly [K in keyof P]: TracePoint<P[K]["fields"]> };
}
