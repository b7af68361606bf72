/**
 * First touches of a client's shared guest RAM (src/vfio-user/first-touch.ts): the first DMA to
 * a 2 MiB chunk of a mapped region populates that chunk, and only it; a chunk the kernel cannot
 * populate is a DMA fault, never a signal. In-process: `SharedGuestMemory` over a memfd the test
 * holds, its allocated size (st_blocks) showing what was committed.
 */
import assert from "node:assert/strict";
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { test } from "node:test";
import { GuestMemoryError } from "../../src/engine/guest-memory.ts";
import { FirstTouchPolicy, type PopulateCall, TOUCH_CHUNK_BYTES } from "../../src/vfio-user/first-touch.ts";
import {
  adviseMapping,
  closeFd,
  ERRNO,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  memfdCreate,
} from "../../src/vfio-user/libc.ts";
import { ResourceBudget } from "../../src/vfio-user/region-backing.ts";
import { SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";

const MiB = 1024 * 1024;
const IOVA = 0x4000_0000;

/** Bytes of the memfd the kernel has allocated (shmem counts st_blocks in 512-byte units). */
function allocatedBytes(fd: number): number {
  return fstatSync(fd).blocks * 512;
}

/**
 * A memory with one region of a fresh memfd of `fileBytes`, registered at IOVA from
 * `fileOffset` for `sizeBytes`; the test keeps its own descriptor of the file.
 */
function rig(opts: {
  fileBytes: number;
  fileOffset: number;
  sizeBytes: number;
  writable?: boolean;
  populate?: PopulateCall;
}) {
  const fd = memfdCreate("first-touch", opts.fileBytes, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  const policy = new FirstTouchPolicy(opts.populate);
  const memory = new SharedGuestMemory(new ResourceBudget(16, 16), policy);
  // The table consumes the descriptor it is given: hand it a second one to the same file.
  const theirs = openSync(`/proc/self/fd/${fd}`, "r+");
  const r = memory.createClientTable(8).map({
    iova: IOVA,
    sizeBytes: opts.sizeBytes,
    fileOffset: opts.fileOffset,
    readable: true,
    writable: opts.writable ?? true,
    fd: theirs,
  });
  assert.ok(r.ok, r.ok ? "" : r.why);
  return {
    memory,
    policy,
    fd,
    done: () => {
      memory.drainReleases();
      closeFd(fd);
    },
  };
}

test("the first DMA to a 2 MiB chunk populates that chunk only; later DMA there populates nothing", () => {
  const { memory, policy, fd, done } = rig({ fileBytes: 64 * MiB, fileOffset: 0, sizeBytes: 64 * MiB });
  try {
    assert.equal(allocatedBytes(fd), 0);
    memory.writeU32(IOVA + 5 * MiB + 12, 0xdeadbeef);
    assert.equal(allocatedBytes(fd), TOUCH_CHUNK_BYTES, "one chunk committed, not the region");
    assert.equal(policy.populatedChunks, 1);
    assert.equal(policy.populatedBytes, TOUCH_CHUNK_BYTES);
    memory.fill(IOVA + 4 * MiB, 4096, 0x5a);
    memory.view(IOVA + 6 * MiB - 8, 8).fill(1);
    assert.equal(policy.populatedChunks, 1, "same chunk: no second populate");
    assert.equal(memory.readU32(IOVA + 5 * MiB + 12), 0xdeadbeef);
    // A view across a chunk boundary populates both chunks it reaches.
    memory.view(IOVA + 8 * MiB - 4096, 8192).fill(2);
    assert.equal(policy.populatedChunks, 3);
    assert.equal(allocatedBytes(fd), 3 * TOUCH_CHUNK_BYTES);
    assert.equal(memory.stats().firstTouch.populatedChunks, 3);
  } finally {
    done();
  }
});

test("what DMA wrote is in the client's file (the populated pages are the file's, not private copies)", () => {
  const { memory, fd, done } = rig({ fileBytes: 4 * MiB, fileOffset: 2 * MiB, sizeBytes: 2 * MiB });
  try {
    memory.write(IOVA + 100, new Uint8Array([1, 2, 3, 4]));
    const check = Buffer.alloc(4);
    const other = openSync(`/proc/self/fd/${fd}`, "r");
    try {
      readSync(other, check, 0, 4, 2 * MiB + 100);
    } finally {
      closeSync(other);
    }
    assert.deepEqual([...check], [1, 2, 3, 4]);
  } finally {
    done();
  }
});

test("chunks follow the file's 2 MiB boundaries and are clipped to the region (also from an offset inside a page)", () => {
  const calls: [number, number, number][] = [];
  const record: PopulateCall = (m, offset, sizeBytes, advice) => {
    calls.push([offset, sizeBytes, advice]);
    return adviseMapping(m, offset, sizeBytes, advice);
  };
  // File bytes [2 MiB - 0x800, 2 MiB + 0x1800): two chunks, one page from the first.
  const fileOffset = 2 * MiB - 0x800;
  const { memory, fd, done } = rig({ fileBytes: 4 * MiB, fileOffset, sizeBytes: 0x2000, populate: record });
  try {
    memory.writeU8(IOVA, 1);
    // The mapping starts at the page below fileOffset: the first chunk is its first page.
    assert.deepEqual(calls, [[0, 0x1000, MADV_POPULATE_WRITE]]);
    assert.equal(allocatedBytes(fd), 4096);
    memory.writeU8(IOVA + 0x1fff, 1);
    assert.deepEqual(calls[1], [0x1000, 0x1800, MADV_POPULATE_WRITE]);
    assert.equal(allocatedBytes(fd), 3 * 4096, "nothing outside the region");
  } finally {
    done();
  }
});

test("a read-only region (mapped private) is populated for reading: no private copies", () => {
  const advices: number[] = [];
  const record: PopulateCall = (m, offset, sizeBytes, advice) => {
    advices.push(advice);
    return adviseMapping(m, offset, sizeBytes, advice);
  };
  const { memory, done } = rig({
    fileBytes: 2 * MiB,
    fileOffset: 0,
    sizeBytes: 2 * MiB,
    writable: false,
    populate: record,
  });
  try {
    assert.equal(memory.readU32(IOVA + 64), 0);
    assert.deepEqual(advices, [MADV_POPULATE_READ]);
  } finally {
    done();
  }
});

test("a chunk the kernel cannot populate (EFAULT: a plain access would raise SIGBUS) is a DMA fault; other chunks work", () => {
  const failAt = 2 * MiB;
  const populate: PopulateCall = (m, offset, sizeBytes, advice) =>
    offset === failAt ? -ERRNO.EFAULT : adviseMapping(m, offset, sizeBytes, advice);
  const { memory, policy, done } = rig({ fileBytes: 8 * MiB, fileOffset: 0, sizeBytes: 8 * MiB, populate });
  try {
    const bad = IOVA + failAt + 64;
    assert.ok(memory.tryWrite(bad, new Uint8Array(4)) instanceof GuestMemoryError);
    assert.ok(memory.tryRead(bad, new Uint8Array(4)) instanceof GuestMemoryError);
    assert.throws(() => memory.view(bad, 16), GuestMemoryError);
    assert.throws(() => memory.readU32(bad), GuestMemoryError);
    assert.throws(() => memory.fill(bad, 16, 0), GuestMemoryError);
    assert.equal(memory.tryWriteU32(bad, 1), false);
    // A copy that starts in a good chunk and reaches the bad one is refused as a whole.
    assert.ok(memory.tryWrite(IOVA + failAt - 8, new Uint8Array(16)) instanceof GuestMemoryError);
    memory.writeU32(IOVA + 64, 7);
    assert.equal(memory.readU32(IOVA + 64), 7);
    assert.equal(policy.unreachableChunks, 1);
    assert.equal(policy.populateFailures, 1, "the failed chunk is not retried");
    assert.ok(policy.unreachableAccesses >= 7);
    assert.equal(policy.lastErrno, ERRNO.EFAULT);
  } finally {
    done();
  }
});

test("EINVAL (a kernel without the advice) turns population off; ENOMEM leaves the chunk to ordinary faults", () => {
  let answer = -ERRNO.ENOMEM;
  let calls = 0;
  const populate: PopulateCall = () => {
    calls++;
    return answer;
  };
  const { memory, policy, done } = rig({ fileBytes: 8 * MiB, fileOffset: 0, sizeBytes: 8 * MiB, populate });
  try {
    memory.writeU32(IOVA, 1);
    assert.equal(memory.readU32(IOVA), 1, "ENOMEM: the access itself still works");
    assert.equal(policy.enabled, true);
    answer = -ERRNO.EINVAL;
    memory.writeU32(IOVA + 2 * MiB, 2);
    assert.equal(policy.enabled, false);
    memory.writeU32(IOVA + 4 * MiB, 3);
    assert.equal(calls, 2, "no populate call once off");
    assert.equal(memory.readU32(IOVA + 4 * MiB), 3);
    assert.equal(policy.populateFailures, 2);
    assert.equal(policy.unreachableChunks, 0);
  } finally {
    done();
  }
});
