/**
 * One virtual CPU: its registers, its CPUID table, its local APIC, and the KVM_RUN loop step.
 *
 * `run()` returns the exit as a discriminated union. The exit objects are preallocated, one per
 * kind, and overwritten by the next `run()`: the loop allocates nothing per exit.
 */
import {
  KVM_EXIT_FAIL_ENTRY,
  KVM_EXIT_HLT,
  KVM_EXIT_INTERNAL_ERROR,
  KVM_EXIT_INTR,
  KVM_EXIT_IO,
  KVM_EXIT_IOAPIC_EOI,
  KVM_EXIT_MMIO,
  KVM_EXIT_SHUTDOWN,
  KVM_EXIT_SYSTEM_EVENT,
  KVM_GET_LAPIC,
  KVM_GET_REGS,
  KVM_GET_SREGS,
  KVM_GET_SUPPORTED_CPUID,
  KVM_RUN,
  KVM_SET_CPUID2,
  KVM_SET_LAPIC,
  KVM_SET_REGS,
  KVM_SET_SREGS,
  KvmError,
} from "./ioctls.ts";
import {
  close,
  EAGAIN,
  EINTR,
  errno,
  errnoName,
  externalView,
  ioctlBuffer,
  ioctlValue,
  isMapFailed,
  MAP_SHARED,
  mmap,
  PROT_READ,
  PROT_WRITE,
} from "./libc.ts";
import {
  KVM_LAPIC_STATE_SIZE,
  KVM_REGS_SIZE,
  KVM_SREGS_SIZE,
  REGS,
  type RegName,
  RUN,
  readSegment,
  type Segment,
  type SegmentName,
  SREGS,
  writeSegment,
} from "./structs.ts";
/** What a vCPU needs of its VM: the /dev/kvm fd (for CPUID queries) and the kvm_run size. */
export interface VcpuHost {
  readonly kvm: { readonly fd: number; readonly vcpuMmapSizeBytes: number };
}

export interface IoExit {
  readonly kind: "io";
  isWrite: boolean;
  port: number;
  sizeBytes: 1 | 2 | 4;
  /** Repetitions (string I/O); the data is `count * sizeBytes` bytes at `dataOffset` in kvm_run. */
  count: number;
  dataOffset: number;
}
export interface MmioExit {
  readonly kind: "mmio";
  isWrite: boolean;
  gpa: number;
  sizeBytes: number;
}
export interface IoapicEoiExit {
  readonly kind: "ioapic-eoi";
  vector: number;
}
export interface SystemEventExit {
  readonly kind: "system-event";
  /** 1 shutdown, 2 reset, 3 crash. */
  type: number;
}
export interface FailEntryExit {
  readonly kind: "fail-entry";
  hardwareReason: number;
}
export interface InternalErrorExit {
  readonly kind: "internal-error";
  /** 1 = instruction emulation failed. */
  suberror: number;
}
export interface SimpleExit {
  readonly kind: "hlt" | "shutdown" | "interrupted";
}
export interface UnknownExit {
  readonly kind: "unknown";
  reason: number;
}
export type VcpuExit =
  | IoExit
  | MmioExit
  | IoapicEoiExit
  | SystemEventExit
  | FailEntryExit
  | InternalErrorExit
  | SimpleExit
  | UnknownExit;

const SIZE_CPUID_ENTRY = 40;
const MAX_CPUID_ENTRIES = 256;

export interface CpuidEntry {
  fn: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export class Vcpu {
  readonly vm: VcpuHost;
  readonly id: number;
  readonly fd: number;
  /** The kvm_run page. */
  readonly run: DataView;
  readonly runBytes: Uint8Array;
  private readonly regsBuf = new Uint8Array(KVM_REGS_SIZE);
  private readonly regsView = new DataView(this.regsBuf.buffer);
  private readonly sregsBuf = new Uint8Array(KVM_SREGS_SIZE);
  private readonly sregsView = new DataView(this.sregsBuf.buffer);

  private readonly ioExit: IoExit = {
    kind: "io",
    isWrite: false,
    port: 0,
    sizeBytes: 1,
    count: 0,
    dataOffset: 0,
  };
  private readonly mmioExit: MmioExit = { kind: "mmio", isWrite: false, gpa: 0, sizeBytes: 0 };
  private readonly eoiExit: IoapicEoiExit = { kind: "ioapic-eoi", vector: 0 };
  private readonly systemEventExit: SystemEventExit = { kind: "system-event", type: 0 };
  private readonly failEntryExit: FailEntryExit = { kind: "fail-entry", hardwareReason: 0 };
  private readonly internalErrorExit: InternalErrorExit = { kind: "internal-error", suberror: 0 };
  private readonly hltExit: SimpleExit = { kind: "hlt" };
  private readonly shutdownExit: SimpleExit = { kind: "shutdown" };
  private readonly interruptedExit: SimpleExit = { kind: "interrupted" };
  private readonly unknownExit: UnknownExit = { kind: "unknown", reason: 0 };

  exits = 0;

  /** Wraps vCPU fd `fd` (from KVM_CREATE_VCPU, possibly in another thread of this process). */
  constructor(vm: VcpuHost, id: number, fd: number) {
    this.vm = vm;
    this.id = id;
    this.fd = fd;
    const size = vm.kvm.vcpuMmapSizeBytes;
    const ptr = mmap(null, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (isMapFailed(ptr)) throw new Error(`mmap of the kvm_run area failed: ${errnoName(errno())}`);
    const ab = externalView(ptr, size);
    this.run = new DataView(ab);
    this.runBytes = new Uint8Array(ab);
  }

  private ioctlBuf(request: number, name: string, buf: Uint8Array): void {
    if (ioctlBuffer(this.fd, request, buf) < 0) throw new KvmError(name, errno());
  }

  /** Runs the vCPU until the next exit that needs userspace. */
  runOnce(): VcpuExit {
    const r = ioctlValue(this.fd, KVM_RUN, 0);
    this.exits++;
    if (r < 0) {
      const err = errno();
      if (err === EINTR || err === EAGAIN) return this.interruptedExit;
      throw new KvmError("KVM_RUN", err);
    }
    const run = this.run;
    const reason = run.getUint32(RUN.exitReason, true);
    switch (reason) {
      case KVM_EXIT_IO: {
        const e = this.ioExit;
        e.isWrite = run.getUint8(RUN.io.direction) === 1;
        e.sizeBytes = run.getUint8(RUN.io.size) as 1 | 2 | 4;
        e.port = run.getUint16(RUN.io.port, true);
        e.count = run.getUint32(RUN.io.count, true);
        e.dataOffset = Number(run.getBigUint64(RUN.io.dataOffset, true));
        return e;
      }
      case KVM_EXIT_MMIO: {
        const e = this.mmioExit;
        e.gpa = Number(run.getBigUint64(RUN.mmio.physAddr, true));
        e.sizeBytes = run.getUint32(RUN.mmio.len, true);
        e.isWrite = run.getUint8(RUN.mmio.isWrite) !== 0;
        return e;
      }
      case KVM_EXIT_IOAPIC_EOI:
        this.eoiExit.vector = run.getUint8(RUN.eoi.vector);
        return this.eoiExit;
      case KVM_EXIT_HLT:
        return this.hltExit;
      case KVM_EXIT_SHUTDOWN:
        return this.shutdownExit;
      case KVM_EXIT_INTR:
        return this.interruptedExit;
      case KVM_EXIT_SYSTEM_EVENT:
        this.systemEventExit.type = run.getUint32(RUN.systemEvent.type, true);
        return this.systemEventExit;
      case KVM_EXIT_FAIL_ENTRY:
        this.failEntryExit.hardwareReason = Number(run.getBigUint64(RUN.failEntry.reason, true));
        return this.failEntryExit;
      case KVM_EXIT_INTERNAL_ERROR:
        this.internalErrorExit.suberror = run.getUint32(RUN.internal.suberror, true);
        return this.internalErrorExit;
      default:
        this.unknownExit.reason = reason;
        return this.unknownExit;
    }
  }

  /** Sets kvm_run.immediate_exit so the next KVM_RUN returns EINTR at once. */
  setImmediateExit(on: boolean): void {
    this.run.setUint8(RUN.immediateExit, on ? 1 : 0);
  }

  getRegs(): Record<RegName, number> {
    this.ioctlBuf(KVM_GET_REGS, "KVM_GET_REGS", this.regsBuf);
    const out = {} as Record<RegName, number>;
    for (const [name, off] of Object.entries(REGS) as [RegName, number][]) {
      out[name] = Number(this.regsView.getBigUint64(off, true));
    }
    return out;
  }

  /** Sets the given registers; the others are zero (rflags defaults to 2, its fixed bit). */
  setRegs(values: Partial<Record<RegName, number>>): void {
    this.regsBuf.fill(0);
    this.regsView.setBigUint64(REGS.rflags, 2n, true);
    for (const [name, value] of Object.entries(values) as [RegName, number][]) {
      this.regsView.setBigUint64(REGS[name], BigInt(value), true);
    }
    this.ioctlBuf(KVM_SET_REGS, "KVM_SET_REGS", this.regsBuf);
  }

  /** Reads the special registers into the internal buffer and returns accessors over it. */
  getSregs(): SpecialRegisters {
    this.ioctlBuf(KVM_GET_SREGS, "KVM_GET_SREGS", this.sregsBuf);
    return new SpecialRegisters(this.sregsView);
  }

  setSregs(sregs: SpecialRegisters): void {
    if (sregs.view !== this.sregsView) throw new Error("sregs from another vCPU");
    this.ioctlBuf(KVM_SET_SREGS, "KVM_SET_SREGS", this.sregsBuf);
  }

  /** KVM_SET_CPUID2 from KVM_GET_SUPPORTED_CPUID, passed through `adjust` first. */
  setupCpuid(adjust: (entries: CpuidEntry[]) => CpuidEntry[]): CpuidEntry[] {
    const buf = new Uint8Array(8 + MAX_CPUID_ENTRIES * SIZE_CPUID_ENTRY);
    const v = new DataView(buf.buffer);
    v.setUint32(0, MAX_CPUID_ENTRIES, true);
    if (ioctlBuffer(this.vm.kvm.fd, KVM_GET_SUPPORTED_CPUID, buf) < 0) {
      throw new KvmError("KVM_GET_SUPPORTED_CPUID", errno());
    }
    const n = v.getUint32(0, true);
    const entries: CpuidEntry[] = [];
    for (let i = 0; i < n; i++) {
      const o = 8 + i * SIZE_CPUID_ENTRY;
      entries.push({
        fn: v.getUint32(o, true),
        index: v.getUint32(o + 4, true),
        flags: v.getUint32(o + 8, true),
        eax: v.getUint32(o + 12, true),
        ebx: v.getUint32(o + 16, true),
        ecx: v.getUint32(o + 20, true),
        edx: v.getUint32(o + 24, true),
      });
    }
    const adjusted = adjust(entries);
    const out = new Uint8Array(8 + adjusted.length * SIZE_CPUID_ENTRY);
    const ov = new DataView(out.buffer);
    ov.setUint32(0, adjusted.length, true);
    adjusted.forEach((e, i) => {
      const o = 8 + i * SIZE_CPUID_ENTRY;
      ov.setUint32(o, e.fn, true);
      ov.setUint32(o + 4, e.index, true);
      ov.setUint32(o + 8, e.flags, true);
      ov.setUint32(o + 12, e.eax >>> 0, true);
      ov.setUint32(o + 16, e.ebx >>> 0, true);
      ov.setUint32(o + 20, e.ecx >>> 0, true);
      ov.setUint32(o + 24, e.edx >>> 0, true);
    });
    this.ioctlBuf(KVM_SET_CPUID2, "KVM_SET_CPUID2", out);
    return adjusted;
  }

  /** Reads, edits and writes back the in-kernel local APIC's register page. */
  editLapic(edit: (regs: DataView) => void): void {
    const buf = new Uint8Array(KVM_LAPIC_STATE_SIZE);
    this.ioctlBuf(KVM_GET_LAPIC, "KVM_GET_LAPIC", buf);
    edit(new DataView(buf.buffer));
    this.ioctlBuf(KVM_SET_LAPIC, "KVM_SET_LAPIC", buf);
  }

  close(): void {
    close(this.fd);
  }
}

/** Accessors over a kvm_sregs buffer. */
export class SpecialRegisters {
  readonly view: DataView;
  constructor(view: DataView) {
    this.view = view;
  }
  segment(name: SegmentName): Segment {
    return readSegment(this.view, SREGS[name]);
  }
  setSegment(name: SegmentName, seg: Segment): void {
    writeSegment(this.view, SREGS[name], seg);
  }
  get(name: "cr0" | "cr2" | "cr3" | "cr4" | "cr8" | "efer" | "apicBase" | "gdtBase" | "idtBase"): number {
    return Number(this.view.getBigUint64(SREGS[name], true));
  }
  set(
    name: "cr0" | "cr2" | "cr3" | "cr4" | "cr8" | "efer" | "apicBase" | "gdtBase" | "idtBase",
    value: number,
  ): void {
    this.view.setBigUint64(SREGS[name], BigInt(value), true);
  }
  setTableLimit(name: "gdtLimit" | "idtLimit", limit: number): void {
    this.view.setUint16(SREGS[name], limit, true);
  }
}
