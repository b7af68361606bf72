// A node:test reporter that prints one JSON object per line for each finished test (and each
// chunk a test file wrote to stderr), so that a runner outside the KVM lab can report every test
// run inside it as its own subtest. Used as `--test-reporter=<this file>`.
//   {"type":"pass"|"fail","file","name","nesting","durationMs","skip"?,"todo"?,"error"?}
//   {"type":"diagnostic","file","nesting","text"}   after the test it belongs to
//   {"type":"stderr","file","text"}
function errorText(error) {
  if (!error) return undefined;
  const inner = error.cause ?? error;
  const text = inner?.stack ?? inner?.message ?? String(inner);
  return String(text).split("\n").slice(0, 12).join("\n");
}

export default async function* jsonlReporter(source) {
  for await (const ev of source) {
    const d = ev.data ?? {};
    if (ev.type === "test:pass" || ev.type === "test:fail") {
      const rec = {
        type: ev.type === "test:pass" ? "pass" : "fail",
        file: d.file,
        name: d.name,
        nesting: d.nesting,
        durationMs: d.details?.duration_ms,
      };
      if (d.skip !== undefined && d.skip !== false) rec.skip = d.skip === true ? "" : String(d.skip);
      if (d.todo !== undefined && d.todo !== false) rec.todo = d.todo === true ? "" : String(d.todo);
      if (ev.type === "test:fail") rec.error = errorText(d.details?.error);
      yield `${JSON.stringify(rec)}\n`;
    } else if (ev.type === "test:diagnostic" && d.file) {
      // A test's t.diagnostic() line (e.g. a guest's own lines as evidence): node reports it
      // right after that test's pass/fail event, at the same nesting.
      yield `${JSON.stringify({ type: "diagnostic", file: d.file, nesting: d.nesting, text: d.message })}\n`;
    } else if (ev.type === "test:stderr") {
      yield `${JSON.stringify({ type: "stderr", file: d.file, text: d.message })}\n`;
    }
  }
}
