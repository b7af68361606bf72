/**
 * The `viommu` command: one entry point, subcommands dispatched by name.
 *
 *   viommu run ...     the KVM micro-VMM (src/cli/run.ts)
 *   viommu demo        the built-in guest under each vIOMMU (src/cli/demo.ts)
 *   viommu serve ...   devices as vfio-user servers (src/cli/serve.ts)
 */
import { pathToFileURL } from "node:url";

export const MAIN_USAGE = `usage: viommu <command> [options]
  run      boot a guest (the built-in one by default) in the KVM micro-VMM with a virtual IOMMU
  demo     the built-in guest under no IOMMU, virtio-iommu and VT-d (with interrupt remapping)
  serve    serve devices over vfio-user (for QEMU's vfio-user-pci)
  help     this text; "viommu <command> --help" for a command's options`;

type Subcommand = (argv: string[]) => number | Promise<number>;

/** Subcommands by name; each module is loaded only when used. */
const SUBCOMMANDS: Record<string, () => Promise<Subcommand>> = {
  run: async () => (await import("./run.ts")).runVmm,
  demo: async () => (await import("./demo.ts")).runDemo,
  serve: async () => (await import("./serve.ts")).runServe,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    (command === undefined ? process.stderr : process.stdout).write(`${MAIN_USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  const load = SUBCOMMANDS[command];
  if (load === undefined) {
    process.stderr.write(`viommu: unknown command "${command}" (run, demo, serve, help)\n`);
    return 2;
  }
  const fn = await load();
  return await fn(rest);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main(process.argv.slice(2)).then(
    (status) => {
      process.exitCode = status;
    },
    (e: unknown) => {
      process.stderr.write(`viommu: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 2;
    },
  );
}
