/**
 * A vfio-user server process for tests that drive it from another process (the test runner is
 * the client): `count` edu devices (QEMU's edu, DMA mask configurable) sharing one
 * SharedGuestMemory, each on DIR/eduN.sock. Prints "ready" on stdout when listening; on SIGUSR2
 * prints one line of JSON stats (memory, servers); exits 0 on SIGTERM.
 *
 * Usage: node --import tsx vfio-user-test-server.ts '<json options>'
 *   { "socketDir": D, "count": 2, "dmaMask": 9007199254740991, "dmaTimeoutMs": 300,
 *     "maxMappings": 1000, "maxFiles": 100 }
 */
import { join } from "node:path";
import { EduDevice } from "../../src/devices/edu.ts";
import { DmaAddressSpace, IDENTITY } from "../../src/engine/dma-space.ts";
import { ResourceBudget } from "../../src/vfio-user/region-backing.ts";
import { VfioUserDeviceServer } from "../../src/vfio-user/server.ts";
import { SharedGuestMemory } from "../../src/vfio-user/shared-memory.ts";

interface Options {
  socketDir: string;
  count?: number;
  dmaMask?: number;
  dmaTimeoutMs?: number;
  maxMappings?: number;
  maxFiles?: number;
  maxDmaMaps?: number;
}

const o = JSON.parse(process.argv[2] ?? "{}") as Options;
const system = ResourceBudget.fromSystem();
const budget =
  o.maxMappings === undefined && o.maxFiles === undefined
    ? system
    : new ResourceBudget(o.maxMappings ?? system.maxMappings, o.maxFiles ?? system.maxFiles);
const memory = new SharedGuestMemory(budget);
const log: string[] = [];
const servers: VfioUserDeviceServer[] = [];
const edus: EduDevice[] = [];
for (let i = 0; i < (o.count ?? 1); i++) {
  const name = `edu${i}`;
  const edu = new EduDevice({ name, dmaMask: o.dmaMask });
  const bdf = (0x11 + i) << 3;
  const server = new VfioUserDeviceServer({
    name,
    fn: edu.pci,
    socketPath: join(o.socketDir, `${name}.sock`),
    memory,
    dma: new DmaAddressSpace(memory, IDENTITY, bdf),
    requesterId: bdf,
    dmaTimeoutMs: o.dmaTimeoutMs,
    maxDmaMaps: o.maxDmaMaps,
    log: (line) => {
      if (log.length < 200) log.push(line);
    },
  });
  server.listen();
  servers.push(server);
  edus.push(edu);
}

process.on("SIGUSR2", () => {
  const stats = {
    memory: memory.stats(),
    servers: servers.map((s) => s.stats()),
    edus: edus.map((e) => e.stats()),
    log: log.slice(-20),
  };
  process.stdout.write(`stats ${JSON.stringify(stats)}\n`);
});
process.on("SIGTERM", () => {
  for (const s of servers) s.close();
  process.exit(0);
});
process.stdout.write("ready\n");
