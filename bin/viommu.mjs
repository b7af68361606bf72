#!/usr/bin/env node
// The `viommu` command: registers tsx's ESM loader, then runs src/cli/main.ts (no build step).
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
