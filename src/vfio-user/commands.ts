/**
 * The vfio-user commands a client sends to the server, one handler each (QEMU
 * docs/interop/vfio-user.rst): each validates its request before it touches the device, writes
 * its reply payload after the header in the connection's send buffer, and refuses a bad request
 * by throwing `RequestError` (the server turns it into the error reply). Connection handling,
 * the reply itself and the counters' owner are in server.ts.
 */
import type { Tracer } from "../engine/trace.ts";
import type { PciFunction } from "../pci/function.ts";
import type { MessageChannel, ReceivedMessage } from "./channel.ts";
import type { IrqRouter } from "./irqs.ts";
import { ERRNO, MAX_FDS_PER_MESSAGE } from "./libc.ts";
import {
  CMD,
  commandName,
  DEVICE_INFO_SIZE,
  DMA_FLAG_READ,
  DMA_FLAG_WRITE,
  DMA_MAP_SIZE,
  DMA_UNMAP_SIZE,
  encodeVersion,
  HEADER_SIZE,
  IRQ_INFO_SIZE,
  IRQ_SET_SIZE,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  parseVersion,
  REGION_INFO_SIZE,
  REGION_RW_SIZE,
  readU64,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  writeU64,
} from "./protocol.ts";
import { regionAccess, regionInfo } from "./region-access.ts";
import type { ClientDmaTable } from "./shared-memory.ts";

const WRITE_MULTI_ENTRY_SIZE = 24;
/** <linux/vfio.h> vfio_iommu_type1_dma_unmap flag: unmap everything. */
export const VFIO_DMA_UNMAP_FLAG_ALL = 2;

/** One connected client: its stream, its DMA regions, what VERSION negotiated. */
export interface Session {
  readonly channel: MessageChannel;
  readonly dma: ClientDmaTable;
  negotiated: boolean;
  maxFdsToClient: number;
  /** The client's max_data_xfer_size (what one DMA_READ/WRITE may carry to or from it). */
  clientMaxDataXferSize: number;
}

/** A refused request: the errno of the error reply, and why (logged and traced). */
export class RequestError {
  readonly errno: number;
  readonly why: string;
  constructor(errno: number, why: string) {
    this.errno = errno;
    this.why = why;
  }
}

/** What the handlers need from the server: the device, its limits, and the counters they add to. */
export interface CommandContext {
  readonly name: string;
  readonly fn: PciFunction;
  readonly irqs: IrqRouter;
  readonly tracer: Tracer | undefined;
  readonly log: (line: string) => void;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  dmaMaps: number;
  dmaUnmaps: number;
  regionReads: number;
  regionWrites: number;
  regionBytes: number;
  /** Set once a region shared without a descriptor has been warned about. */
  warnedFdless: boolean;
}

/**
 * Runs one command; the reply payload is written at tx[16...]. Returns the payload length
 * (-1 when the connection was closed), or throws RequestError for an error reply.
 * Descriptors the handler keeps are set to -1 in `m.fds`; the rest are closed by the caller.
 */
export function handleCommand(
  ctx: CommandContext,
  session: Session,
  command: number,
  m: ReceivedMessage,
): number {
  switch (command) {
    case CMD.VERSION:
      return onVersion(ctx, session, m);
    case CMD.DMA_MAP:
      return onDmaMap(ctx, session, m);
    case CMD.DMA_UNMAP:
      return onDmaUnmap(ctx, session, m);
    case CMD.DEVICE_GET_INFO:
      return onGetInfo(session, m);
    case CMD.DEVICE_GET_REGION_INFO:
      return onGetRegionInfo(ctx, session, m);
    case CMD.DEVICE_GET_IRQ_INFO:
      return onGetIrqInfo(ctx, session, m);
    case CMD.DEVICE_SET_IRQS:
      return onSetIrqs(ctx, m);
    case CMD.REGION_READ:
      return onRegionRead(ctx, session, m);
    case CMD.REGION_WRITE:
      return onRegionWrite(ctx, session, m);
    case CMD.REGION_WRITE_MULTI:
      return onRegionWriteMulti(ctx, session, m);
    case CMD.DEVICE_RESET:
      ctx.fn.reset();
      return 0;
    default:
      // GET_REGION_IO_FDS, DEVICE_FEATURE (migration), MIG_DATA_*: not offered by this server.
      throw new RequestError(ERRNO.ENOSYS, `${commandName(command)} is not supported`);
  }
}

function onVersion(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  if (session.negotiated) throw new RequestError(ERRNO.EINVAL, "VFIO_USER_VERSION sent twice");
  const v = parseVersion(m.payload);
  if (!v.ok) throw new RequestError(ERRNO.EINVAL, v.why);
  if (v.major !== PROTOCOL_MAJOR) {
    // "closes the connection if it cannot support the advertised version"
    ctx.log(`${ctx.name}: client proposed protocol ${v.major}.${v.minor}; closing`);
    session.channel.close(`unsupported major version ${v.major}`);
    return -1;
  }
  session.negotiated = true;
  session.maxFdsToClient = v.caps.maxMsgFds;
  session.clientMaxDataXferSize = v.caps.maxDataXferSize;
  // The reply's capability list is a subset of the proposal's names; twin-socket and migration
  // are never offered (absent), write_multiple only when the client proposed it.
  const proposed = (v.raw as { capabilities?: Record<string, unknown> } | null)?.capabilities ?? {};
  const caps: Record<string, unknown> = {};
  if ("max_msg_fds" in proposed) caps.max_msg_fds = MAX_FDS_PER_MESSAGE;
  if ("max_data_xfer_size" in proposed) caps.max_data_xfer_size = ctx.maxDataXferSize;
  if ("max_dma_maps" in proposed) caps.max_dma_maps = ctx.maxDmaMaps;
  if ("pgsizes" in proposed) caps.pgsizes = 4096;
  if (proposed.write_multiple === true) caps.write_multiple = true;
  const body = encodeVersion(PROTOCOL_MAJOR, Math.min(v.minor, PROTOCOL_MINOR), caps);
  if (HEADER_SIZE + body.length > session.channel.maxMessageBytes)
    throw new RequestError(ERRNO.E2BIG, "reply too large");
  session.channel.tx.bytes.set(body, HEADER_SIZE);
  return body.length;
}

function onDmaMap(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  const p = m.payloadView;
  if (m.payload.length < DMA_MAP_SIZE)
    throw new RequestError(ERRNO.EINVAL, "DMA_MAP payload shorter than 32 bytes");
  const argsz = p.getUint32(0, true);
  const flags = p.getUint32(4, true);
  const fileOffset = readU64(p, 8);
  const iova = readU64(p, 16);
  const sizeBytes = readU64(p, 24);
  if (argsz < DMA_MAP_SIZE) throw new RequestError(ERRNO.EINVAL, "DMA_MAP argsz below 32");
  if ((flags & ~(DMA_FLAG_READ | DMA_FLAG_WRITE)) !== 0)
    throw new RequestError(ERRNO.EINVAL, "unknown DMA_MAP flags");
  if (fileOffset < 0 || iova < 0 || sizeBytes <= 0)
    throw new RequestError(ERRNO.EINVAL, "DMA_MAP field beyond 2^53 or size 0");
  if (m.fds.length > 1) throw new RequestError(ERRNO.EINVAL, "DMA_MAP with more than one descriptor");
  const fd = m.fds.length === 1 ? m.fds[0] : -1;
  if (fd >= 0) m.fds[0] = -1; // the table owns it now (closes it on every path)
  const r = session.dma.map({
    iova,
    sizeBytes,
    fileOffset,
    readable: (flags & DMA_FLAG_READ) !== 0,
    writable: (flags & DMA_FLAG_WRITE) !== 0,
    fd,
  });
  if (!r.ok) throw new RequestError(r.errno, r.why);
  ctx.dmaMaps++;
  if (fd < 0 && !ctx.warnedFdless) {
    ctx.warnedFdless = true;
    ctx.log(
      `${ctx.name}: client shared [0x${iova.toString(16)}, +0x${sizeBytes.toString(16)}) without a descriptor: device DMA there goes by DMA_READ/DMA_WRITE messages (slow; give QEMU a shared memory backend, share=on)`,
    );
  }
  if (ctx.tracer?.on("map")) {
    ctx.tracer.emit("map", "vfio-user", "dma-map", {
      device: ctx.name,
      iova,
      sizeBytes,
      flags,
      shared: fd >= 0,
    });
  }
  return 0;
}

function onDmaUnmap(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  const p = m.payloadView;
  if (m.payload.length < DMA_UNMAP_SIZE)
    throw new RequestError(ERRNO.EINVAL, "DMA_UNMAP payload shorter than 24 bytes");
  const flags = p.getUint32(4, true);
  const iova = readU64(p, 8);
  const sizeBytes = readU64(p, 16);
  // The spec leaves flags unused; QEMU's client sends VFIO_DMA_UNMAP_FLAG_ALL (2, as in
  // <linux/vfio.h>) with iova = size = 0 when its whole address space goes away. Other flags
  // (dirty bitmap, vaddr) are refused.
  if (flags === VFIO_DMA_UNMAP_FLAG_ALL) {
    if (iova !== 0 || sizeBytes !== 0)
      throw new RequestError(ERRNO.EINVAL, "unmap-all needs iova and size 0");
    ctx.dmaUnmaps += session.dma.count;
    session.dma.clear();
  } else {
    if (flags !== 0)
      throw new RequestError(ERRNO.EINVAL, `DMA_UNMAP flags 0x${flags.toString(16)} not supported`);
    if (iova < 0 || sizeBytes <= 0) throw new RequestError(ERRNO.EINVAL, "DMA_UNMAP address or size invalid");
    const r = session.dma.unmap(iova, sizeBytes);
    if (!r.ok) throw new RequestError(r.errno, r.why);
    ctx.dmaUnmaps++;
  }
  if (ctx.tracer?.on("unmap"))
    ctx.tracer.emit("unmap", "vfio-user", "dma-unmap", { device: ctx.name, iova, sizeBytes });
  // "The server responds with the original DMA entry in the request."
  session.channel.tx.bytes.set(m.payload.subarray(0, DMA_UNMAP_SIZE), HEADER_SIZE);
  return DMA_UNMAP_SIZE;
}

function onGetInfo(session: Session, m: ReceivedMessage): number {
  if (m.payload.length < 4) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_INFO payload too short");
  const argsz = m.payloadView.getUint32(0, true);
  if (argsz < DEVICE_INFO_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_INFO argsz below 16");
  const tx = session.channel.txView;
  tx.setUint32(HEADER_SIZE, DEVICE_INFO_SIZE, true);
  tx.setUint32(HEADER_SIZE + 4, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, true);
  tx.setUint32(HEADER_SIZE + 8, VFIO_PCI_NUM_REGIONS, true);
  tx.setUint32(HEADER_SIZE + 12, VFIO_PCI_NUM_IRQS, true);
  return DEVICE_INFO_SIZE;
}

function onGetRegionInfo(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  if (m.payload.length < 12) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_REGION_INFO payload too short");
  const argsz = m.payloadView.getUint32(0, true);
  const index = m.payloadView.getUint32(8, true);
  if (argsz < REGION_INFO_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_REGION_INFO argsz below 32");
  if (index >= VFIO_PCI_NUM_REGIONS) throw new RequestError(ERRNO.EINVAL, `no region ${index}`);
  const r = regionInfo(ctx.fn, index);
  const tx = session.channel.txView;
  tx.setUint32(HEADER_SIZE, REGION_INFO_SIZE, true);
  tx.setUint32(HEADER_SIZE + 4, r.flags, true);
  tx.setUint32(HEADER_SIZE + 8, index, true);
  tx.setUint32(HEADER_SIZE + 12, 0, true); // cap_offset: no capabilities
  writeU64(tx, HEADER_SIZE + 16, r.sizeBytes);
  writeU64(tx, HEADER_SIZE + 24, 0); // offset: only meaningful for mmap-able regions
  return REGION_INFO_SIZE;
}

function onGetIrqInfo(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  if (m.payload.length < 12) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_IRQ_INFO payload too short");
  const argsz = m.payloadView.getUint32(0, true);
  const index = m.payloadView.getUint32(8, true);
  if (argsz < IRQ_INFO_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_GET_IRQ_INFO argsz below 16");
  const info = ctx.irqs.info(index);
  if (info === undefined) throw new RequestError(ERRNO.EINVAL, `no IRQ index ${index}`);
  const tx = session.channel.txView;
  tx.setUint32(HEADER_SIZE, IRQ_INFO_SIZE, true);
  tx.setUint32(HEADER_SIZE + 4, info.flags, true);
  tx.setUint32(HEADER_SIZE + 8, index, true);
  tx.setUint32(HEADER_SIZE + 12, info.count, true);
  return IRQ_INFO_SIZE;
}

function onSetIrqs(ctx: CommandContext, m: ReceivedMessage): number {
  const p = m.payloadView;
  if (m.payload.length < IRQ_SET_SIZE)
    throw new RequestError(ERRNO.EINVAL, "DEVICE_SET_IRQS payload shorter than 20 bytes");
  const argsz = p.getUint32(0, true);
  const flags = p.getUint32(4, true);
  const index = p.getUint32(8, true);
  const start = p.getUint32(12, true);
  const count = p.getUint32(16, true);
  if (argsz < IRQ_SET_SIZE) throw new RequestError(ERRNO.EINVAL, "DEVICE_SET_IRQS argsz below 20");
  let bools: Uint8Array | null = null;
  if ((flags & VFIO_IRQ_SET_DATA_BOOL) !== 0) {
    if (m.payload.length < IRQ_SET_SIZE + count)
      throw new RequestError(ERRNO.EINVAL, "DATA_BOOL array shorter than count");
    bools = m.payload.slice(IRQ_SET_SIZE, IRQ_SET_SIZE + count);
  }
  const fds = m.fds.slice();
  m.fds.fill(-1); // the router owns them now (closes them on error)
  const e = ctx.irqs.set({ flags, index, start, count, bools, fds });
  if (e !== 0) throw new RequestError(e, "SET_IRQS refused");
  if (ctx.tracer?.on("irq"))
    ctx.tracer.emit("irq", "vfio-user", "set-irqs", {
      device: ctx.name,
      index,
      start,
      count,
      flags,
      fds: fds.length,
    });
  return 0;
}

/** Validates a region access and returns the handler-side view of it. */
function checkRegionAccess(ctx: CommandContext, index: number, offset: number, count: number): void {
  if (count > ctx.maxDataXferSize)
    throw new RequestError(ERRNO.E2BIG, `count ${count} above max_data_xfer_size`);
  const r = regionInfo(ctx.fn, index);
  if (r.sizeBytes === 0) throw new RequestError(ERRNO.EINVAL, `region ${index} does not exist`);
  if (offset < 0 || count === 0 || offset + count > r.sizeBytes) {
    throw new RequestError(
      ERRNO.EINVAL,
      `access [${offset}, +${count}) outside region ${index} of ${r.sizeBytes} bytes`,
    );
  }
}

function onRegionRead(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  if (m.payload.length < REGION_RW_SIZE)
    throw new RequestError(ERRNO.EINVAL, "REGION_READ payload shorter than 16 bytes");
  const p = m.payloadView;
  const offset = readU64(p, 0);
  const index = p.getUint32(8, true);
  const count = p.getUint32(12, true);
  checkRegionAccess(ctx, index, offset, count);
  const tx = session.channel.txView;
  const dataAt = HEADER_SIZE + REGION_RW_SIZE;
  regionAccess(ctx.fn, index, offset, count, tx, dataAt, false);
  writeU64(tx, HEADER_SIZE, offset);
  tx.setUint32(HEADER_SIZE + 8, index, true);
  tx.setUint32(HEADER_SIZE + 12, count, true);
  ctx.regionReads++;
  ctx.regionBytes += count;
  return REGION_RW_SIZE + count;
}

function onRegionWrite(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  if (m.payload.length < REGION_RW_SIZE)
    throw new RequestError(ERRNO.EINVAL, "REGION_WRITE payload shorter than 16 bytes");
  const p = m.payloadView;
  const offset = readU64(p, 0);
  const index = p.getUint32(8, true);
  const count = p.getUint32(12, true);
  if (m.payload.length < REGION_RW_SIZE + count)
    throw new RequestError(ERRNO.EINVAL, "REGION_WRITE data shorter than count");
  checkRegionAccess(ctx, index, offset, count);
  regionAccess(ctx.fn, index, offset, count, p, REGION_RW_SIZE, true);
  ctx.regionWrites++;
  ctx.regionBytes += count;
  const tx = session.channel.txView;
  writeU64(tx, HEADER_SIZE, offset);
  tx.setUint32(HEADER_SIZE + 8, index, true);
  tx.setUint32(HEADER_SIZE + 12, count, true);
  return REGION_RW_SIZE;
}

function onRegionWriteMulti(ctx: CommandContext, session: Session, m: ReceivedMessage): number {
  const p = m.payloadView;
  if (m.payload.length < 8) throw new RequestError(ERRNO.EINVAL, "REGION_WRITE_MULTI payload too short");
  const n = readU64(p, 0);
  if (n < 0 || m.payload.length < 8 + n * WRITE_MULTI_ENTRY_SIZE) {
    throw new RequestError(ERRNO.EINVAL, "REGION_WRITE_MULTI count exceeds the message");
  }
  // Validate every write before performing any.
  for (let i = 0; i < n; i++) {
    const at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
    const count = p.getUint32(at + 12, true);
    if (count > 8) throw new RequestError(ERRNO.EINVAL, "REGION_WRITE_MULTI entry larger than 8 bytes");
    checkRegionAccess(ctx, p.getUint32(at + 8, true), readU64(p, at), count);
  }
  for (let i = 0; i < n; i++) {
    const at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
    const count = p.getUint32(at + 12, true);
    regionAccess(ctx.fn, p.getUint32(at + 8, true), readU64(p, at), count, p, at + 16, true);
    ctx.regionWrites++;
    ctx.regionBytes += count;
  }
  writeU64(session.channel.txView, HEADER_SIZE, n);
  return 8;
}
