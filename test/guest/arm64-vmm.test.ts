// `viommu run` on arm64 KVM, in the arm64 lab: Debian's arm64 Linux 6.12 (L2) boots on our VMM
// inside the arm64 L1 and drives our IOMMUs with its own drivers. ONE L1 boot serves every live
// arm64 test (CI time: the L1 boot is about a minute, each viommu run about 40 s of L1 time):
//  - the lab itself: /dev/kvm, node on arm64 with koffi, the host's paths, stdout/stderr and the
//    exit status passed through (the command ends with status 5 on purpose);
//  - --iommu smmuv3 (stage 1): arm-smmu-v3 probes our SMMU (queues allocated, the feature word
//    it prints is what our ID registers say); the virtio-blk behind it reads the host file's
//    pattern back (every buffer an IOVA through stage 1); vfio-edu-test passes through a VFIO
//    domain on the SMMU; its DMA after unmap is blocked and logged as an SMMU event (F_TRANSLATION).
//  - --iommu smmuv3,stage=2: the driver uses stage 2 for DMA domains; the pattern still reads back.
//  - --iommu smmuv3 --cpus 2: the secondary vCPU, powered off at start, comes up by PSCI CPU_ON
//    (Linux sees two processors) and the pattern reads back through stage 1 with vCPU threads.
//  - --iommu virtio: the same blk and vfio-edu-test checks through the virtio-iommu (DT binding).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { DEFAULT_FEATURES, IDR3_VALUE, idr0 } from "../../src/smmuv3/regs.ts";
import {
  arm64LabAvailable,
  arm64LabPaths,
  arm64LabWorkDir,
  runInArm64Lab,
  viommuInArm64Lab,
} from "../../tools/guest-lab/arm64-lab.ts";
import { newcArchiveGz } from "../../tools/guest-lab/cpio.ts";
import { describeKvmLabRun, shQuote } from "../../tools/guest-lab/kvm-lab.ts";
import { type GuestResult, parseResults, SCRIPT_PRELUDE } from "../../tools/guest-lab/lab.ts";

const lab = arm64LabAvailable();
const NO_LAB = `arm64 lab not provisioned (${lab.why}): run tools/provision/arm64.sh; live arm64 viommu run tests SKIPPED`;
if (!lab.ok) console.error(`\n*** ${NO_LAB}\n`);

const PATTERN_BYTES = 4 * 1024 * 1024;
const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * The feature word Linux's arm-smmu-v3 prints ("features 0x..."), derived from our ID registers
 * as arm_smmu_device_hw_probe() does (arm-smmu-v3.h ARM_SMMU_FEAT_*): 2-level stream table
 * (IDR0.ST_LEVEL), 2-level CD table (CD2L), TT_LE/TT_BE (TTENDIAN), SEV, MSI, coherency (the DT's
 * dma-coherent), TRANS_S1 / TRANS_S2 (S1P / S2P), RANGE_INV (IDR3.RIL); nested only if both.
 */
function linuxFeatures(r0: number, r3: number): number {
  let f = 0;
  if (((r0 >>> 27) & 3) === 1) f |= 1 << 0;
  if (r0 & (1 << 19)) f |= 1 << 1;
  const endian = (r0 >>> 21) & 3;
  if (endian === 0 || endian === 2) f |= 1 << 2;
  if (endian === 0 || endian === 3) f |= 1 << 3;
  if (r0 & (1 << 14)) f |= 1 << 6;
  if (r0 & (1 << 13)) f |= 1 << 7;
  f |= 1 << 8;
  if (r0 & (1 << 1)) f |= 1 << 9;
  if (r0 & 1) f |= 1 << 10;
  if (r3 & (1 << 10)) f |= 1 << 15;
  return f;
}

function l2Script(expectSha: string): string {
  return `${SCRIPT_PRELUDE}
result cpus pass "$(grep -c ^processor /proc/cpuinfo)"
line=$(dmesg | grep -o 'arm-smmu-v3 .*ias [0-9]*-bit, oas [0-9]*-bit (features 0x[0-9a-f]*)' | head -1)
[ -n "$line" ] && result smmu-probe pass "$line" || result smmu-probe skip "no arm-smmu-v3"
result smmu-count pass "$(dmesg | grep -o 'arm-smmu-v3 [0-9a-f]*.iommu: ias' | sed 's/: ias//' | tr '\\n' ' ')"
q=$(dmesg | grep -o 'allocated [0-9]* entries for [a-z]*' | tr '\\n' ' ')
result smmu-queues pass "$q"
v=$(dmesg | grep -o 'virtio_iommu virtio[0-9]*: input address: [0-9]* bits' | head -1)
[ -n "$v" ] && result viommu-probe pass "$v" || result viommu-probe skip "no virtio_iommu"
blk=""
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor) $(cat $d/device)" = "0x1af4 0x1042" ] && blk=$(basename $d); done
g=$(pci_group "$blk")
[ -n "$g" ] && result blk-group pass "bdf=$blk group=$g" || result blk-group fail "bdf=$blk has no IOMMU group"
got=$(dd if=/dev/vda bs=65536 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "${expectSha}" ] && result blk-read pass "sha256=$got" || result blk-read fail "want=${expectSha} got=$got"
rng=$(pci_find 1af4 1044)
if [ -n "$rng" ]; then
  # KVM also offers the SMCCC TRNG: read the virtio one explicitly.
  v=$(tr ' ' '\n' < /sys/class/misc/hw_random/rng_available | grep '^virtio_rng' | head -1)
  [ -n "$v" ] && echo "$v" > /sys/class/misc/hw_random/rng_current
  n=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)
  g=$(pci_group "$rng")
  [ -n "$g" ] && [ "$n" = 64 ] && [ "$(cat /sys/class/misc/hw_random/rng_current)" = "$v" ] &&
    result rng-read pass "bdf=$rng group=$g rng=$v bytes=$n" || result rng-read fail "bdf=$rng group=$g rng=$v bytes=$n"
fi
edu=$(pci_find 1234 11e8)
if [ -n "$edu" ]; then
  vfio-edu-test "$edu"
  n=$(dmesg | grep -c -E 'arm-smmu-v3 .*event 0x10 received|virtio_iommu .*page fault from EP')
  [ "$n" -gt 0 ] && result dma-fault-logged pass "lines=$n" || result dma-fault-logged fail "no SMMU event / virtio-iommu fault in dmesg"
  dmesg | grep -E 'arm-smmu-v3 .*event|page fault from EP' | head -4
  # The record's first doubleword: StreamID << 32 | event type, as the guest sees it.
  r=$(dmesg | grep -A1 'arm-smmu-v3 .*event 0x10 received' | grep -o -E '0x[0-9a-f]{16}' | head -1)
  [ -n "$r" ] && result smmu-event-dw0 pass "$r" || result smmu-event-dw0 skip "no SMMU event"
fi
`;
}

type Machine = { name: string; args: string[]; edu: boolean; smmus?: number; cpus?: number };

function section(
  stdout: string,
  name: string,
): { text: string; exit: number | null; results: GuestResult[] } {
  const start = stdout.indexOf(`=== viommu ${name} begin`);
  const end = stdout.indexOf(`=== viommu ${name} end`, start);
  if (start < 0) return { text: "", exit: null, results: [] };
  const text = stdout.slice(start, end < 0 ? undefined : end);
  const m = /=== viommu \S+ end status=(\d+)/.exec(stdout.slice(end));
  return { text, exit: m ? Number(m[1]) : null, results: parseResults(text) };
}

test("arm64 lab, one L1 boot: the lab itself, then viommu run on arm64 KVM with Linux driving our SMMUv3 (stage 1, stage 2, two instances, two vCPUs) and virtio-iommu", {
  timeout: 1_500_000,
}, async (t) => {
  if (!lab.ok) return t.skip(NO_LAB);
  const p = arm64LabPaths();
  const work = arm64LabWorkDir();
  // A directory under the host's /tmp (where a clone of the repository may live): L1 sees it.
  const hostTmp = mkdtempSync(join(tmpdir(), "viommu-arm64-tmp-"));
  writeFileSync(join(hostTmp, "marker"), "host-tmp-visible\n");
  try {
    const pattern = createHash("sha256");
    const data = new Uint8Array(PATTERN_BYTES);
    for (let i = 0; i < data.length; i += 4)
      new DataView(data.buffer).setUint32(i, (i * 2654435761) >>> 0, true);
    pattern.update(data);
    const sha = pattern.digest("hex");
    const disk = join(work.path, "pattern.img");
    writeFileSync(disk, data);
    const initrd = join(work.path, "initrd");
    writeFileSync(
      initrd,
      Buffer.concat([
        readFileSync(p.initramfs),
        newcArchiveGz([{ path: "viommu/script.sh", data: l2Script(sha), mode: 0o755 }]),
      ]),
    );
    const diskArg = `path=${disk},iommu=on,readonly=on`;
    const machines: Machine[] = [
      {
        name: "smmuv3",
        // The x86 machine's three devices: disk 00:02.0, edu 00:03.0, rng 00:04.0.
        args: ["--iommu", "smmuv3", "--disk", diskArg, "--device", "edu,iommu=on", "--rng", "iommu=on"],
        edu: true,
      },
      { name: "smmuv3-s2", args: ["--iommu", "smmuv3,stage=2", "--disk", diskArg], edu: false },
      // Two vCPUs (vcpu-threads.ts, as on x86): vCPU 1 starts powered off, Linux brings it up.
      {
        name: "smmuv3-cpus2",
        args: ["--iommu", "smmuv3", "--cpus", "2", "--disk", diskArg],
        edu: false,
        cpus: 2,
      },
      // Two SMMUs, each a physical IOMMU of its own in the framework: the disk (00:02.0) behind
      // the first, the edu (00:03.0) behind the second; the host's pSIDs differ from the vSIDs.
      {
        name: "smmuv3-x2",
        args: ["--iommu", "smmuv3,instances=2", "--disk", diskArg, "--device", "edu,iommu=on"],
        edu: true,
        smmus: 2,
      },
      {
        name: "virtio",
        args: ["--iommu", "virtio", "--disk", diskArg, "--device", "edu,iommu=on"],
        edu: true,
      },
    ];
    // The lab's own checks first (tools/guest-lab/arm64-lab.ts), then each machine.
    const lines = [
      "set -u",
      'echo "=== lab begin"',
      "test -c /dev/kvm && echo kvm-ok; uname -m; pwd",
      `node -e 'import("koffi").then((k) => console.log(process.arch, typeof k.default.load))'`,
      'echo "=== lab end"',
      `cd ${shQuote(hostTmp)} && cat marker && cd ${shQuote(REPO)}`,
      'echo scratch > "$TMPDIR/scratch" && echo "tmpdir $TMPDIR $(cat "$TMPDIR/scratch")"',
      "echo err-line >&2",
    ];
    for (const m of machines) {
      const cmd = await viommuInArm64Lab([
        "run",
        "--kernel",
        p.image,
        "--initramfs",
        initrd,
        "--memory",
        "size=512M",
        "--cmdline",
        // virtio_iommu is a module the initramfs loads late; on a loaded host that can be past
        // the 10 s deferred-probe timeout, after which Linux binds the devices behind it without
        // the IOMMU (their DMA then faults as "domain fault"). Wait for the IOMMU instead.
        "console=ttyAMA0 panic=-1 loglevel=4 deferred_probe_timeout=-1",
        "--timeout",
        "400",
        ...m.args,
      ]);
      lines.push(
        `echo "=== viommu ${m.name} begin"`,
        `${cmd.map(shQuote).join(" ")} 2>&1`,
        `echo "=== viommu ${m.name} end status=$?"`,
      );
    }
    lines.push("exit 5");
    const run = await runInArm64Lab({
      command: ["sh", "-c", lines.join("\n")],
      cwd: REPO,
      timeoutMs: 1_400_000,
    });
    const why = (text: string) => `${describeKvmLabRun(run)}\n${text.slice(-6000)}`;
    t.diagnostic(describeKvmLabRun(run));
    assert.equal(run.failedStep, null, why(run.console));
    await t.test(
      "arm64 lab: a command in the arm64 L1 has /dev/kvm, node on arm64 with koffi, the host's paths; status passes through",
      () => {
        const start = run.stdout.indexOf("=== lab begin\n");
        const end = run.stdout.indexOf("=== lab end\n");
        assert.ok(start >= 0 && end > start, why(run.stdout));
        assert.equal(
          run.stdout.slice(start + 14, end),
          `kvm-ok\naarch64\n${REPO}\narm64 function\n`,
          why(run.stdout),
        );
        assert.equal(run.exitCode, 5, why(run.console));
        assert.equal(run.stderr, "err-line\n", why(run.stderr));
        assert.match(run.console, /VHE mode initialized successfully|Hyp mode initialized successfully/);
      },
    );
    await t.test(
      "arm64 lab: the host's /tmp is visible in L1 at its path (a clone under /tmp runs there); TMPDIR is L1's own tmpfs",
      () => {
        assert.match(
          run.stdout,
          /=== lab end\nhost-tmp-visible\ntmpdir \/run\/tmp scratch\n/,
          why(run.stdout),
        );
      },
    );
    for (const m of machines) {
      await t.test(`viommu run --iommu ${m.args[1]}${m.cpus ? ` --cpus ${m.cpus}` : ""}`, () => check(m));
    }
    function check(m: Machine): void {
      const s = section(run.stdout, m.name);
      for (const r of s.results) t.diagnostic(`${m.name}: ${r.line}`);
      const res = (name: string) => s.results.find((r) => r.name === name);
      assert.equal(s.exit, 0, `${m.name}: viommu run exit status (guest power-off is 0)\n${why(s.text)}`);
      assert.equal(res("blk-read")?.status, "pass", `${m.name} blk-read\n${why(s.text)}`);
      assert.equal(res("blk-read")?.detail, `sha256=${sha}`);
      assert.equal(res("blk-group")?.status, "pass", `${m.name} blk-group\n${why(s.text)}`);
      assert.equal(res("cpus")?.detail, String(m.cpus ?? 1), `${m.name}: processors in /proc/cpuinfo`);
      const cpus = m.cpus ?? 1;
      assert.match(s.text, new RegExp(`kvm: ${cpus} vCPUs?, \\d+ exits`), `${m.name}: summary`);
      if (m.smmus === 2) {
        // Both probe; the edu's fault comes from the second SMMU with the guest's StreamID 0x18
        // (its RID), not the host's pSID 0x2018; the summary shows the vSID -> pSID tables.
        assert.equal(
          res("smmu-count")?.detail.trim(),
          "arm-smmu-v3 9050000.iommu arm-smmu-v3 9100000.iommu",
          why(s.text),
        );
        assert.match(s.text, /arm-smmu-v3 9100000\.iommu: event 0x10 received/, why(s.text));
        assert.equal(res("smmu-event-dw0")?.detail, "0x0000001800000010", why(s.text));
        assert.match(s.text, /smmuv3\[0\] @0x9050000: streams vSID 0x10 -> pSID 0x1010/);
        assert.match(s.text, /smmuv3\[1\] @0x9100000: streams vSID 0x18 -> pSID 0x2018/);
        assert.match(s.text, /smmuv3\[1\] @0x9100000: faults F_TRANSLATION \d+/);
        assert.match(s.text, /smmuv3\[0\] @0x9050000: faults none/);
      } else if (m.name.startsWith("smmuv3")) {
        const stage = m.name === "smmuv3-s2" ? "2" : "1";
        const features = { ...DEFAULT_FEATURES, stage1: stage === "1", stage2: stage === "2" };
        const want = linuxFeatures(idr0(features), IDR3_VALUE);
        const probe = res("smmu-probe")?.detail ?? "";
        assert.match(probe, /arm-smmu-v3 9050000\.iommu: ias 48-bit, oas 48-bit/, why(s.text));
        assert.equal(
          Number(/features (0x[0-9a-f]+)/.exec(probe)?.[1]),
          want,
          `${m.name}: feature word vs our IDR0/IDR3\n${probe}`,
        );
        assert.match(
          res("smmu-queues")?.detail ?? "",
          /allocated 65536 entries for cmdq allocated 32768 entries for evtq/,
        );
        assert.match(s.text, /smmuv3\[0\] @0x9050000: \d+ translations/, "summary");
      } else {
        assert.match(
          res("viommu-probe")?.detail ?? "",
          /virtio_iommu virtio\d+: input address: 48 bits/,
          why(s.text),
        );
      }
      if (m.edu) {
        for (const name of [
          "vfio-open",
          "dma-map",
          "dma-roundtrip",
          "dma-roundtrip-2",
          "dma-unmap",
          "dma-after-unmap-blocked",
          "dma-read-after-unmap-blocked",
          "vfio-edu-test",
          "dma-fault-logged",
        ]) {
          assert.equal(res(name)?.status, "pass", `${m.name} ${name}\n${why(s.text)}`);
        }
        if (m.name === "smmuv3") {
          // The guest's driver saw our event record (StreamID 0x18 = the edu's RID), and the
          // model counted what it reported.
          assert.equal(res("smmu-event-dw0")?.detail, "0x0000001800000010", why(s.text));
          assert.match(s.text, /arm-smmu-v3 9050000\.iommu: event 0x10 received/);
          assert.match(s.text, /smmuv3\[0\] @0x9050000: faults F_TRANSLATION \d+/);
          // virtio-rng behind the SMMU too: its buffers are IOVAs.
          assert.equal(res("rng-read")?.status, "pass", `${m.name} rng-read\n${why(s.text)}`);
          assert.match(s.text, /rng 00:04\.0 \(behind the IOMMU\)/, why(s.text));
        } else if (m.name === "virtio") {
          assert.match(s.text, /virtio_iommu virtio\d+: page fault from EP \d+ at 0x10[01]000/);
        }
      }
    }
  } finally {
    work.remove();
    rmSync(hostTmp, { recursive: true, force: true });
  }
});
