// Jazzer.js entry (plain JS, which Jazzer.js loads): the target is written in TypeScript and
// loaded through tsx (run with `node --import tsx`; see tools/fuzz/run.sh).
export { fuzz } from "./virtio-iommu-request.fuzz.ts";
