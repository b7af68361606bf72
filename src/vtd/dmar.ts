/**
 * The ACPI DMAR table (VT-d 8: DMA Remapping Reporting Structure) describing VT-d units to the
 * guest: the header (host address width, INTR_REMAP and X2APIC_OPT_OUT flags), one DRHD per
 * unit (register base, INCLUDE_PCI_ALL or explicit device scopes, the IOAPIC scope interrupt
 * remapping needs), and an ATSR when device-TLBs are offered.
 */
import type { VtdConfig } from "./config.ts";

/** Device scope types (VT-d 8.3.1). */
export const SCOPE = {
  PCI_ENDPOINT: 1,
  PCI_SUB_HIERARCHY: 2,
  IOAPIC: 3,
  HPET: 4,
  ACPI_NAMESPACE: 5,
} as const;

export interface DeviceScope {
  readonly type: number;
  /** IOAPIC id, HPET number or ACPI device number (for those types), else 0. */
  readonly enumerationId?: number;
  readonly startBus: number;
  /** Path from the host bridge: (device, function) per hop. */
  readonly path: readonly { readonly device: number; readonly function: number }[];
}

export interface DrhdOptions {
  readonly registerBase: number;
  readonly segment?: number;
  /** Every PCI device on the segment not claimed by another DRHD (must be the last DRHD). */
  readonly includePciAll: boolean;
  readonly scopes: readonly DeviceScope[];
  /** Register set size as 2^n 4 KiB pages (VT-d 8.3 Size field). */
  readonly sizeLog2Pages?: number;
}

export interface DmarOptions {
  /** Host address width in bits (the table stores width - 1). */
  readonly hawBits: number;
  readonly interruptRemapping: boolean;
  readonly x2apicOptOut?: boolean;
  readonly units: readonly DrhdOptions[];
  /** Reserved memory regions a device keeps using under DMA remapping (VT-d 8.4). */
  readonly rmrr?: readonly {
    readonly segment?: number;
    /** First byte, 4 KiB aligned. */
    readonly baseAddress: number;
    /** Last byte (4 KiB aligned end - 1). */
    readonly limitAddress: number;
    readonly scopes: readonly DeviceScope[];
  }[];
  /** ATSR for a segment: all root ports support ATS (VT-d 8.5). */
  readonly atsr?: {
    readonly segment?: number;
    readonly allPorts: boolean;
    readonly scopes?: readonly DeviceScope[];
  };
  readonly oemId?: string;
  readonly oemTableId?: string;
  readonly oemRevision?: number;
  readonly creatorId?: string;
  readonly creatorRevision?: number;
}

export const DMAR_HEADER_BYTES = 48;
export const DMAR_FLAG_INTR_REMAP = 1;
export const DMAR_FLAG_X2APIC_OPT_OUT = 2;
export const DRHD_FLAG_INCLUDE_PCI_ALL = 1;
export const ATSR_FLAG_ALL_PORTS = 1;

function scopeBytes(s: DeviceScope): number[] {
  if (s.path.length === 0) throw new Error("DMAR device scope needs at least one path entry");
  const out = [s.type, 6 + 2 * s.path.length, 0, 0, s.enumerationId ?? 0, s.startBus];
  for (const p of s.path) {
    if (p.device > 31 || p.function > 7)
      throw new Error(`DMAR device scope path ${p.device}.${p.function} invalid`);
    out.push(p.device, p.function);
  }
  return out;
}

function putAscii(b: Uint8Array, offset: number, text: string, width: number): void {
  for (let i = 0; i < width; i++) b[offset + i] = i < text.length ? text.charCodeAt(i) & 0x7f : 0x20;
}

/** Builds the DMAR table bytes with a valid checksum. */
export function buildDmarTable(o: DmarOptions): Uint8Array {
  const body: number[] = [];
  const le16 = (v: number) => body.push(v & 0xff, (v >>> 8) & 0xff);
  const le64 = (v: number) => {
    for (let i = 0; i < 8; i++) body.push(Math.floor(v / 2 ** (8 * i)) & 0xff);
  };
  o.units.forEach((u, i) => {
    if (u.includePciAll && i !== o.units.length - 1) {
      throw new Error("DMAR: the INCLUDE_PCI_ALL DRHD must be the last one (VT-d 8.3)");
    }
    const scopes = u.scopes.flatMap(scopeBytes);
    le16(0); // type DRHD
    le16(16 + scopes.length);
    body.push(u.includePciAll ? DRHD_FLAG_INCLUDE_PCI_ALL : 0, (u.sizeLog2Pages ?? 0) & 0xf);
    le16(u.segment ?? 0);
    le64(u.registerBase);
    body.push(...scopes);
  });
  for (const r of o.rmrr ?? []) {
    if (r.baseAddress % 4096 !== 0 || (r.limitAddress + 1) % 4096 !== 0 || r.limitAddress < r.baseAddress) {
      throw new Error("DMAR: an RMRR must cover whole 4 KiB pages (VT-d 8.4)");
    }
    if (r.scopes.length === 0) throw new Error("DMAR: an RMRR needs at least one device scope");
    const scopes = r.scopes.flatMap(scopeBytes);
    le16(1); // type RMRR
    le16(24 + scopes.length);
    body.push(0, 0);
    le16(r.segment ?? 0);
    le64(r.baseAddress);
    le64(r.limitAddress);
    body.push(...scopes);
  }
  if (o.atsr !== undefined) {
    const scopes = (o.atsr.scopes ?? []).flatMap(scopeBytes);
    le16(2); // type ATSR
    le16(8 + scopes.length);
    body.push(o.atsr.allPorts ? ATSR_FLAG_ALL_PORTS : 0, 0);
    le16(o.atsr.segment ?? 0);
    body.push(...scopes);
  }
  const table = new Uint8Array(DMAR_HEADER_BYTES + body.length);
  const view = new DataView(table.buffer);
  putAscii(table, 0, "DMAR", 4);
  view.setUint32(4, table.length, true);
  table[8] = 1; // revision
  putAscii(table, 10, o.oemId ?? "VIOMMU", 6);
  putAscii(table, 16, o.oemTableId ?? "VIOMMUVT", 8);
  view.setUint32(24, o.oemRevision ?? 1, true);
  putAscii(table, 28, o.creatorId ?? "VIOM", 4);
  view.setUint32(32, o.creatorRevision ?? 1, true);
  table[36] = o.hawBits - 1;
  table[37] =
    (o.interruptRemapping ? DMAR_FLAG_INTR_REMAP : 0) | (o.x2apicOptOut ? DMAR_FLAG_X2APIC_OPT_OUT : 0);
  table.set(body, DMAR_HEADER_BYTES);
  let sum = 0;
  for (const byte of table) sum = (sum + byte) & 0xff;
  table[9] = (256 - sum) & 0xff;
  return table;
}

export interface PlatformDmarOptions {
  readonly registerBase: number;
  /** IOAPIC id and its source id (QEMU q35: id 0 at bus 0xFF, devfn 0). */
  readonly ioapicId?: number;
  readonly ioapicSourceId?: number;
  /** Endpoints to list explicitly; when absent the DRHD uses INCLUDE_PCI_ALL. */
  readonly endpoints?: readonly number[];
}

/** The DMAR table for one unit with configuration `c`, as a q35-like machine presents it. */
export function dmarForConfig(c: VtdConfig, p: PlatformDmarOptions): Uint8Array {
  const scopes: DeviceScope[] = [];
  for (const sid of p.endpoints ?? []) {
    scopes.push({
      type: SCOPE.PCI_ENDPOINT,
      startBus: sid >> 8,
      path: [{ device: (sid >> 3) & 0x1f, function: sid & 7 }],
    });
  }
  if (c.intremap) {
    const sid = p.ioapicSourceId ?? 0xff00;
    scopes.push({
      type: SCOPE.IOAPIC,
      enumerationId: p.ioapicId ?? 0,
      startBus: sid >> 8,
      path: [{ device: (sid >> 3) & 0x1f, function: sid & 7 }],
    });
  }
  return buildDmarTable({
    hawBits: c.awBits,
    interruptRemapping: c.intremap,
    // Without EIM the guest cannot remap x2APIC destinations: ask it to stay in xAPIC mode.
    x2apicOptOut: c.intremap && !c.eim,
    units: [{ registerBase: p.registerBase, includePciAll: p.endpoints === undefined, scopes }],
    atsr: c.deviceIotlb ? { allPorts: true } : undefined,
  });
}
