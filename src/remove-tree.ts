/**
 * Removing a tree (a pruned version, a crash's leftovers) without ever following a link that another user
 * controls. Node's recursive removal does not follow a link it finds, but a directory that another user can
 * write may have one of its subdirectories swapped for a link between the listing and the removal, and root
 * would then delete through it. So root removes a tree only when every directory in it is root's and
 * writable by nobody else (checked without following anything): then nothing in it can change under it.
 * Anything else is refused, naming the directory; a non-root caller removes with its own rights, which a
 * link cannot extend.
 */
import { lstatSync, rmSync, type Stats } from 'node:fs';
import { firstProblem } from './tree.js';
import { UpgraderError } from './errors.js';

export function removeTree(path: string): void {
  assertRemovable(path);
  rmSync(path, { recursive: true, force: true });
}

/** Throws unless this process may remove the tree (always, unless it is root and another user could change it). */
export function assertRemovable(path: string): void {
  if (process.geteuid?.() !== 0) return;
  const problem = changeableByOthers(path);
  if (problem) throw new UpgraderError('E_PERMISSION', `Refusing to remove ${path} as root: ${problem}; remove it as that user, or make it root's.`);
}

/** The first directory in the tree (itself included) that another user could change, or null. */
export function changeableByOthers(dir: string): string | null {
  let stat: Stats;
  try {
    stat = lstatSync(dir);
  } catch {
    return null;
  }
  if (!stat.isDirectory()) return null;
  return directoryProblem(dir, stat) ?? firstProblem(dir, (entry) => (entry.stat.isDirectory() ? directoryProblem(entry.path, entry.stat) : null));
}

function directoryProblem(dir: string, stat: Stats): string | null {
  if (stat.uid !== 0) return `${dir} belongs to uid ${stat.uid}`;
  if (stat.mode & 0o022) return `${dir} is writable by ${stat.mode & 0o020 ? 'its group' : 'others'} (mode 0${(stat.mode & 0o7777).toString(8)})`;
  return null;
}
