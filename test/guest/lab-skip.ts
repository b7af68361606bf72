// Shared by the guest-lab tests: whether to run, and the loud skip when the lab is missing.
import type { TestContext } from "node:test";
import { labAvailable } from "../../tools/guest-lab/lab.ts";

export const lab = labAvailable();

if (!lab.ok) {
  console.error(
    `\n*** guest lab not provisioned (${lab.why}): the Linux-guest tests are SKIPPED.\n` +
      "*** run tools/provision/provision.sh to enable them.\n",
  );
}

/** Skips the test (loudly) and returns true when the lab is not provisioned. */
export function skipWithoutLab(t: TestContext): boolean {
  if (lab.ok) return false;
  t.skip(`guest lab not provisioned: run tools/provision/provision.sh (${lab.why})`);
  return true;
}
