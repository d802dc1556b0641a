/**
 * Who acts on a root, and what root may do there. Root never follows a path that another user controls:
 *
 * - A root owned by another user is that user's: `install`, `prune`, `upgrade`, `rollback` and `versions`
 *   run by root on it re-execute themselves as that user (its uid and primary gid, no supplementary
 *   groups), so that whatever they remove, copy or read, they do with the owner's rights, and a link the
 *   owner plants can only lead where the owner could go anyway. `run` as root on such a root is refused:
 *   the upgrader must run as the owner (systemd/user.conf.example).
 * - A root owned by root is acted on as root only while no other user can change it: the root, its
 *   versions/ and state/ directories and every ancestor must be root's and not writable by group or
 *   others (root-owned sticky directories such as /tmp excepted), else the command is refused. Root
 *   creates a new root (a first install) only under such a parent.
 * - Removing a tree as root: see remove-tree.ts.
 */
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { UpgraderError } from './errors.js';
import { exitStatusOf } from './handoff.js';
import { selfAndAncestors, unsafeForRoot } from './layout.js';
import { printable } from './printable.js';

export type Actor = { kind: 'self' } | { kind: 'owner'; uid: number; gid: number };

const isRootUser = () => process.geteuid?.() === 0;

/** Whether this process may act on `root` itself, or must hand the command to the root's owner. */
export function actorFor(root: string): Actor {
  if (!isRootUser()) return { kind: 'self' };
  const { uid: owner, gid } = lstatSync(root);
  if (owner !== 0) return { kind: 'owner', uid: owner, gid: primaryGid(owner) ?? gid };
  const mine = [join(root, 'versions'), join(root, 'state')].filter((dir) => existsSync(dir));
  const problem = unsafeForRoot([...mine, ...selfAndAncestors(root)]);
  if (problem) {
    throw new UpgraderError('E_PERMISSION', `Refusing to act as root on ${root}: ${problem}. Give root's roots to root alone (chown -R root: and chmod go-w), or give the whole root to one user and run the upgrader as that user.`);
  }
  return { kind: 'self' };
}

/**
 * Who may create the root `root`, which does not exist yet (a first install): anyone the file system lets,
 * and root only in a parent that root alone can change (the rule for a root's ancestors above), since the
 * new root will be root's. Root does not create a root in a user's directory: that user creates it.
 */
export function actorForNewRoot(root: string): Actor {
  if (!isRootUser()) return { kind: 'self' };
  const problem = unsafeForRoot(selfAndAncestors(dirname(root)));
  if (problem) {
    throw new UpgraderError('E_PERMISSION', `Refusing to create the root ${root} as root: ${problem}. Create it where only root can write, or create the directory as the user who will run the upgrader and install again (root then installs as that user).`);
  }
  return { kind: 'self' };
}

/** `upgrader run` as root may only supervise a root that root alone controls. */
export function refuseForeignRootForRun(root: string): void {
  let actor: Actor;
  try {
    actor = actorFor(root);
  } catch (error) {
    // A layout problem, not a passing one: 78, which the units do not retry.
    throw error instanceof UpgraderError ? new UpgraderError('E_ROOT', error.message) : error;
  }
  if (actor.kind === 'owner') {
    throw new UpgraderError(
      'E_ROOT',
      `The root ${root} belongs to uid ${actor.uid}; run the upgrader as that user, not as root (under systemd: User= in a drop-in, see systemd/user.conf.example).`,
    );
  }
}

/**
 * Runs this same command as the root's owner and resolves with its exit status. The child is the owner's
 * process, so the owner may read its memory and environment and write to its pipes: it gets no terminal
 * (its own session, stdin closed: nothing to push keystrokes into), only the environment variables the
 * upgrader reads (never root's secrets), and what it prints reaches the operator with every control
 * character escaped.
 */
export function runAsOwner(actor: Extract<Actor, { kind: 'owner' }>, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...args], {
      uid: actor.uid,
      gid: actor.gid,
      detached: true,
      cwd: '/',
      env: ownerEnvironment(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    relayPrintable(child.stdout!, process.stdout);
    relayPrintable(child.stderr!, process.stderr);
    const forward = (signal: NodeJS.Signals) => child.kill(signal);
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, forward);
    child.on('error', (error) => reject(new UpgraderError('E_PERMISSION', `Cannot run the command as the root's owner (uid ${actor.uid}): ${error.message}.`, { cause: error })));
    child.on('close', (code, signal) => resolve(exitStatusOf(code, signal)));
  });
}

/** What the owner's process may see of root's environment: locale, path, and the upgrader's own settings. */
function ownerEnvironment(): NodeJS.ProcessEnv {
  const kept = Object.entries(process.env).filter(([name]) => /^(PATH|LANG|LC_[A-Z]+|TZ|NO_COLOR|UPGRADER_[A-Z0-9_]+)$/.test(name));
  return Object.fromEntries(kept);
}

function relayPrintable(from: NodeJS.ReadableStream, to: NodeJS.WritableStream): void {
  from.setEncoding('utf8');
  from.on('data', (text: string) => to.write(printable(text)));
}


/** The primary group of `uid` from /etc/passwd, if it is listed there. */
function primaryGid(uid: number): number | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const fields = line.split(':');
      if (Number(fields[2]) === uid && fields[3] !== undefined && /^\d+$/.test(fields[3])) return Number(fields[3]);
    }
  } catch {
    // no passwd file: fall back to the root directory's group
  }
  return null;
}
