// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
/**
 * End-to-end runs of the KVM micro-VMM: the built-in guest with each vIOMMU, and tiny
 * hand-assembled Multiboot kernels for debug-exit, serial, crash and timeout behaviour.
 * Skipped (loudly) where /dev/kvm is missing.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { Kvm } from "../../src/kvm/system.ts";

const KVM = Kvm.available();
const NO_KVM = "/dev/kvm not available: KVM boot tests skipped";
const dir = mkdtempSync(join(tmpdir(), "viommu-boot-"));

function run(args: string[]): { status: number; serial: string; stderr: string } {
  const serialPath = join(dir, `serial-${Math.random().toString(36).slice(2)}.txt`);
  let stderr = "";
  const status = runVmm([...args, "--serial", `file=${serialPath}`, "--memory", "64M"], {
    stdout: () => {},
    stderr: (t) => {
      stderr += t;
    },
  });
  let serial = "";
  try {
    serial = readFileSync(serialPath, "latin1");
  } catch {}
  return { status, serial, stderr };
}

/** A Multiboot a.out-kludge kernel at 1 MiB whose code starts at 0x100020. */
function kernel(code: number[]): string {
  const img = new Uint8Array(0x20 + code.length);
  const v = new DataView(img.buffer);
  const flags = 0x00010002;
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, -(0x1badb002 + flags) >>> 0, true);
  v.setUint32(12, 0x100000, true);
  v.setUint32(16, 0x100000, true);
  v.setUint32(20, 0, true); // load the whole file
  v.setUint32(24, 0, true); // no bss
  v.setUint32(28, 0x100020, true);
  img.set(code, 0x20);
  const path = join(dir, `kernel-${Math.random().toString(36).slice(2)}.bin`);
  writeFileSync(path, img);
  return path;
}

// mov edx,0x3f8; cmp eax,0x2badb002; jne fail; mov al,'K'; out dx,al; mov edx,0xf4; mov eax,0x21; out dx,eax
// fail: mov al,'F'; out dx,al; mov edx,0xf4; mov eax,1; out dx,eax
const MAGIC_CHECK_KERNEL = [
  0xba, 0xf8, 0x03, 0, 0, 0x3d, 0x02, 0xb0, 0xad, 0x2b, 0x75, 0x0e, 0xb0, 0x4b, 0xee, 0xba, 0xf4, 0, 0, 0,
  0xb8, 0x21, 0, 0, 0, 0xef, 0xb0, 0x46, 0xee, 0xba, 0xf4, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0xef,
];

test("built-in guest with --iommu virtio: ATTACH/MAP/DMA/UNMAP/fault all pass and the VMM summarizes", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--iommu", "virtio"]);
  assert.match(r.serial, /verdict: PASS/);
  assert.match(
    r.serial,
    /unmapped iova 0x08001000 faults, eventq MSI-X interrupt \(vector 0x45\) \[fault reason 2 endpoint 00:02\.0 address 0x08001000\] \.\.\. ok/,
  );
  assert.match(
    r.serial,
    /after UNMAP the old iova faults \(event \+ MSI-X\), memory untouched \[fault reason 2 endpoint 00:02\.0 address 0x08000000\] \.\.\. ok/,
  );
  assert.equal(r.status, 0, r.serial + r.stderr);
  assert.match(r.stderr, /virtio-iommu: requests attach 1, map 1, unmap 1/);
  assert.match(r.stderr, /faults by cause: blocked 1, unmapped 2/);
});

test("built-in guest with --iommu intel: tables, TE, FRCD and fault event interrupt on a missing PTE, DMA, PTE clear + IOTLB invalidation faults", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--iommu", "intel"]);
  assert.match(
    r.serial,
    /without a PTE faults, fault event interrupt \(vector 0x44\) \[FRCD reason 0x00000005 endpoint 00:02\.0 address 0x08001000\] \.\.\. ok/,
  );
  assert.match(
    r.serial,
    /IOTLB invalidation, old iova faults, memory untouched \[FRCD reason 0x00000005 endpoint 00:02\.0 address 0x08000000\] \.\.\. ok/,
  );
  assert.match(r.serial, /verdict: PASS/);
  assert.equal(r.status, 0, r.serial + r.stderr);
  assert.match(r.stderr, /vt-d: 2 DMA faults/);
});

test("built-in guest with --iommu intel,intremap=on: QI, IRTE, IRE; compatibility MSI blocked (0x25), remapped MSI arrives", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--iommu", "intel,intremap=on"]);
  assert.match(r.serial, /msi: edu interrupt through the local APIC, vector 0x40 \.\.\. ok/);
  assert.match(
    r.serial,
    /compatibility-format MSI is blocked \[FRCD reason 0x00000025 endpoint 00:02\.0\] \.\.\. ok/,
  );
  assert.match(r.serial, /remappable MSI \(handle 5\) arrives as vector 0x41 \.\.\. ok/);
  assert.match(r.serial, /verdict: PASS/);
  assert.equal(r.status, 0, r.serial + r.stderr);
  assert.match(
    r.serial,
    /IOAPIC INTx remapped \(IRTE 6, level, vector 0x43\), EOI clears remote IRR: RTE 0x00008043 \.\.\. ok/,
  );
  // edu MSI, INTx, remapped MSI, remapped INTx, and the unit's fault event (not remapped).
  assert.match(r.stderr, /interrupts: 5 MSIs delivered, 1 blocked by remapping/);
  // Both level INTx runs had a remapper in the path: KVM's routes came from the delivered messages.
  assert.match(r.stderr, /IOAPIC EOI 2\)/);
  assert.match(r.stderr, /vt-d: .* 2 interrupts remapped, 1 interrupt faults/);
});

test("built-in guest with --iommu intel,aw-bits=39 walks 3-level tables (CAP.SAGAW)", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--iommu", "intel,aw-bits=39"]);
  assert.match(r.serial, /verdict: PASS/);
  assert.equal(r.status, 0);
});

test("built-in guest without a vIOMMU: edu DMA is identity and round-trips", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run([]);
  assert.match(r.serial, /identity round trip \.\.\. ok/);
  assert.match(r.serial, /msi: edu interrupt through the local APIC, vector 0x40 \.\.\. ok/);
  assert.match(
    r.serial,
    /intx: edu INTA# through the IOAPIC \(level, vector 0x42\), EOI clears remote IRR: RTE 0x00008042 \.\.\. ok/,
  );
  assert.match(r.stderr, /IOAPIC EOI 1\)/, "the split irqchip forwarded the level-triggered EOI");
  assert.match(r.serial, /fw_cfg: signature QEMU, cpus 1, ram 64 MiB \.\.\. ok/);
  assert.equal(r.status, 0);
  assert.match(r.stderr, /bypasses the IOMMU/);
});

test("--memory size=64M,file=F backs the guest with a shared file mapping", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const serialPath = join(dir, "serial-file-ram.txt");
  let stderr = "";
  const status = runVmm(
    ["--memory", `size=64M,file=${join(dir, "guest-ram")}`, "--serial", `file=${serialPath}`],
    { stdout: () => {}, stderr: (s) => (stderr += s) },
  );
  assert.equal(status, 0, stderr);
  assert.match(stderr, /RAM 64 MiB file .*guest-ram/);
  assert.match(readFileSync(serialPath, "latin1"), /verdict: PASS/);
});

test("a guest write of v to isa-debug-exit ends the run with (v << 1) | 1; EAX holds the Multiboot magic", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--kernel", kernel(MAGIC_CHECK_KERNEL), "--debug-exit", "iobase=0xf4,iosize=4"]);
  assert.equal(r.serial, "K");
  assert.equal(r.status, 0x43);
});

test("Machine.stats(): exits by kind, MSIs, IOMMU counters after the built-in guest", async (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const { Machine } = await import("../../src/vmm/x86/machine.ts");
  const { builtinGuestImage } = await import("../../src/vmm/x86/builtin-guest.ts");
  const { NULL_SINK } = await import("../../src/devices/uart16550.ts");
  const { Tracer } = await import("../../src/engine/trace.ts");
  const m = new Machine({
    cpus: 1,
    memorySizeBytes: 64 << 20,
    serial: NULL_SINK,
    iommu: { kind: "virtio" },
    devices: [{ kind: "edu", iommu: true }],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
  });
  m.bootMultiboot(builtinGuestImage(), "");
  const r = m.run(30);
  const s = m.stats();
  m.close();
  assert.equal(r.status, 1);
  assert.ok(s.exits.portIo > 0 && s.exits.mmio > 0);
  assert.equal(s.exits.ioapicEoi, 1);
  assert.equal(s.msis.signalled, 5); // edu MSI, INTx via the IOAPIC, three eventq MSI-X
  assert.equal(s.virtioIommu?.faultCauses.unmapped, 2);
  assert.equal(s.devices[0].iommu, true);
});

test("a device model that throws stops the machine with its message (status 2), not a VMM crash", async (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const { Machine } = await import("../../src/vmm/x86/machine.ts");
  const { describeStop } = await import("../../src/vmm/run-result.ts");
  const { NULL_SINK } = await import("../../src/devices/uart16550.ts");
  const { Tracer } = await import("../../src/engine/trace.ts");
  const m = new Machine({
    cpus: 1,
    memorySizeBytes: 32 << 20,
    serial: NULL_SINK,
    iommu: { kind: "none" },
    devices: [],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
  });
  m.platform.pio.register(
    0x700,
    1,
    {
      read: () => 0,
      write: () => {
        throw new Error("broken model");
      },
    },
    "broken",
  );
  // mov dx, 0x700; out dx, al
  m.bootMultiboot(readFileSync(kernel([0x66, 0xba, 0x00, 0x07, 0xee])), "");
  const r = m.run(10);
  m.close();
  assert.equal(r.status, 2);
  assert.equal(describeStop(r.stop), "a device model failed: broken model");
});

test("a guest writing S5 to the ACPI sleep control register powers the machine off (status 0)", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  // mov dx, 0x600; mov al, (5 << 2) | 0x20; out dx, al
  const r = run(["--kernel", kernel([0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee])]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /stop: guest powered off \(ACPI S5\)/);
});

test("a triple fault stops the machine with status 2", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  // ud2 with an empty IDT: #UD -> #DF -> triple fault.
  const r = run(["--kernel", kernel([0x0f, 0x0b])]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /triple-fault|internal error|crash/);
  // A shutdown names the vCPU and where it stopped (32-bit protected mode, paging off), or says
  // that KVM reset it (AMD SVM reinitializes a vCPU at a shutdown intercept).
  if (/triple-faulted/.test(r.stderr))
    assert.match(
      r.stderr,
      /triple-faulted \(KVM_EXIT_SHUTDOWN\); vCPU 0(: rip 0x[0-9a-f]+ .* cs 0x8 \(32-bit\) cr0 0x11 | \(its registers read back in the reset state)/,
    );
});

test("--timeout stops a spinning guest with status 124", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--kernel", kernel([0xeb, 0xfe]), "--timeout", "1"]);
  assert.equal(r.status, 124);
  assert.match(r.stderr, /timed out after 1 s/);
});

test("--cpus 4: vCPU threads; the built-in guest starts 3 APs by INIT-SIPI-SIPI and still passes with VT-d IR", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const r = run(["--cpus", "4", "--iommu", "intel,intremap=on"]);
  assert.match(r.serial, /fw_cfg: signature QEMU, cpus 4,/);
  assert.match(r.serial, /smp: INIT-SIPI-SIPI to 3 application processors, checked in: 3 \.\.\. ok/);
  // Level INTx through remapping with the EOI on another thread: routes precede the reply.
  assert.match(r.serial, /IOAPIC INTx remapped .* \.\.\. ok/);
  assert.match(r.serial, /verdict: PASS/);
  assert.equal(r.status, 0, r.serial + r.stderr);
});

test("--cpus 17 is refused with one clear line", () => {
  let stderr = "";
  const status = runVmm(["--cpus", "17"], { stdout: () => {}, stderr: (s) => (stderr += s) });
  assert.equal(status, 2);
  assert.equal(stderr, "viommu run: --cpus: 17 is out of range 1..16\n");
});
