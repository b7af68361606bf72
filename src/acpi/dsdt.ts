/**
 * The Differentiated System Description Table (ACPI 6.5 5.2.11.1, signature "DSDT", revision 2:
 * 64-bit AML integers) of a hardware-reduced x86 machine. In ASL, what `buildDsdt` emits is:
 *
 *   Scope (\_SB) {
 *     Device (PC00) {                               // PCI root bridge (PCI Firmware 3.3 4.1.3)
 *       Name (_HID, EisaId ("PNP0A08"))             // PCI Express root bridge
 *       Name (_CID, EisaId ("PNP0A03"))             // compatible: PCI root bridge
 *       Name (_SEG, segment)  Name (_UID, segment)  Name (_BBN, busStart)
 *       Name (_CRS, ResourceTemplate () {
 *         WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, busStart, busEnd, 0, n)
 *         IO (Decode16, 0xCF8, 0xCF8, 1, 8)         // the 0xCF8/0xCFC configuration ports
 *         DWordIO (..., 0x0000, 0x0CF7, ...)  DWordIO (..., 0x0D00, 0xFFFF, ...)
 *         DWordMemory (..., NonCacheable, ReadWrite, ..., mmio32 window)
 *         QWordMemory (..., Cacheable, ReadWrite, ..., mmio64 window)   // when given
 *       })
 *       Name (_PRT, Package () { Package () { 0xSSSSFFFF, pin, GSIx, 0 }, ... })  // when given
 *     }
 *     Device (GSIx) {                               // one per link named in _PRT (QEMU q35: GSIA-H)
 *       Name (_HID, EisaId ("PNP0C0F"))  Name (_UID, n)      // PCI interrupt link
 *       Name (_PRS, ResourceTemplate () { Interrupt (ResourceConsumer, Level, ActiveHigh, Shared) {gsi} })
 *       Name (_CRS, <the same>)
 *       Method (_SRS, 1, NotSerialized) {}          // fixed wiring: nothing to program
 *     }
 *     Device (MRES) {                               // ECAM reservation: Linux checks MCFG
 *       Name (_HID, EisaId ("PNP0C02"))             // against PNP0C01/PNP0C02 _CRS
 *       Name (_UID, 0)
 *       Name (_CRS, ResourceTemplate () { Memory32Fixed / QWordMemory (ECAM) })
 *     }
 *     Device (COM1) {                               // 16550A
 *       Name (_HID, EisaId ("PNP0501"))  Name (_UID, 1)
 *       Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh,
 *         Exclusive) {4}  IO (Decode16, 0x3F8, 0x3F8, 0, 8) })
 *     }
 *     Device (C000) { Name (_HID, "ACPI0007")  Name (_UID, 0) }   // one per CPU (ACPI 6.5 8.4)
 *   }
 *   Name (_S5, Package (4) { slpTyp, slpTyp, 0, 0 })   // when the FADT has sleep registers
 *
 * _PRT only when the VMM wires INTx (devices otherwise use MSI/MSI-X; a device with neither,
 * such as QEMU's virtio-iommu-pci without vectors, then gets no interrupt and fails to probe).
 * A _PRT entry either names a GSI directly (Source 0: level, active-low by ACPI 6.5 6.2.13) or
 * a link device whose _CRS gives the GSI with its polarity. QEMU's q35 uses links declared
 * active-high, because its INTx lines are signalled active-high; a VMM modelling that (an IOAPIC
 * that honours the entry's polarity, as KVM's does) must do the same, or the OS programs the
 * entry active-low and sees the idle line as asserted.
 * No _OSC: Linux then keeps native PCIe services off and disables ASPM, which a virtual root
 * bridge does not need.
 */

import type { AmlTerm } from "./aml.ts";
import { device, eisaId, integer, method, name, nameReference, pkg, scope, string } from "./aml.ts";
import {
  type AddressRange,
  dwordIo,
  dwordMemory,
  extendedInterrupt,
  ioPort,
  MEMORY_CACHING,
  memory32Fixed,
  qwordMemory,
  resourceTemplate,
  wordBusNumber,
} from "./aml-resources.ts";
import { toU64, type U64 } from "./bytes.ts";
import { ECAM_BYTES_PER_BUS } from "./mcfg.ts";
import { beginSdt, finishSdt, type SdtIdentity } from "./sdt.ts";

export const DSDT_REVISION = 2;

export const PCI_CONFIG_PORT = 0xcf8;
export const PCI_CONFIG_PORT_COUNT = 8;

export interface PciRootBridge {
  readonly segment: number;
  readonly busStart: number;
  readonly busEnd: number;
  /** The 32-bit MMIO window for BARs (below 4 GiB, e.g. 0xC0000000 up to the ECAM). */
  readonly mmio32: AddressRange;
  /** The 64-bit MMIO window above RAM, if any. */
  readonly mmio64?: AddressRange;
  /** I/O port windows besides 0xCF8-0xCFF; default 0x0000-0x0CF7 and 0x0D00-0xFFFF. */
  readonly ioWindows?: readonly AddressRange[];
  /** Guest-physical address of this segment's ECAM (bus 0), reserved through PNP0C02. */
  readonly ecamBaseGpa?: U64;
  /** Legacy INTx wiring of bus-0 devices, emitted as _PRT; omit when every device uses MSI/MSI-X. */
  readonly intxRoutes?: readonly IntxRoute[];
}

/** PCI interrupt pins as _PRT numbers them (ACPI 6.5 6.2.13): INTA = 0 .. INTD = 3. */
export const PCI_PIN = { INTA: 0, INTB: 1, INTC: 2, INTD: 3 } as const;

/**
 * One _PRT entry: device `device` (0-31) on the root bus, pin `pin`, wired to IOAPIC input `gsi`,
 * through link device `\\_SB.<link>` (level, active-high, shared) when `link` is given, else as
 * a direct GSI (level, active-low).
 */
export interface IntxRoute {
  readonly device: number;
  readonly pin: number;
  readonly gsi: number;
  readonly link?: string;
}

export interface SerialPort {
  readonly ioPort: number;
  readonly irq: number;
}

export const COM1: SerialPort = { ioPort: 0x3f8, irq: 4 };

export interface DsdtOptions {
  readonly pciRoot?: PciRootBridge;
  readonly com1?: SerialPort;
  /** Declare one ACPI0007 processor device per CPU, UIDs 0..cpuCount-1 matching the MADT. */
  readonly cpuCount?: number;
  /** SLP_TYP for S5 (the value written to the sleep control register, shifted by 2). */
  readonly s5SleepType?: number;
}

export const DEFAULT_PCI_IO_WINDOWS: readonly AddressRange[] = [
  { min: 0x0000, max: 0x0cf7 },
  { min: 0x0d00, max: 0xffff },
];

const FOUR_GIB = 1n << 32n;

function pciRootBridgeDevice(root: PciRootBridge): AmlTerm {
  const resources = [
    wordBusNumber({ min: root.busStart, max: root.busEnd }),
    ioPort(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORT_COUNT),
    ...(root.ioWindows ?? DEFAULT_PCI_IO_WINDOWS).map(dwordIo),
    dwordMemory(root.mmio32, MEMORY_CACHING.nonCacheable),
  ];
  if (root.mmio64 !== undefined) resources.push(qwordMemory(root.mmio64, MEMORY_CACHING.cacheable));
  return device("PC00", [
    name("_HID", eisaId("PNP0A08")),
    name("_CID", eisaId("PNP0A03")),
    name("_SEG", integer(root.segment)),
    name("_UID", integer(root.segment)),
    name("_BBN", integer(root.busStart)),
    name("_CRS", resourceTemplate(resources)),
    ...(root.intxRoutes === undefined ? [] : [name("_PRT", pciRoutingTable(root.intxRoutes))]),
  ]);
}

/**
 * _PRT (ACPI 6.5 6.2.13): a Package of Package {Address, Pin, Source, Source Index}. Address is
 * (device << 16) | 0xFFFF (any function). Source 0 means Source Index is a GSI, which the OS
 * programs level-triggered, active-low; Source naming a link device (Source Index 0) means the
 * link's _CRS gives the interrupt and its trigger and polarity.
 */
export function pciRoutingTable(routes: readonly IntxRoute[]): AmlTerm {
  return pkg(
    routes.map((r) => {
      if (r.device < 0 || r.device > 31 || r.pin < 0 || r.pin > 3) {
        throw new RangeError(`_PRT: device ${r.device} pin ${r.pin} out of range`);
      }
      const address = integer(r.device * 0x10000 + 0xffff);
      if (r.link !== undefined) return pkg([address, integer(r.pin), nameReference(r.link), integer(0)]);
      return pkg([address, integer(r.pin), integer(0), integer(r.gsi)]);
    }),
  );
}

/** The link devices `routes` name, each with its one GSI (a link routed to two GSIs is an error). */
export function intxLinks(routes: readonly IntxRoute[]): { name: string; gsi: number }[] {
  const links = new Map<string, number>();
  for (const r of routes) {
    if (r.link === undefined) continue;
    const gsi = links.get(r.link);
    if (gsi !== undefined && gsi !== r.gsi) {
      throw new RangeError(`_PRT: link ${r.link} routed to GSI ${gsi} and ${r.gsi}`);
    }
    links.set(r.link, r.gsi);
  }
  return [...links].map(([name, gsi]) => ({ name, gsi }));
}

/**
 * A PCI interrupt link (PNP0C0F, ACPI 6.5 6.2.13) hard-wired to one GSI, level, active-high,
 * shared: what QEMU's q35 DSDT declares for PIRQ[A-H] in APIC mode. _SRS accepts the only
 * possible setting; there is nothing to program.
 */
export function interruptLinkDevice(link: { name: string; gsi: number }, uid: number): AmlTerm {
  const irq = resourceTemplate([
    extendedInterrupt({ edge: false, activeLow: false, shared: true }, [link.gsi]),
  ]);
  return device(link.name, [
    name("_HID", eisaId("PNP0C0F")),
    name("_UID", integer(uid)),
    name("_PRS", irq),
    name("_CRS", irq),
    method("_SRS", 1, []),
  ]);
}

/** PNP0C02 "motherboard resources" holding the ECAM of buses [busStart, busEnd]. */
function ecamReservationDevice(root: PciRootBridge, ecamBaseGpa: U64): AmlTerm {
  const base = toU64(ecamBaseGpa, "ECAM base") + BigInt(root.busStart * ECAM_BYTES_PER_BUS);
  const sizeBytes = BigInt((root.busEnd - root.busStart + 1) * ECAM_BYTES_PER_BUS);
  const descriptor =
    base + sizeBytes <= FOUR_GIB
      ? memory32Fixed(true, Number(base), Number(sizeBytes))
      : qwordMemory({ min: base, max: base + sizeBytes - 1n }, MEMORY_CACHING.nonCacheable);
  return device("MRES", [
    name("_HID", eisaId("PNP0C02")),
    name("_UID", integer(0)),
    name("_CRS", resourceTemplate([descriptor])),
  ]);
}

/** The 16550 at `ioPort` (8 registers) on an edge-triggered, active-high ISA IRQ. */
export function serialPortDevice(devicePath: string, uid: number, port: SerialPort): AmlTerm {
  return device(devicePath, [
    name("_HID", eisaId("PNP0501")),
    name("_UID", integer(uid)),
    name(
      "_CRS",
      resourceTemplate([
        extendedInterrupt({ edge: true, activeLow: false }, [port.irq]),
        ioPort(port.ioPort, port.ioPort, 0, 8),
      ]),
    ),
  ]);
}

function processorDevice(uid: number): AmlTerm {
  const hex = uid.toString(16).toUpperCase().padStart(3, "0");
  if (hex.length > 3) throw new RangeError(`processor UID ${uid} does not fit a C### name`);
  return device(`C${hex}`, [name("_HID", string("ACPI0007")), name("_UID", integer(uid))]);
}

/** The DSDT's AML body (without the SDT header), for tests and for SSDT-style reuse. */
export function dsdtAml(options: DsdtOptions): AmlTerm[] {
  const sb: AmlTerm[] = [];
  if (options.pciRoot !== undefined) {
    sb.push(pciRootBridgeDevice(options.pciRoot));
    intxLinks(options.pciRoot.intxRoutes ?? []).forEach((link, uid) => {
      sb.push(interruptLinkDevice(link, uid));
    });
    if (options.pciRoot.ecamBaseGpa !== undefined) {
      sb.push(ecamReservationDevice(options.pciRoot, options.pciRoot.ecamBaseGpa));
    }
  }
  if (options.com1 !== undefined) sb.push(serialPortDevice("COM1", 1, options.com1));
  for (let uid = 0; uid < (options.cpuCount ?? 0); uid++) sb.push(processorDevice(uid));
  const terms = [scope("\\_SB", sb)];
  if (options.s5SleepType !== undefined) {
    const t = integer(options.s5SleepType);
    terms.push(name("_S5", pkg([t, t, integer(0), integer(0)])));
  }
  return terms;
}

export function buildDsdt(options: DsdtOptions, identity: SdtIdentity): Uint8Array {
  const w = beginSdt("DSDT", DSDT_REVISION, identity);
  for (const term of dsdtAml(options)) w.bytesOf(term);
  return finishSdt(w);
}
