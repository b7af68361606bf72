/**
 * Initial vCPU state for the boot protocols: flat 32-bit protected mode (Multiboot, PVH).
 * The GDT is written into guest RAM so the guest may reload its segment registers.
 */
import type { GuestMemory } from "../../engine/guest-memory.ts";
import type { Segment } from "../../kvm/structs.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";

export const BOOT_GDT_GPA = 0x500;
export const BOOT_CODE32_SELECTOR = 0x08;
export const BOOT_DATA32_SELECTOR = 0x10;
const CR0_PE = 1 << 0;
const CR0_ET = 1 << 4;

/** GDT: null, flat 4 GiB code (0x00cf9b000000ffff), flat 4 GiB data (0x00cf93000000ffff). */
export function writeBootGdt(memory: GuestMemory): void {
  memory.writeU64(BOOT_GDT_GPA, 0n);
  memory.writeU64(BOOT_GDT_GPA + 8, 0x00cf9b000000ffffn);
  memory.writeU64(BOOT_GDT_GPA + 16, 0x00cf93000000ffffn);
}

function flat(selector: number, type: number): Segment {
  return {
    base: 0,
    limit: 0xffffffff,
    selector,
    type,
    present: true,
    dpl: 0,
    db: true,
    s: true,
    l: false,
    g: true,
  };
}

/** Multiboot spec 3.2 / PVH: CR0.PE, paging off, flat CS/DS/ES/FS/GS/SS, EFLAGS with IF clear. */
export function enterFlatProtectedMode(
  vcpu: Vcpu,
  memory: GuestMemory,
  regs: { eip: number; eax?: number; ebx?: number; esp?: number },
): void {
  writeBootGdt(memory);
  const s = vcpu.getSregs();
  s.setSegment("cs", flat(BOOT_CODE32_SELECTOR, 0xb)); // execute/read, accessed
  for (const name of ["ds", "es", "fs", "gs", "ss"] as const)
    s.setSegment(name, flat(BOOT_DATA32_SELECTOR, 0x3));
  s.setSegment("tr", {
    base: 0,
    limit: 0xffff,
    selector: 0,
    type: 0xb,
    present: true,
    dpl: 0,
    db: false,
    s: false,
    l: false,
    g: false,
  });
  s.set("gdtBase", BOOT_GDT_GPA);
  s.setTableLimit("gdtLimit", 3 * 8 - 1);
  s.set("idtBase", 0);
  s.setTableLimit("idtLimit", 0);
  s.set("cr0", CR0_PE | CR0_ET);
  s.set("cr3", 0);
  s.set("cr4", 0);
  s.set("efer", 0);
  vcpu.setSregs(s);
  vcpu.setRegs({ rip: regs.eip, rax: regs.eax ?? 0, rbx: regs.ebx ?? 0, rsp: regs.esp ?? 0, rflags: 2 });
}

/**
 * One line of a stopped vCPU's state, for the summary of a run that ended in a shutdown (triple
 * fault): which vCPU, where it was and in which mode. Empty when KVM cannot report it.
 */
export function describeCpuState(vcpu: Vcpu): string {
  try {
    const r = vcpu.getRegs();
    const s = vcpu.getSregs();
    const hex = (v: number) => `0x${v.toString(16)}`;
    const cs = s.segment("cs");
    // KVM on AMD SVM reinitializes the vCPU at a shutdown intercept (the VMCB is undefined
    // after it): the registers read back are the reset state, not where the fault happened.
    if (r.rip === 0xfff0 && cs.selector === 0xf000)
      return `vCPU ${vcpu.id} (its registers read back in the reset state: KVM on AMD SVM resets a vCPU at a shutdown)`;
    return (
      `vCPU ${vcpu.id}: rip ${hex(r.rip)} rsp ${hex(r.rsp)} rflags ${hex(r.rflags)} ` +
      `cs ${hex(cs.selector)}${cs.l ? " (64-bit)" : cs.db ? " (32-bit)" : " (16-bit)"} ` +
      `cr0 ${hex(s.get("cr0"))} cr2 ${hex(s.get("cr2"))} cr3 ${hex(s.get("cr3"))} cr4 ${hex(s.get("cr4"))} efer ${hex(s.get("efer"))} ` +
      `idt ${hex(s.get("idtBase"))}`
    );
  } catch {
    return "";
  }
}
