/**
 * Our virtio-iommu wire constants and layouts against the Linux UAPI headers
 * (<linux/virtio_iommu.h>, <linux/virtio_ids.h>): a small C program compiled here prints the
 * structure sizes, field offsets and constants, and each is compared with src/virtio-iommu/wire.ts
 * and with the bytes our encoders and decoders put at those offsets. Skips loudly without gcc or
 * the headers.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { readU32Le, readU64Le } from "../../src/engine/little-endian.ts";
import { encodeFaultRecord } from "../../src/virtio-iommu/fault-events.ts";
import {
  DecodedRequest,
  decodeRequest,
  encodeAttach,
  encodeDetach,
  encodeMap,
  encodeProbe,
  encodeUnmap,
} from "../../src/virtio-iommu/requests.ts";
import * as W from "../../src/virtio-iommu/wire.ts";

const HEADERS = ["/usr/include/linux/virtio_iommu.h", "/usr/include/linux/virtio_ids.h"];

/** name -> value, printed by the C program as "name value" lines. */
const PROGRAM = `
#include <stdio.h>
#include <stddef.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_iommu.h>
#define P(name, value) printf("%s %lu\\n", name, (unsigned long)(value))
#define S(t) P("sizeof." #t, sizeof(struct virtio_iommu_##t))
#define O(t, f) P("offsetof." #t "." #f, offsetof(struct virtio_iommu_##t, f))
#define C(c) P(#c, c)
int main(void) {
  S(req_head); S(req_tail); S(req_attach); S(req_detach); S(req_map); S(req_unmap); S(req_probe);
  S(fault); S(config); S(probe_property); S(probe_resv_mem);
  O(req_attach, domain); O(req_attach, endpoint); O(req_attach, flags); O(req_attach, reserved);
  O(req_attach, tail);
  O(req_detach, domain); O(req_detach, endpoint); O(req_detach, tail);
  O(req_map, domain); O(req_map, virt_start); O(req_map, virt_end); O(req_map, phys_start);
  O(req_map, flags); O(req_map, tail);
  O(req_unmap, domain); O(req_unmap, virt_start); O(req_unmap, virt_end); O(req_unmap, reserved);
  O(req_unmap, tail);
  O(req_probe, endpoint); O(req_probe, properties);
  O(fault, reason); O(fault, flags); O(fault, endpoint); O(fault, address);
  O(config, page_size_mask); O(config, input_range); O(config, domain_range); O(config, probe_size);
  O(config, bypass);
  O(probe_resv_mem, subtype); O(probe_resv_mem, start); O(probe_resv_mem, end);
  C(VIRTIO_ID_IOMMU);
  C(VIRTIO_IOMMU_F_INPUT_RANGE); C(VIRTIO_IOMMU_F_DOMAIN_RANGE); C(VIRTIO_IOMMU_F_MAP_UNMAP);
  C(VIRTIO_IOMMU_F_BYPASS); C(VIRTIO_IOMMU_F_PROBE); C(VIRTIO_IOMMU_F_MMIO);
  C(VIRTIO_IOMMU_F_BYPASS_CONFIG);
  C(VIRTIO_IOMMU_T_ATTACH); C(VIRTIO_IOMMU_T_DETACH); C(VIRTIO_IOMMU_T_MAP); C(VIRTIO_IOMMU_T_UNMAP);
  C(VIRTIO_IOMMU_T_PROBE);
  C(VIRTIO_IOMMU_S_OK); C(VIRTIO_IOMMU_S_IOERR); C(VIRTIO_IOMMU_S_UNSUPP); C(VIRTIO_IOMMU_S_DEVERR);
  C(VIRTIO_IOMMU_S_INVAL); C(VIRTIO_IOMMU_S_RANGE); C(VIRTIO_IOMMU_S_NOENT); C(VIRTIO_IOMMU_S_FAULT);
  C(VIRTIO_IOMMU_S_NOMEM);
  C(VIRTIO_IOMMU_ATTACH_F_BYPASS);
  C(VIRTIO_IOMMU_MAP_F_READ); C(VIRTIO_IOMMU_MAP_F_WRITE); C(VIRTIO_IOMMU_MAP_F_MMIO);
  C(VIRTIO_IOMMU_PROBE_T_NONE); C(VIRTIO_IOMMU_PROBE_T_RESV_MEM);
  C(VIRTIO_IOMMU_RESV_MEM_T_RESERVED); C(VIRTIO_IOMMU_RESV_MEM_T_MSI);
  C(VIRTIO_IOMMU_FAULT_R_UNKNOWN); C(VIRTIO_IOMMU_FAULT_R_DOMAIN); C(VIRTIO_IOMMU_FAULT_R_MAPPING);
  C(VIRTIO_IOMMU_FAULT_F_READ); C(VIRTIO_IOMMU_FAULT_F_WRITE); C(VIRTIO_IOMMU_FAULT_F_ADDRESS);
  return 0;
}
`;

/** The UAPI facts, or the reason they are unavailable. */
function uapi(): Map<string, number> | string {
  for (const h of HEADERS) if (!existsSync(h)) return `${h} is missing (install linux-libc-dev)`;
  const dir = mkdtempSync(join(tmpdir(), "viommu-uapi-"));
  try {
    const src = join(dir, "layout.c");
    const exe = join(dir, "layout");
    writeFileSync(src, PROGRAM);
    const cc = spawnSync("gcc", ["-o", exe, src], { encoding: "utf8" });
    if (cc.error !== undefined) return `gcc is not available (${cc.error.message})`;
    if (cc.status !== 0) return `gcc failed: ${cc.stderr}`;
    const run = spawnSync(exe, { encoding: "utf8" });
    if (run.status !== 0) return `the layout program failed: ${run.stderr}`;
    const facts = new Map<string, number>();
    for (const line of run.stdout.trim().split("\n")) {
      const [name, value] = line.split(" ");
      facts.set(name, Number(value));
    }
    return facts;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const facts = uapi();

function withUapi(name: string, body: (u: (key: string) => number) => void): void {
  test(name, (t) => {
    if (typeof facts === "string") {
      t.skip(`SKIPPED: Linux UAPI layout check needs gcc and the kernel headers: ${facts}`);
      return;
    }
    body((key) => {
      const v = facts.get(key);
      assert.notEqual(v, undefined, `the layout program printed no ${key}`);
      return v as number;
    });
  });
}

withUapi("wire constants equal <linux/virtio_iommu.h> and <linux/virtio_ids.h>", (u) => {
  assert.equal(W.VIRTIO_ID_IOMMU, u("VIRTIO_ID_IOMMU"));
  const features: [keyof typeof W.FEATURE_BIT, string][] = [
    ["INPUT_RANGE", "VIRTIO_IOMMU_F_INPUT_RANGE"],
    ["DOMAIN_RANGE", "VIRTIO_IOMMU_F_DOMAIN_RANGE"],
    ["MAP_UNMAP", "VIRTIO_IOMMU_F_MAP_UNMAP"],
    ["BYPASS", "VIRTIO_IOMMU_F_BYPASS"],
    ["PROBE", "VIRTIO_IOMMU_F_PROBE"],
    ["MMIO", "VIRTIO_IOMMU_F_MMIO"],
    ["BYPASS_CONFIG", "VIRTIO_IOMMU_F_BYPASS_CONFIG"],
  ];
  for (const [ours, theirs] of features) assert.equal(W.FEATURE_BIT[ours], u(theirs), ours);
  assert.deepEqual(
    [W.REQ_ATTACH, W.REQ_DETACH, W.REQ_MAP, W.REQ_UNMAP, W.REQ_PROBE],
    ["ATTACH", "DETACH", "MAP", "UNMAP", "PROBE"].map((t) => u(`VIRTIO_IOMMU_T_${t}`)),
  );
  for (const [code, name] of W.STATUS_NAMES.entries()) assert.equal(code, u(`VIRTIO_IOMMU_S_${name}`), name);
  assert.equal(W.ATTACH_F_BYPASS, u("VIRTIO_IOMMU_ATTACH_F_BYPASS"));
  assert.equal(W.MAP_F_READ, u("VIRTIO_IOMMU_MAP_F_READ"));
  assert.equal(W.MAP_F_WRITE, u("VIRTIO_IOMMU_MAP_F_WRITE"));
  assert.equal(W.MAP_F_MMIO, u("VIRTIO_IOMMU_MAP_F_MMIO"));
  assert.equal(W.PROBE_T_NONE, u("VIRTIO_IOMMU_PROBE_T_NONE"));
  assert.equal(W.PROBE_T_RESV_MEM, u("VIRTIO_IOMMU_PROBE_T_RESV_MEM"));
  assert.equal(W.RESV_MEM_T_RESERVED, u("VIRTIO_IOMMU_RESV_MEM_T_RESERVED"));
  assert.equal(W.RESV_MEM_T_MSI, u("VIRTIO_IOMMU_RESV_MEM_T_MSI"));
  for (const [code, name] of W.FAULT_REASON_NAMES.entries()) {
    assert.equal(code, u(`VIRTIO_IOMMU_FAULT_R_${name.toUpperCase()}`), name);
  }
  assert.equal(W.FAULT_F_READ, u("VIRTIO_IOMMU_FAULT_F_READ"));
  assert.equal(W.FAULT_F_WRITE, u("VIRTIO_IOMMU_FAULT_F_WRITE"));
  assert.equal(W.FAULT_F_ADDRESS, u("VIRTIO_IOMMU_FAULT_F_ADDRESS"));
});

withUapi("request, record, property and config sizes equal the UAPI structures", (u) => {
  const tail = u("sizeof.req_tail");
  assert.equal(W.HEAD_SIZE_BYTES, u("sizeof.req_head"));
  assert.equal(W.TAIL_SIZE_BYTES, tail);
  // The device-readable part of a request is the structure without its tail.
  assert.equal(W.ATTACH_READABLE_BYTES, u("sizeof.req_attach") - tail);
  assert.equal(W.DETACH_READABLE_BYTES, u("sizeof.req_detach") - tail);
  assert.equal(W.MAP_READABLE_BYTES, u("sizeof.req_map") - tail);
  assert.equal(W.UNMAP_READABLE_BYTES, u("sizeof.req_unmap") - tail);
  // PROBE: the properties (and then the tail) follow the fixed part.
  assert.equal(W.PROBE_READABLE_BYTES, u("sizeof.req_probe"));
  assert.equal(W.PROBE_READABLE_BYTES, u("offsetof.req_probe.properties"));
  assert.equal(W.FAULT_RECORD_BYTES, u("sizeof.fault"));
  assert.equal(W.PROBE_PROPERTY_HEADER_BYTES, u("sizeof.probe_property"));
  assert.equal(W.RESV_MEM_PROPERTY_BYTES, u("sizeof.probe_resv_mem"));
  assert.equal(W.CONFIG_SIZE_BYTES, u("sizeof.config"));
  assert.equal(W.CONFIG_PAGE_SIZE_MASK, u("offsetof.config.page_size_mask"));
  assert.equal(W.CONFIG_INPUT_RANGE_START, u("offsetof.config.input_range"));
  assert.equal(W.CONFIG_INPUT_RANGE_END, u("offsetof.config.input_range") + 8);
  assert.equal(W.CONFIG_DOMAIN_RANGE_START, u("offsetof.config.domain_range"));
  assert.equal(W.CONFIG_DOMAIN_RANGE_END, u("offsetof.config.domain_range") + 4);
  assert.equal(W.CONFIG_PROBE_SIZE, u("offsetof.config.probe_size"));
  assert.equal(W.CONFIG_BYPASS, u("offsetof.config.bypass"));
});

withUapi("encoders put each request field at its UAPI offset; the decoder reads it from there", (u) => {
  const attach = encodeAttach(0x11, 0x22, 0x1);
  assert.equal(readU32Le(attach, u("offsetof.req_attach.domain")), 0x11);
  assert.equal(readU32Le(attach, u("offsetof.req_attach.endpoint")), 0x22);
  assert.equal(readU32Le(attach, u("offsetof.req_attach.flags")), 0x1);
  const detach = encodeDetach(0x33, 0x44);
  assert.equal(readU32Le(detach, u("offsetof.req_detach.domain")), 0x33);
  assert.equal(readU32Le(detach, u("offsetof.req_detach.endpoint")), 0x44);
  const map = encodeMap(7, 0x1000, 0x1fff, 0x8000, 3);
  assert.equal(readU32Le(map, u("offsetof.req_map.domain")), 7);
  assert.equal(readU64Le(map, u("offsetof.req_map.virt_start")), 0x1000);
  assert.equal(readU64Le(map, u("offsetof.req_map.virt_end")), 0x1fff);
  assert.equal(readU64Le(map, u("offsetof.req_map.phys_start")), 0x8000);
  assert.equal(readU32Le(map, u("offsetof.req_map.flags")), 3);
  const unmap = encodeUnmap(9, 0x2000, 0x2fff);
  assert.equal(readU32Le(unmap, u("offsetof.req_unmap.domain")), 9);
  assert.equal(readU64Le(unmap, u("offsetof.req_unmap.virt_start")), 0x2000);
  assert.equal(readU64Le(unmap, u("offsetof.req_unmap.virt_end")), 0x2fff);
  assert.equal(readU32Le(encodeProbe(0x55), u("offsetof.req_probe.endpoint")), 0x55);
  // Decoding a MAP laid out by the UAPI offsets.
  const raw = new Uint8Array(u("sizeof.req_map") - u("sizeof.req_tail"));
  raw[0] = u("VIRTIO_IOMMU_T_MAP");
  new DataView(raw.buffer).setUint32(u("offsetof.req_map.domain"), 5, true);
  new DataView(raw.buffer).setBigUint64(u("offsetof.req_map.virt_start"), 0x4000n, true);
  new DataView(raw.buffer).setBigUint64(u("offsetof.req_map.virt_end"), 0x4fffn, true);
  new DataView(raw.buffer).setBigUint64(u("offsetof.req_map.phys_start"), 0x9000n, true);
  new DataView(raw.buffer).setUint32(u("offsetof.req_map.flags"), 1, true);
  const d = new DecodedRequest();
  assert.equal(decodeRequest(raw, d), "ok");
  assert.deepEqual(
    [d.domainId, d.virtStart, d.virtEnd, d.physStart, d.flags],
    [5, 0x4000, 0x4fff, 0x9000, 1],
  );
});

withUapi("a fault record has reason, flags, endpoint and address at the UAPI offsets", (u) => {
  const r = encodeFaultRecord(2, 0x102, 0x77, 0x1234_5000);
  assert.equal(r.length, u("sizeof.fault"));
  assert.equal(r[u("offsetof.fault.reason")], 2);
  assert.equal(readU32Le(r, u("offsetof.fault.flags")), 0x102);
  assert.equal(readU32Le(r, u("offsetof.fault.endpoint")), 0x77);
  assert.equal(readU64Le(r, u("offsetof.fault.address")), 0x1234_5000);
});

test("each wire constant and little-endian helper is defined in one module only", () => {
  const root = join(import.meta.dirname, "..", "..", "src");
  const files = readdirSync(root, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".ts"));
  const definitions = new Map<string, string[]>();
  const pattern =
    /^export (?:const|function) (VIRTIO_ID_IOMMU|REQUEST_QUEUE|EVENT_QUEUE|FAULT_RECORD_BYTES|(?:read|write)U(?:16|32|64)(?:Le|Safe)?)\b/gm;
  for (const f of files) {
    for (const m of readFileSync(join(root, f), "utf8").matchAll(pattern)) {
      definitions.set(m[1], [...(definitions.get(m[1]) ?? []), f]);
    }
  }
  for (const name of ["VIRTIO_ID_IOMMU", "REQUEST_QUEUE", "EVENT_QUEUE", "FAULT_RECORD_BYTES"]) {
    assert.deepEqual(definitions.get(name), ["virtio-iommu/wire.ts"], name);
  }
  for (const [name, where] of definitions) {
    if (name.startsWith("read") || name.startsWith("write")) {
      assert.deepEqual(where, ["engine/little-endian.ts"], `${name} is defined in ${where.join(", ")}`);
    }
  }
});
