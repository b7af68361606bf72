// Types for kvm-tests.mjs (plain JavaScript so that `npm test` runs it without tsx).
export declare const REPO: string;
export type KvmNeed = "kvm" | "kvm-linux";
export declare function allTestFiles(root?: string): string[];
export declare function fileNeeds(file: string, root?: string): KvmNeed | null;
export declare function nativeKvm(): { kvm: boolean; linux: boolean; why: string; linuxWhy: string };
export declare function planKvmTests(root?: string): {
  native: ReturnType<typeof nativeKvm>;
  nativeFiles: string[];
  labFiles: string[];
};
