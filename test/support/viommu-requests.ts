/**
 * virtio-iommu request encoders for test drivers, from VIRTIO 1.3 5.13.6 (not from the device
 * code): each returns the device-readable part; the device-writable tail is 4 bytes (status).
 */

export const VIOMMU_REQ_ATTACH = 1;
export const VIOMMU_REQ_DETACH = 2;
export const VIOMMU_REQ_MAP = 3;
export const VIOMMU_REQ_UNMAP = 4;
export const VIOMMU_MAP_F_READ = 1;
export const VIOMMU_MAP_F_WRITE = 2;

export function attachRequest(domain: number, endpoint: number, flags = 0): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setUint8(0, VIOMMU_REQ_ATTACH);
  v.setUint32(4, domain, true);
  v.setUint32(8, endpoint, true);
  v.setUint32(12, flags, true);
  return b;
}

export function detachRequest(domain: number, endpoint: number): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setUint8(0, VIOMMU_REQ_DETACH);
  v.setUint32(4, domain, true);
  v.setUint32(8, endpoint, true);
  return b;
}

/** MAP [virtStart, virtEnd] (inclusive) to physStart. */
export function mapRequest(
  domain: number,
  virtStart: number,
  virtEnd: number,
  physStart: number,
  flags: number,
): Uint8Array {
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint8(0, VIOMMU_REQ_MAP);
  v.setUint32(4, domain, true);
  v.setBigUint64(8, BigInt(virtStart), true);
  v.setBigUint64(16, BigInt(virtEnd), true);
  v.setBigUint64(24, BigInt(physStart), true);
  v.setUint32(32, flags, true);
  return b;
}

export function unmapRequest(domain: number, virtStart: number, virtEnd: number): Uint8Array {
  const b = new Uint8Array(32);
  const v = new DataView(b.buffer);
  v.setUint8(0, VIOMMU_REQ_UNMAP);
  v.setUint32(4, domain, true);
  v.setBigUint64(8, BigInt(virtStart), true);
  v.setBigUint64(16, BigInt(virtEnd), true);
  return b;
}

/** A decoded 24-byte fault record (5.13.6.9). */
export interface FaultRecord {
  readonly reason: number;
  readonly flags: number;
  readonly endpoint: number;
  readonly address: bigint;
}

export function decodeFault(b: Uint8Array): FaultRecord {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    reason: v.getUint8(0),
    flags: v.getUint32(4, true),
    endpoint: v.getUint32(8, true),
    address: v.getBigUint64(16, true),
  };
}
