/**
 * arm64 vCPU set-up: KVM_ARM_PREFERRED_TARGET / KVM_ARM_VCPU_INIT (PSCI 0.2, secondaries
 * powered off until PSCI CPU_ON), one-register access, and the boot register state.
 * (api.rst 4.68, 4.82, 4.83; arm64 booting.rst 4)
 */
import { KvmError } from "../ioctls.ts";
import { errno, ioctlBuffer, scratchMemory } from "../libc.ts";
import {
  KVM_ARM_PREFERRED_TARGET,
  KVM_ARM_VCPU_INIT,
  KVM_ARM_VCPU_POWER_OFF,
  KVM_ARM_VCPU_PSCI_0_2,
  KVM_GET_ONE_REG,
  KVM_ONE_REG_SIZE,
  KVM_SET_ONE_REG,
  KVM_VCPU_INIT_SIZE,
  PSTATE_EL1H_DAIF,
  REG_MPIDR_EL1,
  REG_PC,
  REG_PSTATE,
  REG_X0,
  REG_X1,
  REG_X2,
  REG_X3,
} from "./ioctls.ts";

function bufferIoctl(fd: number, request: number, name: string, buf: Uint8Array): void {
  if (ioctlBuffer(fd, request, buf) < 0) throw new KvmError(name, errno());
}

/** KVM_ARM_PREFERRED_TARGET on the VM fd: a kvm_vcpu_init for this host's CPU. */
export function preferredTarget(vmFd: number): Uint8Array {
  const init = new Uint8Array(KVM_VCPU_INIT_SIZE);
  bufferIoctl(vmFd, KVM_ARM_PREFERRED_TARGET, "KVM_ARM_PREFERRED_TARGET", init);
  return init;
}

/**
 * KVM_ARM_VCPU_INIT with the preferred target, PSCI 0.2 and, for every vCPU but the boot one,
 * POWER_OFF (it waits for the guest's PSCI CPU_ON). Without it KVM_RUN fails with ENOEXEC.
 */
export function initVcpu(vcpuFd: number, target: Uint8Array, boot: boolean): void {
  const init = new Uint8Array(target);
  const v = new DataView(init.buffer);
  let features = v.getUint32(4, true) | (1 << KVM_ARM_VCPU_PSCI_0_2);
  if (!boot) features |= 1 << KVM_ARM_VCPU_POWER_OFF;
  v.setUint32(4, features >>> 0, true);
  bufferIoctl(vcpuFd, KVM_ARM_VCPU_INIT, "KVM_ARM_VCPU_INIT", init);
}

/**
 * A 64-bit register through KVM_{GET,SET}_ONE_REG. kvm_one_reg carries the user address of the
 * value, so the value lives in a scratch mapping whose address is known.
 */
export class OneReg {
  private readonly fd: number;
  private readonly scratch = scratchMemory(8);
  private readonly value = new DataView(this.scratch.bytes.buffer, this.scratch.bytes.byteOffset, 8);
  private readonly req = new Uint8Array(KVM_ONE_REG_SIZE);
  private readonly reqView = new DataView(this.req.buffer);

  constructor(vcpuFd: number) {
    this.fd = vcpuFd;
    this.reqView.setBigUint64(8, this.scratch.address, true);
  }

  get(id: bigint): bigint {
    this.reqView.setBigUint64(0, id, true);
    bufferIoctl(this.fd, KVM_GET_ONE_REG, "KVM_GET_ONE_REG", this.req);
    return this.value.getBigUint64(0, true);
  }

  set(id: bigint, value: bigint): void {
    this.value.setBigUint64(0, value, true);
    this.reqView.setBigUint64(0, id, true);
    bufferIoctl(this.fd, KVM_SET_ONE_REG, "KVM_SET_ONE_REG", this.req);
  }
}

/** The boot vCPU's entry state (booting.rst 4): PC = Image, x0 = DTB, x1-x3 = 0, EL1h, DAIF masked. */
export function setBootRegisters(vcpuFd: number, entryGpa: number, dtbGpa: number): void {
  const r = new OneReg(vcpuFd);
  r.set(REG_PSTATE, PSTATE_EL1H_DAIF);
  r.set(REG_PC, BigInt(entryGpa));
  r.set(REG_X0, BigInt(dtbGpa));
  r.set(REG_X1, 0n);
  r.set(REG_X2, 0n);
  r.set(REG_X3, 0n);
}

/** MPIDR_EL1 as KVM reset it (the DT cpu node's reg is its affinity bits). */
export function readMpidr(vcpuFd: number): bigint {
  return new OneReg(vcpuFd).get(REG_MPIDR_EL1);
}
