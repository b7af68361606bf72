/**
 * The SMMUv3 register frame (SMMUv3 6.3) as a table: every register once, with its width, its
 * read-write bits per 32-bit half, its reset value, and the conditions under which the
 * architecture ignores writes to it (a CR0 enable bit, an IRQ_CTRL enable bit, GBPA's Update
 * handshake). Storage, masks and read-as-zero of undeclared space are the generic
 * `RegisterFile`'s; side effects (command consumption, cache drops, interrupts) are the
 * SMMU's (src/smmuv3/smmu.ts).
 *
 * Registers whose state lives elsewhere: EVENTQ_PROD/CONS (and their page-0 aliases) are the
 * event queue's (event-queue.ts); their rows give the write mask and lock only.
 */
import { type RegisterDef, RegisterFile } from "../platform/register-file.ts";
import {
  AIDR_VALUE,
  CIDR_VALUES,
  CR0_CMDQEN,
  CR0_EVENTQEN,
  CR0_SMMUEN,
  CR0_WRITABLE,
  CR1_MASK,
  CR2_MASK,
  GBPA_FIELDS,
  GBPA_RESET,
  GBPA_UPDATE,
  GERROR_MASK,
  IDR3_VALUE,
  IDR5_VALUE,
  IIDR_VALUE,
  IRQ_CTRL_MASK,
  IRQ_EVENTQ,
  IRQ_GERROR,
  idr0,
  idr1,
  REG,
  SMMU_FRAME_BYTES,
  type SmmuFeatures,
} from "./regs.ts";

export interface SmmuRegisterDef extends RegisterDef {
  /** Writes are ignored while any of these CR0 bits is set (e.g. STRTAB_BASE while SMMUEN). */
  readonly lockedByCr0: number;
  /** Writes are ignored while any of these IRQ_CTRL bits is set (an IRQ's own configuration). */
  readonly lockedByIrqCtrl: number;
  /** A write takes effect only when it sets this bit, which is not stored (GBPA.Update). */
  readonly commitBit: number;
  /** Value at reset, low dword then high dword. */
  readonly reset: readonly number[];
}

interface RowOptions {
  readonly rw?: readonly number[];
  readonly reset?: readonly number[];
  readonly lockedByCr0?: number;
  readonly lockedByIrqCtrl?: number;
  readonly commitBit?: number;
}

function reg(name: string, offset: number, widthBytes: 4 | 8, o: RowOptions = {}): SmmuRegisterDef {
  return {
    name,
    offset,
    widthBytes,
    rw: o.rw ?? [0, 0],
    w1c: [0, 0],
    reset: o.reset ?? [0, 0],
    lockedByCr0: o.lockedByCr0 ?? 0,
    lockedByIrqCtrl: o.lockedByIrqCtrl ?? 0,
    commitBit: o.commitBit ?? 0,
  };
}

/** Address bits 51:32 of a base register's high half, plus RA (bit 62) for table/queue bases. */
const BASE_HI = (1 << 30) | 0xfffff;
const QUEUE_PTR = 0xfffff;
/** EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG (bit 31) and the pointer. */
const EVENTQ_PTR = 0x8000_0000 | QUEUE_PTR;
const QUEUES = CR0_CMDQEN | CR0_EVENTQEN;

/** IRQ_CFG0 (ADDR 51:2), IRQ_CFG1 (DATA), IRQ_CFG2 (MemAttr, SH) of one interrupt source. */
function irqConfigRows(prefix: string, cfg0: number, cfg1: number, cfg2: number, enable: number) {
  return [
    reg(`${prefix}_IRQ_CFG0`, cfg0, 8, { rw: [0xfffffffc, 0xfffff], lockedByIrqCtrl: enable }),
    reg(`${prefix}_IRQ_CFG1`, cfg1, 4, { rw: [0xffffffff], lockedByIrqCtrl: enable }),
    reg(`${prefix}_IRQ_CFG2`, cfg2, 4, { rw: [0x3f], lockedByIrqCtrl: enable }),
  ];
}

/** The register table for a feature set (the ID registers carry its values). */
export function smmuRegisterLayout(f: SmmuFeatures): SmmuRegisterDef[] {
  return [
    reg("IDR0", REG.IDR0, 4, { reset: [idr0(f)] }),
    reg("IDR1", REG.IDR1, 4, { reset: [idr1(f)] }),
    reg("IDR2", REG.IDR2, 4),
    reg("IDR3", REG.IDR3, 4, { reset: [IDR3_VALUE] }),
    reg("IDR4", REG.IDR4, 4),
    reg("IDR5", REG.IDR5, 4, { reset: [IDR5_VALUE] }),
    reg("IIDR", REG.IIDR, 4, { reset: [IIDR_VALUE] }),
    reg("AIDR", REG.AIDR, 4, { reset: [AIDR_VALUE] }),
    reg("CR0", REG.CR0, 4, { rw: [CR0_WRITABLE] }),
    // The model completes every CR0 update before the write returns: CR0ACK follows (6.3.10).
    reg("CR0ACK", REG.CR0ACK, 4),
    // CR1 may only change while the SMMU and both queues are disabled (6.3.11).
    reg("CR1", REG.CR1, 4, { rw: [CR1_MASK], lockedByCr0: CR0_SMMUEN | QUEUES }),
    reg("CR2", REG.CR2, 4, { rw: [CR2_MASK], lockedByCr0: CR0_SMMUEN }),
    reg("STATUSR", REG.STATUSR, 4),
    // 6.3.14: fields take effect only with a write that sets Update; Update then reads 0.
    reg("GBPA", REG.GBPA, 4, { rw: [GBPA_FIELDS], reset: [GBPA_RESET], commitBit: GBPA_UPDATE }),
    reg("AGBPA", REG.AGBPA, 4),
    reg("IRQ_CTRL", REG.IRQ_CTRL, 4, { rw: [IRQ_CTRL_MASK] }),
    reg("IRQ_CTRLACK", REG.IRQ_CTRLACK, 4),
    // GERROR is the SMMU's; software acknowledges by making GERRORN equal to it (7.5).
    reg("GERROR", REG.GERROR, 4),
    reg("GERRORN", REG.GERRORN, 4, { rw: [GERROR_MASK] }),
    // IRQ configuration may change only while that interrupt is disabled (6.3.19, 6.3.31).
    ...irqConfigRows("GERROR", REG.GERROR_IRQ_CFG0, REG.GERROR_IRQ_CFG1, REG.GERROR_IRQ_CFG2, IRQ_GERROR),
    // Stream table base registers are ignored while SMMUEN == 1 (6.3.23).
    reg("STRTAB_BASE", REG.STRTAB_BASE, 8, { rw: [0xffffffc0, BASE_HI], lockedByCr0: CR0_SMMUEN }),
    reg("STRTAB_BASE_CFG", REG.STRTAB_BASE_CFG, 4, { rw: [0x307ff], lockedByCr0: CR0_SMMUEN }),
    reg("CMDQ_BASE", REG.CMDQ_BASE, 8, { rw: [0xffffffff, BASE_HI], lockedByCr0: CR0_CMDQEN }),
    reg("CMDQ_PROD", REG.CMDQ_PROD, 4, { rw: [QUEUE_PTR] }),
    // CONS is read-only while the queue is enabled (6.3.26); ERR (30:24) is the SMMU's.
    reg("CMDQ_CONS", REG.CMDQ_CONS, 4, { rw: [QUEUE_PTR], lockedByCr0: CR0_CMDQEN }),
    reg("EVENTQ_BASE", REG.EVENTQ_BASE, 8, { rw: [0xffffffff, BASE_HI], lockedByCr0: CR0_EVENTQEN }),
    // PROD belongs to the SMMU while the queue is enabled (6.3.28).
    reg("EVENTQ_PROD", REG.EVENTQ_PROD, 4, { rw: [EVENTQ_PTR], lockedByCr0: CR0_EVENTQEN }),
    reg("EVENTQ_CONS", REG.EVENTQ_CONS, 4, { rw: [EVENTQ_PTR] }),
    reg("EVENTQ_PROD_P0", REG.EVENTQ_PROD_P0, 4, { rw: [EVENTQ_PTR], lockedByCr0: CR0_EVENTQEN }),
    reg("EVENTQ_CONS_P0", REG.EVENTQ_CONS_P0, 4, { rw: [EVENTQ_PTR] }),
    ...irqConfigRows("EVENTQ", REG.EVENTQ_IRQ_CFG0, REG.EVENTQ_IRQ_CFG1, REG.EVENTQ_IRQ_CFG2, IRQ_EVENTQ),
    ...CIDR_VALUES.map((v, i) => reg(`CIDR${i}`, REG.CIDR0 + 4 * i, 4, { reset: [v] })),
  ];
}

const CR0_INDEX = REG.CR0 >> 2;
const IRQ_CTRL_INDEX = REG.IRQ_CTRL >> 2;

/** The frame's registers: guest writes go through `guestWrite`, the SMMU's own through `set32`. */
export class SmmuRegisters extends RegisterFile<SmmuRegisterDef> {
  /** The dword's value before the last accepted `guestWrite` (for edge-triggered side effects). */
  previous = 0;

  constructor(features: SmmuFeatures) {
    super(smmuRegisterLayout(features), SMMU_FRAME_BYTES);
    this.reset();
  }

  reset(): void {
    this.values.fill(0);
    for (const d of this.defs) {
      for (let k = 0; k < d.widthBytes / 4; k++) this.values[(d.offset >> 2) + k] = (d.reset[k] ?? 0) >>> 0;
    }
  }

  /** True when `offset` starts a 64-bit register (the only places 8-byte accesses are allowed). */
  is64Bit(offset: number): boolean {
    const d = this.ownerOf(offset >> 2);
    return d !== undefined && d.widthBytes === 8 && d.offset === offset;
  }

  /**
   * A guest write of dword `index`: stored under the register's mask unless the register is
   * read-only or reserved, locked by CR0 / IRQ_CTRL, or lacks its commit bit. Returns the
   * register written (`previous` then holds the old dword), or undefined for an ignored write.
   */
  guestWrite(index: number, value: number): SmmuRegisterDef | undefined {
    const d = this.ownerOf(index);
    if (d === undefined || this.writableBits(index) === 0) return undefined;
    if ((this.values[CR0_INDEX] & d.lockedByCr0) !== 0) return undefined;
    if ((this.values[IRQ_CTRL_INDEX] & d.lockedByIrqCtrl) !== 0) return undefined;
    if (d.commitBit !== 0 && (value & d.commitBit) === 0) return undefined;
    this.previous = this.values[index];
    this.storeDword(index, value);
    return d;
  }
}
