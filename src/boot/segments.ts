/**
 * x86 segment descriptors (Intel SDM Vol. 3A 3.4.5 "Segment Descriptors") and the decoded
 * segment-register state a VMM loads (the fields of KVM's struct kvm_segment), so that GDT bytes in
 * guest memory and the hidden segment state always agree.
 *
 * Descriptor bits: limit 15:0 and base 23:0 in the low dword, then type 43:40, S 44, DPL 46:45,
 * P 47, limit 19:16 at 51:48, AVL 52, L 53 (64-bit code), D/B 54, G 55 (4 KiB limit units),
 * base 31:24 at 63:56.
 */

export interface SegmentState {
  readonly base: number;
  /** Effective limit in bytes (scaled by 4 KiB when G = 1), as KVM and the VMCS expect it. */
  readonly limit: number;
  readonly selector: number;
  readonly type: number;
  readonly present: boolean;
  readonly dpl: number;
  readonly db: boolean;
  /** S: code/data (true) or system (false) descriptor. */
  readonly s: boolean;
  readonly l: boolean;
  readonly g: boolean;
  readonly avl: boolean;
}

export interface DescriptorTable {
  readonly base: number;
  /** Size in bytes minus one. */
  readonly limit: number;
}

/** Well-known descriptors. */
export const GDT_ENTRY = {
  null: 0n,
  /** 64-bit code, execute/read, accessed, DPL 0, L = 1, G = 1. */
  code64: 0x00af_9b00_0000_ffffn,
  /** 32-bit code, execute/read, accessed, base 0, limit 4 GiB. */
  code32: 0x00cf_9b00_0000_ffffn,
  /** Data, read/write, accessed, base 0, limit 4 GiB. */
  data: 0x00cf_9300_0000_ffffn,
  /** 32-bit TSS (busy), base 0, limit 0x67: what PVH asks for in TR. */
  tss32Busy: 0x0000_8b00_0000_0067n,
} as const;

export function decodeDescriptor(descriptor: bigint, selector: number): SegmentState {
  const bits = (from: bigint, width: bigint) => Number((descriptor >> from) & ((1n << width) - 1n));
  const rawLimit = bits(0n, 16n) | (bits(48n, 4n) << 16);
  const base = (bits(16n, 24n) | (bits(56n, 8n) << 24)) >>> 0;
  const g = bits(55n, 1n) === 1;
  return {
    base,
    limit: g ? rawLimit * 4096 + 4095 : rawLimit,
    selector,
    type: bits(40n, 4n),
    s: bits(44n, 1n) === 1,
    dpl: bits(45n, 2n),
    present: bits(47n, 1n) === 1,
    avl: bits(52n, 1n) === 1,
    l: bits(53n, 1n) === 1,
    db: bits(54n, 1n) === 1,
    g,
  };
}

/** The GDT bytes for `entries` (8 bytes each, little-endian). */
export function encodeGdt(entries: readonly bigint[]): Uint8Array {
  const bytes = new Uint8Array(entries.length * 8);
  const v = new DataView(bytes.buffer);
  for (const [i, e] of entries.entries()) v.setBigUint64(i * 8, e, true);
  return bytes;
}

/** The segment state for GDT entry `index` (selector = index * 8, TI = 0, RPL = 0). */
export function segmentFromGdt(entries: readonly bigint[], index: number): SegmentState {
  const descriptor = entries[index];
  if (descriptor === undefined) throw new RangeError(`no GDT entry ${index}`);
  return decodeDescriptor(descriptor, index * 8);
}
