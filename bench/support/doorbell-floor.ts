/**
 * The floor of a vfio-user doorbell on this machine, in our runtime: a process that answers each
 * message with the least possible work. It listens on the UNIX socket given as its argument,
 * takes one connection, and maps the memfd that the connection's first message carries (the
 * "guest RAM"). From then on every whole message it reads (vfio-user framing: the size is the
 * header's second word) bumps a 32-bit counter at offset 0 of that memory, which the client
 * polls, as Linux's virtio-iommu driver polls the used ring after its doorbell. Same wake-up
 * (libuv readiness on Node's loop), same non-blocking recvmsg as `viommu serve`; no framing
 * objects, no dispatch, no device.
 *
 *   node --import tsx bench/support/doorbell-floor.ts SOCKET
 */
import {
  acceptUnix,
  closeFd,
  listenUnix,
  MAP_SHARED,
  MsgScratch,
  mapFile,
  mappingView,
  NativeBuffer,
  PROT_READ,
  PROT_WRITE,
  watchFd,
} from "../../src/vfio-user/libc.ts";

const socketPath = process.argv[2];
if (socketPath === undefined) {
  console.error("usage: doorbell-floor.ts SOCKET");
  process.exit(2);
}
const listenFd = listenUnix(socketPath, 1);
const listenWatch = watchFd(listenFd, () => {
  const fd = acceptUnix(listenFd);
  if (fd < 0) return;
  listenWatch.close();
  closeFd(listenFd);
  serve(fd);
});
listenWatch.start(true, false);

function serve(fd: number): void {
  const scratch = new MsgScratch();
  const buf = new NativeBuffer(1 << 16);
  const view = new DataView(buf.bytes.buffer, buf.bytes.byteOffset, buf.sizeBytes);
  const fds: number[] = [];
  let counter: Uint32Array | null = null;
  let have = 0;
  const watch = watchFd(fd, (readable, _writable, hangup) => {
    if (readable) {
      for (;;) {
        const n = scratch.recvInto(fd, buf, have, buf.sizeBytes - have, fds);
        if (n <= 0) {
          if (n === 0) hangup = true;
          break;
        }
        have += n;
      }
      if (counter === null && fds.length > 0) {
        const m = mapFile(fds[0], 0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED);
        if (m !== null) counter = new Uint32Array(mappingView(m, 0, 4096).buffer, 0, 1);
      }
      let at = 0;
      while (have - at >= 16 && have - at >= view.getUint32(at + 4, true)) {
        at += Math.max(16, view.getUint32(at + 4, true));
        if (counter !== null) Atomics.add(counter, 0, 1);
      }
      buf.bytes.copyWithin(0, at, have);
      have -= at;
    }
    if (hangup) {
      watch.close();
      closeFd(fd);
      process.exit(0);
    }
  });
  watch.start(true, false);
}
