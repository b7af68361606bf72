/**
 * The Multiple APIC Description Table (ACPI 6.5 5.2.12, Table 5.19), signature "APIC", revision 5
 * (from which on Linux also honours the Online Capable flag; we set Enabled): header, Local Interrupt Controller Address u32 at 36, Flags u32
 * at 40 (bit 0 PCAT_COMPAT), then interrupt controller structures from 44, each {type u8, length u8}:
 *
 *   0 Processor Local APIC (5.2.12.2), 8 bytes: UID u8 @2, APIC ID u8 @3, flags u32 @4
 *   1 I/O APIC (5.2.12.3), 12 bytes: ID u8 @2, reserved @3, address u32 @4, GSI base u32 @8
 *   2 Interrupt Source Override (5.2.12.5), 10 bytes: bus u8 @2 (0 = ISA), source IRQ u8 @3,
 *     GSI u32 @4, MPS INTI flags u16 @8 (polarity bits 1:0, trigger mode bits 3:2)
 *   4 Local APIC NMI (5.2.12.7), 6 bytes: UID u8 @2 (0xFF = all), flags u16 @3, LINT# u8 @5
 *   9 Processor Local x2APIC (5.2.12.12), 16 bytes: reserved u16 @2, x2APIC ID u32 @4,
 *     flags u32 @8, UID u32 @12
 *   10 Local x2APIC NMI (5.2.12.13), 12 bytes: flags u16 @2, UID u32 @4 (0xFFFFFFFF = all),
 *     LINT# u8 @8, reserved 3
 *
 * Decisions:
 * - One Local APIC entry per CPU with UID = CPU index; x2APIC entries only for APIC IDs >= 255,
 *   which the xAPIC entry cannot express (5.2.12.12), unless `forceX2apic`.
 * - PCAT_COMPAT is set exactly when the guest has a dual 8259 (KVM's full in-kernel irqchip has
 *   one; a split irqchip has none). With a hardware-reduced FADT Linux ignores the PIC anyway
 *   (null_legacy_pic), so the flag only has to tell the truth.
 * - No interrupt source override by default: ISA IRQs map 1:1 to IOAPIC GSIs 0-15 with the ISA
 *   bus default (edge, active high), which is what Linux assumes without an override and what
 *   COM1 on IRQ 4 needs. A VMM that routes the PIT to GSI 2 (QEMU-style) passes {0 -> 2}.
 * - LINT1 is NMI on every CPU (the LAPIC state the VMM programs), as QEMU declares.
 */

import { beginSdt, finishSdt, type SdtIdentity } from "./sdt.ts";

export const MADT_REVISION = 5;
export const MADT_ENTRIES_OFFSET = 44;
export const MADT_FLAG_PCAT_COMPAT = 1;
export const LOCAL_APIC_GPA = 0xfee0_0000;
export const IOAPIC_GPA = 0xfec0_0000;

export const MADT_ENTRY = {
  localApic: { type: 0, length: 8 },
  ioApic: { type: 1, length: 12 },
  interruptSourceOverride: { type: 2, length: 10 },
  localApicNmi: { type: 4, length: 6 },
  localX2apic: { type: 9, length: 16 },
  localX2apicNmi: { type: 10, length: 12 },
} as const;

/** Local APIC flags (Table 5.23). */
export const LAPIC_ENABLED = 1;

/** MPS INTI flags (Table 5.26): polarity bits 1:0, trigger mode bits 3:2. */
export const MPS_INTI = {
  conforming: 0,
  activeHigh: 0b01,
  activeLow: 0b11,
  edge: 0b01 << 2,
  level: 0b11 << 2,
} as const;

export interface IoApicEntry {
  readonly id: number;
  readonly gpa: number;
  readonly gsiBase: number;
}

export interface InterruptSourceOverride {
  /** ISA IRQ. */
  readonly isaIrq: number;
  readonly gsi: number;
  /** MPS INTI flags (`MPS_INTI` bits). */
  readonly flags: number;
}

export interface MadtOptions {
  /** APIC ID of each CPU; the ACPI processor UID is the index. */
  readonly apicIds: readonly number[];
  /** True when the guest has a PC-AT dual 8259 (sets PCAT_COMPAT). */
  readonly dual8259Present: boolean;
  readonly ioApics?: readonly IoApicEntry[];
  readonly overrides?: readonly InterruptSourceOverride[];
  readonly forceX2apic?: boolean;
  /** Declare LINT1 as NMI on all CPUs (default true). */
  readonly lint1Nmi?: boolean;
}

export const DEFAULT_IOAPIC: IoApicEntry = { id: 0, gpa: IOAPIC_GPA, gsiBase: 0 };

export function buildMadt(options: MadtOptions, identity: SdtIdentity): Uint8Array {
  if (options.apicIds.length === 0) throw new RangeError("MADT: at least one CPU");
  const w = beginSdt("APIC", MADT_REVISION, identity);
  w.u32(LOCAL_APIC_GPA);
  w.u32(options.dual8259Present ? MADT_FLAG_PCAT_COMPAT : 0);
  const forceX2apic = options.forceX2apic === true;
  let anyX2apic = false;
  options.apicIds.forEach((apicId, uid) => {
    if (!forceX2apic && apicId < 0xff) {
      const e = MADT_ENTRY.localApic;
      w.u8(e.type).u8(e.length).u8(uid, "processor UID").u8(apicId, "APIC ID").u32(LAPIC_ENABLED);
    } else {
      const e = MADT_ENTRY.localX2apic;
      anyX2apic = true;
      w.u8(e.type).u8(e.length).u16(0).u32(apicId, "x2APIC ID").u32(LAPIC_ENABLED).u32(uid);
    }
  });
  for (const io of options.ioApics ?? [DEFAULT_IOAPIC]) {
    const e = MADT_ENTRY.ioApic;
    w.u8(e.type).u8(e.length).u8(io.id, "IOAPIC ID").u8(0).u32(io.gpa, "IOAPIC address").u32(io.gsiBase);
  }
  for (const o of options.overrides ?? []) {
    const e = MADT_ENTRY.interruptSourceOverride;
    w.u8(e.type).u8(e.length).u8(0).u8(o.isaIrq, "ISA IRQ").u32(o.gsi, "GSI").u16(o.flags, "INTI flags");
  }
  if (options.lint1Nmi !== false) {
    const e = MADT_ENTRY.localApicNmi;
    // UID 0xFF: all processors; flags 0: conforming polarity and trigger (NMI); LINT1.
    w.u8(e.type).u8(e.length).u8(0xff).u16(MPS_INTI.conforming).u8(1);
    if (anyX2apic) {
      const x = MADT_ENTRY.localX2apicNmi;
      w.u8(x.type).u8(x.length).u16(MPS_INTI.conforming).u32(0xffff_ffff).u8(1).zeros(3);
    }
  }
  return finishSdt(w);
}
