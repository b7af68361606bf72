/**
 * The vectors of one VFIO interrupt index (MSI or MSI-X) of an assigned device: one eventfd per
 * vector, armed in VFIO (VFIO_DEVICE_SET_IRQS, DATA_EVENTFD | ACTION_TRIGGER) and routed by the
 * VMM (`MsiWiring`: KVM_IRQFD to a GSI whose route is the guest's message).
 *
 * Masking, as QEMU's vfio-pci does it: a masked vector's eventfd is unbound from KVM (its route
 * dropped), so a signal from the device stays counted in the eventfd and never reaches the
 * guest. `drain(v)` reads (and clears) that count: the owner turns it into the vector's pending
 * bit (a PBA read, MSI Pending Bits) or a delivery (on unmask). An eventfd bound again by
 * KVM_IRQFD while it holds a count is injected at once by KVM (kvm_irqfd_assign polls it), so
 * a signal between `drain` and the new route is not lost either.
 */
import type { MsiMessage } from "../platform/interrupts.ts";
import type { VfioPciDevice } from "./device.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd, read } from "./libc.ts";

/** How the VMM delivers an assigned device's MSI / MSI-X vectors (KVM_IRQFD + a GSI route). */
export interface MsiWiring {
  /**
   * Signals on eventfd `fd` reach the guest as `message` from `requesterId` (through interrupt
   * remapping, like the device's other messages); null stops them.
   */
  route(fd: number, requesterId: number, message: MsiMessage | null): void;
}

export interface VectorStats {
  readonly vectorsArmed: number;
  readonly vectorsRouted: number;
  readonly setupErrors: number;
  readonly unwired: number;
  /** Device signals found on masked vectors (became pending bits or deliveries on unmask). */
  readonly maskedSignals: number;
}

export class VfioVectors {
  private readonly device: VfioPciDevice;
  private readonly index: number;
  private readonly fds: number[] = [];
  /** Per vector: the routed message as "address:data", "" when not routed. */
  private readonly routed: string[] = [];
  private readonly counter = new Uint8Array(8);
  /** Vectors armed in VFIO now (0: the index is off). */
  armed = 0;
  wiring: MsiWiring | null = null;
  private readonly requesterId: () => number;
  setupErrors = 0;
  unwired = 0;
  maskedSignals = 0;

  constructor(device: VfioPciDevice, index: number, requesterId: () => number) {
    this.device = device;
    this.index = index;
    this.requesterId = requesterId;
  }

  /**
   * Arms `count` vectors in VFIO (disabling the index first when it was on with another count:
   * VFIO cannot resize an enabled MSI index). False when eventfds or VFIO refused (counted).
   */
  arm(count: number): boolean {
    if (count === this.armed) return true;
    if (this.armed > 0) this.disarm();
    if (count === 0) return true;
    while (this.fds.length < count) {
      const fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (fd < 0) {
        this.setupErrors++;
        return false;
      }
      this.fds.push(fd);
    }
    if (this.device.setIrqEventfds(this.index, this.fds.slice(0, count)) !== null) {
      this.setupErrors++;
      return false;
    }
    this.armed = count;
    return true;
  }

  /** The index off in VFIO (always: a previous user may have left it on), every route dropped. */
  disarm(): void {
    this.device.disableIrq(this.index);
    for (let v = 0; v < this.armed; v++) this.route(v, null);
    this.armed = 0;
    // Signals counted before the disable belong to the old vectors.
    for (const fd of this.fds) read(fd, this.counter, 8);
  }

  /** Routes armed vector `vector` to `message`, or unroutes it (null: masked or off). */
  route(vector: number, message: MsiMessage | null): void {
    if (vector < 0 || vector >= this.armed) return;
    const key = message === null ? "" : `${message.address}:${message.data}`;
    if ((this.routed[vector] ?? "") === key) return;
    this.routed[vector] = key;
    if (this.wiring === null) {
      this.unwired++;
      return;
    }
    this.wiring.route(this.fds[vector], this.requesterId(), message);
  }

  /** True when `vector` is routed to the guest now. */
  isRouted(vector: number): boolean {
    return (this.routed[vector] ?? "") !== "";
  }

  /**
   * Reads and clears the signals the device sent on an unrouted `vector`; true when there was at
   * least one. A routed vector's eventfd belongs to KVM: never read here.
   */
  drain(vector: number): boolean {
    if (vector < 0 || vector >= this.armed || this.isRouted(vector)) return false;
    if (read(this.fds[vector], this.counter, 8) !== 8) return false;
    this.maskedSignals++;
    return true;
  }

  stats(): VectorStats {
    let routed = 0;
    for (let v = 0; v < this.armed; v++) if (this.isRouted(v)) routed++;
    return {
      vectorsArmed: this.armed,
      vectorsRouted: routed,
      setupErrors: this.setupErrors,
      unwired: this.unwired,
      maskedSignals: this.maskedSignals,
    };
  }
}
