import assert from "node:assert/strict";
import { test } from "node:test";
import { NULL_SINK } from "../../src/devices/uart16550.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import { Tracer } from "../../src/engine/trace.ts";
import { AcpiPower, type PowerRequest } from "../../src/vmm/x86/acpi-power.ts";
import { ramLayout } from "../../src/vmm/x86/layout.ts";
import { acpiTablesFor } from "../../src/vmm/x86/linux.ts";
import { Platform } from "../../src/vmm/x86/platform.ts";

function power() {
  const requests: PowerRequest[] = [];
  return { p: new AcpiPower((r) => requests.push(r)), requests };
}

test("ACPI 4.8.3.7: SLP_EN with the _S5_ SLP_TYP powers off; other sleep types are ignored", () => {
  const { p, requests } = power();
  p.write(0, 1, (5 << 2) | 0x20);
  assert.deepEqual(requests, ["poweroff"]);
  p.write(0, 1, (3 << 2) | 0x20); // S3: not supported here
  p.write(0, 1, 5 << 2); // SLP_TYP without SLP_EN
  assert.deepEqual(requests, ["poweroff"]);
  assert.equal(p.ignoredSleeps, 1);
});

test("ACPI 4.8.3.6: writing RESET_VALUE to the reset register resets; other values do nothing", () => {
  const { p, requests } = power();
  p.write(2, 1, 0x0e);
  p.write(2, 2, 0x0f);
  assert.deepEqual(requests, []);
  p.write(2, 1, 0x0f);
  assert.deepEqual(requests, ["reset"]);
  assert.equal(p.read(1, 1), 0, "sleep status: no wake");
});

test("FADT points at the power registers: SLEEP_CONTROL/STATUS GAS, RESET_REG + value, RESET_REG_SUP", () => {
  const p = new Platform({
    memory: GuestMemory.anonymous([{ gpa: 0, sizeBytes: 32 << 20 }]),
    ramLayout: ramLayout(32 << 20),
    cpus: 1,
    serial: NULL_SINK,
    iommu: { kind: "none" },
    devices: [],
    debugExit: { iobase: 0x501, iosize: 2 },
    tracer: new Tracer(),
    msiTarget: { signalMsi: () => true },
    onDebugExit: () => {},
  });
  const fadt = acpiTablesFor(p).tables.find((t) => t.signature === "FACP");
  assert.ok(fadt);
  const v = new DataView(fadt.bytes.buffer, fadt.bytes.byteOffset, fadt.bytes.byteLength);
  const gas = (at: number) => [
    v.getUint8(at),
    v.getUint8(at + 1),
    v.getUint8(at + 2),
    v.getUint8(at + 3),
    Number(v.getBigUint64(at + 4, true)),
  ];
  // GAS { space 1 = system I/O, bit width 8, bit offset 0, access size 1 = byte, address }
  assert.deepEqual(gas(116), [1, 8, 0, 1, 0x602], "RESET_REG");
  assert.equal(v.getUint8(128), 0x0f, "RESET_VALUE");
  assert.ok((v.getUint32(112, true) & (1 << 10)) !== 0, "RESET_REG_SUP");
  assert.ok((v.getUint32(112, true) & (1 << 20)) !== 0, "HW_REDUCED_ACPI");
  assert.deepEqual(gas(244), [1, 8, 0, 1, 0x600], "SLEEP_CONTROL_REG");
  assert.deepEqual(gas(256), [1, 8, 0, 1, 0x601], "SLEEP_STATUS_REG");
  // The DSDT names _S5_ for the SLP_TYP the registers expect.
  const dsdt = acpiTablesFor(p).tables.find((t) => t.signature === "DSDT");
  assert.ok(dsdt);
  assert.ok(Buffer.from(dsdt.bytes).includes(Buffer.from("_S5_")));
});
