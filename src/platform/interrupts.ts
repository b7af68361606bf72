/**
 * How devices raise interrupts, the same under every host.
 *
 * A device holds an `InterruptSink` and either signals a message-signalled interrupt (the
 * address/data pair the guest programmed into its MSI or MSI-X capability) or drives a pin.
 * The host decides what that means: KVM_SIGNAL_MSI or an IOAPIC line under the KVM VMM (after
 * interrupt remapping, when the machine has it), an eventfd under vfio-user, a record in tests.
 */

export interface MsiMessage {
  /** The 64-bit message address (below 2^53 in practice: 0xFEExxxxx on x86). */
  readonly address: number;
  readonly data: number;
}

export interface InterruptSink {
  /**
   * Delivers an MSI write from device `requesterId` (its PCI BDF, so an interrupt-remapping IOMMU
   * can validate the source). `vector` is the MSI/MSI-X vector index that produced it, for hosts
   * that deliver per vector (vfio-user).
   */
  signalMsi(requesterId: number, message: MsiMessage, vector: number): void;
  /** Drives legacy pin `pin` (INTA#=0 .. INTD#=3) of device `requesterId` to `asserted`. */
  setPin(requesterId: number, pin: number, asserted: boolean): void;
}

/** An interrupt sink that records everything, for tests and tools. */
export class RecordingInterruptSink implements InterruptSink {
  readonly msis: { requesterId: number; message: MsiMessage; vector: number }[] = [];
  readonly pinLevels = new Map<string, boolean>();
  readonly pinEdges: { requesterId: number; pin: number; asserted: boolean }[] = [];

  signalMsi(requesterId: number, message: MsiMessage, vector: number): void {
    this.msis.push({ requesterId, message, vector });
  }

  setPin(requesterId: number, pin: number, asserted: boolean): void {
    const key = `${requesterId}:${pin}`;
    if (this.pinLevels.get(key) !== asserted) this.pinEdges.push({ requesterId, pin, asserted });
    this.pinLevels.set(key, asserted);
  }

  pinAsserted(requesterId: number, pin: number): boolean {
    return this.pinLevels.get(`${requesterId}:${pin}`) === true;
  }
}
