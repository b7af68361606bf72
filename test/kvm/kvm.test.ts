// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { mapGuestRam } from "../../src/kvm/guest-ram.ts";
import { ioctlName, KVM_SET_USER_MEMORY_REGION, KvmError } from "../../src/kvm/ioctls.ts";
import { errnoName } from "../../src/kvm/libc.ts";
import { Kvm, KvmUnavailableError } from "../../src/kvm/system.ts";
import { Vm } from "../../src/kvm/vm.ts";

const KVM = Kvm.available();
const NO_KVM = "/dev/kvm not available: KVM tests skipped";

test("errors name the ioctl and the errno: KVM_SET_USER_MEMORY_REGION failed: EINVAL (22)", () => {
  assert.equal(errnoName(22), "EINVAL (22)");
  assert.equal(
    new KvmError(ioctlName(KVM_SET_USER_MEMORY_REGION), 22).message,
    "KVM_SET_USER_MEMORY_REGION failed: EINVAL (22)",
  );
});

test("a missing /dev/kvm is a one-line explanation", () => {
  assert.throws(
    () => Kvm.open("/nonexistent/kvm"),
    (e: unknown) =>
      e instanceof KvmUnavailableError && !e.message.includes("\n") && e.message.includes("does not exist"),
  );
});

test("guest RAM from mmap is zero-filled, writable and sized", () => {
  const ram = mapGuestRam(1 << 20);
  assert.equal(ram.bytes.length, 1 << 20);
  assert.equal(ram.bytes[12345], 0);
  ram.bytes[12345] = 7;
  assert.equal(ram.bytes[12345], 7);
  assert.ok(ram.hostAddress > 0n);
  assert.throws(() => mapGuestRam(1000), /multiple of 4 KiB/);
});

test("file-backed guest RAM is a shared mapping: guest bytes are the file's bytes", () => {
  const path = join(mkdtempSync(join(tmpdir(), "viommu-ram-")), "ram");
  const ram = mapGuestRam(1 << 20, path);
  assert.equal(statSync(path).size, 1 << 20);
  ram.bytes.set([0xde, 0xad, 0xbe, 0xef], 0x1234);
  const file = readFileSync(path);
  assert.deepEqual([...file.subarray(0x1234, 0x1238)], [0xde, 0xad, 0xbe, 0xef]);
  assert.equal(ram.backing, `file ${path}`);
  assert.throws(
    () => mapGuestRam(1 << 20, "/nonexistent-dir/ram"),
    /cannot open memory file \/nonexistent-dir\/ram: ENOENT.*needs an existing directory you can write/,
  );
});

test("KVM rejects a memory slot at an unaligned guest address with a named error", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const kvm = Kvm.open();
  const vm = new Vm(kvm);
  const ram = mapGuestRam(0x10000);
  assert.throws(
    () => vm.addMemory(0x123, 0x10000, ram.hostAddress),
    (e: unknown) => e instanceof KvmError && e.message === "KVM_SET_USER_MEMORY_REGION failed: EINVAL (22)",
  );
  vm.close();
  kvm.close();
});

test("a real-mode vCPU exits to userspace on OUT with port, size and data", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const kvm = Kvm.open();
  const vm = new Vm(kvm);
  vm.setSystemPages(0xfffbd000, 0xfffbc000);
  vm.enableSplitIrqchip(24);
  const ram = mapGuestRam(0x100000);
  vm.addMemory(0, ram.sizeBytes, ram.hostAddress);
  // mov dx, 0x501; mov ax, 0x1234; out dx, ax; mov al, 0x5a; mov dx, 0x3f8; out dx, al
  ram.bytes.set([0xba, 0x01, 0x05, 0xb8, 0x34, 0x12, 0xef, 0xb0, 0x5a, 0xba, 0xf8, 0x03, 0xee], 0x1000);
  const vcpu = vm.createVcpu(0);
  const s = vcpu.getSregs();
  s.setSegment("cs", { ...s.segment("cs"), base: 0, selector: 0 });
  vcpu.setSregs(s);
  vcpu.setRegs({ rip: 0x1000 });
  const e1 = vcpu.runOnce();
  assert.equal(e1.kind, "io");
  if (e1.kind !== "io") return;
  assert.deepEqual([e1.isWrite, e1.port, e1.sizeBytes, e1.count], [true, 0x501, 2, 1]);
  assert.equal(vcpu.run.getUint16(e1.dataOffset, true), 0x1234);
  const e2 = vcpu.runOnce();
  assert.equal(e2.kind, "io");
  if (e2.kind !== "io") return;
  assert.deepEqual([e2.port, e2.sizeBytes, vcpu.run.getUint8(e2.dataOffset)], [0x3f8, 1, 0x5a]);
  vcpu.close();
  vm.close();
  kvm.close();
});

test("KVM_SIGNAL_MSI is accepted by the in-kernel local APIC under the split irqchip", (t) => {
  if (!KVM) return t.skip(NO_KVM);
  const kvm = Kvm.open();
  const vm = new Vm(kvm);
  vm.enableSplitIrqchip(24);
  const vcpu = vm.createVcpu(0);
  // Fixed delivery, vector 0x40, to APIC 0. The APIC is software-disabled after reset, so the
  // kernel may refuse it (returns false) but must not fail the ioctl.
  assert.equal(typeof vm.signalMsi(0xfee00000, 0x40), "boolean");
  vm.setMsiRoutes([{ gsi: 4, address: 0xfee00000, data: 0x8031 }]);
  vcpu.close();
  vm.close();
  kvm.close();
});

test("signal latch: a signal during the vCPU loop is noticed synchronously, and disarm restores", async () => {
  const { SIGTERM, SignalLatch } = await import("../../src/kvm/signal-latch.ts");
  const latch = new SignalLatch(SIGTERM);
  latch.arm();
  assert.equal(latch.fired(), false);
  process.kill(process.pid, "SIGTERM");
  assert.equal(latch.fired(), true);
  latch.disarm();
  assert.equal(latch.fired(), false);
});
