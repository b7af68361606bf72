/**
 * The VMM's interrupt fabric: devices' MSIs and pins, through interrupt remapping when the
 * machine has it, to the local APICs that KVM emulates (KVM_SIGNAL_MSI).
 *
 *   device MSI ──► remapper(requester ID) ──► KVM_SIGNAL_MSI
 *   device pin ──► IOAPIC pin ──► RTE message ──► remapper(IOAPIC source ID) ──► KVM_SIGNAL_MSI
 *
 * A message the remapper blocks (not present, bad source, reserved bits) is dropped here: the
 * remapper has already recorded its architected fault. A device message whose address is not in
 * the interrupt range (0xFEEx_xxxx) is a memory write in real hardware; the VMM does not turn it
 * into an interrupt, and counts it.
 */
import type { Ioapic } from "../../devices/ioapic.ts";
import type { Tracer } from "../../engine/trace.ts";
import type { InterruptSink, MsiMessage } from "../../platform/interrupts.ts";

/** Where messages end up: KVM_SIGNAL_MSI in the VMM, a recorder in tests. */
export interface MsiTarget {
  /** True when delivered, false when the local APICs refused it. */
  signalMsi(address: number, data: number): boolean;
}

/** Interrupt remapping as the fabric needs it (the VT-d unit's `remap`). */
export interface MsiRemapper {
  remap(
    sourceId: number,
    msiAddress: number,
    msiData: number,
  ):
    | { readonly ok: true; readonly message: MsiMessage }
    | { readonly ok: false; readonly reason: number; readonly detail: string };
}

const INTERRUPT_ADDRESS_BASE = 0xfee00000;
const INTERRUPT_ADDRESS_END = 0xfef00000;
/** IOAPIC input of PIRQA; PIRQ[A-H] reach inputs 16-23 (QEMU q35, ICH9 in APIC mode). */
export const PCI_INTX_FIRST_IOAPIC_PIN = 16;
export const PCI_PIRQ_COUNT = 8;

/**
 * The PIRQ (0-7 = A-H) that INTx pin `pin` (INTA#=0) of root-bus slot `slot` reaches, wired as
 * QEMU's q35 (hw/isa/lpc_ich9.c, matching its DSDT and SeaBIOS): slots 0-24 rotate onto
 * PIRQ[E-H] by (slot + pin) mod 4; slots 25-29 and 31 use the ICH9 DxxIR defaults, INTA-D onto
 * PIRQ[A-D]; slot 30 (the DMI-to-PCI bridge) INTA-D onto PIRQ[E-H].
 */
export function intxPirq(slot: number, pin: number): number {
  if (slot <= 24) return 4 + ((slot + pin) & 3);
  if (slot === 30) return 4 + (pin & 3);
  return pin & 3;
}

/** The IOAPIC input (GSI) that INTx pin `pin` of a root-bus function reaches: 16 + its PIRQ. */
export function intxIoapicPin(requesterId: number, pin: number): number {
  return PCI_INTX_FIRST_IOAPIC_PIN + intxPirq((requesterId >> 3) & 0x1f, pin);
}

export interface InterruptFabricStats {
  readonly msisDelivered: number;
  readonly msisRefusedByLapic: number;
  readonly msisBlockedByRemapping: number;
  readonly msisNotInterruptAddress: number;
  readonly msisRejectedByKvm: number;
  readonly ioapicMessages: number;
  readonly lastBlockReason: string;
}

export class InterruptFabric implements InterruptSink {
  private readonly target: MsiTarget;
  private remapper: MsiRemapper | null = null;
  private covers: (sourceId: number) => boolean = () => true;
  private ioapic: Ioapic | null = null;
  /** Source ID the IOAPIC's messages carry (the DMAR IOAPIC device scope: q35's 0xFF:00.0). */
  readonly ioapicSourceId: number;
  private readonly pinAsserted = new Map<number, number>();

  msisDelivered = 0;
  msisRefusedByLapic = 0;
  msisBlockedByRemapping = 0;
  msisNotInterruptAddress = 0;
  msisRejectedByKvm = 0;
  ioapicMessages = 0;
  lastBlockReason = "";

  private readonly tracer: Tracer | null;

  constructor(target: MsiTarget, ioapicSourceId = 0xff00, tracer: Tracer | null = null) {
    this.target = target;
    this.ioapicSourceId = ioapicSourceId;
    this.tracer = tracer;
  }

  /**
   * Messages from sources for which `covers` is true pass through `remapper`; the others do not
   * cross the remapping unit (outside its DMAR device scopes) and go straight out.
   */
  setRemapper(remapper: MsiRemapper | null, covers: (sourceId: number) => boolean = () => true): void {
    this.remapper = remapper;
    this.covers = covers;
  }

  /** True when messages pass through interrupt remapping. */
  get remapping(): boolean {
    return this.remapper !== null;
  }

  setIoapic(ioapic: Ioapic): void {
    this.ioapic = ioapic;
  }

  /** The message after remapping, or null when remapping blocked it (fault already recorded). */
  translate(sourceId: number, message: MsiMessage): MsiMessage | null {
    if (this.remapper === null || !this.covers(sourceId)) return message;
    const r = this.remapper.remap(sourceId, message.address, message.data);
    if (!r.ok) {
      this.msisBlockedByRemapping++;
      this.lastBlockReason = r.detail;
      if (this.tracer?.on("irq")) {
        this.tracer.emit("irq", "vmm", "msi-blocked", {
          source: sourceId,
          address: message.address,
          data: message.data,
          reason: r.reason,
          detail: r.detail,
        });
      }
      return null;
    }
    return r.message;
  }

  /**
   * A sink for the remapping unit's own event messages (fault and invalidation-completion
   * events): VT-d 5.1.6 excludes them from interrupt remapping, so they go straight out.
   */
  readonly unremapped: InterruptSink = {
    signalMsi: (requesterId, message) => this.deliver(requesterId & 0xffff, message),
    setPin: () => {},
  };

  private send(sourceId: number, message: MsiMessage): void {
    const m = this.translate(sourceId, message);
    if (m === null) return;
    this.deliver(sourceId, m);
  }

  private deliver(sourceId: number, m: MsiMessage): void {
    if (!Number.isSafeInteger(m.address) || m.address < 0) {
      this.msisNotInterruptAddress++;
      return;
    }
    const low = m.address % 0x1_0000_0000;
    if (low < INTERRUPT_ADDRESS_BASE || low >= INTERRUPT_ADDRESS_END) {
      this.msisNotInterruptAddress++;
      if (this.tracer?.on("irq")) {
        this.tracer.emit("irq", "vmm", "msi-not-interrupt-address", { source: sourceId, address: m.address });
      }
      return;
    }
    let delivered: boolean;
    try {
      delivered = this.target.signalMsi(m.address, m.data);
    } catch (e) {
      // KVM refused the message itself (e.g. EINVAL for address bits it does not accept): the
      // guest programmed it, so it is dropped and counted, never allowed to stop the VMM.
      this.msisRejectedByKvm++;
      this.lastBlockReason = (e as Error).message;
      if (this.tracer?.on("irq")) {
        this.tracer.emit("irq", "vmm", "msi-rejected", {
          source: sourceId,
          address: m.address,
          data: m.data,
        });
      }
      return;
    }
    if (delivered) this.msisDelivered++;
    else this.msisRefusedByLapic++;
    if (this.tracer?.on("irq")) {
      this.tracer.emit("irq", "vmm", delivered ? "msi" : "msi-refused", {
        source: sourceId,
        address: m.address,
        data: m.data,
      });
    }
  }

  signalMsi(requesterId: number, message: MsiMessage, _vector: number): void {
    if (!Number.isSafeInteger(message.address) || message.address < 0 || !Number.isInteger(message.data)) {
      this.msisNotInterruptAddress++;
      return;
    }
    this.send(requesterId & 0xffff, message);
  }

  /** INTx: wired-OR of every device sharing the IOAPIC line. */
  setPin(requesterId: number, pin: number, asserted: boolean): void {
    if (this.ioapic === null || !Number.isInteger(pin) || pin < 0 || pin > 3) return;
    this.setIoapicInput(intxIoapicPin(requesterId, pin), `${requesterId}:${pin}`, asserted);
  }

  private readonly sources = new Map<number, Set<string>>();

  /** Drives IOAPIC input `ioapicPin` for `source`; the line is the OR of its sources. */
  setIoapicInput(ioapicPin: number, source: string, asserted: boolean): void {
    if (this.ioapic === null) return;
    let set = this.sources.get(ioapicPin);
    if (set === undefined) {
      set = new Set();
      this.sources.set(ioapicPin, set);
    }
    if (asserted) set.add(source);
    else set.delete(source);
    const level = set.size > 0;
    if ((this.pinAsserted.get(ioapicPin) ?? 0) === (level ? 1 : 0)) return;
    this.pinAsserted.set(ioapicPin, level ? 1 : 0);
    this.ioapic.setPin(ioapicPin, level);
  }

  /** The IOAPIC's delivery callback. */
  /** The IOAPIC's delivery callback; returns the message after remapping (null: blocked). */
  deliverFromIoapic(message: MsiMessage): MsiMessage | null {
    this.ioapicMessages++;
    const m = this.translate(this.ioapicSourceId, message);
    if (m !== null) this.deliver(this.ioapicSourceId, m);
    return m;
  }

  stats(): InterruptFabricStats {
    return {
      msisDelivered: this.msisDelivered,
      msisRefusedByLapic: this.msisRefusedByLapic,
      msisBlockedByRemapping: this.msisBlockedByRemapping,
      msisNotInterruptAddress: this.msisNotInterruptAddress,
      msisRejectedByKvm: this.msisRejectedByKvm,
      ioapicMessages: this.ioapicMessages,
      lastBlockReason: this.lastBlockReason,
    };
  }
}
