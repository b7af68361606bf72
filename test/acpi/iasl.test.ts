/**
 * Independent evidence from ACPICA's iasl (Debian package acpica-tools): every generated table
 * disassembles without a warning or error, and the DSDT's disassembly recompiles (optimizations
 * off) to exactly our AML. Skips loudly when iasl is not installed. A control case corrupts a
 * checksum and checks that iasl does complain, so a silent iasl cannot pass these tests.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { buffer, device, integer, name } from "../../src/acpi/aml.ts";
import { beginSdt, finishSdt, VIOMMU_SDT_IDENTITY } from "../../src/acpi/sdt.ts";
import { fullPlatformTables } from "./platform-fixture.ts";

const iaslVersion = (() => {
  const r = spawnSync("iasl", ["-v"], { encoding: "utf8" });
  if (r.error !== undefined) return undefined;
  return /version (\d{8})/.exec(r.stdout)?.[1];
})();
const skip =
  iaslVersion === undefined ? "iasl not installed (apt-get install acpica-tools): NOT VERIFIED" : false;
if (skip !== false) console.warn(`test/acpi/iasl.test.ts: SKIPPED, ${skip}`);

/** ACPICA learnt the VIOT in release 20210331. */
const IASL_KNOWS_VIOT = iaslVersion !== undefined && iaslVersion >= "20210331";

interface Disassembly {
  readonly output: string;
  readonly dsl: string;
  readonly status: number | null;
}

function disassemble(dir: string, file: string, bytes: Uint8Array): Disassembly {
  writeFileSync(join(dir, `${file}.dat`), bytes);
  const r = spawnSync("iasl", ["-d", `${file}.dat`], { cwd: dir, encoding: "utf8" });
  const dsl = readFileSync(join(dir, `${file}.dsl`), "utf8");
  return { output: r.stdout + r.stderr, dsl, status: r.status };
}

const COMPLAINT = /error|warning|incorrect|invalid|unknown/i;

test("iasl -d: every generated SDT disassembles without complaint", { skip }, (t) => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-iasl-"));
  try {
    t.diagnostic(`iasl ${iaslVersion}`);
    for (const table of fullPlatformTables().tables) {
      if (table.signature === "RSD PTR ") continue; // iasl -d takes only SDTs; tables.test.ts checks it
      const d = disassemble(dir, table.signature, table.bytes);
      assert.equal(d.status, 0, `${table.signature}: ${d.output}`);
      if (table.signature === "VIOT" && !IASL_KNOWS_VIOT) {
        assert.match(d.dsl, /Unknown ACPI table signature \[VIOT\]/);
        t.diagnostic(`iasl ${iaslVersion} predates VIOT support: VIOT checked by viot.test.ts only`);
        continue;
      }
      assert.doesNotMatch(d.output, COMPLAINT, `${table.signature}: ${d.output}`);
      assert.doesNotMatch(d.dsl, COMPLAINT, `${table.signature} disassembly: ${d.dsl}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("iasl -d: the decoded fields are the ones we meant", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-iasl-"));
  try {
    const byName = new Map(fullPlatformTables().tables.map((t) => [t.signature, t]));
    const fadt = disassemble(dir, "FACP", byName.get("FACP")!.bytes).dsl;
    assert.match(fadt, /Hardware Reduced \(V5\) : 1/);
    assert.match(fadt, /MSI Not Supported \(V4\) : 0/);
    assert.match(fadt, /FADT Minor Revision : 05/);
    assert.match(
      fadt,
      new RegExp(`DSDT Address : 0*${byName.get("DSDT")!.gpa.toString(16).toUpperCase()}\\b`),
    );
    const madt = disassemble(dir, "APIC", byName.get("APIC")!.bytes).dsl;
    assert.equal((madt.match(/\[Processor Local APIC\]/g) ?? []).length, 4);
    assert.match(madt, /PC-AT Compatibility : 0/);
    assert.match(madt, /Address : FEC00000/);
    assert.match(madt, /Trigger Mode : 3/); // the level-triggered override of IRQ 9
    const mcfg = disassemble(dir, "MCFG", byName.get("MCFG")!.bytes).dsl;
    assert.match(mcfg, /Base Address : 00000000E0000000/);
    assert.match(mcfg, /End Bus Number : FF/);
    const dsdt = disassemble(dir, "DSDT", byName.get("DSDT")!.bytes).dsl;
    assert.match(dsdt, /EisaId \("PNP0A08"\)/);
    assert.match(dsdt, /EisaId \("PNP0C02"\)/);
    assert.match(dsdt, /Memory32Fixed \(ReadWrite,\s+0xE0000000,\s+\/\/ Address Base\s+0x10000000,/);
    assert.match(dsdt, /Name \(_S5, Package \(0x04\)/);
    const dmar = disassemble(dir, "DMAR", byName.get("DMAR")!.bytes).dsl;
    assert.match(dmar, /Register Base Address : 00000000FED90000/);
    assert.match(dmar, /Flags : 00\n/); // INCLUDE_PCI_ALL clear: only the listed scopes
    assert.match(dmar, /Device Scope Type : 01 \[PCI Endpoint Device\][\s\S]*?PCI Path : 02,00/);
    assert.match(dmar, /Device Scope Type : 03 \[IOAPIC Device\]/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function recompiledBody(dir: string, file: string, table: Uint8Array): Uint8Array {
  const d = disassemble(dir, file, table);
  assert.doesNotMatch(d.output, COMPLAINT, d.output);
  const r = spawnSync("iasl", ["-oa", "-p", `${file}-again`, `${file}.dsl`], { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout + r.stderr, /0 Errors, 0 Warnings/);
  return new Uint8Array(readFileSync(join(dir, `${file}-again.aml`)).subarray(36));
}

test("iasl round trip: the DSDT disassembles and recompiles to exactly our AML", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-iasl-"));
  try {
    const dsdt = fullPlatformTables().tables.find((t) => t.signature === "DSDT")!.bytes;
    assert.deepEqual(recompiledBody(dir, "DSDT", dsdt), dsdt.subarray(36));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("iasl round trip: PkgLength at the 63/64 and 4095/4096 boundaries matches iasl's encoding", {
  skip,
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-iasl-"));
  try {
    // Device (\DVxx) { Name (_ADR, 0)  Name (BUF0, Buffer (n) {1, 2, ...}) }. The Device's content
    // after its PkgLength is 5 (\DVxx) + 6 (_ADR) + 5 (NameOp BUF0) + 1 (BufferOp) + the Buffer's
    // PkgLength + its size integer (2 or 3 bytes) + n. n = 42/43 crosses the Device's 63/64
    // boundary, 60/61 the Buffer's, 4071/4072 the Device's 4095/4096, 4090/4091 the Buffer's.
    const deviceLengthBytes = new Map<number, number>();
    for (const n of [41, 42, 43, 44, 59, 60, 61, 62, 4070, 4071, 4072, 4073, 4089, 4090, 4091, 4092]) {
      const data = Uint8Array.from({ length: n }, (_, i) => (i % 255) + 1);
      const w = beginSdt("SSDT", 2, VIOMMU_SDT_IDENTITY);
      const path = `\\DV${(n % 100).toString().padStart(2, "0")}`;
      w.bytesOf(device(path, [name("_ADR", integer(0)), name("BUF0", buffer(data))]));
      const ssdt = finishSdt(w);
      deviceLengthBytes.set(n, (ssdt[38] >> 6) + 1);
      assert.deepEqual(recompiledBody(dir, `S${n}`, ssdt), ssdt.subarray(36), `n = ${n}`);
    }
    assert.deepEqual(
      [42, 43, 4071, 4072].map((n) => deviceLengthBytes.get(n)),
      [1, 2, 2, 3],
      "the sweep crosses the PkgLength size boundaries",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("iasl control: a table with a wrong checksum is reported (the check above can fail)", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-iasl-"));
  try {
    const mcfg = fullPlatformTables()
      .tables.find((t) => t.signature === "MCFG")!
      .bytes.slice();
    mcfg[9] ^= 0x55;
    const d = disassemble(dir, "BAD", mcfg);
    assert.match(d.output + d.dsl, /Incorrect checksum/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
