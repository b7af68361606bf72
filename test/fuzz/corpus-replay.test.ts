/**
 * Replays the fuzz corpora (fuzz/corpus/<target>/, grown by tools/fuzz/run.sh with Jazzer.js)
 * through the fuzz targets: every input that once reached new coverage must still pass the
 * target's checks (no exception, no internal error, answers inside their buffers).
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

const ROOT = new URL("../../fuzz/", import.meta.url).pathname;

for (const target of ["virtio-iommu-request", "vfio-user-message"]) {
  test(`fuzz corpus replay: ${target}`, async () => {
    const dir = join(ROOT, "corpus", target);
    const files = readdirSync(dir).sort();
    assert.ok(files.length > 10, `the ${target} corpus has inputs`);
    const { fuzz } = (await import(join(ROOT, `${target}.fuzz.ts`))) as {
      fuzz: (data: Buffer) => void | Promise<void>;
    };
    for (const f of files) {
      try {
        await fuzz(readFileSync(join(dir, f)));
      } catch (e) {
        assert.fail(`${target} input ${f}: ${(e as Error).message}`);
      }
    }
  });
}
