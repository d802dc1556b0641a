/**
 * Staging a version: `upgrader install` and `installVersion` (the package's `upgrader/install` entry).
 *
 * A version is assembled under a temporary name inside versions/ (`.<version>.tmp-<pid>-<random>`, mode
 * 0700 until it is checked), from a private copy of the archive (see archive.ts) or a copy of a directory;
 * checked as it really is on disk (no link leading outside, no hard link to a file outside, an executable
 * entry point, and as root nothing another user could change); its modes made safe (no setuid, setgid or
 * sticky bit; as root, nothing writable by group or others); made durable (every file and directory
 * fsynced); then renamed to versions/<version> in one step. The supervisor never sees a half-written
 * version; a crash leaves only temporary names, which the next install or run removes.
 *
 * A first install lays out a new root (new-root.ts) and points its first `current` at the version, so that
 * a first deployment is install then start.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, cpSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { checkDigest, unpackCopy, withPrivateCopy } from './archive.js';
import { linkEscape } from './containment.js';
import { UpgraderError } from './errors.js';
import { fsyncDirectory, fsyncTree } from './durable.js';
import { assertVersionName, DEFAULT_ENTRY, entryProblem, Layout, selfAndAncestors, unsafeForRoot, unsafeTreeForRoot } from './layout.js';
import { createLayout, planRoot, type RootPlan } from './new-root.js';
import { actorFor, actorForNewRoot } from './privilege.js';
import { removeTree } from './remove-tree.js';
import { withLayoutLock } from './layout-lock.js';
import { Quarantine } from './quarantine.js';
import { openRegularFile } from './safe-file.js';
import { StateFile } from './state.js';
import { exists, walkTree } from './tree.js';

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

export type InstallResult = {
  version: string;
  path: string;
  identical: boolean;
  liftedQuarantine: boolean;
  /** The root's directory, or its versions/ and state/, had to be created (a first install). */
  createdRoot: boolean;
  /** `current` did not exist and now points at this version (see pointFirstCurrent). */
  madeCurrent: boolean;
};

const asRoot = () => process.geteuid?.() === 0;

/** What `upgrader install` prints: what was done, and every change an operator would otherwise not see. */
export function describeInstall(result: InstallResult): string {
  const laidOut = result.createdRoot ? `laid out the new root ${dirname(dirname(result.path))} (versions/, state/)\n` : '';
  const done = result.identical ? `${result.version} is already installed with identical content` : `installed ${result.version} at ${result.path}`;
  const also = [
    result.madeCurrent ? `current now points at ${result.version}: upgrader run starts it` : null,
    result.liftedQuarantine ? 'its quarantine is lifted: it may be upgraded to again' : null,
  ].filter((part) => part !== null);
  if (also.length > 0) return `${laidOut}${done}; ${also.join('; ')}.`;
  return `${laidOut}${done}${result.identical ? '; nothing to do.' : ''}`;
}

export async function installVersion(options: InstallOptions): Promise<InstallResult> {
  assertVersionName(options.version);
  const entry = options.entry ?? DEFAULT_ENTRY;
  const badEntry = entryProblem(entry);
  if (badEntry) throw new UpgraderError('E_USAGE', `${badEntry}.`);
  const plan = planRoot(options.root);
  const kind = sourceKind(options.source);
  if (options.sha256 !== undefined && kind !== 'archive') {
    throw new UpgraderError('E_USAGE', '--sha256 checks an archive; the source is a directory.');
  }
  if (options.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(options.sha256)) {
    throw new UpgraderError('E_USAGE', `--sha256 must be 64 hexadecimal digits, not ${JSON.stringify(options.sha256)}.`);
  }

  // Nothing is created before it is known that this process may act there; then it is checked as it is.
  if (asRoot()) refuseForeignRoot(plan);
  const createdRoot = createLayout(plan);
  const layout = Layout.open(plan.root, entry);
  if (asRoot()) refuseWhatOthersControl(layout, options.source);

  layout.removeStaleTemporaries();
  const staging = join(layout.versionsDir, `.${options.version}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  // Private while it is assembled: nobody else can reach into it, whatever modes its entries arrive with.
  mkdirSync(staging, { mode: 0o700 });
  try {
    if (kind === 'archive') await stageArchive(layout, options, staging);
    else copyDirectory(options.source, staging);
    const unsafe = stagedTreeProblem(staging);
    if (unsafe) throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing ${kind === 'archive' ? 'the archive' : 'the directory'} ${options.source}: ${unsafe}.`);
    normaliseModes(staging);
    chmodSync(staging, 0o755);
    const problem = layout.directoryLaunchProblem(staging, `version ${options.version}`);
    if (problem) throw new UpgraderError('E_ENTRY', `Refusing to install ${options.version}: ${problem}.`);
    fsyncTree(staging);
    return await withLayoutLock(layout, 'install', () => {
      const target = join(layout.versionsDir, options.version);
      // Re-installing a version is how an operator says it deserves another try.
      const done = (identical: boolean): InstallResult => ({
        version: options.version,
        path: target,
        identical,
        liftedQuarantine: new Quarantine(layout.stateDir).lift(options.version),
        createdRoot,
        madeCurrent: pointFirstCurrent(layout, options.version),
      });
      if (exists(target)) {
        if (treeDigest(target) !== treeDigest(staging)) {
          throw new UpgraderError('E_VERSION_EXISTS', `Version ${options.version} is already installed with different content; install it under another name.`);
        }
        return done(true);
      }
      renameSync(staging, target);
      fsyncDirectory(layout.versionsDir);
      return done(false);
    });
  } finally {
    removeTree(staging);
  }
}

/**
 * A root with no `current` at all, whose state file names no current either (nothing has run there yet),
 * gets one: the version just installed, so that `upgrader run` starts it. A `current` that exists, even
 * dangling or pointing at something broken, and one missing while the state file names one, are damage
 * that `upgrader run` repairs from its records: install leaves them alone.
 */
function pointFirstCurrent(layout: Layout, version: string): boolean {
  if (exists(layout.currentLink)) return false;
  const read = new StateFile(layout.stateDir).read();
  if (read.ok && read.state.current !== null) return false;
  return layout.createCurrent(version);
}

/** As root, install works only in a root that root alone can change, or creates one only where root alone can (privilege.ts). */
function refuseForeignRoot(plan: RootPlan): void {
  const actor = plan.create === 'root' ? actorForNewRoot(plan.root) : actorFor(plan.root);
  if (actor.kind === 'owner') {
    throw new UpgraderError('E_PERMISSION', `${plan.root} belongs to uid ${actor.uid}: install into it as that user (the upgrader command does so by itself when root runs it).`);
  }
}

/**
 * As root, install works only where nobody else has a say: a root that root alone can change (a user's
 * root is installed into by that user: the CLI re-executes itself as them), and a source reached through
 * nothing another user owns or can write, so that no link of theirs can make root read, hash or copy a
 * file they could not read themselves.
 */
function refuseWhatOthersControl(layout: Layout, source: string): void {
  refuseForeignRoot({ root: layout.root, create: 'nothing' });
  const given = resolve(source);
  const problem = unsafeForRoot(selfAndAncestors(given)) ?? unsafeForRoot(selfAndAncestors(realpathSync(given)));
  if (problem) {
    throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing the source ${source}: ${problem}; as root, install only from a file or directory no other user can change (copy it somewhere only root can write first), or install as that user.`);
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
  const real = realpathSync(source);
  // As root, a tree that another user can change while it is copied could swap a directory for a link
  // mid-walk and have root copy whatever it leads to; only a tree nobody else can change is copied.
  const unsafe = asRoot() ? unsafeTreeForRoot(real) : null;
  if (unsafe) {
    throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing the directory ${source}: ${unsafe}; pack it as a .tar.gz archive, or make it and its parents root's and not writable by others.`);
  }
  const problems: string[] = [];
  for (const { rel, stat } of walkTree(real)) {
    if (!stat.isFile() && !stat.isDirectory() && !stat.isSymbolicLink()) problems.push(`${rel} is neither a file, a directory nor a symbolic link`);
  }
  if (problems.length > 0) throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing the directory ${source}: ${problems.slice(0, 3).join('; ')}.`);
  cpSync(real, staging, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
}

/**
 * Why the staged tree must not become a version, judged on the tree as it is: an entry that is not a file,
 * directory or link, a link that really leads outside it, or a file hard-linked to one outside it.
 */
export function stagedTreeProblem(staging: string): string | null {
  const linkedFiles = new Map<string, { rel: string; nlink: number; seen: number }>();
  for (const { rel, stat } of walkTree(staging)) {
    if (stat.isSymbolicLink()) {
      const escape = linkEscape(staging, rel);
      if (escape) return escape;
    } else if (stat.isFile()) {
      if (stat.nlink > 1) {
        const inode = `${stat.dev}:${stat.ino}`;
        const known = linkedFiles.get(inode) ?? { rel, nlink: stat.nlink, seen: 0 };
        known.seen += 1;
        linkedFiles.set(inode, known);
      }
    } else if (!stat.isDirectory()) {
      return `${rel} is neither a file, a directory nor a symbolic link`;
    }
  }
  for (const { rel, nlink, seen } of linkedFiles.values()) {
    if (seen < nlink) return `${rel} is a hard link to a file outside the version directory`;
  }
  return null;
}

/**
 * Installed files never carry setuid, setgid or sticky bits (root's copy of a user's setuid file would be
 * setuid-root), and, when root installs, nothing is writable by group or others. The staging directory is
 * private, so nobody can swap an entry for a link between the lstat and the chmod.
 */
function normaliseModes(staging: string): void {
  const strip = asRoot() ? 0o7022 : 0o7000;
  for (const { path, stat } of walkTree(staging)) {
    if (stat.isSymbolicLink() || (stat.mode & strip) === 0) continue;
    chmodSync(path, stat.mode & 0o7777 & ~strip);
  }
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
      } else if (stat.isFile()) {
        hash.update(`F ${rel} ${stat.mode & 0o111 ? 'x' : '-'} `);
        hash.update(readRegularFile(full));
        hash.update('\0');
      } else {
        // A FIFO or a device planted in an installed version: never opened, since an open could block.
        hash.update(`O ${rel}\0`);
      }
    }
  };
  walk(dir);
  return hash.digest('hex');
}

/** The whole content of a version's file, opened without following a link and without blocking. */
function readRegularFile(path: string): Buffer {
  const file = openRegularFile(path);
  if ('ok' in file) throw new UpgraderError('E_IO', `Cannot compare ${path}: it ${file.problem}.`);
  try {
    return readFileSync(file.fd);
  } finally {
    closeSync(file.fd);
  }
}
