/**
 * A first install into a root that is not laid out yet, so that a first deployment is `upgrader install`
 * then `systemctl enable --now` (install.ts points `current` at the version once the root has none).
 *
 * - The root's directory may be missing, as long as its parent exists: install creates the root itself,
 *   never a chain of directories that a mistyped parent would call into being.
 * - An existing directory without versions/ is laid out only when it is empty: a mistyped --root (a home,
 *   /etc) must not get directories scattered into it.
 * - What is created (the root, versions/, state/) gets mode 0755 narrowed by the umask, as state/ always
 *   has: never writable by group or others, whatever the umask. It belongs to the user who runs the
 *   command; privilege.ts decides beforehand who that may be.
 * - Planning creates nothing, so the caller can decide who acts (root, or the root's owner) first.
 */
import { lstatSync, mkdirSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fsyncDirectory } from './durable.js';
import { UpgraderError } from './errors.js';

/** `nothing`: a root with versions/ (Layout.open judges it); `layout`: an empty directory; `root`: a missing one. */
export type RootPlan = { root: string; create: 'nothing' | 'layout' | 'root' };

const DIRECTORY_MODE = 0o755;

const codeOf = (error: unknown) => (error as NodeJS.ErrnoException).code ?? String(error);
const isPermission = (error: unknown) => ['EACCES', 'EPERM'].includes(codeOf(error));

/** Where an install into `given` works, and what it would have to create there. Creates nothing. */
export function planRoot(given: string): RootPlan {
  let real: string;
  try {
    real = realpathSync(given);
  } catch (error) {
    if (isPermission(error)) throw new UpgraderError('E_PERMISSION', `Not allowed to reach the root ${given} (${codeOf(error)}): it belongs to another user.`);
    if (codeOf(error) !== 'ENOENT') throw new UpgraderError('E_ROOT', `The root ${given} cannot be used (${codeOf(error)}): a part of its path is not a directory.`);
    return planMissingRoot(resolve(given));
  }
  if (!statSync(real).isDirectory()) throw new UpgraderError('E_ROOT', `The root ${real} is not a directory.`);
  try {
    lstatSync(join(real, 'versions'));
    return { root: real, create: 'nothing' };
  } catch (error) {
    if (isPermission(error)) throw new UpgraderError('E_PERMISSION', `Not allowed to read the root ${real} (${codeOf(error)}): it belongs to another user.`);
  }
  let names: string[];
  try {
    names = readdirSync(real);
  } catch (error) {
    if (isPermission(error)) throw new UpgraderError('E_PERMISSION', `Not allowed to read the root ${real} (${codeOf(error)}): it belongs to another user.`);
    throw error;
  }
  if (names.length > 0) {
    throw new UpgraderError('E_ROOT', `The root ${real} has no versions/ directory and is not empty, so it is not taken for an upgrader root: give --root a new or empty directory, or the root you meant.`);
  }
  return { root: real, create: 'layout' };
}

function planMissingRoot(absolute: string): RootPlan {
  let link: string | null = null;
  try {
    link = readlinkSync(absolute);
  } catch {
    // nothing at that name, as expected
  }
  if (link !== null) throw new UpgraderError('E_ROOT', `The root ${absolute} is a symbolic link to ${link}, which does not exist; point it at a directory, or remove it.`);
  const parent = dirname(absolute);
  let realParent: string;
  try {
    realParent = realpathSync(parent);
  } catch (error) {
    if (isPermission(error)) throw new UpgraderError('E_PERMISSION', `Not allowed to reach ${parent}, where the root ${absolute} would be created (${codeOf(error)}).`);
    throw new UpgraderError('E_ROOT', `The root ${absolute} does not exist, nor does its parent ${parent}; create the parent first (mkdir -p ${parent}): install creates the root, not the directories above it.`);
  }
  if (!statSync(realParent).isDirectory()) throw new UpgraderError('E_ROOT', `Cannot create the root ${absolute}: ${parent} is not a directory.`);
  return { root: join(realParent, basename(absolute)), create: 'root' };
}

/**
 * Creates what the plan says is missing (the root's directory, versions/, state/), durably: each new
 * directory's parent is fsynced. A directory that appeared meanwhile (another install) is used as it is.
 * Returns whether anything had to be laid out.
 */
export function createLayout(plan: RootPlan): boolean {
  if (plan.create === 'nothing') return false;
  if (plan.create === 'root') {
    makeDirectory(plan.root);
    if (!lstatSync(plan.root).isDirectory()) throw new UpgraderError('E_ROOT', `Cannot create the root ${plan.root}: something that is not a directory appeared at its name.`);
    fsyncDirectory(dirname(plan.root));
  }
  makeDirectory(join(plan.root, 'versions'));
  makeDirectory(join(plan.root, 'state'));
  fsyncDirectory(plan.root);
  return true;
}

function makeDirectory(path: string): void {
  try {
    mkdirSync(path, { mode: DIRECTORY_MODE });
  } catch (error) {
    if (codeOf(error) !== 'EEXIST') throw error;
  }
}
