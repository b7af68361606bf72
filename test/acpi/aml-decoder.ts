/**
 * A small, independent AML decoder for tests: it reads back what src/acpi/aml.ts encodes
 * (Scope, Device, Name, integers, String, Buffer, Package) following ACPI 6.5 section 20, and
 * throws on anything else, so a stray byte or a wrong PkgLength fails the test.
 */

export type AmlValue =
  | { readonly kind: "integer"; readonly value: bigint }
  | { readonly kind: "string"; readonly value: string }
  | { readonly kind: "buffer"; readonly bytes: Uint8Array }
  | { readonly kind: "package"; readonly elements: readonly AmlValue[] };

export type AmlNode =
  | { readonly kind: "scope"; readonly path: string; readonly children: readonly AmlNode[] }
  | { readonly kind: "device"; readonly path: string; readonly children: readonly AmlNode[] }
  | { readonly kind: "name"; readonly path: string; readonly value: AmlValue };

class Reader {
  at: number;
  readonly bytes: Uint8Array;
  constructor(bytes: Uint8Array, at = 0) {
    this.bytes = bytes;
    this.at = at;
  }
  byte(): number {
    if (this.at >= this.bytes.length) throw new Error(`AML: read past the end at ${this.at}`);
    return this.bytes[this.at++];
  }
  le(sizeBytes: number): bigint {
    let v = 0n;
    for (let i = 0; i < sizeBytes; i++) v |= BigInt(this.byte()) << BigInt(8 * i);
    return v;
  }
  /** Returns the end offset of the package whose PkgLength starts here. */
  pkgEnd(): number {
    const start = this.at;
    const lead = this.byte();
    const follow = lead >> 6;
    let length = follow === 0 ? lead & 0x3f : lead & 0x0f;
    if (follow !== 0 && (lead & 0x30) !== 0) throw new Error("AML: PkgLength bits 5:4 must be zero");
    for (let i = 0; i < follow; i++) length |= this.byte() << (4 + 8 * i);
    return start + length;
  }
  nameSeg(): string {
    let s = "";
    for (let i = 0; i < 4; i++) s += String.fromCharCode(this.byte());
    if (!/^[A-Z_][A-Z0-9_]{3}$/.test(s)) throw new Error(`AML: bad NameSeg "${s}"`);
    return s;
  }
  nameString(): string {
    let prefix = "";
    if (this.bytes[this.at] === 0x5c) {
      prefix = "\\";
      this.at++;
    }
    while (this.bytes[this.at] === 0x5e) {
      prefix += "^";
      this.at++;
    }
    const b = this.bytes[this.at];
    if (b === 0x2e) {
      this.at++;
      return `${prefix}${this.nameSeg()}.${this.nameSeg()}`;
    }
    if (b === 0x2f) {
      this.at++;
      const count = this.byte();
      return prefix + Array.from({ length: count }, () => this.nameSeg()).join(".");
    }
    if (b === 0x00) {
      this.at++;
      return prefix;
    }
    return prefix + this.nameSeg();
  }
}

function dataObject(r: Reader): AmlValue {
  const op = r.byte();
  switch (op) {
    case 0x00:
      return { kind: "integer", value: 0n };
    case 0x01:
      return { kind: "integer", value: 1n };
    case 0xff:
      return { kind: "integer", value: 0xffff_ffff_ffff_ffffn };
    case 0x0a:
      return { kind: "integer", value: r.le(1) };
    case 0x0b:
      return { kind: "integer", value: r.le(2) };
    case 0x0c:
      return { kind: "integer", value: r.le(4) };
    case 0x0e:
      return { kind: "integer", value: r.le(8) };
    case 0x0d: {
      let s = "";
      for (let c = r.byte(); c !== 0; c = r.byte()) s += String.fromCharCode(c);
      return { kind: "string", value: s };
    }
    case 0x11: {
      const end = r.pkgEnd();
      const size = dataObject(r);
      if (size.kind !== "integer") throw new Error("AML: BufferSize is not an integer");
      const bytes = r.bytes.slice(r.at, end);
      if (BigInt(bytes.length) !== size.value) throw new Error("AML: BufferSize != bytes in the package");
      r.at = end;
      return { kind: "buffer", bytes };
    }
    case 0x12: {
      const end = r.pkgEnd();
      const count = r.byte();
      const elements: AmlValue[] = [];
      while (r.at < end) elements.push(dataObject(r));
      if (r.at !== end || elements.length !== count) throw new Error("AML: Package elements do not fill it");
      return { kind: "package", elements };
    }
    default:
      throw new Error(`AML: unexpected data opcode 0x${op.toString(16)} at ${r.at - 1}`);
  }
}

function termList(r: Reader, end: number): AmlNode[] {
  const nodes: AmlNode[] = [];
  while (r.at < end) {
    const op = r.byte();
    if (op === 0x10) {
      const pkgEnd = r.pkgEnd();
      const path = r.nameString();
      nodes.push({ kind: "scope", path, children: termList(r, pkgEnd) });
    } else if (op === 0x5b && r.bytes[r.at] === 0x82) {
      r.at++;
      const pkgEnd = r.pkgEnd();
      const path = r.nameString();
      nodes.push({ kind: "device", path, children: termList(r, pkgEnd) });
    } else if (op === 0x08) {
      const path = r.nameString();
      nodes.push({ kind: "name", path, value: dataObject(r) });
    } else {
      throw new Error(`AML: unexpected term opcode 0x${op.toString(16)} at ${r.at - 1}`);
    }
  }
  if (r.at !== end) throw new Error(`AML: term list overran its package (${r.at} > ${end})`);
  return nodes;
}

/** Decodes a whole TermList (a DSDT body, or concatenated terms). */
export function decodeAml(bytes: Uint8Array, start = 0, end = bytes.length): AmlNode[] {
  return termList(new Reader(bytes, start), end);
}

/** Finds a child Name's value by its NameSeg. */
export function nameValue(children: readonly AmlNode[], seg: string): AmlValue | undefined {
  for (const c of children) if (c.kind === "name" && c.path === seg) return c.value;
  return undefined;
}
