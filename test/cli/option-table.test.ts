/**
 * The declarative option tables: one table drives the parser and the help, so they agree.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { formatUsage, type OptionRow, parseOnOff, parseOptionTable } from "../../src/cli/option-table.ts";
import { parseRunOptions, RUN_OPTIONS, RUN_USAGE } from "../../src/cli/run-options.ts";
import {
  parseServeArgs,
  SERVE_OPTIONS,
  USAGE as SERVE_USAGE,
  ServeHelpRequested,
} from "../../src/cli/serve.ts";

/** The option names that start a line of a help text ("  --name ..." or "  --name, -x ..."). */
function helpOptionNames(usage: string): Set<string> {
  const names = new Set<string>();
  for (const line of usage.split("\n")) {
    const m = /^ {2}(-[-\w]+)(?:, (-[-\w]+))?/.exec(line);
    if (m === null) continue;
    names.add(m[1]);
    if (m[2] !== undefined) names.add(m[2]);
  }
  return names;
}

for (const [command, rows, usage] of [
  ["run", RUN_OPTIONS, RUN_USAGE],
  ["serve", SERVE_OPTIONS, SERVE_USAGE],
] as const) {
  test(`viommu ${command}: the help lists exactly the options the parser accepts`, () => {
    const parsed = new Set((rows as readonly OptionRow<unknown>[]).flatMap((r) => r.names));
    assert.deepEqual([...helpOptionNames(usage)].sort(), [...parsed].sort());
    for (const row of rows as readonly OptionRow<unknown>[]) assert.ok(row.help.length > 0, row.names[0]);
  });
}

test("viommu run: every --iommu and --device form the help shows is accepted", () => {
  for (const line of RUN_USAGE.split("\n")) {
    // The form up to its optional part, with the placeholder for a host PCI address filled in.
    const m = /^ {2}--(iommu|device) ([^\s[]+)/.exec(line);
    if (m === null) continue;
    const argv = [`--${m[1]}`, m[2].replaceAll("BDF", "0000:00:03.0")];
    if (m[1] === "device") argv.push("--iommu", "virtio");
    assert.doesNotThrow(() => parseRunOptions(argv), argv.join(" "));
  }
});

interface Toy {
  flag: boolean;
  value?: string;
  optional: (string | undefined)[];
  list: string[];
}

const TOY: readonly OptionRow<Toy>[] = [
  {
    names: ["--flag", "-f"],
    arity: "flag",
    help: [{ synopsis: "--flag, -f", text: "a flag" }],
    apply: (s) => {
      s.flag = true;
    },
  },
  {
    names: ["--value"],
    arity: "value",
    help: [{ synopsis: "--value V", text: "one\nline two" }],
    apply: (s, v) => {
      s.value = v;
    },
  },
  {
    names: ["--optional"],
    arity: "optional-value",
    repeatable: true,
    help: [{ synopsis: "--optional [V]", text: "maybe a value" }],
    apply: (s, v) => void s.optional.push(v),
  },
  {
    names: ["--list"],
    arity: "value",
    repeatable: true,
    help: [{ synopsis: "--list-with-a-very-long-synopsis=V", text: "long" }],
    apply: (s, v = "") => void s.list.push(v),
  },
];

function toy(argv: string[]): Toy {
  return parseOptionTable({ command: "toy", rows: TOY, error: (m) => new RangeError(m) }, argv, {
    flag: false,
    optional: [],
    list: [],
  });
}

test("option table: --name value and --name=value are the same; a value may start with '-' but not '--'", () => {
  assert.equal(toy(["--value", "x"]).value, "x");
  assert.equal(toy(["--value=x=y"]).value, "x=y");
  assert.equal(toy(["--value", "-1"]).value, "-1");
  assert.equal(toy(["--value=--x"]).value, "--x");
  assert.throws(() => toy(["--value", "--flag"]), /^RangeError: --value needs a value$/);
  assert.throws(() => toy(["--value"]), /--value needs a value/);
});

test("option table: an optional value never swallows the next option", () => {
  assert.deepEqual(toy(["--optional", "--flag", "--optional", "a", "--optional=b"]).optional, [
    undefined,
    "a",
    "b",
  ]);
  assert.equal(toy(["--optional", "--flag"]).flag, true);
});

test("option table: a flag takes no value; aliases are one option", () => {
  assert.equal(toy(["-f"]).flag, true);
  assert.throws(() => toy(["--flag=off"]), /--flag takes no value \(got "off"\)/);
  assert.throws(() => toy(["--flag", "-f"]), /--flag given twice/);
});

test("option table: non-repeatable options once, repeatable ones in order, unknown arguments named", () => {
  assert.throws(() => toy(["--value", "a", "--value=b"]), /--value given twice/);
  assert.deepEqual(toy(["--list", "a", "--list", "b"]).list, ["a", "b"]);
  assert.throws(() => toy(["stray"]), /unknown argument "stray" \(see toy --help\)/);
  assert.throws(() => toy(["--nope=1"]), /unknown argument "--nope=1"/);
});

test("option table: help aligns text in one column and continuation lines under it", () => {
  assert.equal(
    formatUsage("usage: toy", TOY, "end", 20),
    [
      "usage: toy",
      "  --flag, -f        a flag",
      "  --value V         one",
      "                    line two",
      "  --optional [V]    maybe a value",
      "  --list-with-a-very-long-synopsis=V  long",
      "end",
    ].join("\n"),
  );
});

test("on/off properties: a bare key is on; anything but the on/off words is refused", () => {
  const err = (m: string) => new Error(m);
  for (const v of ["", "on", "true", "yes", "1"]) assert.equal(parseOnOff(v, "p", err), true);
  for (const v of ["off", "false", "no", "0"]) assert.equal(parseOnOff(v, "p", err), false);
  assert.throws(() => parseOnOff("maybe", "--x p", err), /--x p: expected on or off, got "maybe"/);
});

test("viommu serve: --help stops parsing; values inline; a single option given twice is refused", () => {
  assert.throws(() => parseServeArgs(["--help"]), ServeHelpRequested);
  assert.throws(() => parseServeArgs(["-h"]), ServeHelpRequested);
  assert.equal(parseServeArgs(["--socket-dir=/tmp/a", "--rng"]).socketDir, "/tmp/a");
  assert.throws(
    () => parseServeArgs(["--socket-dir", "/a", "--socket-dir", "/b", "--rng"]),
    /--socket-dir given twice/,
  );
  assert.throws(() => parseServeArgs(["--socket-dir", "--rng"]), /--socket-dir needs a value/);
});
