import assert from "node:assert/strict";
import { test } from "node:test";
import {
  APIC_AREA,
  buildMemoryMap,
  E820_TYPE,
  GIB,
  highestRamFit,
  isUsableRam,
  MIB,
  normalizeE820,
} from "../../src/boot/e820.ts";

const RAM = E820_TYPE.ram;
const RES = E820_TYPE.reserved;

test("e820: 512 MiB guest: conventional RAM, the reserved BIOS area, RAM from 1 MiB", () => {
  const map = buildMemoryMap({ ramSizeBytes: 512 * MIB });
  assert.deepEqual(map.entries, [
    { gpa: 0, sizeBytes: 0x9fc00, type: RAM },
    { gpa: 0x9fc00, sizeBytes: 0x100000 - 0x9fc00, type: RES },
    { gpa: 0x100000, sizeBytes: 511 * MIB, type: RAM },
  ]);
  assert.deepEqual(map.ramRegions, [{ gpa: 0, sizeBytes: 512 * MIB }]);
});

test("e820: RAM beyond the 32-bit MMIO hole moves above 4 GiB", () => {
  const map = buildMemoryMap({ ramSizeBytes: 4 * GIB, mmioHoleGpa: 3 * GIB });
  assert.deepEqual(map.entries.slice(2), [
    { gpa: 0x100000, sizeBytes: 3 * GIB - MIB, type: RAM },
    { gpa: 4 * GIB, sizeBytes: GIB, type: RAM },
  ]);
  assert.deepEqual(map.ramRegions, [
    { gpa: 0, sizeBytes: 3 * GIB },
    { gpa: 4 * GIB, sizeBytes: GIB },
  ]);
  assert.ok(!isUsableRam(map.entries, 3 * GIB, 4096), "the hole is not RAM");
});

test("e820: reserved ranges (ECAM, IOAPIC/LAPIC) are listed and cut out of RAM", () => {
  const ecam = { gpa: 0xe000_0000, sizeBytes: 0x1000_0000 };
  const acpiInRam = { gpa: 0x1000_0000, sizeBytes: 0x1000 };
  const map = buildMemoryMap({ ramSizeBytes: 8 * GIB, reserved: [ecam, APIC_AREA, acpiInRam] });
  assert.deepEqual(map.entries, [
    { gpa: 0, sizeBytes: 0x9fc00, type: RAM },
    { gpa: 0x9fc00, sizeBytes: 0x60400, type: RES },
    { gpa: 0x100000, sizeBytes: 0x1000_0000 - 0x100000, type: RAM },
    { gpa: 0x1000_0000, sizeBytes: 0x1000, type: RES },
    { gpa: 0x1000_1000, sizeBytes: 0xc000_0000 - 0x1000_1000, type: RAM },
    { gpa: 0xe000_0000, sizeBytes: 0x1000_0000, type: RES },
    { gpa: 0xfec0_0000, sizeBytes: 0x30_0000, type: RES },
    { gpa: 4 * GIB, sizeBytes: 5 * GIB, type: RAM },
  ]);
});

test("e820: entries are sorted, same-type neighbours merged, conflicting types refused", () => {
  assert.deepEqual(
    normalizeE820([
      { gpa: 0x2000, sizeBytes: 0x1000, type: RAM },
      { gpa: 0x0, sizeBytes: 0x2000, type: RAM },
    ]),
    [{ gpa: 0, sizeBytes: 0x3000, type: RAM }],
  );
  assert.throws(() =>
    normalizeE820([
      { gpa: 0, sizeBytes: 0x2000, type: RAM },
      { gpa: 0x1000, sizeBytes: 0x2000, type: RES },
    ]),
  );
  assert.throws(() => buildMemoryMap({ ramSizeBytes: MIB }));
  assert.throws(() => buildMemoryMap({ ramSizeBytes: GIB, mmioHoleGpa: 5 * GIB }));
  assert.throws(() => buildMemoryMap({ ramSizeBytes: GIB, reserved: [{ gpa: 0, sizeBytes: 0 }] }));
});

test("highest RAM fit: page-aligned, inside one RAM entry, between the bounds", () => {
  const map = buildMemoryMap({ ramSizeBytes: 4 * GIB, mmioHoleGpa: 3 * GIB }).entries;
  assert.equal(highestRamFit(map, 5 * MIB + 1, 4 * GIB, 0), 3 * GIB - 5 * MIB - 4096); // not in the hole
  assert.equal(highestRamFit(map, MIB, 8 * GIB, 0), 5 * GIB - MIB); // RAM above 4 GiB
  assert.equal(highestRamFit(map, 0x1000, 0x9f000, 0), 0x9e000); // below the EBDA
  assert.equal(highestRamFit(map, 2 * GIB, 4 * GIB, GIB + 1), undefined); // would start below aboveGpa
  assert.equal(highestRamFit(map, 4 * GIB, 8 * GIB, 0), undefined); // larger than any entry
});
