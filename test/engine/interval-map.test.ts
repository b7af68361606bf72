import assert from "node:assert/strict";
import { test } from "node:test";
import { IntervalMap } from "../../src/engine/interval-map.ts";

test("find, overlapping and remove over many chunks agree with a brute-force model", () => {
  const seed = 77;
  let s = seed;
  const rnd = (n: number): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
  const map = new IntervalMap<number>();
  const ref = new Map<number, number>(); // start -> last
  for (let step = 0; step < 30000; step++) {
    const start = rnd(200000) * 4;
    const last = start + rnd(4) * 4 + 3;
    const overlapsRef = [...ref].some(([a, b]) => a <= last && b >= start);
    if (rnd(3) > 0) {
      assert.equal(map.overlaps(start, last), overlapsRef, `overlaps (seed ${seed})`);
      if (!overlapsRef) {
        map.insert(start, last, start);
        ref.set(start, last);
      } else assert.throws(() => map.insert(start, last, start), RangeError);
    } else {
      const removed = map.remove(start);
      assert.equal(removed !== undefined, ref.has(start));
      ref.delete(start);
    }
  }
  assert.equal(map.size, ref.size);
  const sorted = [...ref].sort((a, b) => a[0] - b[0]);
  assert.deepEqual(
    [...map.entries()].map((e) => [e.start, e.last]),
    sorted,
  );
  const probe = sorted[Math.floor(sorted.length / 2)];
  assert.equal(map.find(probe[0] + 1)?.start, probe[0]);
  const window = map.overlapping(probe[0], probe[0] + 4000).map((e) => e.start);
  assert.deepEqual(
    window,
    sorted.filter(([a, b]) => a <= probe[0] + 4000 && b >= probe[0]).map(([a]) => a),
  );
});
