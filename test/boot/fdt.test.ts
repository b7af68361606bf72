import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { buildFdt, FdtError, FdtNode, str, strList, u32, u64 } from "../../src/boot/fdt.ts";

function be32(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(off, false);
}

test("FDT header (DT spec 5.2): magic, version 17, last compatible 16, offsets and sizes consistent", () => {
  const root = new FdtNode("");
  root.prop("#address-cells", u32(2));
  root.child("chosen").prop("bootargs", str("console=ttyAMA0"));
  const dtb = buildFdt(root, { bootCpuId: 3 });
  assert.equal(be32(dtb, 0), 0xd00dfeed);
  assert.equal(be32(dtb, 4), dtb.length);
  assert.equal(be32(dtb, 20), 17);
  assert.equal(be32(dtb, 24), 16);
  assert.equal(be32(dtb, 28), 3);
  const structOff = be32(dtb, 8);
  const stringsOff = be32(dtb, 12);
  assert.equal(be32(dtb, 16) % 8, 0, "memory reservation block 8-byte aligned (5.3)");
  assert.equal(structOff % 4, 0, "structure block 4-byte aligned (5.4)");
  assert.equal(structOff + be32(dtb, 36), stringsOff);
  assert.ok(stringsOff + be32(dtb, 32) <= dtb.length);
  assert.equal(be32(dtb, structOff), 1, "FDT_BEGIN_NODE first");
  assert.equal(be32(dtb, stringsOff - 4), 9, "FDT_END last");
});

test("FDT property values are big-endian cells; u64 is two cells, high first", () => {
  assert.deepEqual([...u32(0x01020304)], [1, 2, 3, 4]);
  assert.deepEqual([...u64(0x1_0000_0002)], [0, 0, 0, 1, 0, 0, 0, 2]);
  assert.deepEqual([...strList(["a", "bc"])], [0x61, 0, 0x62, 0x63, 0]);
  assert.throws(() => u32(2 ** 32), FdtError);
  assert.throws(() => u64(-1), FdtError);
});

test("FDT: duplicate properties and nodes are refused (2.2.4)", () => {
  const n = new FdtNode("");
  n.prop("a", u32(1));
  assert.throws(() => n.prop("a", u32(2)), FdtError);
  n.child("x");
  assert.throws(() => n.child("x"), FdtError);
  assert.throws(() => new FdtNode("a/b"), FdtError);
});

test("FDT round trip through dtc (the reference decompiler)", (t) => {
  const dtc = spawnSync("dtc", ["--version"]);
  if (dtc.error || dtc.status !== 0) {
    t.skip("SKIPPED: dtc (device-tree-compiler) is not installed; apt-get install device-tree-compiler");
    return;
  }
  const root = new FdtNode("");
  root.prop("compatible", str("linux,dummy-virt"));
  root.prop("#address-cells", u32(2));
  root.prop("#size-cells", u32(2));
  const mem = root.child("memory@40000000");
  mem.prop("device_type", str("memory"));
  mem.prop("reg", u64(0x4000_0000, 0x2000_0000));
  const dtb = buildFdt(root, { reservations: [{ address: 0x4800_0000, sizeBytes: 0x1000 }] });
  const r = spawnSync("dtc", ["-I", "dtb", "-O", "dts", "-"], { input: dtb, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\/memreserve\/\s+0x0*48000000 0x0*1000;/);
  assert.match(r.stdout, /compatible = "linux,dummy-virt";/);
  assert.match(
    r.stdout,
    /memory@40000000 \{\s+device_type = "memory";\s+reg = <0x00 0x40000000 0x00 0x20000000>;/,
  );
});
