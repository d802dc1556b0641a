/**
 * Walking a directory tree as it is on disk: every entry is lstat'ed, and no link is ever followed.
 */
import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { join } from 'node:path';

export type TreeEntry = {
  /** The entry's full path. */
  path: string;
  /** Its path relative to the walked directory. */
  rel: string;
  /** lstat of the entry: a link is reported as a link. */
  stat: Stats;
};

/** Every entry below `dir` (not `dir` itself), each directory before its contents. Stops when the caller stops. */
export function* walkTree(dir: string, relDir = ''): Generator<TreeEntry> {
  for (const name of readdirSync(join(dir, relDir))) {
    const rel = relDir === '' ? name : join(relDir, name);
    const path = join(dir, rel);
    const stat = lstatSync(path);
    yield { path, rel, stat };
    if (stat.isDirectory()) yield* walkTree(dir, rel);
  }
}

/** The first non-null answer of `judge` over the tree, or null. */
export function firstProblem(dir: string, judge: (entry: TreeEntry) => string | null): string | null {
  for (const entry of walkTree(dir)) {
    const problem = judge(entry);
    if (problem) return problem;
  }
  return null;
}

/** Whether anything is at `path` (a dangling link counts): lstat, never following a link. */
export function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
