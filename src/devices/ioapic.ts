/**
 * An I/O APIC (Intel 82093AA register model, version 0x20 with the EOI register) at
 * 0xFEC00000: 24 redirection entries, each turning an interrupt pin into an MSI-format message.
 *
 * Under KVM's split irqchip the local APICs are in the kernel and this IOAPIC is in userspace:
 * it sends messages through `deliver` (which may pass them through interrupt remapping), and
 * learns about end-of-interrupt through `eoi(vector)` (KVM_EXIT_IOAPIC_EOI) or the EOI register.
 *
 * The message is built from the raw entry bits, so the same code serves both entry formats:
 * bits 63:48 land in address bits 19:4 and bit 11 in address bit 2. For a compatibility-format
 * entry that is destination ID (19:12) and destination mode (2); for a remappable-format entry
 * (VT-d 5.1.5.1) it is the interrupt-format bit (4), handle[14:0] (19:5) and handle[15] (2).
 */
import type { AccessSize, IoHandler } from "../platform/bus.ts";
import type { MsiMessage } from "../platform/interrupts.ts";

export const IOAPIC_BASE = 0xfec00000;
export const IOAPIC_SIZE = 0x1000;
export const IOAPIC_PINS = 24;
export const IOAPIC_VERSION = 0x20;

const REG_SELECT = 0x00;
const REG_WINDOW = 0x10;
const REG_EOI = 0x40;
const IDX_ID = 0x00;
const IDX_VERSION = 0x01;
const IDX_ARBITRATION = 0x02;
const IDX_REDIRECTION_FIRST = 0x10;

const RTE_VECTOR_MASK = 0xff;
const RTE_DELIVERY_MODE_SHIFT = 8;
const RTE_DEST_MODE = 1 << 11;
const RTE_DELIVERY_STATUS = 1 << 12;
const RTE_POLARITY_LOW = 1 << 13;
const RTE_REMOTE_IRR = 1 << 14;
const RTE_TRIGGER_LEVEL = 1 << 15;
const RTE_MASKED = 1 << 16;
/** Bits software may write in the low dword (delivery status and remote IRR are read-only). */
const RTE_LOW_WRITABLE = 0x1ffff & ~(RTE_DELIVERY_STATUS | RTE_REMOTE_IRR);
const MSI_ADDRESS_BASE = 0xfee00000;

export type IoapicDeliver = (message: MsiMessage, pin: number) => void;

export interface IoapicStats {
  readonly delivered: number;
  readonly maskedWhileAsserted: number;
  readonly eois: number;
  readonly routeChanges: number;
}

export class Ioapic implements IoHandler {
  private readonly deliver: IoapicDeliver;
  /** Called when any entry changes, so the host can refresh its KVM routes. */
  private readonly onRoutesChanged: () => void;
  private select = 0;
  private id = 0;
  /** Redirection entries: low and high dwords. */
  private readonly rteLow = new Uint32Array(IOAPIC_PINS).fill(RTE_MASKED);
  private readonly rteHigh = new Uint32Array(IOAPIC_PINS);
  /**
   * Electrical pin levels (1 = high). Whether a pin is active depends on its entry's polarity
   * at the moment of asking, so an entry reprogrammed while the line is steady sees it right.
   */
  private readonly pinLevel = new Uint8Array(IOAPIC_PINS);
  private readonly eoiListeners = new Map<number, (() => void)[]>();

  delivered = 0;
  maskedWhileAsserted = 0;
  eois = 0;
  routeChanges = 0;

  constructor(deliver: IoapicDeliver, onRoutesChanged: () => void = () => {}) {
    this.deliver = deliver;
    this.onRoutesChanged = onRoutesChanged;
  }

  /** The MSI message entry `pin` currently produces. */
  messageFor(pin: number): MsiMessage {
    const low = this.rteLow[pin];
    const high = this.rteHigh[pin];
    const destIdx = high >>> 16; // entry bits 63:48
    const address = MSI_ADDRESS_BASE + destIdx * 16 + (low & RTE_DEST_MODE ? 4 : 0);
    const data =
      (low & RTE_VECTOR_MASK) |
      (((low >>> RTE_DELIVERY_MODE_SHIFT) & 7) << 8) |
      (low & RTE_TRIGGER_LEVEL ? 1 << 15 : 0);
    return { address, data };
  }

  isMasked(pin: number): boolean {
    return (this.rteLow[pin] & RTE_MASKED) !== 0;
  }

  isLevelTriggered(pin: number): boolean {
    return (this.rteLow[pin] & RTE_TRIGGER_LEVEL) !== 0;
  }

  vectorOf(pin: number): number {
    return this.rteLow[pin] & RTE_VECTOR_MASK;
  }

  /** Drives input pin `pin` (electrical level; polarity is applied here). */
  setPin(pin: number, level: boolean): void {
    if (!Number.isInteger(pin) || pin < 0 || pin >= IOAPIC_PINS) return;
    const was = this.isActive(pin);
    this.pinLevel[pin] = level ? 1 : 0;
    const active = this.isActive(pin);
    if (this.isLevelTriggered(pin)) {
      if (active) this.service(pin);
    } else if (active && !was) {
      this.service(pin);
    }
  }

  /** The pin is asserted: its level matches the entry's polarity (82093AA: bit 13, 1 = low). */
  private isActive(pin: number): boolean {
    return (this.pinLevel[pin] !== 0) !== ((this.rteLow[pin] & RTE_POLARITY_LOW) !== 0);
  }

  /** Sends the pin's message if it is unmasked and (for level) not awaiting EOI. */
  private service(pin: number): void {
    const low = this.rteLow[pin];
    if (low & RTE_MASKED) {
      this.maskedWhileAsserted++;
      return;
    }
    if (low & RTE_TRIGGER_LEVEL) {
      if (low & RTE_REMOTE_IRR) return;
      this.rteLow[pin] = low | RTE_REMOTE_IRR;
    }
    this.delivered++;
    this.deliver(this.messageFor(pin), pin);
  }

  /**
   * Calls `listener` at each EOI of pin `pin`'s vector, after remote IRR is cleared and before
   * the pin is looked at again (an ack notifier: a source that only learns of its line's end here,
   * such as an assigned device's INTx, deasserts or re-arms it in time).
   */
  addEoiListener(pin: number, listener: () => void): void {
    const list = this.eoiListeners.get(pin) ?? [];
    list.push(listener);
    this.eoiListeners.set(pin, list);
  }

  /** End of interrupt for `vector`: clears remote IRR of matching level entries, re-sends if still active. */
  eoi(vector: number): void {
    this.eois++;
    for (let pin = 0; pin < IOAPIC_PINS; pin++) {
      const low = this.rteLow[pin];
      if ((low & RTE_VECTOR_MASK) !== vector || (low & RTE_REMOTE_IRR) === 0) continue;
      this.rteLow[pin] = low & ~RTE_REMOTE_IRR;
      for (const listener of this.eoiListeners.get(pin) ?? []) listener();
      if (this.isActive(pin) && low & RTE_TRIGGER_LEVEL) this.service(pin);
    }
  }

  private readIndexed(index: number): number {
    if (index === IDX_ID) return (this.id & 0xf) << 24;
    if (index === IDX_VERSION) return ((IOAPIC_PINS - 1) << 16) | IOAPIC_VERSION;
    if (index === IDX_ARBITRATION) return (this.id & 0xf) << 24;
    const n = index - IDX_REDIRECTION_FIRST;
    if (n >= 0 && n < IOAPIC_PINS * 2) {
      const pin = n >> 1;
      return n & 1 ? this.rteHigh[pin] : this.rteLow[pin];
    }
    return 0xffffffff;
  }

  private writeIndexed(index: number, value: number): void {
    if (index === IDX_ID) {
      this.id = (value >>> 24) & 0xf;
      return;
    }
    const n = index - IDX_REDIRECTION_FIRST;
    if (n < 0 || n >= IOAPIC_PINS * 2) return;
    const pin = n >> 1;
    if (n & 1) {
      this.rteHigh[pin] = value >>> 0;
    } else {
      const old = this.rteLow[pin];
      this.rteLow[pin] = ((old & ~RTE_LOW_WRITABLE) | (value & RTE_LOW_WRITABLE)) >>> 0;
      // An edge entry has no remote IRR; switching to edge clears it.
      if (!(value & RTE_TRIGGER_LEVEL)) this.rteLow[pin] &= ~RTE_REMOTE_IRR;
    }
    this.routeChanges++;
    this.onRoutesChanged();
    // Unmasking a level entry whose pin is active (under its polarity now) delivers it now.
    if (!(n & 1) && this.isActive(pin) && this.isLevelTriggered(pin)) this.service(pin);
  }

  read(offset: number, sizeBytes: AccessSize): number {
    if (sizeBytes !== 4) return sizeBytes === 8 ? 0xffffffff : 2 ** (8 * sizeBytes) - 1;
    if (offset === REG_SELECT) return this.select;
    if (offset === REG_WINDOW) return this.readIndexed(this.select);
    return 0xffffffff;
  }

  write(offset: number, sizeBytes: AccessSize, value: number): void {
    if (sizeBytes !== 4) return;
    if (offset === REG_SELECT) this.select = value & 0xff;
    else if (offset === REG_WINDOW) this.writeIndexed(this.select, value);
    else if (offset === REG_EOI) this.eoi(value & 0xff);
  }

  stats(): IoapicStats {
    return {
      delivered: this.delivered,
      maskedWhileAsserted: this.maskedWhileAsserted,
      eois: this.eois,
      routeChanges: this.routeChanges,
    };
  }
}
