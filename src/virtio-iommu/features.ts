/**
 * The feature bits a driver negotiated (VIRTIO 1.3 5.13.3), as booleans too: request handling
 * tests them without BigInt arithmetic. One object, shared by the device and its handlers.
 */
import { F_BYPASS, F_BYPASS_CONFIG, F_MAP_UNMAP, F_MMIO } from "./wire.ts";

export class NegotiatedFeatures {
  bits = 0n;
  mapUnmap = false;
  mmio = false;
  bypassConfig = false;
  legacyBypass = false;

  set(features: bigint): void {
    this.bits = features;
    this.mapUnmap = (features & F_MAP_UNMAP) !== 0n;
    this.mmio = (features & F_MMIO) !== 0n;
    this.bypassConfig = (features & F_BYPASS_CONFIG) !== 0n;
    this.legacyBypass = (features & F_BYPASS) !== 0n;
  }
}
