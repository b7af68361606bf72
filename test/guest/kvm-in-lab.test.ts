// The test files that need KVM (marker line "// @needs kvm" or "// @needs kvm-linux") and cannot
// run natively here run in the KVM lab: one L1 boot runs them all with node's test runner and a
// JSON-lines reporter, and each test inside is reported here as its own subtest (pass, fail with
// the inner error, or skip with the inner reason). `npm test` leaves those files out of the
// native run (tools/guest-lab/kvm-tests.mjs --native-files), so nothing is counted twice.
// Without a provisioned lab each file is skipped loudly.
import assert from "node:assert/strict";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { describeKvmLabRun, kvmLabAvailable, runInKvmLab } from "../../tools/guest-lab/kvm-lab.ts";
import { planKvmTests, REPO } from "../../tools/guest-lab/kvm-tests.mjs";

type Rec = {
  type: "pass" | "fail";
  file: string;
  name: string;
  nesting: number;
  durationMs?: number;
  skip?: string;
  todo?: string;
  error?: string;
  /** The inner test's t.diagnostic() lines (e.g. the guest's own lines as evidence). */
  diagnostics?: string[];
};
type Diag = { type: "diagnostic"; file: string; nesting: number; text: string };
type Node = Rec & { children: Node[] };

/** Hard limit for the one L1 boot that runs every lab file (CI's whole run must stay < 30 min). */
const LAB_TIMEOUT_MS = 25 * 60_000;
/** Huge pages in L1 for test/vmm/hugetlbfs.test.ts (64 x 2 MiB). */
const LAB_HUGE_PAGES = 64;

const plan = planKvmTests();
const lab = kvmLabAvailable();

/** Rebuild each file's test tree: node reports a test after its subtests, one nesting deeper. */
function treeOf(records: (Rec | Diag)[]): Map<string, Node[]> {
  const byFile = new Map<string, Node[][]>();
  for (const r of records) {
    const levels = byFile.get(r.file) ?? [];
    byFile.set(r.file, levels);
    if (r.type === "diagnostic") {
      const owner = levels[r.nesting]?.at(-1);
      if (owner) owner.diagnostics = [...(owner.diagnostics ?? []), r.text];
      continue;
    }
    const children = levels[r.nesting + 1] ?? [];
    levels[r.nesting + 1] = [];
    const siblings = levels[r.nesting] ?? [];
    levels[r.nesting] = siblings;
    siblings.push({ ...r, children });
  }
  return new Map([...byFile].map(([f, levels]) => [f, levels[0] ?? []]));
}

async function report(t: TestContext, node: Node): Promise<void> {
  await t.test(node.name, async (st) => {
    for (const line of node.diagnostics ?? []) st.diagnostic(line);
    if (node.skip !== undefined) return st.skip(`in the KVM lab: ${node.skip}`);
    if (node.todo !== undefined) return st.todo(`in the KVM lab: ${node.todo}`);
    for (const c of node.children) await report(st, c);
    if (node.type === "fail" && node.children.every((c) => c.type === "pass")) {
      assert.fail(`failed in the KVM lab (L1):\n${node.error ?? "(no error text)"}`);
    }
  });
}

if (plan.labFiles.length === 0) {
  console.error(`[kvm-lab] every KVM test file runs natively here (${plan.native.why}); no L1 boot`);
} else {
  if (!lab.ok) {
    console.error(
      `\n*** ${lab.why}: the ${plan.labFiles.length} KVM test files are SKIPPED (${plan.native.why} here).\n` +
        "*** run tools/provision/provision.sh to run them in the KVM lab.\n",
    );
  }
  test(`KVM tests in the KVM lab, one L1 boot (${plan.native.why} here): ${plan.labFiles.join(" ")}`, {
    timeout: LAB_TIMEOUT_MS + 60_000,
  }, async (t) => {
    if (!lab.ok) {
      for (const f of plan.labFiles)
        await t.test(f, (st) => st.skip(`${lab.why}: run tools/provision/provision.sh`));
      return;
    }
    const records: (Rec | Diag)[] = [];
    let pending = "";
    const started = Date.now();
    const onJson = (line: string) => {
      let rec: Rec | Diag | { type: "stderr"; file: string; text: string };
      try {
        rec = JSON.parse(line);
      } catch {
        if (line.trim()) process.stderr.write(`[kvm-lab] ${line}\n`);
        return;
      }
      if (rec.type === "stderr") return void process.stderr.write(rec.text);
      records.push(rec);
      if (rec.type !== "diagnostic" && rec.nesting === 0) {
        const mark = rec.skip !== undefined ? "skip" : rec.type === "pass" ? "ok" : "FAIL";
        const secs = ((Date.now() - started) / 1000).toFixed(0);
        process.stderr.write(
          `[kvm-lab +${secs}s] ${mark} ${rec.file.replace(`${REPO}/`, "")} > ${rec.name}\n`,
        );
      }
    };
    const run = await runInKvmLab({
      command: [
        "node",
        "--import",
        "tsx",
        "--test",
        "--test-concurrency=2",
        `--test-reporter=${join(REPO, "tools/guest-lab/jsonl-reporter.mjs")}`,
        ...plan.labFiles,
      ],
      cwd: REPO,
      writable: [REPO],
      timeoutMs: LAB_TIMEOUT_MS,
      hugePages: LAB_HUGE_PAGES,
      onStdout: (text) => {
        pending += text;
        for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
          onJson(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      },
      onStderr: (text) => process.stderr.write(text),
      onConsole: (line) => {
        if (line.startsWith("VIOMMU-KVM-LAB: step="))
          process.stderr.write(`[kvm-lab] L1 ${line.slice(16)}\n`);
      },
    });
    if (pending) onJson(pending);
    process.stderr.write(`[kvm-lab] ${describeKvmLabRun(run)}\n`);
    const trees = treeOf(records);
    for (const f of plan.labFiles) {
      const nodes = trees.get(join(REPO, f)) ?? [];
      await t.test(f, async (ft) => {
        if (nodes.length === 0)
          assert.fail(`no test of ${f} reported from the KVM lab: ${describeKvmLabRun(run)}`);
        for (const n of nodes) await report(ft, n);
      });
    }
    const why = `${describeKvmLabRun(run)}\n--- L1 console tail ---\n${run.console.slice(-4000)}\n--- stderr tail ---\n${run.stderr.slice(-4000)}`;
    assert.equal(run.failedStep, null, why);
    const failed = records.some((r) => r.type === "fail");
    assert.ok(
      run.exitCode === 0 || failed,
      `the test runner in L1 exited ${run.exitCode} with no failed test: ${why}`,
    );
  });
}
