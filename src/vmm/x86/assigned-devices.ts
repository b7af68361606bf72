/**
 * What the KVM machine gives its assigned (VFIO) devices: MSI/MSI-X vectors bound by KVM_IRQFD
 * (`DeviceMsiRoutes`), mmappable BAR parts as KVM memory slots, and INTx: a watcher on each
 * device's INTx eventfd raises the line, and the guest's EOI of the pin's IOAPIC vector ends it
 * (`VfioPciFunction.intxFired` / `intxEoi`).
 */
import type { Vm } from "../../kvm/vm.ts";
import { PCI_INTERRUPT_PIN } from "../../pci/config-space.ts";
import type { GuestMemoryMapper } from "../../vfio/bar-mmap.ts";
import { VfioPciFunction } from "../../vfio/pci-passthrough.ts";
import { EventfdWatch } from "../eventfd-watch.ts";
import type { DeviceMsiRoutes } from "./device-msi.ts";
import { intxIoapicPin } from "./interrupts.ts";
import type { Platform } from "./platform.ts";

export class AssignedDevices {
  private readonly watches: EventfdWatch[] = [];

  /** `doorbell`: the device thread's (kvm-machine.ts), rung by each INTx signal. */
  constructor(platform: Platform, vm: Vm, msi: DeviceMsiRoutes, doorbell: SharedArrayBuffer) {
    const barMemory: GuestMemoryMapper = {
      map: (gpa, sizeBytes, hostAddress) => {
        try {
          return vm.addMemory(gpa, sizeBytes, hostAddress);
        } catch {
          // The guest placed the BAR over RAM or another slot (EEXIST): that part stays trapped.
          return null;
        }
      },
      unmap: (slot) => vm.removeMemory(slot),
    };
    for (const d of platform.devices) {
      const fn = d.fn;
      if (!(fn instanceof VfioPciFunction)) continue;
      fn.msiWiring = msi;
      fn.guestMemoryMapper = barMemory;
      if (fn.intxEventfd < 0) continue;
      this.watches.push(new EventfdWatch(fn.intxEventfd, () => fn.intxFired(), doorbell));
      const pin = intxIoapicPin(d.requesterId, fn.config.u8(PCI_INTERRUPT_PIN) - 1);
      platform.ioapic.addEoiListener(pin, () => fn.intxEoi());
    }
  }

  /** Hands INTx signals the watchers saw to their devices (the run loop, after KVM_RUN returns). */
  poll(): void {
    for (const w of this.watches) w.poll();
  }

  close(): void {
    for (const w of this.watches) w.close();
  }
}
