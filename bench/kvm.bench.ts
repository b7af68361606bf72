/**
 * The micro-VMM's exit path under KVM: one guest port write or MMIO read per iteration, each a
 * full KVM_RUN round trip (koffi ioctl, kvm_run decode, bus dispatch to the device model).
 * Empty where /dev/kvm is missing. The guest is a two-instruction Multiboot loop.
 */
import { NULL_SINK } from "../src/devices/uart16550.ts";
import { Tracer } from "../src/engine/trace.ts";
import { Kvm } from "../src/kvm/system.ts";
import { builtinGuestImage } from "../src/vmm/x86/builtin-guest.ts";
import { Machine } from "../src/vmm/x86/machine.ts";
import type { IommuChoice } from "../src/vmm/x86/platform.ts";
import type { BenchCase } from "./harness.ts";

export function loopKernel(body: number[]): Uint8Array {
  const code = [...body, 0xeb, -(body.length + 2) & 0xff]; // body; jmp body
  const img = new Uint8Array(0x20 + code.length);
  const v = new DataView(img.buffer);
  const flags = 0x00010002;
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, -(0x1badb002 + flags) >>> 0, true);
  v.setUint32(12, 0x100000, true);
  v.setUint32(16, 0x100000, true);
  v.setUint32(28, 0x100020, true);
  img.set(code, 0x20);
  return img;
}

export function machineRunning(body: number[]): Machine {
  const m = new Machine({
    cpus: 1,
    memorySizeBytes: 32 << 20,
    serial: NULL_SINK,
    iommu: { kind: "none" },
    devices: [],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
  });
  m.bootMultiboot(loopKernel(body), "");
  return m;
}

function exitCase(name: string, body: number[]): BenchCase {
  let m: Machine | undefined;
  return {
    group: "kvm: exit round trip",
    name,
    initialBatch: 2000,
    run(n) {
      if (m === undefined) m = machineRunning(body);
      const vcpu = m.vcpu;
      const p = m.platform;
      for (let i = 0; i < n; i++) {
        const e = vcpu.runOnce();
        if (e.kind === "io") p.pio.write(e.port, e.sizeBytes, vcpu.run.getUint8(e.dataOffset));
        else if (e.kind === "mmio") p.mmioRead(e.gpa, e.sizeBytes, vcpu.run, 0x28);
        else throw new Error(`unexpected exit ${e.kind}`);
      }
    },
  };
}

/** One whole VM per operation: create, load the built-in guest, run it to its verdict, close. */
function builtinGuestCase(name: string, iommu: IommuChoice): BenchCase {
  return {
    group: "kvm: built-in guest, VM creation to verdict",
    name,
    initialBatch: 1,
    run(n) {
      const image = builtinGuestImage();
      for (let i = 0; i < n; i++) {
        const m = new Machine({
          cpus: 1,
          memorySizeBytes: 64 << 20,
          serial: NULL_SINK,
          iommu,
          devices: [{ kind: "edu", iommu: iommu.kind !== "none" }],
          debugExit: { iobase: 0x501, iosize: 2 },
          tracer: new Tracer(),
        });
        m.bootMultiboot(image, "");
        const r = m.run(30);
        m.close();
        if (r.status !== 1) throw new Error(`built-in guest failed: status ${r.status}`);
      }
    },
  };
}

/**
 * One whole run per operation: a guest doing `exits` port writes then isa-debug-exit, on a
 * machine with `cpus` vCPUs. Comparing 0 and 20000 exits separates startup from the per-exit
 * cost; comparing 1 and 2 vCPUs shows the cost of the cross-thread hop to the device thread.
 */
function countedExitsCase(cpus: number, exits: number): BenchCase {
  // mov ecx, exits; jecxz 2f; mov dx, 0x3ff; 1: out dx, al; loop 1b; 2: mov dx, 0x501; mov ax, 0x10; out dx, ax
  const e = [exits & 0xff, (exits >> 8) & 0xff, (exits >> 16) & 0xff, exits >>> 24];
  const body = [
    0xb9,
    ...e,
    0xe3,
    0x07,
    0x66,
    0xba,
    0xff,
    0x03,
    0xee,
    0xe2,
    0xfd,
    0x66,
    0xba,
    0x01,
    0x05,
    0x66,
    0xb8,
    0x10,
    0x00,
    0x66,
    0xef,
  ];
  const image = loopKernel(body);
  return {
    group: "kvm: whole runs (machine creation, vCPU threads, exits, teardown)",
    name: `--cpus ${cpus}, ${exits} port-write exits`,
    initialBatch: 1,
    run(n) {
      for (let i = 0; i < n; i++) {
        const m = new Machine({
          cpus,
          memorySizeBytes: 32 << 20,
          serial: NULL_SINK,
          iommu: { kind: "none" },
          devices: [],
          debugExit: { iobase: 0x501, iosize: 2 },
          tracer: new Tracer(),
        });
        m.bootMultiboot(image, "");
        const r = m.run(60);
        m.close();
        if (r.status !== 0x21) throw new Error(`counted-exit guest: status ${r.status}`);
      }
    },
  };
}

export const cases: BenchCase[] = Kvm.available()
  ? [
      // mov dx, 0x3ff; out dx, al
      exitCase("port I/O write (OUT to COM1 scratch register)", [0x66, 0xba, 0xff, 0x03, 0xee]),
      // mov eax, [0xfec00000]
      exitCase("MMIO read (IOAPIC select register)", [0xa1, 0x00, 0x00, 0xc0, 0xfe]),
      builtinGuestCase("no IOMMU", { kind: "none" }),
      builtinGuestCase("--iommu virtio", { kind: "virtio" }),
      builtinGuestCase("--iommu intel,intremap=on", { kind: "intel", spec: "intremap=on" }),
      countedExitsCase(1, 0),
      countedExitsCase(1, 20000),
      countedExitsCase(2, 0),
      countedExitsCase(2, 20000),
    ]
  : [];
