/**
 * SMMUv3 event record types and the 32-byte record layout (SMMUv3 7.3).
 *
 * Record: dword0 Type 7:0, SSV 11, SubstreamID 31:12, StreamID 63:32; dword1 STAG 15:0, Stall 31,
 * PnU 33, InD 34, RnW 35, S2 39, CLASS 41:40, TTRnW 44; dword2 InputAddr 63:0; dword3 IPA 51:12 (stage-2
 * faults) or FetchAddr 51:3 (fetch aborts).
 */

export const EVT = {
  F_UUT: 0x01,
  C_BAD_STREAMID: 0x02,
  F_STE_FETCH: 0x03,
  C_BAD_STE: 0x04,
  F_BAD_ATS_TREQ: 0x05,
  F_STREAM_DISABLED: 0x06,
  F_TRANSL_FORBIDDEN: 0x07,
  C_BAD_SUBSTREAMID: 0x08,
  F_CD_FETCH: 0x09,
  C_BAD_CD: 0x0a,
  F_WALK_EABT: 0x0b,
  F_TRANSLATION: 0x10,
  F_ADDR_SIZE: 0x11,
  F_ACCESS: 0x12,
  F_PERMISSION: 0x13,
  F_TLB_CONFLICT: 0x20,
  F_CFG_CONFLICT: 0x21,
  E_PAGE_REQUEST: 0x24,
  F_VMS_FETCH: 0x25,
} as const;

export type EventType = (typeof EVT)[keyof typeof EVT];

const EVENT_NAMES: string[] = Array.from({ length: 256 }, (_, t) => `EVENT_0x${t.toString(16)}`);
for (const [name, code] of Object.entries(EVT)) EVENT_NAMES[code] = name;

export function eventName(type: number): string {
  return EVENT_NAMES[type & 0xff];
}

/** CLASS field of stage-2 fault records (7.3.12): what the stage-2 access was for. */
export const CLASS_CD = 0b00;
export const CLASS_TT = 0b01;
export const CLASS_IN = 0b10;

export const EVENT_RECORD_BYTES = 32;

/**
 * A decoded event, reused by the model: fill the fields, then encode. Addresses are bigints only
 * in `inputAddr` (a 64-bit device address); IPA and fetch addresses fit below 2^52.
 */
export class EventRecord {
  type = 0;
  streamId = 0;
  ssv = false;
  substreamId = 0;
  rnw = false;
  pnu = false;
  ind = false;
  s2 = false;
  cls = 0;
  /** F_PERMISSION with CLASS TT: the descriptor access was a read (TTRnW). */
  ttRead = false;
  inputAddr = 0n;
  /** IPA of a stage-2 fault (bits 51:12 are recorded). */
  ipa = 0;
  /** Fetch address of F_STE_FETCH / F_CD_FETCH / F_WALK_EABT (bits 51:3 are recorded). */
  fetchAddr = 0;
  /** Whether dword3 holds an IPA, a fetch address or nothing. */
  addrKind: "none" | "ipa" | "fetch" = "none";

  reset(type: number, streamId: number): this {
    this.type = type;
    this.streamId = streamId >>> 0;
    this.ssv = false;
    this.substreamId = 0;
    this.rnw = false;
    this.pnu = false;
    this.ind = false;
    this.s2 = false;
    this.cls = 0;
    this.ttRead = false;
    this.inputAddr = 0n;
    this.ipa = 0;
    this.fetchAddr = 0;
    this.addrKind = "none";
    return this;
  }

  /** Identity for merging (7.3.1): every field except InputAddr[11:0]. */
  signature(): string {
    const flags =
      (this.ssv ? 1 : 0) | (this.rnw ? 2 : 0) | (this.pnu ? 4 : 0) | (this.ind ? 8 : 0) | (this.s2 ? 16 : 0);
    return `${this.type}/${this.substreamId}/${flags}/${this.cls}/${this.inputAddr >> 12n}/${this.ipa}/${this.fetchAddr}`;
  }

  /** Writes the 32-byte little-endian record into `view` at `offset`. */
  encode(view: DataView, offset: number): void {
    const w0 = (this.type & 0xff) | (this.ssv ? 1 << 11 : 0) | ((this.substreamId & 0xfffff) << 12);
    view.setUint32(offset, w0 >>> 0, true);
    view.setUint32(offset + 4, this.streamId >>> 0, true);
    view.setUint32(offset + 8, 0, true); // STAG 0, Stall 0: the model never stalls (IDR0.STALL_MODEL = 0b01)
    const w3 =
      (this.pnu ? 1 << 1 : 0) |
      (this.ind ? 1 << 2 : 0) |
      (this.rnw ? 1 << 3 : 0) |
      (this.s2 ? 1 << 7 : 0) |
      ((this.cls & 3) << 8) |
      (this.ttRead ? 1 << 12 : 0);
    view.setUint32(offset + 12, w3 >>> 0, true);
    view.setBigUint64(offset + 16, BigInt.asUintN(64, this.inputAddr), true);
    let d3 = 0;
    if (this.addrKind === "ipa") d3 = this.ipa - (this.ipa % 4096);
    else if (this.addrKind === "fetch") d3 = this.fetchAddr - (this.fetchAddr % 8);
    d3 %= 2 ** 52;
    view.setUint32(offset + 24, (d3 % 2 ** 32) >>> 0, true);
    view.setUint32(offset + 28, Math.floor(d3 / 2 ** 32), true);
  }

  /** Decodes a record (used by tests and tools reading the guest's event queue). */
  static decode(view: DataView, offset: number): EventRecord {
    const r = new EventRecord();
    const w0 = view.getUint32(offset, true);
    r.type = w0 & 0xff;
    r.ssv = ((w0 >>> 11) & 1) === 1;
    r.substreamId = w0 >>> 12;
    r.streamId = view.getUint32(offset + 4, true);
    const w3 = view.getUint32(offset + 12, true);
    r.pnu = ((w3 >>> 1) & 1) === 1;
    r.ind = ((w3 >>> 2) & 1) === 1;
    r.rnw = ((w3 >>> 3) & 1) === 1;
    r.s2 = ((w3 >>> 7) & 1) === 1;
    r.cls = (w3 >>> 8) & 3;
    r.ttRead = ((w3 >>> 12) & 1) === 1;
    r.inputAddr = view.getBigUint64(offset + 16, true);
    const d3 = view.getUint32(offset + 28, true) * 2 ** 32 + view.getUint32(offset + 24, true);
    r.ipa = d3 - (d3 % 4096);
    r.fetchAddr = d3 - (d3 % 8);
    return r;
  }
}
