/**
 * A claim by a live process: a record file that names it (PID, start time, boot id, and what the claimant
 * adds), replaced only under a short proper-lockfile lock, so that two claims cannot interleave. The claim
 * lasts exactly as long as its holder lives, however long its work takes and however busy or stopped its
 * event loop: nothing to refresh, nothing to go stale. A holder that dies leaves a record naming a dead
 * process, which the next claim replaces. The root's ownership (state/owner.json) and the layout lock
 * (state/layout.holder) are both such claims.
 */
import { lstatSync, mkdirSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import type { z } from 'zod';
import { replaceFileAtomically } from './durable.js';
import { UpgraderError } from './errors.js';
import { identify, isSameProcessAlive, type ProcessIdentity } from './proc.js';
import { readRecord } from './safe-file.js';

/** A warning for the log: its text, and the fields that say what happened. */
export type Warn = (message: string, fields: Record<string, unknown>) => void;

export type ClaimSpec<R extends ProcessIdentity> = {
  stateDir: string;
  /** The record's file name in stateDir. */
  record: string;
  /** The short lock's directory name in stateDir. */
  lock: string;
  schema: z.ZodType<R>;
  /** proper-lockfile's staleness and retries for the short lock. */
  stale: number;
  retries: { retries: number; minTimeout: number; maxTimeout: number };
};

/** The short lock could not be taken (its errno as `code`: ELOCKED, EACCES, EROFS, ...). Nothing was claimed. */
export class ClaimLockError extends Error {
  readonly code: string | undefined;
  constructor(cause: unknown) {
    super(`cannot take the lock: ${String(cause)}`, { cause });
    this.code = (cause as NodeJS.ErrnoException).code;
  }
}

export const recordPath = <R extends ProcessIdentity>(spec: ClaimSpec<R>): string => join(spec.stateDir, spec.record);

/** This process, as a claim names it. */
export function selfIdentity(): ProcessIdentity {
  const self = identify(process.pid);
  if (!self) throw new UpgraderError('E_INTERNAL', 'Cannot read this process from /proc; the upgrader needs Linux /proc.');
  return self;
}

/** The record, if it is a valid one (never following a link, never blocking on a FIFO). */
export function readClaim<R extends ProcessIdentity>(spec: ClaimSpec<R>): R | null {
  return readRecord(recordPath(spec), spec.schema);
}

/**
 * Claims for this process, adding `extra` to the record. Returns the live process that holds the claim
 * instead, or null once it is ours. A lock that cannot be taken is a ClaimLockError; a record that cannot
 * be written throws as it failed.
 */
export async function claim<R extends ProcessIdentity>(spec: ClaimSpec<R>, extra: Omit<R, keyof ProcessIdentity>, warn: Warn = () => undefined): Promise<R | null> {
  let unlock: () => Promise<void>;
  try {
    mkdirSync(spec.stateDir, { recursive: true, mode: 0o755 });
    removeForeignLock(join(spec.stateDir, spec.lock), warn);
    unlock = await lockfile.lock(spec.stateDir, {
      lockfilePath: join(spec.stateDir, spec.lock),
      realpath: false,
      stale: spec.stale,
      retries: spec.retries,
      // Held for milliseconds; if it ever went stale, the record still decides.
      onCompromised: () => undefined,
    });
  } catch (error) {
    throw new ClaimLockError(error);
  }
  try {
    const holder = readClaim(spec);
    if (holder && holder.pid !== process.pid && isSameProcessAlive(holder)) return holder;
    replaceFileAtomically(recordPath(spec), `${JSON.stringify({ ...selfIdentity(), ...extra })}\n`);
    return null;
  } finally {
    await unlock().catch(() => undefined);
  }
}

/** Removes the record if it still names this process. */
export function releaseClaim<R extends ProcessIdentity>(spec: ClaimSpec<R>): void {
  const holder = readClaim(spec);
  if (holder?.pid !== process.pid) return;
  try {
    rmSync(recordPath(spec), { force: true });
  } catch {
    // A record left behind names a dead process once we exit, which the next claim replaces.
  }
}

/**
 * The lock is always a directory (proper-lockfile makes it with mkdir). Anything else at its name, a
 * symlink or a file, is nobody's lock: left there, it would keep every claimant out for good. It is
 * unlinked, which never follows a link, so whatever a planted link points at is left untouched.
 */
function removeForeignLock(lockPath: string, warn: Warn): void {
  let kind: string;
  try {
    const stat = lstatSync(lockPath);
    if (stat.isDirectory()) return;
    kind = stat.isSymbolicLink() ? 'a symbolic link' : 'a file';
  } catch {
    return;
  }
  unlinkSync(lockPath);
  warn(`removed ${lockPath}: ${kind}, not the directory the upgrader locks with`, { removed: lockPath, found: kind });
}
