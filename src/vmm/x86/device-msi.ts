/**
 * MSI vectors of assigned (VFIO) devices, delivered in the kernel: each vector's eventfd is bound
 * to its own KVM GSI (KVM_IRQFD), above the IOAPIC's, and that GSI's route is the guest's
 * message after interrupt remapping. The machine puts these routes into every routing table it
 * submits (KVM_SET_GSI_ROUTING replaces the whole table) and recomputes them when the guest
 * reprograms a vector or changes its IRTEs (as QEMU's kvm_update_msi_routes_all).
 */
import type { MsiRoute, Vm } from "../../kvm/vm.ts";
import type { MsiMessage } from "../../platform/interrupts.ts";
import type { MsiWiring } from "../../vfio/pci-passthrough.ts";

export interface MsiTranslator {
  /** The message after interrupt remapping, or null when remapping blocks it. */
  translate(sourceId: number, message: MsiMessage): MsiMessage | null;
}

interface DeviceVector {
  readonly gsi: number;
  readonly requesterId: number;
  message: MsiMessage;
}

export class DeviceMsiRoutes implements MsiWiring {
  private readonly vm: Vm;
  private readonly byFd = new Map<number, DeviceVector>();
  private nextGsi: number;
  /** GSIs of removed vectors, reused first: a guest masking and unmasking must not use them up. */
  private readonly freeGsis: number[] = [];
  /** The routing table must be resubmitted (`now` for a new GSI, so it is routed before it fires). */
  private readonly changed: (now: boolean) => void;
  /** Routes left out: remapping blocked the message, or its address is not the interrupt window. */
  unroutable = 0;

  constructor(vm: Vm, firstGsi: number, changed: (now: boolean) => void) {
    this.vm = vm;
    this.nextGsi = firstGsi;
    this.changed = changed;
  }

  get size(): number {
    return this.byFd.size;
  }

  route(fd: number, requesterId: number, message: MsiMessage | null): void {
    const e = this.byFd.get(fd);
    if (message === null) {
      if (e === undefined) return;
      this.byFd.delete(fd);
      this.vm.irqfd(fd, e.gsi, true);
      this.freeGsis.push(e.gsi);
      this.changed(false);
    } else if (e === undefined) {
      const gsi = this.freeGsis.pop() ?? this.nextGsi++;
      this.byFd.set(fd, { gsi, requesterId, message });
      this.changed(true);
      this.vm.irqfd(fd, gsi);
    } else {
      e.message = message;
      this.changed(false);
    }
  }

  /** Appends the current routes (translated now) to `routes`. */
  appendRoutes(routes: MsiRoute[], interrupts: MsiTranslator): void {
    for (const e of this.byFd.values()) {
      const m = interrupts.translate(e.requesterId, e.message);
      // PCI MSI: only writes to the local APICs' window (0xFEEx_xxxx) are interrupts.
      if (m === null || Math.floor(m.address / 0x100000) !== 0xfee) {
        this.unroutable++;
        continue;
      }
      routes.push({ gsi: e.gsi, address: m.address, data: m.data });
    }
  }
}
