/**
 * A client whose guest RAM is a hugetlb memfd (QEMU's `memory-backend-memfd,hugetlb=on`): its
 * DMA regions start and end anywhere on 4 KiB pages (QEMU splits RAM around the legacy VGA hole
 * and ROM areas), but a mapping of the file must start on a huge page. Needs free 2 MiB huge
 * pages on the host (vm.nr_hugepages); skipped loudly without them.
 */
import assert from "node:assert/strict";
import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import { test } from "node:test";
import { FirstTouchPolicy } from "../../src/vfio-user/first-touch.ts";
import { closeFd, MFD_ALLOW_SEALING, MFD_CLOEXEC, memfdCreate } from "../../src/vfio-user/libc.ts";
import { ResourceBudget } from "../../src/vfio-user/region-backing.ts";
import { SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";

const MiB = 1024 * 1024;
const MFD_HUGETLB = 4;
const MFD_HUGE_2MB = 21 << 26;
const FILE_BYTES = 8 * MiB;

function freeHugePages(): number {
  try {
    return Number(readFileSync("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "utf8").trim());
  } catch {
    return 0;
  }
}

/** A hugetlb memfd of FILE_BYTES, or why there is none. */
function hugetlbMemfd(): number | string {
  const free = freeHugePages();
  if (free < FILE_BYTES / (2 * MiB)) return `${free} free 2 MiB huge pages (need ${FILE_BYTES / (2 * MiB)})`;
  try {
    return memfdCreate(
      "hugetlb-ram",
      FILE_BYTES,
      MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_HUGE_2MB,
    );
  } catch (e) {
    return `memfd_create(MFD_HUGETLB) failed: ${(e as Error).message}`;
  }
}

const probe = hugetlbMemfd();
const skip = typeof probe === "string" ? `no hugetlb memory here: ${probe}` : false;
if (typeof probe === "number") closeFd(probe);
if (skip !== false) console.error(`SKIP hugetlb-region tests: ${skip}`);

test("regions of a hugetlb memfd at 4 KiB offsets are mapped (widened to huge pages) and DMA lands in the file", {
  skip,
}, () => {
  const fd = hugetlbMemfd() as number;
  const policy = new FirstTouchPolicy();
  const memory = new SharedGuestMemory(new ResourceBudget(16, 16), policy);
  const table = memory.createClientTable(8);
  // As QEMU lays out a q35 guest's low RAM: [0, 640 KiB), [768 KiB, ...), and one across 2 MiB.
  const regions = [
    { iova: 0, fileOffset: 0, sizeBytes: 0xa0000 },
    { iova: 0xc0000, fileOffset: 0xc0000, sizeBytes: 0x20000 },
    { iova: 0x100000, fileOffset: 0x100000, sizeBytes: 0x300000 },
  ];
  try {
    for (const r of regions) {
      const theirs = openSync(`/proc/self/fd/${fd}`, "r+");
      const m = table.map({ ...r, readable: true, writable: true, fd: theirs });
      assert.ok(m.ok, m.ok ? "" : `map at 0x${r.fileOffset.toString(16)}: ${m.why}`);
    }
    // DMA at the ends of each region, and across the huge page boundary at 2 MiB.
    const at = [0, 0x9fffc, 0xc0000, 0xdfffc, 0x100000, 0x1ffffe, 0x3ffffc];
    for (const [i, gpa] of at.entries()) memory.writeU32(gpa, 0x1000 + i);
    for (const [i, gpa] of at.entries()) assert.equal(memory.readU32(gpa), 0x1000 + i);
    // The client's file has the bytes (hugetlbfs has no write(2): check by reading).
    const other = openSync(`/proc/self/fd/${fd}`, "r");
    try {
      const word = Buffer.alloc(4);
      for (const [i, gpa] of at.entries()) {
        readSync(other, word, 0, 4, gpa);
        assert.equal(word.readUInt32LE(0), 0x1000 + i, `file at 0x${gpa.toString(16)}`);
      }
    } finally {
      closeSync(other);
    }
    assert.ok(policy.populatedChunks >= 3 && policy.populateFailures === 0, JSON.stringify(policy.stats()));
    for (const r of regions) assert.ok(table.unmap(r.iova, r.sizeBytes).ok);
    memory.drainReleases();
    assert.equal(memory.stats().budget.mappings, 0, "every mapping given back (munmap of whole huge pages)");
  } finally {
    table.close();
    memory.drainReleases();
    closeFd(fd);
  }
});

test("a read-only region of a hugetlb memfd (QEMU's PAM areas) is served by pread: reads see the file, writes are dropped", {
  skip,
}, () => {
  const fd = hugetlbMemfd() as number;
  const memory = new SharedGuestMemory(new ResourceBudget(16, 16));
  const table = memory.createClientTable(8);
  try {
    // The writable region puts bytes in the file; the read-only one sees them.
    const rw = openSync(`/proc/self/fd/${fd}`, "r+");
    assert.ok(
      table.map({
        iova: 0x4000_0000,
        fileOffset: 0,
        sizeBytes: 2 * MiB,
        readable: true,
        writable: true,
        fd: rw,
      }).ok,
    );
    memory.writeU32(0x4000_0000 + 0xc0010, 0xfeedf00d);
    const ro = openSync(`/proc/self/fd/${fd}`, "r+");
    const m = table.map({
      iova: 0xc0000,
      fileOffset: 0xc0000,
      sizeBytes: 0x4000,
      readable: true,
      writable: false,
      fd: ro,
    });
    assert.ok(m.ok, m.ok ? "" : m.why);
    assert.equal(memory.stats().fileIoRegions, 1);
    assert.equal(memory.readU32(0xc0010), 0xfeedf00d);
    memory.writeU32(0xc0010, 1);
    assert.equal(memory.readU32(0xc0010), 0xfeedf00d, "the write was dropped");
    assert.equal(memory.stats().droppedReadOnlyWrites, 1);
  } finally {
    table.close();
    memory.drainReleases();
    closeFd(fd);
  }
});

test("a region past the end of a hugetlb file is still refused (no widening past the file)", { skip }, () => {
  const fd = hugetlbMemfd() as number;
  const memory = new SharedGuestMemory(new ResourceBudget(16, 16));
  const table = memory.createClientTable(8);
  try {
    const theirs = openSync(`/proc/self/fd/${fd}`, "r+");
    const m = table.map({
      iova: 0,
      fileOffset: FILE_BYTES - 0x1000,
      sizeBytes: 0x2000,
      readable: true,
      writable: true,
      fd: theirs,
    });
    assert.equal(m.ok, false);
    // The last page of the file itself maps.
    const again = openSync(`/proc/self/fd/${fd}`, "r+");
    const last = table.map({
      iova: 0,
      fileOffset: FILE_BYTES - 0x1000,
      sizeBytes: 0x1000,
      readable: true,
      writable: true,
      fd: again,
    });
    assert.ok(last.ok, last.ok ? "" : last.why);
    memory.writeU32(0xffc, 7);
    assert.equal(memory.readU32(0xffc), 7);
  } finally {
    table.close();
    memory.drainReleases();
    closeFd(fd);
  }
});
