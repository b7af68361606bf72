/**
 * Interrupts of one served PCI function, as VFIO defines them for vfio-user
 * (VFIO_USER_DEVICE_GET_IRQ_INFO / VFIO_USER_DEVICE_SET_IRQS, <linux/vfio.h> vfio_irq_set).
 *
 * Index 0 INTx (1 line, EVENTFD | MASKABLE | AUTOMASKED), 1 MSI (the capability's vectors,
 * NORESIZE), 2 MSI-X (table size), 3 ERR and 4 REQ (count 0: not offered). The client hands
 * one eventfd per vector with ACTION_TRIGGER | DATA_EVENTFD; the server writes 1 to it
 * (8-byte counter add) when the device signals that vector. Only eventfds are accepted (any
 * other descriptor is EINVAL), and each is made non-blocking: a blocking write to a descriptor
 * a client controls (a pipe, an eventfd preloaded near its maximum) would stop the whole
 * server. A write that finds the counter full (EAGAIN) loses nothing: the counter is non-zero,
 * so the interrupt is already pending at the client; it is counted as coalesced.
 *
 * INTx is level-triggered and automasked, as in Linux vfio-pci: an assertion signals the
 * eventfd and masks the line; the client unmasks after the guest's EOI, and a line still
 * asserted then signals again.
 *
 * MSI-X: the client (QEMU) emulates the guest-visible MSI-X table itself and never forwards
 * table writes, so the device's own table stays at its reset state (all vectors masked). The
 * server therefore programs the device's table as a shadow: a vector with an eventfd is
 * unmasked (with address 0xFEE00000, data = vector), a vector without one is masked again.
 * Masking as the guest sees it is the client's job. MSI config writes do reach the device
 * (the client forwards config space), so MSI needs no shadow.
 */

import type { PciFunction } from "../pci/function.ts";
import type { InterruptSink, MsiMessage } from "../platform/interrupts.ts";
import { closeFd, ERRNO, isEventFd, setNonBlocking, signalEventFd } from "./libc.ts";
import {
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
} from "./protocol.ts";

const PCI_CAP_ID_MSI = 0x05;
const PCI_CAP_ID_MSIX = 0x11;
const MSIX_SHADOW_ADDRESS = 0xfee00000;

export interface IrqInfo {
  readonly flags: number;
  readonly count: number;
}

export interface SetIrqsRequest {
  readonly flags: number;
  readonly index: number;
  readonly start: number;
  readonly count: number;
  /** DATA_BOOL: one byte per sub-index. */
  readonly bools: Uint8Array | null;
  /** DATA_EVENTFD: the descriptors that came with the message. */
  readonly fds: number[];
}

export interface IrqStats {
  readonly signalled: Readonly<Record<"intx" | "msi" | "msix", number>>;
  /** Device interrupts with no eventfd configured for them (dropped, as without a route). */
  readonly droppedNoEventfd: number;
  /** eventfd writes that failed. */
  readonly signalFailures: number;
  /** Signals that found the eventfd counter full (the interrupt was already pending). */
  readonly coalesced: number;
  /** SET_IRQS descriptors refused because they were not eventfds (or could not be made non-blocking). */
  readonly refusedDescriptors: number;
  readonly intxMasked: boolean;
}

/** Finds a capability by ID in a function's config space; 0 when absent. */
export function findCapability(fn: PciFunction, id: number): number {
  if ((fn.readConfig(0x06, 2) & 0x10) === 0) return 0;
  let ptr = fn.readConfig(0x34, 1) & 0xfc;
  for (let hops = 0; ptr >= 0x40 && hops < 48; hops++) {
    if (fn.readConfig(ptr, 1) === id) return ptr;
    ptr = fn.readConfig(ptr + 1, 1) & 0xfc;
  }
  return 0;
}

export class IrqRouter implements InterruptSink {
  private readonly fn: PciFunction;
  private intxFd = -1;
  private intxMasked = false;
  private intxLevel = false;
  private readonly msiFds: Int32Array;
  private readonly msixFds: Int32Array;
  private readonly msixCap: number;
  readonly counts: IrqInfo[];

  signalled = { intx: 0, msi: 0, msix: 0 };
  droppedNoEventfd = 0;
  signalFailures = 0;
  coalesced = 0;
  refusedDescriptors = 0;

  constructor(fn: PciFunction) {
    this.fn = fn;
    const pin = fn.readConfig(0x3d, 1);
    const msiCap = findCapability(fn, PCI_CAP_ID_MSI);
    const msiVectors = msiCap ? 1 << ((fn.readConfig(msiCap + 2, 2) >> 1) & 7) : 0;
    this.msixCap = findCapability(fn, PCI_CAP_ID_MSIX);
    const msixVectors = this.msixCap ? (fn.readConfig(this.msixCap + 2, 2) & 0x7ff) + 1 : 0;
    this.msiFds = new Int32Array(msiVectors).fill(-1);
    this.msixFds = new Int32Array(msixVectors).fill(-1);
    this.counts = [
      {
        flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
        count: pin !== 0 ? 1 : 0,
      },
      { flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, count: msiVectors },
      // MSI-X vectors can be set individually (the client may enable them one by one).
      { flags: VFIO_IRQ_INFO_EVENTFD, count: msixVectors },
      { flags: VFIO_IRQ_INFO_EVENTFD, count: 0 },
      { flags: VFIO_IRQ_INFO_EVENTFD, count: 0 },
    ];
  }

  info(index: number): IrqInfo | undefined {
    return index >= 0 && index < VFIO_PCI_NUM_IRQS ? this.counts[index] : undefined;
  }

  // --- InterruptSink: what the device raises ------------------------------------------------

  signalMsi(_requesterId: number, _message: MsiMessage, vector: number): void {
    const useMsix = this.fn.msix?.enabled === true;
    const fds = useMsix ? this.msixFds : this.msiFds;
    const fd = vector >= 0 && vector < fds.length ? fds[vector] : -1;
    if (fd < 0) {
      this.droppedNoEventfd++;
      return;
    }
    this.signal(fd, useMsix ? "msix" : "msi");
  }

  /** One eventfd signal (see the file comment for a full counter). */
  private signal(fd: number, kind: "intx" | "msi" | "msix"): void {
    const r = signalEventFd(fd);
    if (r > 0) this.signalled[kind]++;
    else if (r === 0) this.coalesced++;
    else this.signalFailures++;
  }

  setPin(_requesterId: number, _pin: number, asserted: boolean): void {
    this.intxLevel = asserted;
    if (asserted) this.fireIntx();
  }

  private fireIntx(): void {
    if (!this.intxLevel || this.intxMasked) return;
    if (this.intxFd < 0) {
      this.droppedNoEventfd++;
      return;
    }
    // VFIO_IRQ_INFO_AUTOMASKED: the line masks itself when it fires.
    this.intxMasked = true;
    this.signal(this.intxFd, "intx");
  }

  // --- VFIO_USER_DEVICE_SET_IRQS ------------------------------------------------------------

  /** Applies a SET_IRQS request; returns 0 or an errno. Consumes `req.fds` in every case. */
  set(req: SetIrqsRequest): number {
    const err = this.apply(req);
    if (err !== 0) for (const fd of req.fds) closeFd(fd);
    return err;
  }

  private apply(req: SetIrqsRequest): number {
    const data = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    const action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if ((req.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK)) !== 0)
      return ERRNO.EINVAL;
    // "The flags are mutually exclusive for both sets": exactly one data type and one action.
    if (popcount(data) !== 1 || popcount(action) !== 1) return ERRNO.EINVAL;
    const info = this.info(req.index);
    if (info === undefined) return ERRNO.EINVAL;
    if (data !== VFIO_IRQ_SET_DATA_EVENTFD && req.fds.length > 0) return ERRNO.EINVAL;
    // "a count (and start) of 0, with data flags of VFIO_IRQ_SET_DATA_NONE disables all interrupts of the index"
    const disableAll =
      req.count === 0 && data === VFIO_IRQ_SET_DATA_NONE && action === VFIO_IRQ_SET_ACTION_TRIGGER;
    if (disableAll) {
      if (req.start !== 0) return ERRNO.EINVAL;
      this.disableIndex(req.index);
      return 0;
    }
    if (req.count === 0 || req.start > info.count || req.count > info.count - req.start) return ERRNO.EINVAL;
    if (data === VFIO_IRQ_SET_DATA_BOOL && (req.bools === null || req.bools.length < req.count))
      return ERRNO.EINVAL;
    if (data === VFIO_IRQ_SET_DATA_EVENTFD && req.fds.length !== 0 && req.fds.length !== req.count)
      return ERRNO.EINVAL;
    for (const fd of req.fds) {
      if (!isEventFd(fd) || !setNonBlocking(fd)) {
        this.refusedDescriptors++;
        return ERRNO.EINVAL;
      }
    }
    const selected = (i: number): boolean => data !== VFIO_IRQ_SET_DATA_BOOL || req.bools![i] !== 0;

    if (req.index === VFIO_PCI_INTX_IRQ_INDEX) {
      if (action === VFIO_IRQ_SET_ACTION_TRIGGER) {
        if (data === VFIO_IRQ_SET_DATA_EVENTFD) {
          if (this.intxFd >= 0) closeFd(this.intxFd);
          this.intxFd = req.fds.length > 0 ? req.fds[0] : -1;
          this.intxMasked = false;
          return 0;
        }
        if (selected(0)) this.loopbackTrigger(this.intxFd, "intx");
        return 0;
      }
      // MASK / UNMASK with an eventfd (virqfd for resampling) is not offered by this server.
      if (data === VFIO_IRQ_SET_DATA_EVENTFD) return ERRNO.EINVAL;
      if (!selected(0)) return 0;
      if (action === VFIO_IRQ_SET_ACTION_MASK) {
        this.intxMasked = true;
      } else {
        this.intxMasked = false;
        this.fireIntx();
      }
      return 0;
    }

    // MSI and MSI-X: only TRIGGER (as Linux vfio-pci; MSI/MSI-X masking is the client's).
    if (action !== VFIO_IRQ_SET_ACTION_TRIGGER) return ERRNO.EINVAL;
    const msix = req.index === VFIO_PCI_MSIX_IRQ_INDEX;
    const fds = msix ? this.msixFds : this.msiFds;
    if (data === VFIO_IRQ_SET_DATA_EVENTFD) {
      for (let i = 0; i < req.count; i++) {
        const v = req.start + i;
        if (fds[v] >= 0) closeFd(fds[v]);
        fds[v] = req.fds.length > 0 ? req.fds[i] : -1;
        if (msix) this.programShadowEntry(v, fds[v] >= 0);
      }
      return 0;
    }
    for (let i = 0; i < req.count; i++) {
      if (selected(i)) this.loopbackTrigger(fds[req.start + i], msix ? "msix" : "msi");
    }
    return 0;
  }

  /** ACTION_TRIGGER with DATA_NONE/BOOL: the client asks the server to fire the interrupt. */
  private loopbackTrigger(fd: number, kind: "intx" | "msi" | "msix"): void {
    if (fd < 0) {
      this.droppedNoEventfd++;
      return;
    }
    this.signal(fd, kind);
  }

  private disableIndex(index: number): void {
    if (index === VFIO_PCI_INTX_IRQ_INDEX) {
      if (this.intxFd >= 0) closeFd(this.intxFd);
      this.intxFd = -1;
      this.intxMasked = false;
      return;
    }
    const fds =
      index === VFIO_PCI_MSIX_IRQ_INDEX
        ? this.msixFds
        : index === VFIO_PCI_MSI_IRQ_INDEX
          ? this.msiFds
          : null;
    if (fds === null) return;
    for (let v = 0; v < fds.length; v++) {
      if (fds[v] >= 0) closeFd(fds[v]);
      fds[v] = -1;
      if (index === VFIO_PCI_MSIX_IRQ_INDEX) this.programShadowEntry(v, false);
    }
  }

  /** Writes the device's own MSI-X table entry for `vector` (see the file comment). */
  private programShadowEntry(vector: number, deliver: boolean): void {
    const cap = this.msixCap;
    if (cap === 0) return;
    const tableReg = this.fn.readConfig(cap + 4, 4);
    const bar = this.fn.bars[tableReg & 7];
    if (bar === undefined) return;
    const entry = (tableReg & ~7) + vector * 16;
    if (deliver) {
      bar.handler.write(entry, 4, MSIX_SHADOW_ADDRESS);
      bar.handler.write(entry + 4, 4, 0);
      bar.handler.write(entry + 8, 4, vector);
      bar.handler.write(entry + 12, 4, 0);
    } else {
      bar.handler.write(entry + 12, 4, 1);
    }
  }

  /** Client disconnect: every eventfd it passed is closed (vfio-user.rst "Client Disconnection"). */
  closeAll(): void {
    for (let i = 0; i < VFIO_PCI_NUM_IRQS; i++) this.disableIndex(i);
    this.intxLevel = this.fn.intxAsserted;
  }

  stats(): IrqStats {
    return {
      signalled: { ...this.signalled },
      droppedNoEventfd: this.droppedNoEventfd,
      signalFailures: this.signalFailures,
      coalesced: this.coalesced,
      refusedDescriptors: this.refusedDescriptors,
      intxMasked: this.intxMasked,
    };
  }
}

function popcount(x: number): number {
  let n = 0;
  for (let v = x; v !== 0; v &= v - 1) n++;
  return n;
}
