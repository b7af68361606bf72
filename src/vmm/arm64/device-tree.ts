/**
 * The arm64 machine's device tree: what QEMU's `virt` board writes (hw/arm/virt.c create_fdt,
 * fdt_add_*), with the bindings in Linux Documentation/devicetree/bindings as the authority:
 * arm/cpus.yaml, arm/psci.yaml, timer/arm,arch_timer.yaml, interrupt-controller/arm,gic-v3.yaml,
 * serial/pl011.yaml, iommu/arm,smmu-v3.yaml, virtio/iommu.txt (virtio,pci-iommu),
 * pci/host-generic-pci.yaml, pci/pci-iommu.txt and pci-msi.txt (iommu-map, msi-map).
 */
import { buildFdt, concat, empty, FdtNode, str, strList, u32, u64 } from "../../boot/fdt.ts";
import { SMMU_FRAME_BYTES } from "../../smmuv3/regs.ts";
import {
  GIC_DIST_BYTES,
  GIC_DIST_GPA,
  GIC_ITS_BYTES,
  GIC_ITS_GPA,
  GIC_REDIST_BYTES_PER_CPU,
  GIC_REDIST_GPA,
  PCIE_ECAM_GPA,
  PCIE_MMIO_BYTES,
  PCIE_MMIO_GPA,
  PCIE_PIO_BYTES,
  PCIE_PIO_GPA,
  PPI_TIMER,
  pciIntxSpi,
  SMMU_GPAS,
  SMMU_SPI_BASES,
  SPI_UART,
  smmuInstanceOfSlot,
  UART_BYTES,
  UART_GPA,
} from "./layout.ts";

const PHANDLE_GIC = 1;
const PHANDLE_ITS = 2;
const PHANDLE_CLOCK = 3;
const PHANDLE_IOMMU = 4;

const GIC_SPI = 0;
const GIC_PPI = 1;
const IRQ_EDGE_RISING = 1;
const IRQ_LEVEL_HIGH = 4;
/** PCI bus 0 only: one 1 MiB ECAM bus. */
export const ECAM_BYTES = 1 << 20;
/** PCI requester IDs are 16 bits: the msi-map / iommu-map cover all of them. */
const RID_SPACE = 0x1_0000;

export type DtIommu =
  | { readonly kind: "none" }
  /**
   * SMMUv3 instances at SMMU_GPAS; PCI slot s is behind instance smmuInstanceOfSlot(s), and
   * RID r is StreamID r there (iommu-map identity per slot).
   */
  | { readonly kind: "smmuv3"; readonly instances: number }
  /** virtio-iommu-pci at PCI slot `slot` (function 0); every other RID is behind it. */
  | { readonly kind: "virtio"; readonly slot: number };

export interface DeviceTreeConfig {
  /** MPIDR_EL1 of each vCPU, as KVM reset it (cpu@N reg = affinity bits). */
  readonly mpidrs: readonly bigint[];
  readonly ramGpa: number;
  readonly ramBytes: number;
  readonly cmdline: string;
  readonly initrd: { readonly gpa: number; readonly sizeBytes: number } | null;
  readonly iommu: DtIommu;
}

/** The DTB for `config`. */
export function buildDeviceTree(config: DeviceTreeConfig): Uint8Array {
  const root = new FdtNode("");
  root.prop("compatible", str("linux,dummy-virt"));
  root.prop("model", str("viommu arm64 (QEMU virt layout)"));
  root.prop("#address-cells", u32(2));
  root.prop("#size-cells", u32(2));
  root.prop("interrupt-parent", u32(PHANDLE_GIC));

  const psci = root.child("psci");
  psci.prop("compatible", strList(["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]));
  psci.prop("method", str("hvc"));

  addCpus(root, config.mpidrs);

  const memory = root.child(`memory@${config.ramGpa.toString(16)}`);
  memory.prop("device_type", str("memory"));
  memory.prop("reg", u64(config.ramGpa, config.ramBytes));

  const timer = root.child("timer");
  timer.prop("compatible", strList(["arm,armv8-timer", "arm,armv7-timer"]));
  timer.prop(
    "interrupts",
    u32(
      ...[PPI_TIMER.secure, PPI_TIMER.nonSecure, PPI_TIMER.virtual, PPI_TIMER.hypervisor].flatMap((ppi) => [
        GIC_PPI,
        ppi,
        IRQ_LEVEL_HIGH,
      ]),
    ),
  );
  timer.prop("always-on", empty());

  addGic(root, config.mpidrs.length);

  // The AMBA bus gets "apb_pclk" before probing the PL011 (drivers/amba/bus.c): a fixed clock.
  const clock = root.child("apb-pclk");
  clock.prop("compatible", str("fixed-clock"));
  clock.prop("#clock-cells", u32(0));
  clock.prop("clock-frequency", u32(24_000_000));
  clock.prop("clock-output-names", str("clk24mhz"));
  clock.prop("phandle", u32(PHANDLE_CLOCK));

  const uartName = `pl011@${UART_GPA.toString(16)}`;
  const uart = root.child(uartName);
  uart.prop("compatible", strList(["arm,pl011", "arm,primecell"]));
  uart.prop("reg", u64(UART_GPA, UART_BYTES));
  uart.prop("interrupts", u32(GIC_SPI, SPI_UART, IRQ_LEVEL_HIGH));
  uart.prop("clocks", u32(PHANDLE_CLOCK, PHANDLE_CLOCK));
  uart.prop("clock-names", strList(["uartclk", "apb_pclk"]));

  if (config.iommu.kind === "smmuv3") {
    for (let i = 0; i < config.iommu.instances; i++) addSmmu(root, i);
  }

  const chosen = root.child("chosen");
  chosen.prop("bootargs", str(config.cmdline));
  chosen.prop("stdout-path", str(`/${uartName}`));
  if (config.initrd !== null) {
    chosen.prop("linux,initrd-start", u64(config.initrd.gpa));
    chosen.prop("linux,initrd-end", u64(config.initrd.gpa + config.initrd.sizeBytes));
  }

  addPcie(root, config);
  return buildFdt(root);
}

function addCpus(root: FdtNode, mpidrs: readonly bigint[]): void {
  const cpus = root.child("cpus");
  cpus.prop("#address-cells", u32(1));
  cpus.prop("#size-cells", u32(0));
  for (const mpidr of mpidrs) {
    // Aff2..Aff0 (Aff3 is 0 for fewer than 2^24 vCPUs): cpus.yaml reg for #address-cells = 1.
    const reg = Number(mpidr & 0xff_ffffn);
    const cpu = cpus.child(`cpu@${reg.toString(16)}`);
    cpu.prop("device_type", str("cpu"));
    cpu.prop("compatible", str("arm,arm-v8"));
    cpu.prop("reg", u32(reg));
    // PSCI brings up the secondaries (CPU_ON); harmless with one vCPU.
    cpu.prop("enable-method", str("psci"));
  }
}

function addGic(root: FdtNode, cpus: number): void {
  const gic = root.child(`intc@${GIC_DIST_GPA.toString(16)}`);
  gic.prop("compatible", str("arm,gic-v3"));
  gic.prop("#interrupt-cells", u32(3));
  gic.prop("interrupt-controller", empty());
  gic.prop("reg", u64(GIC_DIST_GPA, GIC_DIST_BYTES, GIC_REDIST_GPA, cpus * GIC_REDIST_BYTES_PER_CPU));
  // An empty `ranges` so the ITS child's reg translates 1:1 (arm,gic-v3.yaml).
  gic.prop("#address-cells", u32(2));
  gic.prop("#size-cells", u32(2));
  gic.prop("ranges", empty());
  gic.prop("phandle", u32(PHANDLE_GIC));
  const its = gic.child(`msi-controller@${GIC_ITS_GPA.toString(16)}`);
  its.prop("compatible", str("arm,gic-v3-its"));
  its.prop("msi-controller", empty());
  its.prop("#msi-cells", u32(1));
  its.prop("reg", u64(GIC_ITS_GPA, GIC_ITS_BYTES));
  its.prop("phandle", u32(PHANDLE_ITS));
}

function addSmmu(root: FdtNode, instance: number): void {
  const base = SMMU_GPAS[instance]!;
  const spi = SMMU_SPI_BASES[instance]!;
  const smmu = root.child(`iommu@${base.toString(16)}`);
  smmu.prop("compatible", str("arm,smmu-v3"));
  smmu.prop("reg", u64(base, SMMU_FRAME_BYTES));
  // Wired, edge-triggered, QEMU's order and names (eventq, priq, cmdq-sync, gerror = base + 0..3).
  // No msi-parent: the driver falls back to these.
  smmu.prop("interrupts", u32(...[0, 1, 2, 3].flatMap((n) => [GIC_SPI, spi + n, IRQ_EDGE_RISING])));
  smmu.prop("interrupt-names", strList(["eventq", "priq", "cmdq-sync", "gerror"]));
  // The model reads tables and queues through a cacheable view of guest RAM (IDR0.COHACC = 1).
  smmu.prop("dma-coherent", empty());
  smmu.prop("#iommu-cells", u32(1));
  smmu.prop("phandle", u32(PHANDLE_IOMMU + instance));
}

function addPcie(root: FdtNode, config: DeviceTreeConfig): void {
  const pcie = root.child(`pcie@${PCIE_MMIO_GPA.toString(16)}`);
  pcie.prop("compatible", str("pci-host-ecam-generic"));
  pcie.prop("device_type", str("pci"));
  pcie.prop("#address-cells", u32(3));
  pcie.prop("#size-cells", u32(2));
  pcie.prop("reg", u64(PCIE_ECAM_GPA, ECAM_BYTES));
  pcie.prop("bus-range", u32(0, 0));
  pcie.prop("linux,pci-domain", u32(0));
  pcie.prop("dma-coherent", empty());
  // ranges: (PCI address: space code, hi, lo) (CPU address: 2 cells) (size: 2 cells).
  pcie.prop(
    "ranges",
    concat(
      u32(0x0100_0000, 0, 0),
      u64(PCIE_PIO_GPA, PCIE_PIO_BYTES),
      u32(0x0200_0000, 0, PCIE_MMIO_GPA),
      u64(PCIE_MMIO_GPA, PCIE_MMIO_BYTES),
    ),
  );
  pcie.prop("#interrupt-cells", u32(1));
  pcie.prop("interrupt-map-mask", u32(0x1800, 0, 0, 7));
  // 10 cells an entry: child unit address (3) + pin (1), &gic, parent unit address (2, the
  // GIC's #address-cells), parent specifier (3).
  const map: number[] = [];
  for (let slot = 0; slot < 4; slot++) {
    for (let pin = 0; pin < 4; pin++) {
      map.push(slot << 11, 0, 0, pin + 1, PHANDLE_GIC, 0, 0, GIC_SPI, pciIntxSpi(slot, pin), IRQ_LEVEL_HIGH);
    }
  }
  pcie.prop("interrupt-map", u32(...map));
  pcie.prop("msi-map", u32(0, PHANDLE_ITS, 0, RID_SPACE));
  const iommu = config.iommu;
  if (iommu.kind === "smmuv3" && iommu.instances === 1) {
    pcie.prop("iommu-map", u32(0, PHANDLE_IOMMU, 0, RID_SPACE));
  } else if (iommu.kind === "smmuv3") {
    // One entry per slot (its 8 functions): RID -> the same StreamID on that slot's SMMU.
    const map: number[] = [];
    for (let slot = 0; slot < 32; slot++) {
      map.push(slot << 3, PHANDLE_IOMMU + smmuInstanceOfSlot(slot, iommu.instances), slot << 3, 8);
    }
    pcie.prop("iommu-map", u32(...map));
  } else if (iommu.kind === "virtio") {
    // Every RID but the virtio-iommu's own is behind it (QEMU create_virtio_iommu_dt_bindings).
    const rid = iommu.slot << 3;
    pcie.prop(
      "iommu-map",
      u32(0, PHANDLE_IOMMU, 0, rid, rid + 1, PHANDLE_IOMMU, rid + 1, RID_SPACE - rid - 1),
    );
    const node = pcie.child(`iommu@${iommu.slot.toString(16)},0`);
    node.prop("compatible", str("virtio,pci-iommu"));
    node.prop("reg", u32(rid << 8, 0, 0, 0, 0));
    node.prop("#iommu-cells", u32(1));
    node.prop("phandle", u32(PHANDLE_IOMMU));
  }
}
