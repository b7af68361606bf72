/**
 * The built-in guest (guest/builtin/guest.S): assembled on demand with the host's binutils
 * (`as --32`, `ld -m elf_i386`) into build/builtin-guest/, keyed by a hash of its sources so an
 * unchanged guest is not rebuilt.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The repository: the nearest directory above this module holding guest/builtin/. Searched for,
 * not assumed two levels up, because this code also runs from the JavaScript build
 * (build/js/<key>/, tools/build/js-build.mjs).
 */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));
export const BUILTIN_GUEST_DIR = join(REPO_ROOT, "guest", "builtin");
export const BUILTIN_GUEST_BUILD_DIR = join(REPO_ROOT, "build", "builtin-guest");
const SOURCES = ["guest.S", "guest.ld"];

/** The guest's isa-debug-exit values: 0 pass (status 1), 1 fail (status 3). */
export const BUILTIN_PASS_STATUS = 1;
export const BUILTIN_FAIL_STATUS = 3;

export class BuiltinGuestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BuiltinGuestError";
  }
}

function findRepoRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "guest", "builtin", "guest.S"))) return dir;
    if (dirname(dir) === dir) return resolve(from, "../.."); // not found: the sources' layout
  }
}

function run(tool: string, args: string[]): void {
  const r = spawnSync(tool, args, { encoding: "utf8" });
  if (r.error !== undefined) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new BuiltinGuestError(
        `building the built-in guest needs GNU binutils (${tool} not found): install binutils (apt-get install binutils)`,
      );
    }
    throw new BuiltinGuestError(`${tool}: ${r.error.message}`);
  }
  if (r.status !== 0) throw new BuiltinGuestError(`${tool} ${args.join(" ")} failed:\n${r.stderr.trim()}`);
}

/** Path of the built-in guest's ELF, assembling it first when its sources changed. */
export function builtinGuestPath(): string {
  const hash = createHash("sha256");
  for (const name of SOURCES) hash.update(readFileSync(join(BUILTIN_GUEST_DIR, name)));
  const key = hash.digest("hex").slice(0, 16);
  const elf = join(BUILTIN_GUEST_BUILD_DIR, `guest-${key}.elf`);
  if (existsSync(elf)) return elf;
  mkdirSync(BUILTIN_GUEST_BUILD_DIR, { recursive: true });
  const tmp = `${elf}.${process.pid}`;
  const obj = `${tmp}.o`;
  run("as", ["--32", "-o", obj, join(BUILTIN_GUEST_DIR, "guest.S")]);
  run("ld", [
    "-m",
    "elf_i386",
    "--no-warn-rwx-segments",
    "-T",
    join(BUILTIN_GUEST_DIR, "guest.ld"),
    "-o",
    tmp,
    obj,
  ]);
  rmSync(obj, { force: true });
  renameSync(tmp, elf); // atomic: concurrent builders never see a half-written file
  return elf;
}

export function builtinGuestImage(): Uint8Array {
  return readFileSync(builtinGuestPath());
}
