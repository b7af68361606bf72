// @needs kvm (runs in the KVM lab where /dev/kvm is missing: tools/guest-lab/kvm-tests.mjs)
/**
 * Linux direct boot in the VMM: the ACPI tables and memory map this machine hands to Linux
 * (checked against what the platform has), and a synthetic PVH kernel entered under KVM.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runVmm } from "../../src/cli/run.ts";
import { NULL_SINK } from "../../src/devices/uart16550.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { Kvm } from "../../src/kvm/system.ts";
import type { DeviceChoice } from "../../src/vmm/device-choice.ts";
import { ramLayout } from "../../src/vmm/x86/layout.ts";
import { acpiTablesFor, linuxMemoryMap, planLinuxBootFor } from "../../src/vmm/x86/linux.ts";
import { type IommuChoice, Platform } from "../../src/vmm/x86/platform.ts";

const MiB = 1 << 20;

function platform(iommu: IommuChoice, devices: DeviceChoice[]): Platform {
  return new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: 64 * MiB }]),
    ramLayout: ramLayout(64 * MiB),
    cpus: 1,
    serial: NULL_SINK,
    iommu,
    devices,
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
    msiTarget: { signalMsi: () => true },
    onDebugExit: () => {},
  });
}

function sum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

function table(p: Platform, signature: string): Uint8Array {
  const t = acpiTablesFor(p).tables.find((x) => x.signature === signature);
  assert.ok(t, `${signature} present`);
  return t.bytes;
}

test("ACPI set: RSDP in the BIOS scan area, every table checksums to zero, MCFG points at the ECAM", () => {
  const p = platform({ kind: "none" }, [{ kind: "edu", iommu: false }]);
  const set = acpiTablesFor(p);
  assert.equal(set.rsdpGpa, 0xe0000);
  assert.ok(set.endGpa <= 0x100000);
  assert.deepEqual(
    set.tables.map((t) => t.signature.trim()),
    ["RSD PTR", "XSDT", "FACP", "DSDT", "APIC", "MCFG"],
  );
  for (const t of set.tables) {
    if (t.signature === "RSD PTR ") assert.equal(sum(t.bytes.subarray(0, 20)), 0);
    assert.equal(sum(t.bytes), 0, `${t.signature} checksum`);
  }
  const mcfg = new DataView(table(p, "MCFG").buffer, table(p, "MCFG").byteOffset);
  // MCFG: 36-byte header, 8 reserved, then { u64 base, u16 segment, u8 start bus, u8 end bus }.
  assert.equal(mcfg.getBigUint64(44, true), 0xe0000000n);
  assert.equal(mcfg.getUint8(54), 0);
  assert.equal(mcfg.getUint8(55), 0);
});

test("MADT: one enabled local APIC (ID 0) and the IOAPIC at 0xFEC00000 with GSI base 0", () => {
  const madt = table(platform({ kind: "none" }, []), "APIC");
  const v = new DataView(madt.buffer, madt.byteOffset, madt.byteLength);
  assert.equal(v.getUint32(36, true), 0xfee00000);
  const entries: number[][] = [];
  for (let o = 44; o < madt.length; o += madt[o + 1]) entries.push([...madt.subarray(o, o + madt[o + 1])]);
  const lapic = entries.find((e) => e[0] === 0);
  assert.deepEqual(lapic, [0, 8, 0, 0, 1, 0, 0, 0]);
  const ioapic = entries.find((e) => e[0] === 1);
  assert.ok(ioapic);
  assert.equal(new DataView(Uint8Array.from(ioapic).buffer).getUint32(4, true), 0xfec00000);
});

test("VIOT (--iommu virtio): the virtio-iommu at 00:01.0 and one PCI range per iommu=on device only", () => {
  const p = platform({ kind: "virtio" }, [
    { kind: "edu", iommu: true },
    { kind: "edu", iommu: false },
  ]);
  const viot = table(p, "VIOT");
  const v = new DataView(viot.buffer, viot.byteOffset, viot.byteLength);
  assert.equal(v.getUint16(36, true), 2, "node count: the IOMMU + one range");
  const first = v.getUint16(38, true);
  assert.equal(viot[first], 3, "virtio-iommu PCI node");
  assert.equal(v.getUint16(first + 6, true), 0x08, "its BDF");
  const range = first + 16;
  assert.equal(viot[range], 1, "PCI range node");
  assert.equal(v.getUint32(range + 4, true), 0x10, "endpoint ID = BDF of 00:02.0");
  assert.equal(v.getUint16(range + 12, true), 0x10);
  assert.equal(v.getUint16(range + 14, true), 0x10);
  assert.equal(v.getUint16(range + 16, true), first, "output node = the IOMMU node's offset");
});

test("DMAR (--iommu intel,intremap=on): the VT-d unit's register base and the IR flag, listed in the XSDT", () => {
  const p = platform({ kind: "intel", spec: "intremap=on" }, [{ kind: "edu", iommu: true }]);
  const dmar = table(p, "DMAR");
  assert.equal(sum(dmar), 0);
  assert.equal(dmar[37] & 1, 1, "INTR_REMAP");
  const v = new DataView(dmar.buffer, dmar.byteOffset, dmar.byteLength);
  assert.equal(v.getBigUint64(48 + 8, true), 0xfed90000n, "DRHD register base");
  assert.equal(
    acpiTablesFor(p).tables.some((t) => t.signature === "VIOT"),
    false,
  );
});

test("DMAR device scopes (VT-d 8.3.1): exactly the iommu=on functions and the IOAPIC, no INCLUDE_PCI_ALL", () => {
  const p = platform({ kind: "intel", spec: "intremap=on" }, [
    { kind: "edu", iommu: true }, // 00:02.0
    { kind: "edu", iommu: false }, // 00:03.0: outside every DRHD, untranslated
    { kind: "rng", iommu: true }, // 00:04.0
  ]);
  const dmar = table(p, "DMAR");
  const v = new DataView(dmar.buffer, dmar.byteOffset, dmar.byteLength);
  assert.equal(v.getUint16(48, true), 0, "one DRHD");
  assert.equal(dmar[48 + 4] & 1, 0, "INCLUDE_PCI_ALL clear");
  const drhdEnd = 48 + v.getUint16(48 + 2, true);
  assert.equal(drhdEnd, dmar.length, "the DRHD is the only structure");
  const scopes: string[] = [];
  for (let at = 48 + 16; at < drhdEnd; at += dmar[at + 1]) {
    const [type, length, enumId, bus] = [dmar[at], dmar[at + 1], dmar[at + 4], dmar[at + 5]];
    assert.equal(length, 8, "one path hop");
    scopes.push(`${type}:${enumId}:${bus}:${dmar[at + 6]}.${dmar[at + 7]}`);
  }
  assert.deepEqual(scopes, ["1:0:0:2.0", "1:0:0:4.0", "3:0:255:0.0"]);
});

test("Linux memory map: ECAM and the APIC/VT-d area reserved, RAM from 1 MiB", () => {
  const map = linuxMemoryMap(64 * MiB, 1 * MiB);
  const reserved = map.entries.filter((e) => e.type === 2).map((e) => [e.gpa, e.sizeBytes]);
  assert.ok(reserved.some(([gpa, size]) => gpa === 0xe0000000 && size === 1 * MiB));
  assert.ok(reserved.some(([gpa]) => gpa === 0xfec00000));
  assert.ok(map.entries.some((e) => e.type === 1 && e.gpa === 0x100000 && e.sizeBytes === 63 * MiB));
});

/** A minimal PVH "kernel": ELF64 with a PT_LOAD at 1 MiB and the XEN_ELFNOTE_PHYS32_ENTRY note. */
function pvhKernel(code: number[]): Uint8Array {
  const codeOff = 0x200;
  const noteOff = 0x100;
  const file = new Uint8Array(codeOff + code.length);
  const v = new DataView(file.buffer);
  file.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // x86-64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, 0x100000n, true);
  v.setBigUint64(32, 64n, true); // phoff
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, 2, true);
  const ph = (i: number, type: number, off: number, addr: number, size: number) => {
    const o = 64 + i * 56;
    v.setUint32(o, type, true);
    v.setUint32(o + 4, 5, true);
    v.setBigUint64(o + 8, BigInt(off), true);
    v.setBigUint64(o + 16, BigInt(addr), true);
    v.setBigUint64(o + 24, BigInt(addr), true);
    v.setBigUint64(o + 32, BigInt(size), true);
    v.setBigUint64(o + 40, BigInt(size), true);
  };
  ph(0, 1, codeOff, 0x100000, code.length);
  ph(1, 4, noteOff, 0, 20);
  // Note: namesz 4 ("Xen\0"), descsz 4, type 18, entry = 0x100000.
  v.setUint32(noteOff, 4, true);
  v.setUint32(noteOff + 4, 4, true);
  v.setUint32(noteOff + 8, 18, true);
  file.set([0x58, 0x65, 0x6e, 0], noteOff + 12);
  v.setUint32(noteOff + 16, 0x100000, true);
  file.set(code, codeOff);
  return file;
}

test("PVH plan for this machine: hvm_start_info with the RSDP, entry in 32-bit protected mode", () => {
  const p = platform({ kind: "none" }, []);
  const { plan, acpi } = planLinuxBootFor(p, 64 * MiB, {
    kernel: pvhKernel([0xf4]),
    cmdline: "console=ttyS0",
  });
  assert.equal(plan.protocol, "pvh");
  assert.equal(plan.entry.regs.rip, 0x100000);
  const info = plan.memoryWrites.find((w) => w.what === "hvm_start_info");
  assert.ok(info);
  const v = new DataView(info.bytes.buffer, info.bytes.byteOffset, info.bytes.byteLength);
  assert.equal(v.getUint32(0, true), 0x336ec578);
  assert.equal(Number(v.getBigUint64(32, true)), acpi.rsdpGpa, "rsdp_paddr");
});

test("a PVH kernel is entered under KVM with EBX -> hvm_start_info (magic checked by the guest)", (t) => {
  if (!Kvm.available()) return t.skip("/dev/kvm not available: KVM boot test skipped");
  // cmp dword [ebx], 0x336ec578; jne fail; mov dx, 0x501; mov ax, 0x10; out dx, ax
  // fail: mov dx, 0x501; mov ax, 0x11; out dx, ax
  const code = [
    0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, 0x75, 0x0a, 0x66, 0xba, 0x01, 0x05, 0x66, 0xb8, 0x10, 0x00, 0x66,
    0xef, 0x66, 0xba, 0x01, 0x05, 0x66, 0xb8, 0x11, 0x00, 0x66, 0xef,
  ];
  const dir = mkdtempSync(join(tmpdir(), "viommu-pvh-"));
  const path = join(dir, "pvh.elf");
  writeFileSync(path, pvhKernel(code));
  let stderr = "";
  const status = runVmm(["--kernel", path, "--memory", "64M", "--serial", "null", "--timeout", "10"], {
    stdout: () => {},
    stderr: (s) => {
      stderr += s;
    },
  });
  assert.match(stderr, /Linux pvh boot, ACPI RSD PTR XSDT FACP DSDT APIC MCFG/);
  assert.equal(status, (0x10 << 1) | 1, stderr);
  assert.ok(readFileSync(path).length > 0);
});

test("MADT with --cpus 3: one enabled local APIC per CPU, UIDs 0..2 = APIC IDs", () => {
  const p = new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: 64 * MiB }]),
    ramLayout: ramLayout(64 * MiB),
    cpus: 3,
    serial: NULL_SINK,
    iommu: { kind: "none" },
    devices: [],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
    msiTarget: { signalMsi: () => true },
    onDebugExit: () => {},
  });
  const madt = table(p, "APIC");
  const lapics: number[][] = [];
  for (let o = 44; o < madt.length; o += madt[o + 1])
    if (madt[o] === 0) lapics.push([madt[o + 2], madt[o + 3], madt[o + 4]]);
  assert.deepEqual(lapics, [
    [0, 0, 1],
    [1, 1, 1],
    [2, 2, 1],
  ]);
});

test("MADT golden bytes for this machine (ACPI 6.5 5.2.12)", () => {
  const madt = table(platform({ kind: "none" }, []), "APIC");
  // Header (36): "APIC", length 70, revision 5, checksum, OEM fields (checked by src/acpi).
  assert.equal(new TextDecoder().decode(madt.subarray(0, 4)), "APIC");
  assert.equal(new DataView(madt.buffer, madt.byteOffset).getUint32(4, true), 70);
  assert.equal(madt[8], 5);
  assert.equal(sum(madt), 0);
  // prettier-ignore
  const body = [
    0x00,
    0x00,
    0xe0,
    0xfe, // local APIC address 0xFEE00000
    0x00,
    0x00,
    0x00,
    0x00, // flags: no PCAT_COMPAT (no 8259s on this machine)
    0x00,
    0x08,
    0x00,
    0x00,
    0x01,
    0x00,
    0x00,
    0x00, // Processor Local APIC: UID 0, APIC ID 0, enabled
    0x01,
    0x0c,
    0x00,
    0x00,
    0x00,
    0x00,
    0xc0,
    0xfe,
    0x00,
    0x00,
    0x00,
    0x00, // I/O APIC: ID 0, 0xFEC00000, GSI base 0
    0x04,
    0x06,
    0xff,
    0x00,
    0x00,
    0x01, // Local APIC NMI: all processors, flags 0, LINT1
  ];
  assert.deepEqual([...madt.subarray(36)], body);
});

test("MCFG golden bytes for this machine (PCI Firmware 3.2 4.1.2)", () => {
  const mcfg = table(platform({ kind: "none" }, []), "MCFG");
  assert.equal(new DataView(mcfg.buffer, mcfg.byteOffset).getUint32(4, true), 60);
  assert.equal(sum(mcfg), 0);
  // prettier-ignore
  const body = [
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0, // reserved
    0x00,
    0x00,
    0x00,
    0xe0,
    0x00,
    0x00,
    0x00,
    0x00, // ECAM base 0xE0000000
    0x00,
    0x00, // PCI segment 0
    0x00,
    0x00, // start bus 0, end bus 0 (one bus: 1 MiB of ECAM)
    0,
    0,
    0,
    0, // reserved
  ];
  assert.deepEqual([...mcfg.subarray(36)], body);
});
