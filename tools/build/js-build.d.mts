// Types of tools/build/js-build.mjs (plain JavaScript so bin/viommu.mjs can load it before any TypeScript).
export declare const REPO_ROOT: string;
export declare const MANIFEST_VERSION: number;
export interface BuildOptions {
  /** The repository to build (default: the one holding this script). */
  root?: string;
  /** Where builds and current.json go (default: <root>/build/js). */
  outDir?: string;
}
export declare function buildDir(root?: string): string;
export declare function checkBuild(
  options?: BuildOptions,
): { fresh: true; entry: string } | { fresh: false; reason: string };
export declare function buildJs(
  options?: BuildOptions,
): Promise<{ entry: string; key: string; inputs: number; ms: number }>;
export declare function ensureBuild(
  options?: BuildOptions & { log?: (line: string) => void },
): Promise<string>;
