/**
 * Runs test/support/vfio-user-test-server.ts in a child process and observes it from outside:
 * JSON stats on demand (SIGUSR2), VmSize/VmRSS and open descriptors from /proc/PID, and how it
 * ended (exit code or signal). Every wait is bounded.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestServerOptions {
  count?: number;
  dmaMask?: number;
  dmaTimeoutMs?: number;
  maxMappings?: number;
  maxFiles?: number;
  maxDmaMaps?: number;
}

export interface ProcStatus {
  vmSizeKiB: number;
  vmRssKiB: number;
  fds: number;
  threads: number;
}

const SCRIPT = new URL("./vfio-user-test-server.ts", import.meta.url).pathname;

export class ServerProcess {
  readonly dir: string;
  readonly child: ChildProcess;
  private out = "";
  stderr = "";
  private exited: { code: number | null; signal: string | null } | null = null;
  private readonly exitWaiters: (() => void)[] = [];
  private readonly lineWaiters: { prefix: string; resolve: (line: string) => void }[] = [];

  private constructor(dir: string, child: ChildProcess) {
    this.dir = dir;
    this.child = child;
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (d: string) => {
      this.out += d;
      for (let nl = this.out.indexOf("\n"); nl >= 0; nl = this.out.indexOf("\n")) {
        const line = this.out.slice(0, nl);
        this.out = this.out.slice(nl + 1);
        const i = this.lineWaiters.findIndex((w) => line.startsWith(w.prefix));
        if (i >= 0) this.lineWaiters.splice(i, 1)[0].resolve(line);
      }
    });
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (d: string) => {
      if (this.stderr.length < 100_000) this.stderr += d;
    });
    child.on("exit", (code, signal) => {
      this.exited = { code, signal };
      for (const w of this.exitWaiters) w();
    });
  }

  static async start(options: TestServerOptions = {}, timeoutMs = 20_000): Promise<ServerProcess> {
    const dir = mkdtempSync(join(tmpdir(), "viommu-vu-"));
    const child = spawn(
      process.execPath,
      ["--import", "tsx", SCRIPT, JSON.stringify({ socketDir: dir, ...options })],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const s = new ServerProcess(dir, child);
    await s.line("ready", timeoutMs);
    return s;
  }

  socket(index = 0): string {
    return join(this.dir, `edu${index}.sock`);
  }

  get pid(): number {
    return this.child.pid!;
  }

  get exit(): { code: number | null; signal: string | null } | null {
    return this.exited;
  }

  private line(prefix: string, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        const i = this.lineWaiters.findIndex((w) => w.resolve === done);
        if (i >= 0) this.lineWaiters.splice(i, 1);
        reject(
          new Error(
            `server: no "${prefix}" line within ${timeoutMs} ms; exit ${JSON.stringify(this.exited)}; stderr: ${this.stderr.slice(-2000)}`,
          ),
        );
      }, timeoutMs);
      const done = (line: string) => {
        clearTimeout(t);
        resolve(line);
      };
      this.lineWaiters.push({ prefix, resolve: done });
    });
  }

  // biome-ignore lint/suspicious/noExplicitAny: stats are JSON from the child
  async stats(timeoutMs = 10_000): Promise<any> {
    if (this.exited !== null)
      throw new Error(`server exited: ${JSON.stringify(this.exited)}; stderr: ${this.stderr.slice(-2000)}`);
    const p = this.line("stats ", timeoutMs);
    this.child.kill("SIGUSR2");
    return JSON.parse((await p).slice(6));
  }

  proc(): ProcStatus {
    const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
    const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? "0");
    return {
      vmSizeKiB: kib("VmSize"),
      vmRssKiB: kib("VmRSS"),
      fds: readdirSync(`/proc/${this.pid}/fd`).length,
      threads: kib("Threads"),
    };
  }

  /** SIGTERM and wait; returns how it ended (SIGKILL after the timeout). */
  async stop(timeoutMs = 5000): Promise<{ code: number | null; signal: string | null }> {
    if (this.exited === null) {
      const done = new Promise<void>((r) => this.exitWaiters.push(r));
      this.child.kill("SIGTERM");
      const t = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
      await done;
      clearTimeout(t);
    }
    rmSync(this.dir, { recursive: true, force: true });
    return this.exited!;
  }
}

/** Sleeps without blocking the event loop. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
