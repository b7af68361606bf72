// The single-vCPU loop both machines share (src/vmm/vcpu-loop.ts), driven by scripted exits.
import assert from "node:assert/strict";
import { test } from "node:test";
import { RUN } from "../../src/kvm/structs.ts";
import type { VcpuExit } from "../../src/kvm/vcpu.ts";
import type { StopReason } from "../../src/vmm/run-result.ts";
import { type LoopVcpu, runOneVcpu, type VcpuExitHandlers } from "../../src/vmm/vcpu-loop.ts";

function scripted(exits: VcpuExit[]): LoopVcpu & { runs: number } {
  const v = {
    run: new DataView(new ArrayBuffer(4096)),
    runs: 0,
    runOnce(): VcpuExit {
      const e = exits[v.runs++];
      if (e === undefined) throw new Error("the loop ran past its last scripted exit");
      return e;
    },
  };
  return v;
}

const mmio = (gpa: number, isWrite = true): VcpuExit => ({ kind: "mmio", isWrite, gpa, sizeBytes: 4 });
const base = (): VcpuExitHandlers => ({
  mmio: () => {},
  instructionPointer: () => -1,
  pendingStop: () => null,
});

test("vCPU loop: MMIO exits reach the machine with kvm_run's data offset; a terminal exit stops it", () => {
  const seen: string[] = [];
  const v = scripted([mmio(0x1000), mmio(0x2000, false), { kind: "system-event", type: 1 }]);
  const r = runOneVcpu(
    v,
    {
      ...base(),
      mmio: (w, gpa, size, data, off) => seen.push(`${w} ${gpa} ${size} ${data === v.run} ${off}`),
    },
    0,
  );
  assert.deepEqual(seen, [`true 4096 4 true ${RUN.mmio.data}`, `false 8192 4 true ${RUN.mmio.data}`]);
  assert.deepEqual(r.stop, { kind: "system-event", type: 1 });
  assert.equal(v.runs, 3);
});

test("vCPU loop: a stop a device asks for during an exit ends the run after that exit", () => {
  let stop: StopReason | null = null;
  const v = scripted([mmio(1), mmio(2), mmio(3)]);
  const r = runOneVcpu(
    v,
    {
      ...base(),
      mmio: (_w, gpa) => {
        if (gpa === 2) stop = { kind: "debug-exit", status: 7 };
      },
      pendingStop: () => stop,
    },
    0,
  );
  assert.deepEqual(r.stop, { kind: "debug-exit", status: 7 });
  assert.equal(v.runs, 2);
});

test("vCPU loop: a throwing device is a device-error stop, not an exception out of the VMM", () => {
  const v = scripted([mmio(1)]);
  const r = runOneVcpu(
    v,
    {
      ...base(),
      mmio: () => {
        throw new Error("model bug");
      },
    },
    0,
  );
  assert.deepEqual(r.stop, { kind: "device-error", message: "model bug" });
});

test("vCPU loop: port I/O and IOAPIC EOIs go to an x86 machine's handlers; without them (arm64) they stop the run", () => {
  const io: VcpuExit = { kind: "io", isWrite: true, port: 0x3f8, sizeBytes: 1, count: 2, dataOffset: 0x100 };
  const eoi: VcpuExit = { kind: "ioapic-eoi", vector: 0x31 };
  const seen: string[] = [];
  const x86 = runOneVcpu(
    scripted([io, eoi, { kind: "hlt" }]),
    {
      ...base(),
      io: (w, port, size, count, _d, off) => seen.push(`io ${w} ${port} ${size} ${count} ${off}`),
      eoi: (vector) => seen.push(`eoi ${vector}`),
    },
    0,
  );
  assert.deepEqual(seen, ["io true 1016 1 2 256", "eoi 49"]);
  assert.deepEqual(x86.stop, { kind: "hlt" });
  assert.deepEqual(runOneVcpu(scripted([io]), base(), 0).stop, { kind: "unknown-exit", reason: -1 });
  assert.deepEqual(runOneVcpu(scripted([eoi]), base(), 0).stop, { kind: "unknown-exit", reason: -1 });
});

test("vCPU loop: each terminal exit's stop reason; internal-error carries the machine's instruction pointer", () => {
  const one = (e: VcpuExit, ip = -1) =>
    runOneVcpu(scripted([e]), { ...base(), instructionPointer: () => ip }, 0).stop;
  assert.deepEqual(one({ kind: "shutdown" }), { kind: "triple-fault" });
  assert.deepEqual(one({ kind: "internal-error", suberror: 1 }, 0xfff0), {
    kind: "internal-error",
    suberror: 1,
    rip: 0xfff0,
  });
  assert.deepEqual(one({ kind: "internal-error", suberror: 1 }), {
    kind: "internal-error",
    suberror: 1,
    rip: -1,
  });
  assert.deepEqual(one({ kind: "fail-entry", hardwareReason: 33 }), {
    kind: "fail-entry",
    hardwareReason: 33,
  });
  assert.deepEqual(one({ kind: "unknown", reason: 99 }), { kind: "unknown-exit", reason: 99 });
});

test("vCPU loop: a signal exit calls the machine's hook and, past the deadline, stops with a timeout", async () => {
  let hooks = 0;
  const exits: VcpuExit[] = [{ kind: "interrupted" }, { kind: "interrupted" }];
  const v = scripted(exits);
  // The first signal exit comes before the 1 s deadline; the second after it.
  const runOnce = v.runOnce;
  v.runOnce = () => {
    if (v.runs === 1) {
      const until = Date.now() + 1100;
      while (Date.now() < until) {}
    }
    return runOnce();
  };
  const r = runOneVcpu(v, { ...base(), interrupted: () => hooks++ }, 1);
  assert.deepEqual(r.stop, { kind: "timeout", seconds: 1 });
  assert.equal(hooks, 2);
  assert.ok(r.wallMs >= 1000);
});
