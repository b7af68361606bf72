/**
 * Declarative command-line options. A subcommand declares its options once, as rows of a table;
 * the same rows drive the parser (`parseOptionTable`) and the `--help` text (`formatUsage`), so
 * the help cannot name an option the parser lacks, or miss one it has.
 *
 * Syntax, for every subcommand: `--name value` or `--name=value`; a value may not start with
 * "--" unless given inline. An option that is not `repeatable` may appear once. Errors are one
 * line that names the option.
 */

/** What an option takes: nothing, a value, or a value that may be left out. */
export type OptionArity = "flag" | "value" | "optional-value";

/** One line of help: the synopsis in the left column, the text (lines joined by "\n") right of it. */
export interface HelpLine {
  readonly synopsis: string;
  readonly text: string;
}

export interface OptionRow<S> {
  /** The spellings; the first is the one errors and help use. */
  readonly names: readonly [string, ...string[]];
  readonly arity: OptionArity;
  /** May be given more than once (devices, modules); otherwise a second use is an error. */
  readonly repeatable?: boolean;
  /** Lines this option contributes to the help (an option may show several forms). */
  readonly help: readonly HelpLine[];
  /** Folds the option into the state; `value` is undefined for flags and absent optional values. */
  readonly apply: (state: S, value: string | undefined) => void;
}

export interface OptionTable<S> {
  /** "viommu run": used in the unknown-argument hint. */
  readonly command: string;
  readonly rows: readonly OptionRow<S>[];
  /** Builds the error thrown for bad arguments (each subcommand keeps its own error class). */
  readonly error: (message: string) => Error;
}

/** Applies `argv` to `state` row by row; throws `table.error(...)` on the first bad argument. */
export function parseOptionTable<S>(table: OptionTable<S>, argv: readonly string[], state: S): S {
  const byName = new Map<string, OptionRow<S>>();
  for (const row of table.rows) for (const name of row.names) byName.set(name, row);
  const seen = new Set<OptionRow<S>>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1;
    const written = eq > 0 ? arg.slice(0, eq) : arg;
    const inline = eq > 0 ? arg.slice(eq + 1) : undefined;
    const row = byName.get(written);
    if (row === undefined) throw table.error(`unknown argument "${arg}" (see ${table.command} --help)`);
    const name = row.names[0];
    if (!row.repeatable) {
      if (seen.has(row)) throw table.error(`${name} given twice`);
      seen.add(row);
    }
    let value: string | undefined;
    if (row.arity === "flag") {
      if (inline !== undefined) throw table.error(`${name} takes no value (got "${inline}")`);
    } else if (inline !== undefined) {
      value = inline;
    } else {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith("--")) {
        value = next;
        i++;
      } else if (row.arity === "value") {
        throw table.error(`${name} needs a value`);
      }
    }
    row.apply(state, value);
  }
  return state;
}

/** Width of the synopsis column, indentation included (the text starts in the next column). */
const DEFAULT_SYNOPSIS_COLUMNS = 33;

/**
 * The help text: `head`, one block per help line of every row in table order (continuation
 * lines aligned under the text), then `tail`. A synopsis too long for its column is followed by
 * two spaces.
 */
export function formatUsage(
  head: string,
  rows: readonly { readonly help: readonly HelpLine[] }[],
  tail = "",
  synopsisColumns = DEFAULT_SYNOPSIS_COLUMNS,
): string {
  const lines = [head];
  const indent = " ".repeat(synopsisColumns);
  for (const row of rows) {
    for (const h of row.help) {
      const left = `  ${h.synopsis}`;
      const pad = left.length < synopsisColumns ? left.padEnd(synopsisColumns) : `${left}  `;
      const [first, ...more] = h.text.split("\n");
      lines.push(`${pad}${first}`);
      for (const m of more) lines.push(`${indent}${m}`);
    }
  }
  if (tail !== "") lines.push(tail);
  return lines.join("\n");
}

/**
 * `key=value,key,...` properties of one option value. Keys outside `allowed` and repeated keys
 * are errors; a key without "=" has the value "".
 */
export function parseProperties(
  text: string,
  what: string,
  allowed: readonly string[],
  error: (message: string) => Error,
): Map<string, string> {
  const props = new Map<string, string>();
  for (const item of text.split(",")) {
    if (item === "") continue;
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? "" : item.slice(eq + 1);
    if (!allowed.includes(key))
      throw error(`${what}: unknown property "${key}" (known: ${allowed.join(", ")})`);
    if (props.has(key)) throw error(`${what}: ${key} given twice`);
    props.set(key, value);
  }
  return props;
}

/**
 * An on/off property value. A bare key (value "") means on, as QEMU's `-device x,prop`.
 */
export function parseOnOff(value: string, what: string, error: (message: string) => Error): boolean {
  if (value === "" || value === "on" || value === "true" || value === "yes" || value === "1") return true;
  if (value === "off" || value === "false" || value === "no" || value === "0") return false;
  throw error(`${what}: expected on or off, got "${value}"`);
}

/** Splits "kind,props" at the first comma. */
export function splitKind(text: string): { readonly kind: string; readonly rest: string } {
  const comma = text.indexOf(",");
  return comma < 0 ? { kind: text, rest: "" } : { kind: text.slice(0, comma), rest: text.slice(comma + 1) };
}
