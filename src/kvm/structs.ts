/**
 * Byte layouts of the KVM structures the VMM exchanges with the kernel (x86-64 UAPI), as
 * offset tables over DataViews: no koffi struct marshalling on the hot path.
 */

export const KVM_REGS_SIZE = 144;
/** struct kvm_regs: sixteen general registers, rip and rflags, all u64. */
export const REGS = {
  rax: 0x00,
  rbx: 0x08,
  rcx: 0x10,
  rdx: 0x18,
  rsi: 0x20,
  rdi: 0x28,
  rsp: 0x30,
  rbp: 0x38,
  rip: 0x80,
  rflags: 0x88,
} as const;
export type RegName = keyof typeof REGS;

export const KVM_SEGMENT_SIZE = 24;
/** struct kvm_segment. */
export const SEGMENT = {
  base: 0,
  limit: 8,
  selector: 12,
  type: 14,
  present: 15,
  dpl: 16,
  db: 17,
  s: 18,
  l: 19,
  g: 20,
  avl: 21,
  unusable: 22,
} as const;

export const KVM_SREGS_SIZE = 312;
/** struct kvm_sregs. */
export const SREGS = {
  cs: 0,
  ds: 24,
  es: 48,
  fs: 72,
  gs: 96,
  ss: 120,
  tr: 144,
  ldt: 168,
  gdtBase: 192,
  gdtLimit: 200,
  idtBase: 208,
  idtLimit: 216,
  cr0: 224,
  cr2: 232,
  cr3: 240,
  cr4: 248,
  cr8: 256,
  efer: 264,
  apicBase: 272,
} as const;
export type SegmentName = "cs" | "ds" | "es" | "fs" | "gs" | "ss" | "tr" | "ldt";

export interface Segment {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: boolean;
  dpl: number;
  /** Default operand size (1 = 32-bit). */
  db: boolean;
  /** Code or data (as opposed to system) descriptor. */
  s: boolean;
  /** 64-bit code segment. */
  l: boolean;
  /** Limit granularity 4 KiB. */
  g: boolean;
}

export function writeSegment(view: DataView, offset: number, seg: Segment): void {
  view.setBigUint64(offset + SEGMENT.base, BigInt(seg.base), true);
  view.setUint32(offset + SEGMENT.limit, seg.limit >>> 0, true);
  view.setUint16(offset + SEGMENT.selector, seg.selector, true);
  view.setUint8(offset + SEGMENT.type, seg.type);
  view.setUint8(offset + SEGMENT.present, seg.present ? 1 : 0);
  view.setUint8(offset + SEGMENT.dpl, seg.dpl);
  view.setUint8(offset + SEGMENT.db, seg.db ? 1 : 0);
  view.setUint8(offset + SEGMENT.s, seg.s ? 1 : 0);
  view.setUint8(offset + SEGMENT.l, seg.l ? 1 : 0);
  view.setUint8(offset + SEGMENT.g, seg.g ? 1 : 0);
  view.setUint8(offset + SEGMENT.avl, 0);
  view.setUint8(offset + SEGMENT.unusable, seg.present ? 0 : 1);
}

export function readSegment(view: DataView, offset: number): Segment {
  return {
    base: Number(view.getBigUint64(offset + SEGMENT.base, true)),
    limit: view.getUint32(offset + SEGMENT.limit, true),
    selector: view.getUint16(offset + SEGMENT.selector, true),
    type: view.getUint8(offset + SEGMENT.type),
    present: view.getUint8(offset + SEGMENT.present) !== 0,
    dpl: view.getUint8(offset + SEGMENT.dpl),
    db: view.getUint8(offset + SEGMENT.db) !== 0,
    s: view.getUint8(offset + SEGMENT.s) !== 0,
    l: view.getUint8(offset + SEGMENT.l) !== 0,
    g: view.getUint8(offset + SEGMENT.g) !== 0,
  };
}

/** struct kvm_run: the shared page KVM fills on every exit. */
export const RUN = {
  requestInterruptWindow: 0,
  immediateExit: 1,
  exitReason: 8,
  readyForInterruptInjection: 12,
  ifFlag: 13,
  flags: 14,
  cr8: 16,
  apicBase: 24,
  /** The exit union. */
  union: 0x20,
  io: { direction: 0x20, size: 0x21, port: 0x22, count: 0x24, dataOffset: 0x28 },
  mmio: { physAddr: 0x20, data: 0x28, len: 0x30, isWrite: 0x34 },
  failEntry: { reason: 0x20, cpu: 0x28 },
  internal: { suberror: 0x20, ndata: 0x24, data: 0x28 },
  systemEvent: { type: 0x20 },
  eoi: { vector: 0x20 },
} as const;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

/** struct kvm_userspace_memory_region (32 bytes). */
export const USER_MEMORY_REGION_SIZE = 32;
/** struct kvm_msi (32 bytes): address_lo, address_hi, data, flags, devid, pad. */
export const KVM_MSI_SIZE = 32;
/** struct kvm_enable_cap (104 bytes): cap u32, flags u32, args[4] u64, pad[64]. */
export const KVM_ENABLE_CAP_SIZE = 104;
/** struct kvm_irq_routing header (8 bytes) and one kvm_irq_routing_entry (48 bytes). */
export const IRQ_ROUTING_HEADER_SIZE = 8;
export const IRQ_ROUTING_ENTRY_SIZE = 48;
/** struct kvm_lapic_state: the 1 KiB local APIC register page. */
export const KVM_LAPIC_STATE_SIZE = 1024;
