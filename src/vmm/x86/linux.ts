/**
 * Direct Linux boot in the micro-VMM: the machine's ACPI tables (src/acpi), its memory map and
 * a boot plan (src/boot: bzImage 64-bit protocol or PVH vmlinux) applied to guest RAM and the
 * vCPU. This module only describes this machine to those builders and applies their result.
 *
 * ACPI tables describe exactly what the platform has: its CPUs (APIC IDs 0..N-1), the IOAPIC at
 * 0xFEC00000 (GSI base 0), ISA IRQ 4 for COM1, the PCI root bridge with its 32-bit window and
 * ECAM (MCFG), a VIOT listing the iommu=on endpoints with --iommu virtio, and the VT-d unit's
 * DMAR (built by src/vtd/) with --iommu intel.
 */
import { COM1, type IntxRoute } from "../../acpi/dsdt.ts";
import {
  type AcpiTableSet,
  BIOS_RSDP_SCAN_END_GPA,
  BIOS_RSDP_SCAN_START_GPA,
  layoutAcpiTables,
} from "../../acpi/layout.ts";
import type { ViotDescription } from "../../acpi/viot.ts";
import { APIC_AREA, buildMemoryMap, type MemoryMap } from "../../boot/e820.ts";
import { type LinuxBootPlan, planLinuxBoot } from "../../boot/linux-boot.ts";
import type { EntryState } from "../../boot/long-mode.ts";
import type { SegmentState } from "../../boot/segments.ts";
import type { GuestMemory } from "../../engine/guest-memory.ts";
import type { Segment, SegmentName } from "../../kvm/structs.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";
import { ACPI_POWER_FADT, S5_SLEEP_TYPE } from "./acpi-power.ts";
import { intxIoapicPin, PCI_INTX_FIRST_IOAPIC_PIN } from "./interrupts.ts";
import { IOAPIC_GPA, LOW_RAM_MAX_END, PCI_ECAM_BASE, PCI_MMIO32_BASE, PCI_MMIO32_END } from "./layout.ts";
import { type Platform, VIRTIO_IOMMU_SLOT } from "./platform.ts";

/** The e820 map Linux gets: the legacy area, ECAM and the APIC/VT-d area reserved. */
export function linuxMemoryMap(ramSizeBytes: number, ecamSizeBytes: number): MemoryMap {
  return buildMemoryMap({
    ramSizeBytes,
    mmioHoleGpa: LOW_RAM_MAX_END,
    reserved: [{ gpa: PCI_ECAM_BASE, sizeBytes: ecamSizeBytes }, APIC_AREA],
  });
}

/** The VIOT for --iommu virtio: one PCI range per iommu=on function, endpoint ID = BDF. */
export function viotFor(platform: Platform): ViotDescription | undefined {
  if (platform.viommu === null) return undefined;
  const pciRanges = platform.devices
    .filter((d) => d.iommu)
    .map((d) => ({
      iommu: 0,
      endpointStart: d.requesterId,
      segmentStart: 0,
      segmentEnd: 0,
      bdfStart: d.requesterId,
      bdfEnd: d.requesterId,
    }));
  return { iommus: [{ kind: "virtio-pci", segment: 0, bdf: VIRTIO_IOMMU_SLOT << 3 }], pciRanges };
}

/**
 * _PRT for every slot and pin of the root bus, as q35 has it: each INTx through link device
 * GSIA-GSIH (PIRQ A-H, level, active-high) to the IOAPIC input `intxIoapicPin` drives, so the
 * OS programs the entry the way the fabric signals (src/acpi/dsdt.ts explains the polarity).
 */
export function intxRoutes(): IntxRoute[] {
  const routes: IntxRoute[] = [];
  for (let device = 0; device < 32; device++) {
    for (let pin = 0; pin < 4; pin++) {
      const gsi = intxIoapicPin(device << 3, pin);
      routes.push({ device, pin, gsi, link: `GSI${"ABCDEFGH"[gsi - PCI_INTX_FIRST_IOAPIC_PIN]}` });
    }
  }
  return routes;
}

export function acpiTablesFor(platform: Platform): AcpiTableSet {
  return layoutAcpiTables(
    {
      apicIds: Array.from({ length: platform.cpus }, (_, id) => id),
      dual8259Present: false,
      ioApics: [{ id: 0, gpa: IOAPIC_GPA, gsiBase: 0 }],
      pciRoot: {
        segment: 0,
        busStart: 0,
        busEnd: 0,
        mmio32: { min: PCI_MMIO32_BASE, max: PCI_MMIO32_END - 1 },
        ecamBaseGpa: PCI_ECAM_BASE,
        intxRoutes: intxRoutes(),
      },
      com1: COM1,
      fadt: ACPI_POWER_FADT,
      s5SleepType: S5_SLEEP_TYPE,
      viot: viotFor(platform),
      extraTables: platform.dmar === null ? [] : [platform.dmar],
    },
    { rsdpGpa: BIOS_RSDP_SCAN_START_GPA, limitGpa: BIOS_RSDP_SCAN_END_GPA },
  );
}

function toKvmSegment(s: SegmentState): Segment {
  return {
    base: s.base,
    limit: s.limit,
    selector: s.selector,
    type: s.type,
    present: s.present,
    dpl: s.dpl,
    db: s.db,
    s: s.s,
    l: s.l,
    g: s.g,
  };
}

/** Writes the plan's bytes into RAM and loads its entry state into the vCPU. */
export function applyLinuxBootPlan(memory: GuestMemory, vcpu: Vcpu, plan: LinuxBootPlan): void {
  for (const w of plan.memoryWrites) memory.write(w.gpa, w.bytes);
  for (const z of plan.zeroFills) memory.fill(z.gpa, z.sizeBytes, 0);
  applyEntryState(vcpu, plan.entry);
}

export function applyEntryState(vcpu: Vcpu, entry: EntryState): void {
  const s = vcpu.getSregs();
  const r = entry.sregs;
  for (const name of ["cs", "ds", "es", "fs", "gs", "ss"] as const satisfies readonly SegmentName[]) {
    s.setSegment(name, toKvmSegment(r[name]));
  }
  if (r.tr !== undefined) s.setSegment("tr", toKvmSegment(r.tr));
  s.set("gdtBase", r.gdt.base);
  s.setTableLimit("gdtLimit", r.gdt.limit);
  s.set("idtBase", r.idt.base);
  s.setTableLimit("idtLimit", r.idt.limit);
  s.set("cr0", r.cr0);
  s.set("cr3", r.cr3);
  s.set("cr4", r.cr4);
  s.set("efer", r.efer);
  vcpu.setSregs(s);
  vcpu.setRegs({
    rip: entry.regs.rip,
    rsi: entry.regs.rsi,
    rbx: entry.regs.rbx,
    rsp: entry.regs.rsp,
    rflags: entry.regs.rflags,
  });
}

export interface LinuxBootInput {
  readonly kernel: Uint8Array;
  readonly initrd?: Uint8Array;
  readonly cmdline: string;
}

/** Plans a Linux boot for this machine (pure apart from reading the platform). */
export function planLinuxBootFor(
  platform: Platform,
  ramSizeBytes: number,
  input: LinuxBootInput,
): { plan: LinuxBootPlan; acpi: AcpiTableSet; memoryMap: MemoryMap } {
  const memoryMap = linuxMemoryMap(ramSizeBytes, platform.pci.ecamSizeBytes);
  const acpi = acpiTablesFor(platform);
  const plan = planLinuxBoot({
    kernel: input.kernel,
    cmdline: input.cmdline,
    initrd: input.initrd,
    e820: memoryMap.entries,
    backedRanges: memoryMap.ramRegions,
    acpi,
  });
  return { plan, acpi, memoryMap };
}
