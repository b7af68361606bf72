/**
 * The Debian 6.12 kernel the lab provisioning (tools/) caches, when present: vmlinuz (bzImage) and
 * vmlinux (ELF). Tests that need them skip loudly without them.
 */

import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

const cacheDir = process.env.VIOMMU_CACHE ?? join(homedir(), ".cache", "viommu");

function load(name: string): { bytes: Uint8Array | undefined; skip: string | false } {
  const path = join(cacheDir, "kernel", name);
  if (!existsSync(path)) {
    const why = `${path} missing (run the guest lab provisioning): NOT VERIFIED against a real kernel`;
    console.warn(`SKIP: ${why}`);
    return { bytes: undefined, skip: why };
  }
  return { bytes: new Uint8Array(readFileSync(path)), skip: false };
}

export const realVmlinuz = () => load("vmlinuz");
export const realVmlinux = () => load("vmlinux");
