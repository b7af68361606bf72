#!/usr/bin/env node
// The `viommu` command: runs the JavaScript build of src/ (build/js/, made by `npm run build`,
// which `npm ci` runs as its prepare step), so no TypeScript is compiled at start-up. When the
// sources changed since that build it rebuilds first and says so on stderr: a stale build never
// runs. tools/build/js-build.mjs describes the build.
import { ensureBuild } from "../tools/build/js-build.mjs";

let entry;
try {
  entry = await ensureBuild({ log: (line) => process.stderr.write(`viommu: ${line}\n`) });
} catch (e) {
  process.stderr.write(`viommu: ${e instanceof Error ? e.message : e}\n`);
  process.exit(2);
}
const { main } = await import(entry);
process.exitCode = await main(process.argv.slice(2));
