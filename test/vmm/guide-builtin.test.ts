// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
// docs/guide.md sections 1 and 2: the built-in guest recipes, their command lines taken from the
// guide, run in the VMM; what the guide says the summary and the trace show is checked here.
import assert from "node:assert/strict";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { Kvm } from "../../src/kvm/system.ts";
import { viommuArgs } from "../support/guide.ts";

const NO_KVM =
  "/dev/kvm not available: the guide's built-in guest recipes are SKIPPED (section 7: the KVM lab)";
if (!Kvm.available()) console.error(`\n*** ${NO_KVM}\n`);

/** Runs the recipe's `viommu run` with COM1 discarded; the exit status and stderr (summary, trace). */
function runRecipe(args: readonly string[]): { status: number; stderr: string } {
  let stderr = "";
  const status = runVmm([...args, "--serial", "null"], { stdout: () => {}, stderr: (s) => (stderr += s) });
  return { status, stderr };
}

test("guide virtio-builtin: the edu behind the virtio-iommu is translated and faults after unmap; the other bypasses", (t) => {
  if (!Kvm.available()) return t.skip(NO_KVM);
  const { status, stderr } = runRecipe(viommuArgs("virtio-builtin", "run"));
  assert.equal(status, 0, stderr);
  assert.match(stderr, /built-in guest passed/, stderr);
  assert.match(stderr, /^virtio-iommu: requests attach 1, map 1, unmap 1$/m, stderr);
  assert.match(stderr, /^virtio-iommu: faults by cause: .*unmapped \d+/m, stderr);
  assert.match(stderr, /^edu 00:02\.0 \(behind the IOMMU\): dmaTransfers [1-9]/m, stderr);
  assert.match(stderr, /^edu 00:03\.0 \(bypasses the IOMMU\): /m, stderr);
});

test("guide virtio-trace: trace lines for the MAP, the UNMAP and the faults", (t) => {
  if (!Kvm.available()) return t.skip(NO_KVM);
  const { status, stderr } = runRecipe(viommuArgs("virtio-trace", "run"));
  assert.equal(status, 0, stderr);
  for (const category of ["map", "unmap", "fault"]) {
    assert.match(stderr, new RegExp(`^trace: .*\\b${category}\\b`, "m"), `${category}\n${stderr}`);
  }
});

test("guide vtd-builtin: VT-d with interrupt remapping; remapped MSIs and DMA faults in the summary", (t) => {
  if (!Kvm.available()) return t.skip(NO_KVM);
  const { status, stderr } = runRecipe(viommuArgs("vtd-builtin", "run"));
  assert.equal(status, 0, stderr);
  assert.match(stderr, /^vt-d: \d+ DMA faults, [1-9]\d* interrupts remapped/m, stderr);
  assert.match(stderr, /^vt-d: IOTLB fills: /m, stderr);
  assert.match(stderr, /^edu 00:03\.0 \(bypasses the IOMMU\): /m, stderr);
});

// The built-in guest stays in xAPIC mode and legacy tables: these show the unit offering x2APIC
// interrupt mode and scalable mode still serves it (what docs/guide.md section 2 says they prove).
test("guide vtd-eim: the built-in guest passes with extended interrupt mode offered", (t) => {
  if (!Kvm.available()) return t.skip(NO_KVM);
  const { status, stderr } = runRecipe(viommuArgs("vtd-eim", "run"));
  assert.equal(status, 0, stderr);
  assert.match(stderr, /built-in guest passed/, stderr);
  assert.match(stderr, /^vt-d: \d+ DMA faults, [1-9]\d* interrupts remapped/m, stderr);
});

test("guide vtd-scalable: the built-in guest passes with scalable mode offered", (t) => {
  if (!Kvm.available()) return t.skip(NO_KVM);
  const { status, stderr } = runRecipe(viommuArgs("vtd-scalable", "run"));
  assert.equal(status, 0, stderr);
  assert.match(stderr, /built-in guest passed/, stderr);
  assert.match(stderr, /^vt-d: 2 DMA faults/m, stderr);
});
