/**
 * A device's register bank declared as a table: each register has a name, an offset, a width
 * and, per 32-bit half, its read-write and write-1-to-clear bits. Bits outside both masks are
 * read-only (status, capabilities) or reserved (read as zero, writes ignored). One table drives
 * the masks, the read-as-zero of undeclared space and the owner lookup, as QEMU's
 * `vtd_define_quad`. Used by the VT-d and SMMUv3 register files.
 *
 * Storage is a Uint32Array of dwords; a 64-bit register is two dwords, low first. Side effects
 * (commands, invalidations, queue pointer updates) are the owner's, through `onWrite` or by
 * calling `storeDword` itself.
 */

export interface RegisterDef {
  readonly name: string;
  readonly offset: number;
  readonly widthBytes: 4 | 8;
  /** Read-write bits, low dword then high dword. */
  readonly rw: readonly number[];
  /** Write-1-to-clear bits, low dword then high dword. */
  readonly w1c: readonly number[];
  /** Write-only registers read as zero (GCMD). */
  readonly writeOnly?: boolean;
}

/** Called after a guest write landed in dword `dwordIndex` (offset / 4) of register `reg`. */
export type RegisterWriteHook<D extends RegisterDef = RegisterDef> = (
  reg: D,
  dwordIndex: number,
  written: number,
) => void;

export class RegisterFile<D extends RegisterDef = RegisterDef> {
  readonly values: Uint32Array;
  private readonly rwMask: Uint32Array;
  private readonly w1cMask: Uint32Array;
  private readonly owner: (D | undefined)[];
  readonly defs: readonly D[];
  onWrite: RegisterWriteHook<D> = () => {};

  /** `sizeBytes`: the bank's span; every register must lie inside it. */
  constructor(defs: readonly D[], sizeBytes: number) {
    this.defs = defs;
    this.values = new Uint32Array(sizeBytes / 4);
    this.rwMask = new Uint32Array(sizeBytes / 4);
    this.w1cMask = new Uint32Array(sizeBytes / 4);
    this.owner = new Array(sizeBytes / 4);
    for (const d of defs) {
      const first = d.offset >> 2;
      for (let k = 0; k < d.widthBytes / 4; k++) {
        this.owner[first + k] = d;
        this.rwMask[first + k] = d.rw[k] >>> 0;
        this.w1cMask[first + k] = d.w1c[k] >>> 0;
      }
    }
  }

  byName(name: string): D | undefined {
    return this.defs.find((d) => d.name === name);
  }

  /** The register that dword `index` (offset / 4) belongs to. */
  ownerOf(index: number): D | undefined {
    return this.owner[index];
  }

  /** Read-write or write-1-to-clear bits of dword `index`. */
  writableBits(index: number): number {
    return (this.rwMask[index] | this.w1cMask[index]) >>> 0;
  }

  // ---- Hardware-side accessors (no masks) ----

  get32(offset: number): number {
    return this.values[offset >> 2];
  }
  set32(offset: number, value: number): void {
    this.values[offset >> 2] = value >>> 0;
  }
  getHi(offset: number): number {
    return this.values[(offset >> 2) + 1];
  }
  setHi(offset: number, value: number): void {
    this.values[(offset >> 2) + 1] = value >>> 0;
  }
  get64(offset: number): bigint {
    const i = offset >> 2;
    return (BigInt(this.values[i + 1]) << 32n) | BigInt(this.values[i]);
  }
  set64(offset: number, value: bigint): void {
    const i = offset >> 2;
    this.values[i] = Number(value & 0xffffffffn);
    this.values[i + 1] = Number((value >> 32n) & 0xffffffffn);
  }
  /** A 64-bit register as a number when it fits below 2^53, else -1. */
  getSafe64(offset: number): number {
    const hi = this.getHi(offset);
    if (hi >= 0x200000) return -1;
    return hi * 0x1_0000_0000 + this.get32(offset);
  }

  // ---- Guest-side accessors (masks and hooks) ----

  /** A guest read of one dword. */
  readDword(index: number): number {
    const d = this.owner[index];
    if (d === undefined || d.writeOnly) return 0;
    return this.values[index];
  }

  /** A guest write of one dword, without running the hook. Returns false for unowned dwords. */
  storeDword(index: number, value: number): boolean {
    const d = this.owner[index];
    if (d === undefined) return false;
    const v = value >>> 0;
    const rw = this.rwMask[index];
    const w1c = this.w1cMask[index];
    let cur = this.values[index];
    cur = ((cur & ~rw) | (v & rw)) >>> 0;
    cur = (cur & ~(v & w1c)) >>> 0;
    this.values[index] = cur;
    return true;
  }

  /** A guest write of one dword, then its side effects. */
  writeDword(index: number, value: number): void {
    if (this.storeDword(index, value)) this.onWrite(this.owner[index]!, index, value >>> 0);
  }

  /** A guest write of two dwords (one 64-bit access): both land before either side effect. */
  writeQword(index: number, lo: number, hi: number): void {
    const okLo = this.storeDword(index, lo);
    const okHi = this.storeDword(index + 1, hi);
    if (okLo) this.onWrite(this.owner[index]!, index, lo >>> 0);
    if (okHi) this.onWrite(this.owner[index + 1]!, index + 1, hi >>> 0);
  }
}
