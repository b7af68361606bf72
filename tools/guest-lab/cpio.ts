// A writer for the "newc" cpio format (070701), the format the Linux kernel unpacks as an
// initramfs. The guest lab hands each test script to the guest as a small archive appended to
// the base initramfs: the kernel unpacks concatenated archives one after the other, so files in
// the second one are added to (or replace) those of the first.

import { gzipSync } from "node:zlib";

export type CpioEntry = {
  /** Path inside the archive, without a leading slash (e.g. "viommu/script.sh"). */
  path: string;
  /** File contents; absent for a directory. */
  data?: string | Uint8Array;
  /** Permission bits (default 0o755 for directories and 0o644 for files). */
  mode?: number;
};

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

function hex8(value: number): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`cpio field out of range: ${value}`);
  }
  return value.toString(16).padStart(8, "0");
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function header(ino: number, mode: number, fileSize: number, nameSize: number): Buffer {
  const fields = [
    ino,
    mode,
    0, // uid
    0, // gid
    mode & S_IFDIR ? 2 : 1, // nlink
    0, // mtime
    fileSize,
    0, // devmajor
    0, // devminor
    0, // rdevmajor
    0, // rdevminor
    nameSize,
    0, // check
  ];
  return Buffer.from(`070701${fields.map(hex8).join("")}`, "ascii");
}

/** An uncompressed newc archive with the given entries (parent directories are added). */
export function newcArchive(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const seen = new Set<string>();
  let ino = 1;
  let offset = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    offset += b.length;
  };
  const add = (path: string, mode: number, data: Buffer) => {
    const name = Buffer.from(`${path}\0`, "utf8");
    push(header(ino++, mode, data.length, name.length));
    push(name);
    push(pad4(110 + name.length));
    if (data.length > 0) {
      push(data);
      push(pad4(data.length));
    }
  };
  for (const entry of entries) {
    const path = entry.path.replace(/^\/+/, "");
    if (path === "" || path.split("/").includes("..")) throw new Error(`bad cpio path: ${entry.path}`);
    const dirs = path.split("/").slice(0, -1);
    for (let i = 1; i <= dirs.length; i++) {
      const dir = dirs.slice(0, i).join("/");
      if (!seen.has(dir)) {
        seen.add(dir);
        add(dir, S_IFDIR | 0o755, Buffer.alloc(0));
      }
    }
    if (entry.data === undefined) {
      if (!seen.has(path)) {
        seen.add(path);
        add(path, S_IFDIR | (entry.mode ?? 0o755), Buffer.alloc(0));
      }
      continue;
    }
    const data = typeof entry.data === "string" ? Buffer.from(entry.data, "utf8") : Buffer.from(entry.data);
    add(path, S_IFREG | (entry.mode ?? 0o644), data);
  }
  add("TRAILER!!!", 0, Buffer.alloc(0));
  // Pad the archive to a 512-byte multiple, as cpio(1) does.
  push(Buffer.alloc((512 - (offset % 512)) % 512));
  return Buffer.concat(parts);
}

/** The same archive, gzip-compressed (what the harness appends to the base initramfs). */
export function newcArchiveGz(entries: readonly CpioEntry[]): Buffer {
  return gzipSync(newcArchive(entries));
}
