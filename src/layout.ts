/**
 * The on-disk layout of a root:
 *
 *   <root>/versions/<version>/      one complete version; its entry point is <version>/bin/agent by default
 *   <root>/current -> versions/<v>  relative symlink: the version to launch
 *   <root>/state/                   the upgrader's own files (see state.ts and ownership.ts)
 *
 * Version names are checked against an allowlist before any path is built from them.
 */
import { accessSync, constants, lstatSync, readdirSync, readlinkSync, realpathSync, statSync, symlinkSync, type Stats } from 'node:fs';
import { dirname, join, sep } from 'node:path';
import { escapingLink } from './containment.js';
import { UpgraderError } from './errors.js';
import { fsyncDirectory, isTempName, replaceSymlinkDurably } from './durable.js';
import { readManifest } from './manifest.js';
import { removeTree } from './remove-tree.js';
import { firstProblem } from './tree.js';

export const VERSION_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;
export const DEFAULT_ENTRY = 'bin/agent';

export function versionNameProblem(name: unknown): string | null {
  if (typeof name !== 'string') return 'a version name must be a string';
  if (name === '.' || name === '..' || !VERSION_NAME.test(name)) {
    return `${JSON.stringify(name)} is not a valid version name (letters, digits, ".", "_", "+", "-", starting with a letter or digit, at most 128 characters)`;
  }
  return null;
}

export function assertVersionName(name: unknown): asserts name is string {
  const problem = versionNameProblem(name);
  if (problem) throw new UpgraderError('E_VERSION_NAME', `${problem[0]!.toUpperCase()}${problem.slice(1)}.`);
}

/** The entry point is a relative path inside the version directory; nothing may climb out of it. */
export function entryProblem(entry: string): string | null {
  if (entry === '' || entry.startsWith('/') || entry.split('/').some((part) => part === '..' || part === '')) {
    return `--entry must be a relative path inside the version directory, not ${JSON.stringify(entry)}`;
  }
  return null;
}

export class Layout {
  readonly versionsDir: string;
  readonly currentLink: string;
  readonly stateDir: string;

  constructor(
    readonly root: string,
    readonly entry = DEFAULT_ENTRY,
  ) {
    this.versionsDir = join(root, 'versions');
    this.currentLink = join(root, 'current');
    this.stateDir = join(root, 'state');
  }

  /** Resolves the root to an absolute real path and checks it looks like a root. */
  static open(root: string, entry = DEFAULT_ENTRY): Layout {
    const problem = entryProblem(entry);
    if (problem) throw new UpgraderError('E_USAGE', `${problem}.`);
    let real: string;
    try {
      real = realpathSync(root);
    } catch (error) {
      if (isPermissionError(error)) throw new UpgraderError('E_PERMISSION', `Not allowed to reach the root ${root} (${(error as NodeJS.ErrnoException).code}): it belongs to another user.`);
      throw new UpgraderError('E_ROOT', `The root ${root} does not exist.`);
    }
    let isDir = false;
    try {
      isDir = statSync(join(real, 'versions')).isDirectory();
    } catch (error) {
      if (isPermissionError(error)) throw new UpgraderError('E_PERMISSION', `Not allowed to read the root ${real} (${(error as NodeJS.ErrnoException).code}): it belongs to another user.`);
    }
    if (!isDir) throw new UpgraderError('E_ROOT', `The root ${real} has no versions/ directory: is it an upgrader root?`);
    return new Layout(real, entry);
  }

  versionDir(version: string): string {
    assertVersionName(version);
    return join(this.versionsDir, version);
  }

  /** The entry point's path: the manifest's `entry` if it names one, else --entry. */
  entryPath(version: string): string {
    const dir = this.versionDir(version);
    return join(dir, this.entryIn(dir));
  }

  private entryIn(dir: string): string {
    const read = readManifest(dir);
    return 'manifest' in read && read.manifest.entry !== undefined ? read.manifest.entry : this.entry;
  }

  /**
   * Why `version` is not complete, or null: a real directory under versions/ (not a symlink leading
   * elsewhere) whose entry point is an executable file that stays inside it. Says nothing about whether
   * root may run it (see launchProblem).
   */
  versionProblem(version: string): string | null {
    return this.placeProblem(version) ?? this.directoryProblem(join(this.versionsDir, version), `version ${version}`);
  }

  /**
   * Why `version` must not be started, or null: it is incomplete, or the upgrader runs as root and
   * something in it (any file, directory or link, its manifest included) or above it could be changed by
   * another user, or one of its links leads outside it.
   */
  launchProblem(version: string): string | null {
    return this.placeProblem(version) ?? this.directoryLaunchProblem(join(this.versionsDir, version), `version ${version}`);
  }

  /** launchProblem for a directory: a version, or one being staged. Root's checks come before the manifest is read. */
  directoryLaunchProblem(dir: string, label: string): string | null {
    return (process.geteuid?.() === 0 ? rootProblem(dir, label) : null) ?? this.directoryProblem(dir, label);
  }

  /** Why versions/<version> is not a real directory with a valid name, or null. */
  private placeProblem(version: string): string | null {
    const nameProblem = versionNameProblem(version);
    if (nameProblem) return nameProblem;
    const dir = join(this.versionsDir, version);
    try {
      if (!lstatSync(dir).isDirectory()) return `versions/${version} is not a directory`;
    } catch {
      return `version ${version} is not installed (no ${dir})`;
    }
    return null;
  }

  /** Why the directory `dir` (a version, or one being staged) is incomplete (manifest, entry point), or null. */
  directoryProblem(dir: string, label: string): string | null {
    const read = readManifest(dir);
    if ('problem' in read) return `${label}: ${read.problem}`;
    const entryName = read.manifest.entry ?? this.entry;
    const badEntry = entryProblem(entryName);
    if (badEntry) return `${label}: ${badEntry.replace('--entry', 'the manifest entry')}`;
    const entry = join(dir, entryName);
    try {
      const realEntry = realpathSync(entry);
      if (!realEntry.startsWith(realpathSync(dir) + sep)) return `the entry point ${entry} leads outside its version directory`;
      if (!statSync(realEntry).isFile()) return `the entry point ${entry} is not a file`;
      accessSync(realEntry, constants.X_OK);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return `${label} has no entry point ${entry}`;
      if (code === 'EACCES') return `the entry point ${entry} is not executable`;
      return `the entry point ${entry} cannot be used (${code ?? String(error)})`;
    }
    return null;
  }

  /** What `current` points at, or why it cannot be used. Never changes anything. */
  readCurrent(): { version: string } | { problem: string } {
    let target: string;
    try {
      target = readlinkSync(this.currentLink);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return { problem: `${this.currentLink} does not exist` };
      if (code === 'EINVAL') return { problem: `${this.currentLink} is not a symbolic link` };
      return { problem: `${this.currentLink} cannot be read (${code})` };
    }
    const version = versionInLink(target);
    if (version === null) return { problem: `${this.currentLink} points at ${JSON.stringify(target)}, not at versions/<version>` };
    const problem = this.versionProblem(version);
    return problem ? { problem: `current points at ${version}, but ${problem}` } : { version };
  }

  /** The version `current`'s link text names, whether or not it is complete; null if it names none. */
  currentLinkVersion(): string | null {
    const target = linkText(this.currentLink);
    return target === null ? null : versionInLink(target);
  }

  /**
   * Durably points `current` at a version, which must be complete. All or nothing: if the move cannot be
   * made durable (the directory's fsync fails after the rename), `current` is put back as it was before the
   * error is thrown, so that a caller reporting the failure and the link never disagree.
   */
  commitCurrent(version: string): void {
    const problem = this.versionProblem(version);
    if (problem) throw new UpgraderError('E_VERSION_MISSING', `Cannot point current at ${version}: ${problem}.`);
    const before = linkText(this.currentLink);
    try {
      replaceSymlinkDurably(this.currentLink, `versions/${version}`);
    } catch (error) {
      if (before !== null && linkText(this.currentLink) !== before) {
        try {
          replaceSymlinkDurably(this.currentLink, before);
        } catch {
          // A second failure in a row: the link may name either version; start-up's recovery decides.
        }
      }
      throw error;
    }
  }

  /**
   * Points a new root's first `current` at a version, which must be complete, only if nothing at all is at
   * `current`: symlink(2) creates the link in one step and refuses to replace anything, so a `current`
   * that appeared meanwhile is kept. Durable (the root directory is fsynced). Returns whether it did.
   */
  createCurrent(version: string): boolean {
    const problem = this.versionProblem(version);
    if (problem) throw new UpgraderError('E_VERSION_MISSING', `Cannot point current at ${version}: ${problem}.`);
    try {
      symlinkSync(`versions/${version}`, this.currentLink);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw error;
    }
    fsyncDirectory(this.root);
    return true;
  }

  /**
   * Removes temporary links, files and staging directories left by a crash, in the root, versions/, the
   * state directory and its quarantine/. A temporary name carries its creator's PID: one whose creator still runs (an install
   * in progress) is left alone.
   */
  removeStaleTemporaries(): string[] {
    const removed: string[] = [];
    for (const dir of [this.root, this.versionsDir, this.stateDir, join(this.stateDir, 'quarantine')]) {
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        continue;
      }
      for (const name of names.filter((n) => isTempName(n) && !creatorRuns(n))) {
        try {
          removeTree(join(dir, name));
          removed.push(join(dir, name));
        } catch {
          // A read-only root keeps its leftovers, and root leaves those another user could change: they are
          // harmless, and removed at a later start or by their owner.
        }
      }
    }
    return removed;
  }
}

const isPermissionError = (error: unknown) => ['EACCES', 'EPERM'].includes((error as NodeJS.ErrnoException).code ?? '');

/** `versions/<v>` (what `current` holds) -> `<v>`. */
function versionInLink(target: string): string | null {
  return /^versions\/([^/]+)\/?$/.exec(target)?.[1] ?? null;
}

function linkText(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

/** What in `dir` root must not run; a tree that cannot be walked (a full descriptor table, an I/O error) is not run either. */
function rootProblem(dir: string, label: string): string | null {
  try {
    return unsafeTreeForRoot(dir) ?? escapingLink(dir);
  } catch (error) {
    const { code, path } = error as NodeJS.ErrnoException;
    return `${label} cannot be checked (${code ?? String(error)}${path ? ` at ${path}` : ''}), and the upgrader runs as root`;
  }
}

/** Temporary names end in `.tmp-<pid>-<random>`; is that process still running (and not us)? */
function creatorRuns(name: string): boolean {
  const pid = Number(/\.tmp-(\d+)-/.exec(name)?.[1]);
  if (!pid || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function selfAndAncestors(path: string): string[] {
  const chain = [path];
  while (dirname(chain.at(-1)!) !== chain.at(-1)) chain.push(dirname(chain.at(-1)!));
  return chain;
}

/**
 * What root must not execute, as OpenSSH's StrictModes: a file or directory on the way that another user
 * could change. Each path must be owned by root and not writable by group or others; a sticky directory
 * owned by root (such as /tmp) is allowed, since nobody else can replace what root put in it.
 */
export function unsafeForRoot(paths: string[]): string | null {
  for (const path of paths) {
    const stat = lstatSync(path);
    const stickyRootDir = stat.isDirectory() && (stat.mode & 0o1000) !== 0;
    // A link's mode means nothing (always 0777) and it cannot be changed in place: its owner is what counts.
    const problem = ownedByAnother(path, stat) ?? (stickyRootDir || stat.isSymbolicLink() ? null : writableByAnother(path, stat));
    if (problem) return problem;
  }
  return null;
}

/**
 * unsafeForRoot for a whole tree: `dir` and its ancestors, then every entry below it. Inside the tree no
 * sticky directory is excused (others could add files to it), and a link is judged by its owner only:
 * its mode means nothing, and it cannot be changed in place.
 */
export function unsafeTreeForRoot(dir: string): string | null {
  return (
    unsafeForRoot(selfAndAncestors(dir)) ??
    firstProblem(dir, ({ path, stat }) => ownedByAnother(path, stat) ?? (stat.isSymbolicLink() ? null : writableByAnother(path, stat)))
  );
}

function ownedByAnother(path: string, stat: Stats): string | null {
  return stat.uid === 0 ? null : `${path} is owned by uid ${stat.uid}, not root, and the upgrader runs as root`;
}

function writableByAnother(path: string, stat: Stats): string | null {
  const by = [stat.mode & 0o020 ? 'its group' : null, stat.mode & 0o002 ? 'others' : null].filter(Boolean).join(' and ');
  return by ? `${path} is writable by ${by} (mode 0${(stat.mode & 0o7777).toString(8)}), and the upgrader runs as root` : null;
}
