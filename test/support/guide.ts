/**
 * The recipes of docs/guide.md, for the tests that run them.
 *
 * A recipe is a fenced code block whose info string carries `recipe=ID`:
 *
 *     ```sh recipe=virtio-builtin
 *     node bin/viommu.mjs run --iommu virtio --device edu,iommu=on --device edu
 *     ```
 *
 * Tests take their command lines from here, so what runs is the guide's text. Host commands are
 * split into words the way sh would (quotes, backslash-newline, `$NAME` / `${NAME}` from the
 * variables the test supplies; an unknown variable is an error, never an empty word). Guest
 * scripts are handed to the guest's sh unchanged (`recipeText`).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

export const GUIDE_PATH = join(import.meta.dirname, "..", "..", "docs", "guide.md");

export interface GuideRecipe {
  readonly id: string;
  /** The block's language (first word of the info string): sh, text, ... */
  readonly lang: string;
  readonly text: string;
  /** 1-based line of the opening fence in the guide. */
  readonly line: number;
}

/** Every recipe block of a guide text, in order. Throws on a duplicate id or an unclosed block. */
export function parseGuide(markdown: string): GuideRecipe[] {
  const lines = markdown.split("\n");
  const out: GuideRecipe[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < lines.length; i++) {
    const open = /^(`{3,})(.*)$/.exec(lines[i]!);
    if (open === null) continue;
    const fence = open[1]!;
    const info = open[2]!.trim();
    let end = i + 1;
    while (end < lines.length && !(lines[end]!.startsWith(fence) && lines[end]!.trim() === fence)) end++;
    if (end >= lines.length) throw new Error(`guide line ${i + 1}: code block never closed`);
    const id = /(?:^|\s)recipe=([A-Za-z0-9_-]+)(?:\s|$)/.exec(info)?.[1];
    if (id !== undefined) {
      if (seen.has(id)) throw new Error(`guide line ${i + 1}: recipe ${id} defined twice`);
      seen.add(id);
      out.push({ id, lang: info.split(/\s+/)[0]!, text: lines.slice(i + 1, end).join("\n"), line: i + 1 });
    }
    i = end;
  }
  return out;
}

let cached: GuideRecipe[] | undefined;

/** The recipes of docs/guide.md. */
export function guideRecipes(): GuideRecipe[] {
  cached ??= parseGuide(readFileSync(GUIDE_PATH, "utf8"));
  return cached;
}

/** One recipe of docs/guide.md by id; throws naming the id when the guide has no such block. */
export function guideRecipe(id: string): GuideRecipe {
  const r = guideRecipes().find((x) => x.id === id);
  if (r === undefined) throw new Error(`docs/guide.md has no recipe=${id} block`);
  return r;
}

/** A recipe's text as written (a guest script, expected output). */
export function recipeText(id: string): string {
  return guideRecipe(id).text;
}

export type ShellVars = Readonly<Record<string, string>>;

/** Operators: `&&` to `|` end a simple command; the others are redirections, kept as words. */
const OPERATORS = ["&&", "||", ";", "&", "|", "2>&1", ">>", ">", "<"] as const;

/**
 * Splits shell text into commands, each a list of words, the way sh reads it for the subset
 * the guide uses: comments, backslash-newline, single and double quotes, `$NAME` / `${NAME}`
 * expansion from `vars`, and the operators above (a command's redirections stay in its list as
 * separate words: `>` then the target). Command substitution and globbing are refused.
 */
export function shellCommands(text: string, vars: ShellVars = {}): string[][] {
  const commands: string[][] = [];
  let words: string[] = [];
  let word = "";
  let inWord = false;
  const endWord = () => {
    if (inWord) words.push(word);
    word = "";
    inWord = false;
  };
  const endCommand = () => {
    endWord();
    if (words.length > 0) commands.push(words);
    words = [];
  };
  const expand = (at: number): number => {
    const braced = text[at + 1] === "{";
    const m = (braced ? /^\$\{([A-Za-z_][A-Za-z0-9_]*)\}/ : /^\$([A-Za-z_][A-Za-z0-9_]*)/).exec(
      text.slice(at),
    );
    if (m === null)
      throw new Error(`shell text: unsupported $ at ${JSON.stringify(text.slice(at, at + 12))}`);
    const value = vars[m[1]!];
    if (value === undefined) throw new Error(`shell text: variable ${m[1]} not given`);
    word += value;
    inWord = true;
    return at + m[0].length;
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === "\\" && text[i + 1] === "\n") {
      i += 2;
    } else if (c === "\n") {
      endCommand();
      i++;
    } else if (c === " " || c === "\t") {
      endWord();
      i++;
    } else if (c === "#" && !inWord) {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "'") {
      const close = text.indexOf("'", i + 1);
      if (close < 0) throw new Error("shell text: unclosed '");
      word += text.slice(i + 1, close);
      inWord = true;
      i = close + 1;
    } else if (c === '"') {
      inWord = true;
      i++;
      while (text[i] !== '"') {
        if (i >= text.length) throw new Error('shell text: unclosed "');
        if (text[i] === "$") i = expand(i);
        else if (text[i] === "`") throw new Error("shell text: command substitution is not supported");
        else if (text[i] === "\\" && '"\\$`'.includes(text[i + 1] ?? "")) {
          word += text[i + 1];
          i += 2;
        } else word += text[i++];
      }
      i++;
    } else if (c === "$") {
      if (text[i + 1] === "(") throw new Error("shell text: command substitution is not supported");
      i = expand(i);
    } else if (c === "`" || c === "*" || c === "?") {
      throw new Error(`shell text: ${c} (substitution or glob) is not supported`);
    } else if (c === "\\") {
      word += text[i + 1] ?? "";
      inWord = true;
      i += 2;
    } else {
      const op = OPERATORS.find((o) => text.startsWith(o, i));
      if (op !== undefined && !(op === "2>&1" && inWord)) {
        endWord();
        if (op === "&&" || op === "||" || op === ";" || op === "&" || op === "|") endCommand();
        else words.push(op);
        i += op.length;
      } else {
        word += c;
        inWord = true;
        i++;
      }
    }
  }
  endCommand();
  return commands;
}

/** The words of a command without its redirections (`> FILE`, `2>&1`, ...). */
export function withoutRedirections(words: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (w === "2>&1") continue;
    if (w === ">" || w === ">>" || w === "<") {
      i++;
      continue;
    }
    out.push(w);
  }
  return out;
}

export type ViommuCommand = "run" | "serve" | "demo";

/** Every `node bin/viommu.mjs COMMAND ...` in a recipe: the words after COMMAND, redirections dropped. */
export function viommuInvocations(
  id: string,
  vars: ShellVars = {},
): { command: ViommuCommand; args: string[] }[] {
  const out: { command: ViommuCommand; args: string[] }[] = [];
  for (const words of shellCommands(guideRecipe(id).text, vars)) {
    // Environment assignments before the command (VIOMMU_TRACE=map node ...).
    let at = 0;
    while (at < words.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(words[at]!)) at++;
    if (words[at] !== "node" || words[at + 1] !== "bin/viommu.mjs") continue;
    const command = words[at + 2];
    if (command !== "run" && command !== "serve" && command !== "demo") {
      throw new Error(`recipe ${id}: unknown viommu command ${command}`);
    }
    out.push({ command, args: withoutRedirections(words.slice(at + 3)) });
  }
  return out;
}

/** The arguments of the one `node bin/viommu.mjs COMMAND` in a recipe (throws unless exactly one). */
export function viommuArgs(id: string, command: ViommuCommand, vars: ShellVars = {}): string[] {
  const found = viommuInvocations(id, vars).filter((x) => x.command === command);
  if (found.length !== 1) {
    throw new Error(`recipe ${id}: ${found.length} "node bin/viommu.mjs ${command}" commands, expected one`);
  }
  return found[0]!.args;
}
