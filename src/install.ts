/**
 * Staging a version: `upgrader install` and the agent library's `installVersion`.
 *
 * A version is assembled under a temporary name inside versions/ (`.<version>.tmp-<pid>-<random>`),
 * checked (no entry leading outside, an executable entry point), made durable (every file and directory
 * fsynced), then renamed to versions/<version> in one step. The supervisor never sees a half-written
 * version; a crash leaves only the temporary directory, which the next install or run removes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, cpSync } from 'node:fs';
import { isAbsolute, join, normalize, relative, sep, dirname } from 'node:path';
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
  if (kind === 'archive' && options.sha256 !== undefined) await verifyChecksum(options.source, options.sha256);

  layout.removeStaleTemporaries();
  const staging = join(layout.versionsDir, `.${options.version}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(staging, { mode: 0o755 });
  try {
    if (kind === 'archive') await unpack(options.source, staging, options.onProgress);
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

async function verifyChecksum(file: string, expected: string): Promise<void> {
  if (!/^[0-9a-fA-F]{64}$/.test(expected)) throw new UpgraderError('E_USAGE', `--sha256 must be 64 hexadecimal digits, not ${JSON.stringify(expected)}.`);
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  const actual = hash.digest('hex');
  if (actual !== expected.toLowerCase()) {
    throw new UpgraderError('E_CHECKSUM', `The archive ${file} has SHA-256 ${actual}, not the expected ${expected.toLowerCase()}; nothing was installed.`);
  }
}

/** Why a path (inside an archive or a source directory) or a link target would land outside the version. */
function escapes(path: string, linkTarget?: string): string | null {
  if (isAbsolute(path)) return `${path} is an absolute path`;
  const inside = normalize(path);
  if (inside === '..' || inside.startsWith(`..${sep}`)) return `${path} leads outside the version directory`;
  if (linkTarget !== undefined) {
    if (isAbsolute(linkTarget)) return `${path} is a link to the absolute path ${linkTarget}`;
    const resolved = normalize(join(dirname(inside), linkTarget));
    if (resolved === '..' || resolved.startsWith(`..${sep}`)) return `${path} is a link to ${linkTarget}, outside the version directory`;
  }
  return null;
}

type TarEntry = { path: string; type: string; linkpath?: string };

async function unpack(archive: string, staging: string, onProgress?: (done: number, total: number) => void): Promise<void> {
  const tar = await import('tar');
  // First the whole listing is checked, so that a bad entry is refused before anything is written.
  const problems: string[] = [];
  await tar.t({
    file: archive,
    onReadEntry: (entry: TarEntry) => {
      const allowed = ['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link'];
      if (!allowed.includes(entry.type)) problems.push(`${entry.path} is a ${entry.type}, which a version may not contain`);
      const linkTarget = entry.type === 'SymbolicLink' || entry.type === 'Link' ? entry.linkpath : undefined;
      const problem = escapes(entry.path, entry.type === 'Link' ? undefined : linkTarget) ?? (entry.type === 'Link' && linkTarget ? escapes(linkTarget) : null);
      if (problem) problems.push(problem);
    },
  });
  if (problems.length > 0) throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing the archive ${archive}: ${problems.slice(0, 3).join('; ')}${problems.length > 3 ? ` (and ${problems.length - 3} more)` : ''}.`);
  const total = statSync(archive).size;
  let done = 0;
  const stream = createReadStream(archive);
  if (onProgress) {
    stream.on('data', (chunk) => {
      done += chunk.length;
      onProgress(done, total);
    });
  }
  await new Promise<void>((resolve, reject) => {
    const extract = tar.x({ cwd: staging, strict: true, preserveOwner: false });
    extract.on('error', reject);
    stream.on('error', reject);
    extract.on('finish', () => resolve());
    extract.on('close', () => resolve());
    stream.pipe(extract);
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
