/**
 * The per-architecture half of a vIOMMU: what the generic layer asks an IOMMU model when an
 * endpoint comes or goes. In the Xen design this is the "backend" of the generic vIOMMU
 * framework (the code that knows one IOMMU's structures and commands); here virtio-iommu
 * (`VirtioIommu`), VT-d (`VtdUnit`) and SMMUv3 (`SmmuV3`) each implement it.
 *
 * The generic layer (`ViommuInstance`) owns the endpoint table: which guest-visible IDs exist,
 * which physical ID each one has, whether it is emulated or assigned, and the model's state for
 * it. A model keeps no endpoint table of its own; it reads `instance.states` (a map from the
 * guest-visible ID to its state) and is told about plugs and unplugs through this interface.
 */
import type { DmaAddressSpace } from "../engine/dma-space.ts";
import type { Endpoint } from "./viommu.ts";

/** What a model builds for a new endpoint. */
export interface PluggedState<S> {
  /** The endpoint's DMA address space: every DMA of the device goes through it. */
  readonly space: DmaAddressSpace;
  /** The model's own per-endpoint state (domain, host mirror, device-TLB...). */
  readonly state: S;
}

/**
 * A model of one IOMMU architecture, bound to one `ViommuInstance` (`instance.bindModel(model)`).
 * `S` is the model's per-endpoint state, `O` the options a host gives when it plugs an endpoint
 * (for instance the host IOMMU of an assigned device).
 */
export interface ViommuModel<S, O> {
  /** A short name for messages ("virtio-iommu", "vt-d", "smmuv3"). */
  readonly modelName: string;
  /**
   * Builds the state of a newly plugged endpoint. Plugging is host configuration, never guest
   * input: a configuration the model cannot serve (an assigned device without caching mode, a
   * host IOMMU already in use) throws, and the generic layer refuses the plug.
   */
  plugEndpoint(endpoint: Endpoint, options: O | undefined): PluggedState<S>;
  /**
   * The endpoint is leaving (hot-unplug, or its vIOMMU is destroyed): drop what the model holds
   * for it and empty its host IOMMU. Called while the endpoint is still in `instance.states`.
   */
  unplugEndpoint(endpoint: Endpoint, state: S): void;
}
