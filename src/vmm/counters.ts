/** Counters as summary text, for both machines' summaries. */

/** "name n, ..." for the non-zero counters of `record`; "none" when all are zero. */
export function nonZero(record: Readonly<Record<string, number>>): string {
  const parts = Object.entries(record)
    .filter(([, v]) => v !== 0)
    .map(([k, v]) => `${k} ${v}`);
  return parts.length === 0 ? "none" : parts.join(", ");
}
