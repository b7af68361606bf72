/**
 * A flattened device tree (DTB) writer: the Devicetree Specification v0.4, chapter 5 (header,
 * memory reservation block, structure block, strings block), version 17.
 *
 * Build a tree of `FdtNode`s, give property values with the helpers below (`u32`, `u64`, `str`,
 * `strList`, `empty`), and `buildFdt` lays it out. Property values are big-endian, as 5.3 asks.
 */

const FDT_MAGIC = 0xd00dfeed;
const FDT_BEGIN_NODE = 1;
const FDT_END_NODE = 2;
const FDT_PROP = 3;
const FDT_END = 9;
const HEADER_BYTES = 40;
const FDT_VERSION = 17;
const FDT_LAST_COMPATIBLE_VERSION = 16;

export class FdtError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FdtError";
  }
}

export class FdtNode {
  readonly name: string;
  readonly props: { readonly name: string; readonly value: Uint8Array }[] = [];
  readonly children: FdtNode[] = [];

  constructor(name: string) {
    // DT spec 2.2.1: node-name@unit-address, at most 31 characters for the name part.
    if (name.includes("/") || name.includes("\0")) throw new FdtError(`bad node name "${name}"`);
    this.name = name;
  }

  /** Adds a property; a second property of the same name is an error (2.2.4 names are unique). */
  prop(name: string, value: Uint8Array): this {
    if (this.props.some((p) => p.name === name))
      throw new FdtError(`${this.name}: duplicate property ${name}`);
    this.props.push({ name, value });
    return this;
  }

  /** Adds and returns a child node. */
  child(name: string): FdtNode {
    if (this.children.some((c) => c.name === name))
      throw new FdtError(`${this.name}: duplicate node ${name}`);
    const c = new FdtNode(name);
    this.children.push(c);
    return c;
  }
}

/** A <u32> list ("cells"). */
export function u32(...cells: number[]): Uint8Array {
  const out = new Uint8Array(cells.length * 4);
  const v = new DataView(out.buffer);
  cells.forEach((c, i) => {
    if (!Number.isInteger(c) || c < 0 || c > 0xffff_ffff) throw new FdtError(`cell ${c} is not a u32`);
    v.setUint32(i * 4, c, false);
  });
  return out;
}

/** Each value as two cells, high first (a <u64>, or an address/size with 2 cells). */
export function u64(...values: number[]): Uint8Array {
  const cells: number[] = [];
  for (const x of values) {
    if (!Number.isSafeInteger(x) || x < 0) throw new FdtError(`value ${x} is not a u64 below 2^53`);
    cells.push(Math.floor(x / 0x1_0000_0000), x % 0x1_0000_0000);
  }
  return u32(...cells);
}

/** A NUL-terminated string. */
export function str(s: string): Uint8Array {
  return strList([s]);
}

/** A <stringlist>: NUL-terminated strings back to back. */
export function strList(list: readonly string[]): Uint8Array {
  return new TextEncoder().encode(list.map((s) => `${s}\0`).join(""));
}

/** An empty (boolean) property. */
export function empty(): Uint8Array {
  return new Uint8Array(0);
}

/** Concatenates property value pieces. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export interface FdtOptions {
  /** boot_cpuid_phys (5.2): the physical ID of the boot CPU. */
  readonly bootCpuId?: number;
  /** Memory reservation block entries (5.3). */
  readonly reservations?: readonly { readonly address: number; readonly sizeBytes: number }[];
}

/** Lays out the tree rooted at `root` (whose name must be "") as a DTB. */
export function buildFdt(root: FdtNode, options: FdtOptions = {}): Uint8Array {
  if (root.name !== "") throw new FdtError("the root node has an empty name");
  const strings: number[] = [];
  const stringOffsets = new Map<string, number>();
  const encoder = new TextEncoder();
  const nameOffset = (name: string): number => {
    let off = stringOffsets.get(name);
    if (off === undefined) {
      off = strings.length;
      stringOffsets.set(name, off);
      for (const b of encoder.encode(name)) strings.push(b);
      strings.push(0);
    }
    return off;
  };
  const struct: Uint8Array[] = [];
  let structBytes = 0;
  const emit = (bytes: Uint8Array) => {
    // Every token starts 4-byte aligned (5.4.1): pad each piece.
    const padded = new Uint8Array((bytes.length + 3) & ~3);
    padded.set(bytes);
    struct.push(padded);
    structBytes += padded.length;
  };
  const token = (...values: number[]) => emit(u32(...values));
  const walk = (node: FdtNode) => {
    token(FDT_BEGIN_NODE);
    emit(concat(encoder.encode(node.name), new Uint8Array(1)));
    for (const p of node.props) {
      token(FDT_PROP, p.value.length, nameOffset(p.name));
      emit(p.value);
    }
    for (const c of node.children) walk(c);
    token(FDT_END_NODE);
  };
  walk(root);
  token(FDT_END);

  const reservations = options.reservations ?? [];
  const rsvOffset = HEADER_BYTES; // 8-byte aligned (5.3)
  const rsvBytes = (reservations.length + 1) * 16;
  const structOffset = rsvOffset + rsvBytes;
  const stringsOffset = structOffset + structBytes;
  const total = stringsOffset + strings.length;
  const out = new Uint8Array((total + 7) & ~7);
  const v = new DataView(out.buffer);
  v.setUint32(0, FDT_MAGIC, false);
  v.setUint32(4, out.length, false);
  v.setUint32(8, structOffset, false);
  v.setUint32(12, stringsOffset, false);
  v.setUint32(16, rsvOffset, false);
  v.setUint32(20, FDT_VERSION, false);
  v.setUint32(24, FDT_LAST_COMPATIBLE_VERSION, false);
  v.setUint32(28, options.bootCpuId ?? 0, false);
  v.setUint32(32, strings.length, false);
  v.setUint32(36, structBytes, false);
  reservations.forEach((r, i) => {
    v.setBigUint64(rsvOffset + i * 16, BigInt(r.address), false);
    v.setBigUint64(rsvOffset + i * 16 + 8, BigInt(r.sizeBytes), false);
  });
  let o = structOffset;
  for (const piece of struct) {
    out.set(piece, o);
    o += piece.length;
  }
  out.set(strings, stringsOffset);
  return out;
}
