/**
 * The one host-propagation contract (HostNotifier): map, unmap, replay over a host IOMMU backend,
 * with a shadow of what the host holds and counters (entries, peak, refusals by errno).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { PERM_READ, PERM_RW } from "../../src/engine/access.ts";
import { type HostIommu, type HostResult, VfioType1Container } from "../../src/engine/host-iommu.ts";
import { type HostLeafSource, HostNotifier } from "../../src/engine/host-notifier.ts";

const K4 = 0x1000;

function leaves(list: [number, number, number, number][]): HostLeafSource {
  return (start, last, leaf) => {
    for (const [iova, gpa, size, perms] of list)
      if (iova <= last && iova + size - 1 >= start) leaf(iova, gpa, size, perms);
    return true;
  };
}

function entries(h: VfioType1Container): string[] {
  return h
    .list()
    .map((e) => `${e.iova.toString(16)}->${e.gpa.toString(16)}+${e.sizeBytes.toString(16)}:${e.perms}`);
}

test("map gives the host one entry per leaf; a leaf with no access reaches no host", () => {
  const c = new VfioType1Container();
  const n = new HostNotifier(c);
  assert.equal(n.map(0x1000, 0x8000, K4, PERM_RW), null);
  assert.equal(n.map(0x20_0000, 0x40_0000, 0x20_0000, PERM_READ), null);
  assert.equal(n.map(0x5000, 0x5000, K4, 0), null);
  assert.deepEqual(entries(c), ["1000->8000+1000:3", "200000->400000+200000:1"]);
  assert.deepEqual(n.lookup(0x20_1234), { iova: 0x20_0000, gpa: 0x40_0000, sizeBytes: 0x20_0000, perms: 1 });
  assert.equal(n.stats().entries, 2);
  assert.equal(n.stats().mappedBytes, K4 + 0x20_0000);
});

test("ENOSPC at dma_entry_limit, EEXIST on overlap and EINVAL on misalignment are refusals counted by errno; nothing is left on the host", () => {
  const c = new VfioType1Container({ dmaEntryLimit: 2 });
  const n = new HostNotifier(c);
  assert.equal(n.map(0, 0, K4, PERM_RW), null);
  assert.equal(n.map(K4, K4, K4, PERM_RW), null);
  assert.equal(n.map(2 * K4, 0, K4, PERM_RW)?.errno, "ENOSPC");
  assert.equal(n.map(0, 0, K4, PERM_RW)?.errno, "EEXIST");
  assert.equal(n.map(0x10, 0, K4, PERM_RW)?.errno, "EINVAL");
  const s = n.stats();
  assert.equal(s.refusals.ENOSPC, 1);
  assert.equal(s.refusals.EEXIST, 1);
  assert.equal(s.refusals.EINVAL, 1);
  assert.match(s.lastRefusal, /^EINVAL: map 0x10/);
  assert.equal(s.entries, 2);
  assert.equal(c.entryCount, 2);
  assert.equal(n.lookup(2 * K4), undefined, "the shadow never holds what the host refused");
});

test("the peak number of entries survives unmaps", () => {
  const n = new HostNotifier(new VfioType1Container());
  for (let i = 0; i < 5; i++) n.map(i * K4, i * K4, K4, PERM_RW);
  assert.equal(n.unmap(0, 5 * K4), null);
  assert.equal(n.stats().entries, 0);
  assert.equal(n.stats().peakEntries, 5);
  assert.equal(n.unmaps, 1, "one backend call for a range of whole entries");
});

test("unmap that would cut an entry is refused EINVAL without touching the host (type1 v2)", () => {
  const c = new VfioType1Container();
  const n = new HostNotifier(c);
  n.map(0, 0, 4 * K4, PERM_RW);
  assert.equal(n.unmap(K4, K4)?.errno, "EINVAL");
  assert.equal(n.unmap(0, K4)?.errno, "EINVAL");
  assert.equal(c.entryCount, 1);
  assert.equal(c.stats().refused.EINVAL, 0, "the backend was not asked");
  assert.equal(n.epoch, 0);
});

test("unmap of a range where the host holds nothing costs no backend call", () => {
  const c = new VfioType1Container();
  const n = new HostNotifier(c);
  assert.equal(n.unmap(0x10_0000, K4), null);
  assert.equal(c.unmaps, 0);
  assert.equal(n.stats().strayUnmapsSuppressed, 1);
});

test("a backend that throws is a refusal ('exception'), never an exception escaping", () => {
  const hostile: HostIommu = {
    map(): HostResult {
      throw new Error("ioctl exploded");
    },
    unmap(): HostResult {
      throw new Error("ioctl exploded");
    },
  };
  const lost: string[] = [];
  const n = new HostNotifier(hostile, { onIsolationLost: (why) => lost.push(why) });
  assert.equal(n.map(0, 0, K4, PERM_RW)?.errno, "exception");
  assert.equal(n.stats().refusals.exception, 1);
  assert.equal(n.entries, 0);
  assert.equal(lost.length, 0);
});

test("a refused unmap is counted, forgotten and reported as isolation lost", () => {
  const inner = new VfioType1Container();
  let refuse = false;
  const flaky: HostIommu = {
    map: (i, g, s, p) => inner.map(i, g, s, p),
    unmap: (i, s) => (refuse ? { ok: false, errno: "EPERM", message: "no" } : inner.unmap(i, s)),
  };
  const lost: string[] = [];
  const n = new HostNotifier(flaky, { onIsolationLost: (why) => lost.push(why) });
  n.map(0, 0, K4, PERM_RW);
  refuse = true;
  assert.equal(n.unmap(0, K4)?.errno, "EPERM");
  assert.equal(lost.length, 1);
  assert.equal(n.stats().unmapsRefused, 1);
  assert.equal(n.stats().refusals.EPERM, 1);
  assert.equal(n.entries, 0);
});

test("replay sends only the differences: kept leaves cost nothing, changed ones are unmapped then mapped", () => {
  const c = new VfioType1Container();
  const n = new HostNotifier(c);
  assert.equal(
    n.replay(
      leaves([
        [0x1000, 0x10_0000, K4, 3],
        [0x2000, 0x20_0000, K4, 3],
        [0x3000, 0x30_0000, K4, 3],
      ]),
    ),
    null,
  );
  const maps = c.maps;
  assert.equal(
    n.replay(
      leaves([
        [0x1000, 0x10_0000, K4, 3], // same
        [0x2000, 0x25_0000, K4, 3], // new gpa
        [0x4000, 0x40_0000, K4, 1], // new leaf; 0x3000 went away
      ]),
    ),
    null,
  );
  assert.deepEqual(entries(c), ["1000->100000+1000:3", "2000->250000+1000:3", "4000->400000+1000:1"]);
  assert.equal(c.maps - maps, 2);
  assert.equal(n.stats().duplicateMapsSuppressed, 1);
});

test("replay over a range leaves the host's entries outside it alone", () => {
  const c = new VfioType1Container();
  const n = new HostNotifier(c);
  n.map(0x1000, 0x1000, K4, PERM_RW);
  n.map(0x9000, 0x9000, K4, PERM_RW);
  n.replay(leaves([]), 0x8000, 0x9fff);
  assert.deepEqual(entries(c), ["1000->1000+1000:3"]);
});

test("replay stops at ENOSPC and reports itself cut short; it returns the refusal", () => {
  const c = new VfioType1Container({ dmaEntryLimit: 3 });
  const n = new HostNotifier(c);
  const list: [number, number, number, number][] = [];
  for (let i = 0; i < 10; i++) list.push([i * K4, i * K4, K4, 3]);
  assert.equal(n.replay(leaves(list))?.errno, "ENOSPC");
  assert.equal(c.entryCount, 3);
  assert.equal(n.stats().refusals.ENOSPC, 1, "no map attempted after the host said it is full");
  assert.equal(n.stats().truncatedSyncs, 1);
});

test("a source that stops early (budget) is counted as a truncated sync", () => {
  const n = new HostNotifier(new VfioType1Container());
  n.replay((_s, _l, leaf) => {
    leaf(0, 0, K4, 3);
    return false;
  });
  assert.equal(n.stats().truncatedSyncs, 1);
  assert.equal(n.entries, 1);
});

test("every unmap the host carries out bumps the epoch and tells the listeners; clear empties the host", () => {
  const c = new VfioType1Container();
  const n = new HostNotifier(c);
  const seen: number[] = [];
  n.onUnmap((iova, size) => seen.push(iova, size));
  n.map(0, 0, K4, PERM_RW);
  n.map(0x10_0000, 0x10_0000, K4, PERM_RW);
  n.clear();
  assert.equal(c.entryCount, 0);
  assert.equal(n.epoch, 2);
  assert.deepEqual(seen, [0, K4, 0x10_0000, K4]);
});
