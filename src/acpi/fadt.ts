/**
 * The Fixed ACPI Description Table for a hardware-reduced ACPI platform (ACPI 6.5 5.2.9,
 * Table 5.9), revision 6 minor 5, 276 bytes. Offsets of the fields this builder sets (every other
 * byte is zero, which hardware-reduced ACPI requires of the fixed-hardware blocks, 4.1):
 *
 *   36 FIRMWARE_CTRL u32 = 0 (no FACS: hardware-reduced, 5.2.10)   40 DSDT u32 = 0 (X_DSDT used)
 *   45 Preferred_PM_Profile u8   46 SCI_INT u16 = 0 (no SCI, 4.1)
 *   109 IAPC_BOOT_ARCH u16 (5.2.9.3)   112 Flags u32 (Table 5.10)
 *   116 RESET_REG GAS   128 RESET_VALUE u8   131 FADT Minor Version u8
 *   140 X_DSDT u64   244 SLEEP_CONTROL_REG GAS   256 SLEEP_STATUS_REG GAS
 *   268 Hypervisor Vendor Identity u64 (8 ASCII bytes)
 *
 * What Linux does with it: HW_REDUCED_ACPI makes ACPICA skip the PM1/GPE/PM-timer blocks and the
 * SCI handler, and x86 (acpi_generic_reduced_hw_init) drops the PIT timer and the 8259 PIC: the
 * LAPIC timer is then calibrated against the TSC, whose frequency the VMM must make known (CPUID
 * 0x15/0x16 or kvmclock; under TCG, tsc_early_khz=), or boot hangs. ISA IRQs become plain GSIs.
 * Hence the IAPC_BOOT_ARCH defaults: no 8042 and CMOS_RTC_NOT_PRESENT, because without legacy IRQs
 * Linux's i8042 and rtc_cmos drivers fail to probe (-EINVAL, seen on QEMU q35) even where the chips
 * exist; VGA_NOT_PRESENT skips VGA probing; MSI_NOT_SUPPORTED (bit 3) would disable MSI, so it is
 * never set. Firecracker and Cloud Hypervisor set the same HW_REDUCED_ACPI flag and a vendor ID.
 */

import type { U64 } from "./bytes.ts";
import { GAS_ABSENT, type GenericAddress, writeGas } from "./gas.ts";
import { beginSdt, finishSdt, SDT_HEADER_SIZE, type SdtIdentity } from "./sdt.ts";

export const FADT_REVISION = 6;
export const FADT_MINOR_REVISION = 5;
export const FADT_SIZE = 276;

export const FADT_OFFSET = {
  firmwareCtrl: 36,
  dsdt: 40,
  preferredPmProfile: 45,
  sciInt: 46,
  iapcBootArch: 109,
  flags: 112,
  resetReg: 116,
  resetValue: 128,
  armBootArch: 129,
  minorVersion: 131,
  xFirmwareCtrl: 132,
  xDsdt: 140,
  xPm1aEvtBlk: 148,
  sleepControlReg: 244,
  sleepStatusReg: 256,
  hypervisorVendorId: 268,
} as const;

/** Fixed feature flags (ACPI 6.5 Table 5.10), bit positions as masks. */
export const FADT_FLAG = {
  /** The power button, if any, is a control-method device; set when there is no fixed one. */
  PWR_BUTTON: 1 << 4,
  SLP_BUTTON: 1 << 5,
  RESET_REG_SUP: 1 << 10,
  HEADLESS: 1 << 12,
  HW_REDUCED_ACPI: 1 << 20,
} as const;

/** IA-PC Boot Architecture Flags (ACPI 6.5 5.2.9.3, Table 5.11). */
export const IAPC_BOOT_ARCH = {
  LEGACY_DEVICES: 1 << 0,
  I8042: 1 << 1,
  VGA_NOT_PRESENT: 1 << 2,
  MSI_NOT_SUPPORTED: 1 << 3,
  PCIE_ASPM_CONTROLS: 1 << 4,
  CMOS_RTC_NOT_PRESENT: 1 << 5,
} as const;

/** Preferred_PM_Profile values (ACPI 6.5 5.2.9.1). */
export const PM_PROFILE = { unspecified: 0, enterpriseServer: 4 } as const;

export interface FadtOptions {
  readonly dsdtGpa: U64;
  /** The platform has a legacy i8042 (only true if the VMM emulates one fully). */
  readonly i8042Present?: boolean;
  /** The platform has a CMOS RTC at ports 0x70/0x71. */
  readonly cmosRtcPresent?: boolean;
  /** ACPI reset: the register and the value written to it (sets RESET_REG_SUP). */
  readonly reset?: { readonly register: GenericAddress; readonly value: number };
  /**
   * Hardware-reduced sleep registers (ACPI 6.5 4.8.3.7). S5 poweroff writes
   * (SLP_TYP << 2) | SLP_EN(0x20) to the control register; SLP_TYP comes from the DSDT's _S5_.
   */
  readonly sleep?: { readonly control: GenericAddress; readonly status: GenericAddress };
  readonly pmProfile?: number;
  /** 8 ASCII characters (ACPI 6.5 5.2.9: Hypervisor Vendor Identity). */
  readonly hypervisorVendorId?: string;
}

export function buildFadt(options: FadtOptions, identity: SdtIdentity): Uint8Array {
  let flags = FADT_FLAG.HW_REDUCED_ACPI | FADT_FLAG.PWR_BUTTON | FADT_FLAG.SLP_BUTTON;
  if (options.reset !== undefined) flags |= FADT_FLAG.RESET_REG_SUP;
  let bootArch = IAPC_BOOT_ARCH.VGA_NOT_PRESENT;
  if (options.i8042Present === true) bootArch |= IAPC_BOOT_ARCH.I8042;
  if (options.cmosRtcPresent !== true) bootArch |= IAPC_BOOT_ARCH.CMOS_RTC_NOT_PRESENT;

  const w = beginSdt("FACP", FADT_REVISION, identity);
  // 36..108: FIRMWARE_CTRL, DSDT, the legacy PM/GPE blocks and their lengths: all zero, except
  // the profile. SCI_INT stays 0: hardware-reduced platforms have no SCI (ACPI 6.5 4.1).
  w.zeros(FADT_OFFSET.preferredPmProfile - SDT_HEADER_SIZE);
  w.u8(options.pmProfile ?? PM_PROFILE.unspecified, "PM profile");
  w.zeros(FADT_OFFSET.iapcBootArch - w.offset);
  w.u16(bootArch).u8(0); // IAPC_BOOT_ARCH, reserved
  w.u32(flags);
  writeGas(w, options.reset?.register ?? GAS_ABSENT);
  w.u8(options.reset?.value ?? 0, "reset value");
  w.u16(0); // ARM_BOOT_ARCH
  w.u8(FADT_MINOR_REVISION);
  w.u64(0); // X_FIRMWARE_CTRL
  w.u64(options.dsdtGpa, "X_DSDT");
  // X_PM1a_EVT_BLK .. X_GPE1_BLK: eight absent GAS (hardware-reduced)
  w.zeros(FADT_OFFSET.sleepControlReg - w.offset);
  writeGas(w, options.sleep?.control ?? GAS_ABSENT);
  writeGas(w, options.sleep?.status ?? GAS_ABSENT);
  w.ascii(options.hypervisorVendorId ?? "VIOMMUVM", 8);
  if (w.offset !== FADT_SIZE) throw new Error(`FADT layout error: ${w.offset} bytes`);
  return finishSdt(w);
}
