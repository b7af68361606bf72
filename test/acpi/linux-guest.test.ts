/**
 * End to end: Linux 6.12 boots on QEMU q35 (TCG) using OUR ACPI tables instead of QEMU's, and
 * every table does what it is for. The table set is laid out at 0x10000000, loaded there with
 * QEMU's generic loader, kept away from the kernel with memmap=...$..., and handed to Linux with
 * acpi_rsdp= (which Linux prefers over any other RSDP). Checked in the guest:
 *   - all five tables in /sys/firmware/acpi/tables carry our OEM ID (QEMU's were not used);
 *   - MADT: both CPUs online; the ISA override routes; COM1 (PNP0501 from the DSDT) on IOAPIC pin 4;
 *   - MCFG + DSDT root bridge: PCI enumerated through our ECAM with our _CRS windows, the ECAM
 *     reserved by our PNP0C02 device;
 *   - _PRT: QEMU's virtio-iommu-pci (INTx only) gets IOAPIC input 21;
 *   - VIOT: virtio_iommu binds and exactly the two endpoints we listed get IOMMU groups;
 *   - FADT RESET_REG (I/O 0xCF9 <- 6, the q35 reset control register): the guest resets and QEMU
 *     (-no-reboot) exits.
 * HW_REDUCED_ACPI makes Linux drop the PIT and PIC (acpi_generic_reduced_hw_init), so the LAPIC
 * timer can only be calibrated against a known TSC frequency: tsc_early_khz gives one under TCG
 * (a KVM guest gets it from CPUID or kvmclock). Skips loudly without the guest lab.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { ACCESS_SIZE, ADDRESS_SPACE } from "../../src/acpi/gas.ts";
import { layoutAcpiTables } from "../../src/acpi/layout.ts";
import { describeVirtioPciIommu } from "../../src/acpi/viot.ts";
import { describeRun, findResult, labAvailable, runGuest } from "../../tools/guest-lab/lab.ts";

const lab = labAvailable();
const skip = lab.ok ? false : `guest lab not provisioned (${lab.why}): NOT VERIFIED in a Linux guest`;
if (skip !== false) console.warn(`test/acpi/linux-guest.test.ts: SKIPPED, ${skip}`);

const TABLES_GPA = 0x1000_0000;
/** QEMU q35 (ICH9): ECAM at 0xB0000000, INTA of slot S (1-24) on PIRQ E-H = GSI 20 + (S % 4). */
const Q35_ECAM_GPA = 0xb000_0000;
const q35IntaGsi = (slot: number) => 20 + (slot % 4);

function tableBlob(forceX2apic = false): Uint8Array {
  const set = layoutAcpiTables(
    {
      apicIds: [0, 1],
      forceX2apic,
      dual8259Present: true,
      interruptOverrides: [{ isaIrq: 0, gsi: 2, flags: 0 }], // QEMU wires the PIT to IOAPIC pin 2
      pciRoot: {
        segment: 0,
        busStart: 0,
        busEnd: 0xff,
        mmio32: { min: 0xc000_0000, max: 0xfebf_ffff },
        mmio64: { min: 0x80_0000_0000, max: 0xff_ffff_ffff },
        ecamBaseGpa: Q35_ECAM_GPA,
        intxRoutes: [1, 2, 3].map((slot) => ({ device: slot, pin: 0, gsi: q35IntaGsi(slot) })),
      },
      com1: { ioPort: 0x3f8, irq: 4 },
      fadt: {
        reset: {
          register: {
            space: ADDRESS_SPACE.systemIo,
            bitWidth: 8,
            bitOffset: 0,
            accessSize: ACCESS_SIZE.byte,
            address: 0xcf9,
          },
          value: 0x06,
        },
        // q35 has both, but without legacy IRQs (hardware-reduced) Linux cannot drive them:
        // declaring them makes i8042 and rtc_cmos fail to probe with -EINVAL.
        cmosRtcPresent: false,
        i8042Present: false,
      },
      // virtio-iommu at 00:01.0 translating the two virtio-rng functions at 00:02.0 and 00:03.0
      viot: describeVirtioPciIommu({ iommuBdf: 0x08, endpointBdfs: [0x10, 0x18] }),
    },
    { rsdpGpa: TABLES_GPA },
  );
  const blob = new Uint8Array(set.endGpa - TABLES_GPA);
  for (const t of set.tables) blob.set(t.bytes, t.gpa - TABLES_GPA);
  return blob;
}

const SCRIPT = `
rsdp=$(dmesg | grep -o 'ACPI: RSDP 0x0000000010000000 000024 (v02 VIOMMU)')
check rsdp "$rsdp" -- test -n "$rsdp"
for t in APIC DSDT FACP MCFG VIOT; do
  oem=$(head -c 16 /sys/firmware/acpi/tables/$t | tail -c 6)
  if [ "$oem" = VIOMMU ]; then result table-$t pass "OEM $oem"; else result table-$t fail "OEM '$oem'"; fi
done
check cpus "nproc=$(nproc)" -- test "$(nproc)" = 2
check processor-devices "$(ls /sys/bus/acpi/devices | grep ACPI0007 | tr '\\n' ' ')" -- test -e /sys/bus/acpi/devices/ACPI0007:01
check pci-root "$(ls /sys/bus/acpi/devices | grep PNP0A08)" -- test -e /sys/bus/acpi/devices/PNP0A08:00
ecam=$(dmesg | grep -o 'PCI: ECAM \\[mem 0xb0000000-0xbfffffff\\] (base 0xb0000000) for domain 0000 \\[bus 00-ff\\]')
check mcfg "$ecam" -- test -n "$ecam"
win=$(dmesg | grep -c -E 'root bus resource \\[(mem 0xc0000000-0xfebfffff window|mem 0x8000000000-0xffffffffff window|io  0x0000-0x0cf7 window|io  0x0d00-0xffff window|bus 00-ff)\\]')
check crs-windows "windows=$win" -- test "$win" = 5
for p in /sys/bus/pnp/devices/*; do
  case "$(cat $p/id)" in
    PNP0c02) check mres "$(cat $p/resources | tr '\\n' ' ')" -- grep -q 'mem 0xb0000000-0xbfffffff' $p/resources ;;
    PNP0501) check com1 "$(cat $p/resources | tr '\\n' ' ')" -- grep -q 'io 0x3f8-0x3ff' $p/resources ;;
  esac
done
serial=$(grep ttyS0 /proc/interrupts)
check com1-irq "$serial" -- sh -c "echo '$serial' | grep -q 'IO-APIC *4-edge'"
viommu_irq=$(grep virtio0 /proc/interrupts)
check prt "$viommu_irq" -- sh -c "echo '$viommu_irq' | grep -q 'IO-APIC *21-fasteoi'"
drv=/sys/bus/virtio/drivers/virtio_iommu
check viot-driver "$(ls $drv | grep virtio)" -- sh -c "ls $drv | grep -q '^virtio'"
groups=""
for bdf in 0000:00:01.0 0000:00:02.0 0000:00:03.0; do groups="$groups $bdf=$(pci_group $bdf)"; done
check viot-endpoints "$groups" -- sh -c "[ -n '$(pci_group 0000:00:02.0)' ] && [ -n '$(pci_group 0000:00:03.0)' ] && [ -z '$(pci_group 0000:00:01.0)' ]"
msix=$(grep -c PCI-MSIX /proc/interrupts)
check endpoints-msix "lines=$msix" -- test "$msix" -ge 2
failed=$(dmesg | grep 'probe with driver' | tr '\n' ';')
check no-failed-probes "$failed" -- test -z "$failed"
result done pass "resetting through the FADT reset register"
echo b > /proc/sysrq-trigger
`;

test("Linux 6.12 boots on our ACPI tables and uses each of them", { skip, timeout: 300_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-acpi-guest-"));
  try {
    const blobPath = join(dir, "acpi.bin");
    writeFileSync(blobPath, tableBlob());
    const run = await runGuest({
      script: SCRIPT,
      timeoutMs: 240_000,
      smp: 2,
      cmdline: `tsc_early_khz=2000000 acpi_rsdp=0x${TABLES_GPA.toString(16)} memmap=0x10000$0x${TABLES_GPA.toString(16)}`,
      qemuArgs: [
        "-device",
        `loader,file=${blobPath},addr=0x${TABLES_GPA.toString(16)},force-raw=on`,
        "-device",
        "virtio-iommu-pci,addr=01.0",
        "-device",
        "virtio-rng-pci,addr=02.0,iommu_platform=on,disable-legacy=on",
        "-device",
        "virtio-rng-pci,addr=03.0,iommu_platform=on,disable-legacy=on",
      ],
    });
    const why = describeRun(run);
    t.diagnostic(`${lab.why}; boot to ready ${run.bootMs} ms, whole run ${run.durationMs} ms`);
    // -no-reboot: QEMU exits when the guest resets, which it does through the FADT reset register
    // (Linux's first reboot method when RESET_REG_SUP is set).
    assert.equal(run.timedOut, false, `QEMU did not exit on the guest's reset\n${why}`);
    assert.equal(run.exitCode, 0, why);
    for (const name of [
      "rsdp",
      "table-APIC",
      "table-DSDT",
      "table-FACP",
      "table-MCFG",
      "table-VIOT",
      "cpus",
      "processor-devices",
      "pci-root",
      "mcfg",
      "crs-windows",
      "mres",
      "com1",
      "com1-irq",
      "prt",
      "viot-driver",
      "viot-endpoints",
      "endpoints-msix",
      "no-failed-probes",
      "done",
    ]) {
      assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const X2APIC_SCRIPT = `
check cpus "nproc=$(nproc)" -- test "$(nproc)" = 2
nmi=$(dmesg | grep -o 'ACPI: X2APIC_NMI (uid\\[0xffffffff\\] dfl dfl lint\\[0x1\\])')
check x2apic-nmi "$nmi" -- test -n "$nmi"
echo b > /proc/sysrq-trigger
`;

test("Linux brings up CPUs described by x2APIC entries (MADT types 9 and 10)", {
  skip,
  timeout: 300_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "viommu-acpi-x2apic-"));
  try {
    const blobPath = join(dir, "acpi.bin");
    writeFileSync(blobPath, tableBlob(true));
    const run = await runGuest({
      script: X2APIC_SCRIPT,
      timeoutMs: 240_000,
      smp: 2,
      cmdline: `tsc_early_khz=2000000 acpi_rsdp=0x${TABLES_GPA.toString(16)} memmap=0x10000$0x${TABLES_GPA.toString(16)}`,
      qemuArgs: ["-device", `loader,file=${blobPath},addr=0x${TABLES_GPA.toString(16)},force-raw=on`],
    });
    const why = describeRun(run);
    for (const name of ["cpus", "x2apic-nmi"]) {
      assert.equal(findResult(run.results, name)?.status, "pass", `${name}\n${why}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
