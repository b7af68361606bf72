/**
 * The JavaScript build of src/: one esbuild bundle (ESM, code-split so a subcommand loads only
 * its own code) that `bin/viommu.mjs` runs, so no TypeScript is compiled at run time.
 *
 * Layout, under build/js/:
 *   <key>/main.js          the CLI (src/cli/main.ts), with run/serve/demo as lazy chunks
 *   <key>/vcpu-worker.js   the vCPU thread (src/vmm/vcpu-worker.ts), found next to its chunk
 *   current.json           the manifest: which <key> is current and every input it was made from
 *                          (path, size, mtime, sha256)
 * <key> is a hash of every input's content, so concurrent builds of the same sources agree and
 * a directory is never rewritten while a process may be loading from it: each build goes to a
 * fresh temporary directory that is then renamed into place.
 *
 * Plain JavaScript on purpose: the bin imports this module before any TypeScript can be loaded.
 *
 *   node tools/build/js-build.mjs           build now (npm run build; npm ci's prepare step)
 *   node tools/build/js-build.mjs --check   exit 0 if build/js matches the sources, 1 if not
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const MANIFEST_VERSION = 1;
/** Entry points, by output name. */
const ENTRY_POINTS = { main: "src/cli/main.ts", "vcpu-worker": "src/vmm/vcpu-worker.ts" };
/**
 * Inputs esbuild reads that its metafile does not list: the tsconfig (class-field semantics),
 * this script (the build options) and esbuild's own version.
 */
const EXTRA_INPUTS = ["tsconfig.json", "tools/build/js-build.mjs", "node_modules/esbuild/package.json"];
/** Builds kept besides the current one (a running process may still load chunks from them). */
const KEEP_OLD_BUILDS = 2;
/** Temporary directories older than this are left-overs of an interrupted build. */
const STALE_TMP_MS = 10 * 60_000;

/** @param {string} root */
export function buildDir(root = REPO_ROOT) {
  return join(root, "build", "js");
}

/**
 * node:crypto is loaded only when something must be hashed: a start whose build is current
 * (every input's size and mtime unchanged) does not pay for it.
 * @param {Uint8Array} bytes
 */
function sha256(bytes) {
  const { createHash } = createRequire(import.meta.url)("node:crypto");
  return createHash("sha256").update(bytes).digest("hex");
}

/** @param {string} path @returns {string} a path relative to root with forward slashes */
function repoRelative(root, path) {
  return relative(root, path).split(sep).join("/");
}

/** @param {string} file */
function readManifest(file) {
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch {
    return undefined;
  }
}

/** @param {string} file @param {unknown} value */
function writeAtomically(file, value) {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 1)}\n`);
  renameSync(tmp, file);
}

/**
 * Whether the current build matches the sources. Inputs whose size and mtime are unchanged are
 * taken as unchanged; an input with a new mtime is hashed, so a checkout or `touch` that keeps the
 * content does not force a rebuild (the manifest's mtimes are then refreshed).
 * @param {{ root?: string, outDir?: string }} [options]
 * @returns {{ fresh: true, entry: string } | { fresh: false, reason: string }}
 */
export function checkBuild(options = {}) {
  const root = options.root ?? REPO_ROOT;
  const outDir = options.outDir ?? buildDir(root);
  const manifestFile = join(outDir, "current.json");
  const manifest = readManifest(manifestFile);
  if (manifest === undefined) return { fresh: false, reason: `no build in ${repoRelative(root, outDir)}` };
  if (manifest.version !== MANIFEST_VERSION || typeof manifest.key !== "string") {
    return { fresh: false, reason: "the build's manifest is from another version of the build script" };
  }
  const entry = join(outDir, manifest.key, "main.js");
  if (!existsSync(entry)) return { fresh: false, reason: `${repoRelative(root, entry)} is missing` };
  let touched = false;
  // This runs on every start of the bin: plain string paths, no exception for a missing file.
  const prefix = `${root}/`;
  for (const input of manifest.inputs) {
    const st = statSync(prefix + input.path, { throwIfNoEntry: false });
    if (st === undefined) return { fresh: false, reason: `${input.path} was removed` };
    if (st.size !== input.sizeBytes) return { fresh: false, reason: `${input.path} changed` };
    if (st.mtimeMs === input.mtimeMs) continue;
    if (sha256(readFileSync(prefix + input.path)) !== input.sha256) {
      return { fresh: false, reason: `${input.path} changed` };
    }
    input.mtimeMs = st.mtimeMs;
    touched = true;
  }
  if (touched) {
    try {
      writeAtomically(manifestFile, manifest);
    } catch {
      // A read-only tree still runs; the next start hashes the touched files again.
    }
  }
  return { fresh: true, entry };
}

/**
 * Builds src/ into a new build/js/<key>/ and makes it current.
 * @param {{ root?: string, outDir?: string }} [options]
 * @returns {Promise<{ entry: string, key: string, inputs: number, ms: number }>}
 */
export async function buildJs(options = {}) {
  const started = performance.now();
  const root = options.root ?? REPO_ROOT;
  const outDir = options.outDir ?? buildDir(root);
  mkdirSync(outDir, { recursive: true });
  const tmp = join(outDir, `.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  let esbuild;
  try {
    esbuild = await import("esbuild");
  } catch (e) {
    throw new Error(`cannot load esbuild (${e instanceof Error ? e.message : e}): run npm ci`);
  }
  try {
    const result = await esbuild.build({
      absWorkingDir: root,
      entryPoints: Object.fromEntries(Object.entries(ENTRY_POINTS).map(([k, v]) => [k, join(root, v)])),
      outdir: tmp,
      bundle: true,
      // Chunks sit next to the entries: src/vmm/vcpu-threads.ts finds ./vcpu-worker.js beside itself.
      splitting: true,
      chunkNames: "[name]-[hash]",
      format: "esm",
      platform: "node",
      target: "node20",
      // Packages (koffi with its native code) load from node_modules as they are.
      packages: "external",
      sourcemap: "linked",
      metafile: true,
      logLevel: "silent",
    });
    const paths = [...Object.keys(result.metafile.inputs), ...EXTRA_INPUTS].map((p) =>
      repoRelative(root, resolve(root, p)),
    );
    const inputs = [...new Set(paths)].sort().map((path) => {
      const bytes = readFileSync(join(root, path));
      return {
        path,
        sizeBytes: bytes.length,
        mtimeMs: statSync(join(root, path)).mtimeMs,
        sha256: sha256(bytes),
      };
    });
    const key = sha256(Buffer.from(inputs.map((i) => `${i.path}\0${i.sha256}\n`).join(""))).slice(0, 16);
    const final = join(outDir, key);
    if (existsSync(final)) {
      rmSync(tmp, { recursive: true, force: true }); // the same sources were built already
    } else {
      try {
        renameSync(tmp, final);
      } catch (e) {
        // A concurrent build of the same sources renamed first: theirs is as good as ours.
        if (!existsSync(join(final, "main.js"))) throw e;
        rmSync(tmp, { recursive: true, force: true });
      }
    }
    writeAtomically(join(outDir, "current.json"), { version: MANIFEST_VERSION, key, inputs });
    pruneOldBuilds(outDir, key);
    return { entry: join(final, "main.js"), key, inputs: inputs.length, ms: performance.now() - started };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (e && typeof e === "object" && "errors" in e && Array.isArray(e.errors) && e.errors.length > 0) {
      const lines = e.errors.map(
        (m) => `${m.location ? `${m.location.file}:${m.location.line}:${m.location.column}: ` : ""}${m.text}`,
      );
      throw new Error(`the JavaScript build failed:\n${lines.join("\n")}`);
    }
    throw e;
  }
}

/** Removes all but the newest KEEP_OLD_BUILDS builds besides `currentKey`, and old temporaries. */
function pruneOldBuilds(outDir, currentKey) {
  const now = Date.now();
  const builds = [];
  for (const name of readdirSync(outDir)) {
    const path = join(outDir, name);
    let st;
    try {
      st = statSync(path);
    } catch {
      continue;
    }
    if (!st.isDirectory() || name === currentKey) continue;
    if (name.startsWith(".tmp-")) {
      if (now - st.mtimeMs > STALE_TMP_MS) rmSync(path, { recursive: true, force: true });
      continue;
    }
    builds.push({ path, mtimeMs: st.mtimeMs });
  }
  builds.sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const old of builds.slice(KEEP_OLD_BUILDS)) rmSync(old.path, { recursive: true, force: true });
}

/**
 * The build's entry module, rebuilding first (and saying why through `log`) when it does not
 * match the sources. A stale build never runs.
 * @param {{ root?: string, log?: (line: string) => void }} [options]
 * @returns {Promise<string>} the entry's file URL
 */
export async function ensureBuild(options = {}) {
  const checked = checkBuild(options);
  if (checked.fresh) return pathToFileURL(checked.entry).href;
  options.log?.(`rebuilding the JavaScript in build/js (${checked.reason})`);
  const built = await buildJs(options);
  return pathToFileURL(built.entry).href;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const check = process.argv.includes("--check");
  try {
    if (check) {
      const r = checkBuild();
      process.stdout.write(r.fresh ? `up to date: ${r.entry}\n` : `stale: ${r.reason}\n`);
      process.exitCode = r.fresh ? 0 : 1;
    } else {
      const r = await buildJs();
      process.stdout.write(
        `built ${repoRelative(REPO_ROOT, r.entry)} from ${r.inputs} inputs in ${Math.round(r.ms)} ms\n`,
      );
    }
  } catch (e) {
    process.stderr.write(`js-build: ${e instanceof Error ? e.message : e}\n`);
    process.exitCode = 2;
  }
}
