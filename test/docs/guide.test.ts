// docs/guide.md: every recipe is claimed by a test that runs it, every viommu command in it
// parses with the real option tables, and the cheap recipes run here as written (the serve
// start and stop, the QEMU command the lab runs, the setup variables). The recipes that boot a
// guest run in the tests the guide's table names.
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { test } from "node:test";
import { gunzipSync } from "node:zlib";
import { parseRunOptions } from "../../src/cli/run-options.ts";
import { parseServeArgs } from "../../src/cli/serve.ts";
import { labPaths, qemuCommand } from "../../tools/guest-lab/lab.ts";
import {
  guideRecipe,
  guideRecipes,
  parseGuide,
  shellCommands,
  viommuArgs,
  viommuInvocations,
} from "../support/guide.ts";

const REPO = join(import.meta.dirname, "..", "..");

/** Values for the guide's variables where only the words matter (nothing is opened). */
const PLACEHOLDERS = {
  DIR: "/tmp/viommu-guide",
  LAB: "/root/.cache/viommu",
  BDF: "0000:01:00.0",
  INITRD: "/tmp/viommu-guide/initrd",
};

test("guide parser: recipe blocks by id with their language and line; other blocks ignored", () => {
  const md = [
    "# t",
    "```sh recipe=one",
    "echo 1",
    "```",
    "```text",
    "not a recipe",
    "```",
    "````sh recipe=two guest",
    "```",
    "````",
  ].join("\n");
  assert.deepEqual(parseGuide(md), [
    { id: "one", lang: "sh", text: "echo 1", line: 2 },
    { id: "two", lang: "sh", text: "```", line: 8 },
  ]);
  assert.throws(() => parseGuide("```sh recipe=a\n```\n```sh recipe=a\n```"), /recipe a defined twice/);
  assert.throws(() => parseGuide("```sh recipe=a\necho"), /never closed/);
});

test("guide parser: shell words as sh splits them (quotes, continuations, variables, operators)", () => {
  assert.deepEqual(
    shellCommands(`a "$X/y z" 'q $X' \\\n  b\${X}c # note\nd > "$X/f" 2>&1 &\ne && f`, { X: "v" }),
    [["a", "v/y z", "q $X", "bvc"], ["d", ">", "v/f", "2>&1"], ["e"], ["f"]],
  );
  assert.throws(() => shellCommands("a $UNSET"), /variable UNSET not given/);
  assert.throws(() => shellCommands("a $(b)"), /command substitution/);
  assert.throws(() => shellCommands("ls *"), /glob/);
});

/** Every recipe id some test or tool names in a guide helper call (the claim). */
function claimedRecipes(): Map<string, string[]> {
  const claims = new Map<string, string[]>();
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (path.endsWith(".ts") && !path.endsWith(join("support", "guide.ts"))) files.push(path);
    }
  };
  walk(join(REPO, "test"));
  walk(join(REPO, "tools"));
  const call =
    /\b(?:guideRecipe|recipeText|viommuArgs|viommuInvocations|recipeCommands)\(\s*"([A-Za-z0-9_-]+)"/g;
  for (const f of files) {
    for (const m of readFileSync(f, "utf8").matchAll(call)) {
      claims.set(m[1]!, [...(claims.get(m[1]!) ?? []), relative(REPO, f)]);
    }
  }
  return claims;
}

test("guide: every recipe is claimed by a test, and every claim names a recipe the guide has", () => {
  const recipes = guideRecipes();
  assert.ok(recipes.length >= 15, `only ${recipes.length} recipes`);
  const claims = claimedRecipes();
  const unclaimed = recipes.filter((r) => !claims.has(r.id)).map((r) => `${r.id} (line ${r.line})`);
  assert.deepEqual(unclaimed, [], "recipes no test runs");
  const ids = new Set(recipes.map((r) => r.id));
  const dangling = [...claims].filter(([id]) => !ids.has(id)).map(([id, f]) => `${id} in ${f.join(", ")}`);
  assert.deepEqual(dangling, [], "tests naming recipes the guide does not have");
});

test("guide: every viommu run and viommu serve command parses with the real option tables", () => {
  let checked = 0;
  for (const r of guideRecipes()) {
    if (!r.text.includes("bin/viommu.mjs")) continue;
    for (const { command, args } of viommuInvocations(r.id, PLACEHOLDERS)) {
      const where = `recipe ${r.id} (docs/guide.md line ${r.line}): viommu ${command} ${args.join(" ")}`;
      if (command === "run") assert.doesNotThrow(() => parseRunOptions(args), where);
      else if (command === "serve") assert.doesNotThrow(() => parseServeArgs(args), where);
      checked++;
    }
  }
  assert.ok(checked >= 11, `only ${checked} viommu commands found in the guide`);
});

test("guide: assignment behind VT-d without caching mode is refused, naming the fix (section 5)", () => {
  const args = viommuArgs("assign-intel", "run", PLACEHOLDERS);
  const without = args.map((a) => a.replace("intel,caching-mode=on", "intel"));
  assert.notDeepEqual(without, args);
  assert.throws(() => parseRunOptions(without), /needs caching-mode=on/);
});

test("guide setup: the variable lines run in sh; LAB is where provisioning puts the lab", () => {
  const lines = guideRecipe("setup").text.split("\n");
  const commands = lines.map((l) => l.replace(/\s+#.*$/, "")).filter((l) => l !== "");
  assert.deepEqual(commands.slice(0, 2), ["npm ci", "tools/provision/provision.sh"]);
  assert.ok(statSync(join(REPO, "tools/provision/provision.sh")).mode & 0o100, "provision.sh is executable");
  const home = mkdtempSync(join(tmpdir(), "viommu-guide-home-"));
  try {
    const env = { ...process.env, HOME: home, VIOMMU_CACHE: "" };
    const out = execFileSync("sh", ["-c", `${commands.slice(2).join("\n")}\necho "$LAB"; echo "$DIR"`], {
      env,
    })
      .toString()
      .trim()
      .split("\n");
    assert.equal(out.length, 2, out.join("\n"));
    const saved = process.env.HOME;
    process.env.HOME = home;
    const savedCache = process.env.VIOMMU_CACHE;
    delete process.env.VIOMMU_CACHE;
    try {
      assert.equal(out[0], labPaths().cache);
    } finally {
      process.env.HOME = saved;
      if (savedCache !== undefined) process.env.VIOMMU_CACHE = savedCache;
    }
    assert.ok(statSync(out[1]!).isDirectory(), `DIR=${out[1]}`);
    rmSync(out[1]!, { recursive: true, force: true });
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test("guide own-qemu: the QEMU command is the one the lab's Linux tests run, the served arguments after it", () => {
  const lab = labPaths();
  const vars = { DIR: "/tmp/viommu-guide", LAB: lab.cache };
  const commands = shellCommands(guideRecipe("own-qemu").text, vars);
  assert.equal(commands.length, 1);
  const [xargs, dashA, argsFile, qemu, ...qemuArgs] = commands[0]!;
  assert.deepEqual([xargs, dashA, argsFile], ["xargs", "-a", "/tmp/viommu-guide/qemu-args"]);
  // runGuest's defaults: 1024 MiB, one vCPU, the vmlinuz, console on ttyS0; the served line
  // (xargs appends it) brings the shared memory backend, the devices and the VIOT.
  const expected = qemuCommand(lab, lab.initramfs, {
    memMiB: 1024,
    cmdline: "vfio_iommu_type1.allow_unsafe_interrupts=1",
  });
  assert.deepEqual([qemu, ...qemuArgs], [expected.file, ...expected.args]);
});

test("guide serve-virtio: runs as written in sh; the saved line splits under xargs into the shared backend, three vfio-user-pci devices and the VIOT; the table at exit", {
  timeout: 60_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "vg-"));
  const sh = spawn("sh", ["-c", `${guideRecipe("serve-virtio").text}\necho $! > "$DIR/pid"\nwait`], {
    cwd: REPO,
    env: { ...process.env, DIR: dir },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  sh.stderr.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((res) => sh.on("exit", (code) => res(code)));
  try {
    for (let i = 0; i < 600 && !/viommu serve: ready/.test(stderr); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(
      stderr,
      /viommu serve: ready: virtio-iommu at 00:10\.0 .*edu0 at 00:11\.0 \(iommu=on\).*disk1 at 00:12\.0 \(iommu=on\).*rng2 at 00:13\.0 on /,
      stderr,
    );
    assert.equal(statSync(join(dir, "disk.img")).size, 16 << 20);
    assert.ok(existsSync(join(dir, "viot.bin")), "the VIOT");
    // xargs reads the line the way the guide's own-qemu recipe hands it to QEMU.
    const argv = execFileSync("xargs", ["-a", join(dir, "qemu-args"), "printf", "%s\\n"])
      .toString()
      .trimEnd()
      .split("\n");
    assert.deepEqual(argv.slice(0, 4), [
      "-object",
      "memory-backend-memfd,id=viommu-ram,size=1024M,share=on",
      "-machine",
      "memory-backend=viommu-ram",
    ]);
    const devices = argv.filter((_, i) => argv[i - 1] === "-device").map((d) => JSON.parse(d));
    assert.deepEqual(
      devices.map((d) => [d.driver, d.addr, d.socket.path]),
      [
        ["vfio-user-pci", "0x10", join(dir, "virtio-iommu.sock")],
        ["vfio-user-pci", "0x11", join(dir, "edu0.sock")],
        ["vfio-user-pci", "0x12", join(dir, "disk1.sock")],
        ["vfio-user-pci", "0x13", join(dir, "rng2.sock")],
      ],
    );
    assert.deepEqual(argv.slice(-2), ["-acpitable", `file=${join(dir, "viot.bin")}`]);
    const pid = Number(readFileSync(join(dir, "pid"), "utf8"));
    process.kill(pid, "SIGTERM");
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /viommu serve: device +slot +iommu +connections/, stderr);
    assert.match(stderr, /viommu serve: edu0 +00:11\.0 +on /, stderr);
    assert.match(stderr, /viommu serve: rng2 +00:13\.0 +- /, stderr);
    assert.match(stderr, /edu0 host propagation \(VFIO type1 model\): 0 entries, peak 0 of 65535/, stderr);
  } finally {
    if (sh.exitCode === null) sh.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

test("guide kvm-lab-run: the command reaches the KVM lab, which names what is missing when unprovisioned (exit 125)", () => {
  const words = shellCommands(guideRecipe("kvm-lab-run").text)[0]!;
  const dash = words.indexOf("--");
  assert.deepEqual(words.slice(0, dash), ["node", "--import", "tsx", "tools/guest-lab/kvm-run.ts"]);
  // The command inside is a viommu run the option tables accept.
  assert.deepEqual(words.slice(dash + 1, dash + 4), ["node", "bin/viommu.mjs", "run"]);
  assert.doesNotThrow(() => parseRunOptions(words.slice(dash + 4)));
  const empty = mkdtempSync(join(tmpdir(), "viommu-nolab-"));
  try {
    const r = spawnSync(words[0]!, words.slice(1), {
      cwd: REPO,
      env: { ...process.env, VIOMMU_CACHE: empty },
      timeout: 60_000,
    });
    assert.equal(r.status, 125, `${r.stdout}${r.stderr}`);
    assert.match(r.stderr.toString(), /KVM lab not provisioned: .*run tools\/provision\/provision\.sh/);
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
});

test("guide linux-initrd: runs as written in sh; the initrd is the lab's archive, then one holding viommu/script.sh", (t) => {
  if (spawnSync("cpio", ["--version"]).status !== 0)
    return t.skip("cpio(1) not installed: recipe check SKIPPED");
  const dir = mkdtempSync(join(tmpdir(), "viommu-guide-initrd-"));
  try {
    // A stand-in for the lab's initramfs (any bytes: the recipe only concatenates it).
    const lab = join(dir, "lab");
    const base = Buffer.from("base initramfs stand-in\n");
    mkdirSync(lab);
    writeFileSync(join(lab, "initramfs.cpio.gz"), base);
    writeFileSync(join(dir, "script.sh"), "echo hello from the guide\n");
    execFileSync("sh", ["-c", guideRecipe("linux-initrd").text], {
      cwd: dir,
      env: { ...process.env, DIR: dir, LAB: lab },
    });
    const initrd = readFileSync(join(dir, "initrd"));
    assert.deepEqual(initrd.subarray(0, base.length), base);
    const archive = gunzipSync(initrd.subarray(base.length));
    const listing = execFileSync("cpio", ["-itv", "--quiet"], { input: archive }).toString();
    assert.match(listing, /^drwx.* viommu$/m, listing);
    assert.match(listing, /^-rwx.* viommu\/script\.sh$/m, listing);
    assert.ok(archive.includes("echo hello from the guide\n"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
