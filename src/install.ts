/**
 * Staging a version: `upgrader install` and the agent library's `installVersion`.
 *
 * A version is assembled under a temporary name inside versions/ (`.<version>.tmp-<pid>-<random>`),
 * checked (no entry leading outside, an executable entry point), made durable (every file and directory
 * fsynced), then renamed to versions/<version> in one step. The supervisor never sees a half-written
 * version; a crash leaves only the temporary directory, which the next install or run removes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, cpSync } from 'node:fs';
import { join, relative } from 'node:path';
import { checkDigest, escapes, unpackCopy, withPrivateCopy } from './archive.js';
import { UpgraderError } from './errors.js';
import { fsyncDirectory, fsyncTree } from './durable.js';
import { assertVersionName, DEFAULT_ENTRY, Layout } from './layout.js';
import { withLayoutLock } from './layout-lock.js';
import { Quarantine } from './quarantine.js';

export type InstallOptions = {
  root: string;
  version: string;
  /** A directory, or a .tar.gz / .tgz archive. */
  source: string;
  /** Expected SHA-256 of the archive, in hex. */
  sha256?: string;
  entry?: string;
  /** Called while an archive is read: bytes read so far, and the archive's size. */
  onProgress?: (done: number, total: number) => void;
};

export type InstallResult = { version: string; path: string; identical: boolean; liftedQuarantine: boolean };

export async function installVersion(options: InstallOptions): Promise<InstallResult> {
  assertVersionName(options.version);
  const layout = Layout.open(options.root, options.entry ?? DEFAULT_ENTRY);
  const kind = sourceKind(options.source);
  if (options.sha256 !== undefined && kind !== 'archive') {
    throw new UpgraderError('E_USAGE', '--sha256 checks an archive; the source is a directory.');
  }
  if (options.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(options.sha256)) {
    throw new UpgraderError('E_USAGE', `--sha256 must be 64 hexadecimal digits, not ${JSON.stringify(options.sha256)}.`);
  }

  layout.removeStaleTemporaries();
  const staging = join(layout.versionsDir, `.${options.version}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(staging, { mode: 0o755 });
  try {
    if (kind === 'archive') await stageArchive(layout, options, staging);
    else copyDirectory(options.source, staging);
    const problem = layout.directoryLaunchProblem(staging, `version ${options.version}`);
    if (problem) throw new UpgraderError('E_ENTRY', `Refusing to install ${options.version}: ${problem}.`);
    fsyncTree(staging);
    return await withLayoutLock(layout, () => {
      const target = join(layout.versionsDir, options.version);
      // Re-installing a version is how an operator says it deserves another try.
      const lift = () => new Quarantine(layout.stateDir).lift(options.version);
      if (exists(target)) {
        if (treeDigest(target) !== treeDigest(staging)) {
          throw new UpgraderError('E_VERSION_EXISTS', `Version ${options.version} is already installed with different content; install it under another name.`);
        }
        return { version: options.version, path: target, identical: true, liftedQuarantine: lift() };
      }
      renameSync(staging, target);
      fsyncDirectory(layout.versionsDir);
      return { version: options.version, path: target, identical: false, liftedQuarantine: lift() };
    });
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

function sourceKind(source: string): 'directory' | 'archive' {
  let stat;
  try {
    stat = statSync(source);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new UpgraderError('E_USAGE', `The source ${source} does not exist.`);
    throw error;
  }
  if (stat.isDirectory()) return 'directory';
  if (stat.isFile() && /\.(tar\.gz|tgz)$/.test(source)) return 'archive';
  throw new UpgraderError('E_USAGE', `The source ${source} is neither a directory nor a .tar.gz or .tgz archive.`);
}

/** Reads the archive once into a private copy, checks that copy's digest, and unpacks that copy. */
async function stageArchive(layout: Layout, options: InstallOptions, staging: string): Promise<void> {
  await withPrivateCopy(options.source, layout.versionsDir, `${options.version}.tgz`, options.onProgress, async (copy) => {
    if (options.sha256 !== undefined) checkDigest(options.source, copy.sha256, options.sha256);
    await unpackCopy(copy, options.source, staging);
  });
}

function copyDirectory(source: string, staging: string): void {
  const problems: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const full = join(dir, name);
      const rel = relative(source, full);
      const stat = lstatSync(full);
      if (stat.isSymbolicLink()) {
        const problem = escapes(rel, readlinkSync(full));
        if (problem) problems.push(problem);
      } else if (stat.isDirectory()) {
        walk(full);
      } else if (!stat.isFile()) {
        problems.push(`${rel} is neither a file, a directory nor a symbolic link`);
      }
    }
  };
  walk(source);
  if (problems.length > 0) throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing the directory ${source}: ${problems.slice(0, 3).join('; ')}.`);
  cpSync(source, staging, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
}

/** A digest of a tree's names, kinds, executable bits, contents and link targets. */
export function treeDigest(dir: string): string {
  const hash = createHash('sha256');
  const walk = (current: string) => {
    for (const name of readdirSync(current).sort()) {
      const full = join(current, name);
      const stat = lstatSync(full);
      const rel = relative(dir, full);
      if (stat.isSymbolicLink()) hash.update(`L ${rel} ${readlinkSync(full)}\0`);
      else if (stat.isDirectory()) {
        hash.update(`D ${rel}\0`);
        walk(full);
      } else {
        hash.update(`F ${rel} ${stat.mode & 0o111 ? 'x' : '-'} `);
        hash.update(readFileSync(full));
        hash.update('\0');
      }
    }
  };
  walk(dir);
  return hash.digest('hex');
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
