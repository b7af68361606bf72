// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
/**
 * Guest RAM on hugetlbfs (`--memory size=S,file=/dev/hugepages/...`), the seeds' "faster
 * mappings" setup: runs where a hugetlbfs mount with enough free 2 MiB pages exists (.ci/run
 * reserves pages and mounts one), and says loudly when it cannot.
 */
import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { Kvm } from "../../src/kvm/system.ts";
import { viommuArgs } from "../support/guide.ts";

const RAM_MIB = 64;

/** The first hugetlbfs mount point with at least `pages` free huge pages, or why there is none. */
function hugetlbfs(pages: number): { dir: string } | { why: string } {
  let mounts = "";
  let meminfo = "";
  try {
    mounts = readFileSync("/proc/mounts", "utf8");
    meminfo = readFileSync("/proc/meminfo", "utf8");
  } catch {
    return { why: "/proc not readable" };
  }
  const mount = mounts.split("\n").find((l) => l.split(" ")[2] === "hugetlbfs");
  if (mount === undefined) return { why: "no hugetlbfs mount (mount -t hugetlbfs none /dev/hugepages)" };
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  if (free < pages) return { why: `only ${free} free huge pages, ${pages} needed (vm.nr_hugepages)` };
  return { dir: mount.split(" ")[1] };
}

test("the built-in guest runs with its RAM on hugetlbfs and passes (docs/guide.md's hugetlbfs-run, as written)", (t) => {
  if (!Kvm.available()) return t.skip("/dev/kvm not available: hugetlbfs boot test SKIPPED");
  const fs = hugetlbfs(RAM_MIB / 2);
  if ("why" in fs) return t.skip(`hugetlbfs not available: ${fs.why}: test SKIPPED`);
  const args = viommuArgs("hugetlbfs-run", "run");
  const memory = args[args.indexOf("--memory") + 1] ?? "";
  assert.equal(memory.split(",")[0], `size=${RAM_MIB}M`, memory);
  const file = /file=([^,]+)/.exec(memory)?.[1] ?? "";
  if (!file.startsWith(`${fs.dir}/`)) {
    return t.skip(
      `the guide's recipe puts RAM in ${file}, but hugetlbfs is mounted at ${fs.dir}: test SKIPPED`,
    );
  }
  let stderr = "";
  try {
    const status = runVmm([...args, "--serial", "null"], {
      stdout: () => {},
      stderr: (s) => (stderr += s),
    });
    assert.equal(status, 0, stderr);
    assert.match(stderr, new RegExp(`RAM ${RAM_MIB} MiB file ${file}`));
    assert.match(stderr, /built-in guest passed/);
  } finally {
    rmSync(file, { force: true });
  }
});
