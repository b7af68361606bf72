/**
 * A small benchmark harness: each case runs a batch of operations repeatedly; we report the
 * median (and spread) of the per-operation time over several timed samples, after a warm-up.
 */

export interface BenchCase {
  /** Group printed as a section heading, e.g. "engine: translation". */
  readonly group: string;
  readonly name: string;
  /** Performs `n` operations. Setup happens outside (in the closure), not here. */
  run(n: number): void;
  /** Operations per sample; the harness adapts it so a sample takes about `targetSampleMs`. */
  readonly initialBatch?: number;
}

export interface BenchResult {
  readonly group: string;
  readonly name: string;
  readonly opsPerSample: number;
  readonly samples: number;
  readonly medianNsPerOp: number;
  readonly p10NsPerOp: number;
  readonly p90NsPerOp: number;
  readonly opsPerSecond: number;
}

export interface BenchOptions {
  samples?: number;
  targetSampleMs?: number;
}

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

export function measure(c: BenchCase, options: BenchOptions = {}): BenchResult {
  const samples = options.samples ?? 15;
  const targetNs = (options.targetSampleMs ?? 40) * 1e6;
  let batch = c.initialBatch ?? 1000;
  // Warm up and size the batch so one sample takes about targetSampleMs.
  for (let i = 0; i < 8; i++) {
    const t0 = process.hrtime.bigint();
    c.run(batch);
    const ns = Number(process.hrtime.bigint() - t0);
    if (ns >= targetNs * 0.5) break;
    batch = Math.max(batch + 1, Math.ceil((batch * targetNs) / Math.max(ns, 1000)));
  }
  const perOp: number[] = [];
  for (let s = 0; s < samples; s++) {
    const t0 = process.hrtime.bigint();
    c.run(batch);
    perOp.push(Number(process.hrtime.bigint() - t0) / batch);
  }
  perOp.sort((a, b) => a - b);
  const median = quantile(perOp, 0.5);
  return {
    group: c.group,
    name: c.name,
    opsPerSample: batch,
    samples,
    medianNsPerOp: median,
    p10NsPerOp: quantile(perOp, 0.1),
    p90NsPerOp: quantile(perOp, 0.9),
    opsPerSecond: 1e9 / median,
  };
}

export function formatNs(ns: number): string {
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(2)} ms`;
  if (ns >= 1e3) return `${(ns / 1e3).toFixed(2)} us`;
  return `${ns.toFixed(1)} ns`;
}

export function formatRate(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)} M/s`;
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)} k/s`;
  return `${perSecond.toFixed(1)} /s`;
}
