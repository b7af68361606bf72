/**
 * File errors a user causes (a wrong path, a file they cannot read) as one plain phrase, so the
 * CLI can say which option names the file and what to do, instead of Node's
 * "ENOENT: no such file or directory, open '...'".
 */

const PHRASES: Readonly<Record<string, string>> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EISDIR: "is a directory, not a file",
  ENOTDIR: "a component of the path is not a directory",
  EROFS: "read-only file system",
  ENOSPC: "no space left on the device",
  ELOOP: "too many symbolic links",
  ENAMETOOLONG: "the name is too long",
};

/** "no such file or directory" for an ENOENT error, the error's message otherwise. */
export function fileProblem(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code !== undefined && PHRASES[code] !== undefined) return PHRASES[code];
  return e instanceof Error ? e.message : String(e);
}
