/**
 * Only one `upgrader run` may own a root. The owner is recorded in <root>/state/owner.json as a process
 * identity (PID, start time, boot id). A root is taken only when no live process matches that record,
 * so an owner that is merely stopped (SIGSTOP) or slow is never displaced, however long it stays so.
 *
 * The check-and-claim is a process claim (process-claim.ts): a short lock (state/takeover.lock) held only
 * for that step, so an idle upgrader has no lock to refresh and never wakes up.
 * Before each durable change the owner confirms the record still names it (see `confirm`): if anything
 * has replaced it, the upgrader stops touching the root at once.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { UpgraderError } from './errors.js';
import { isSameProcessAlive, ProcessIdentity } from './proc.js';
import { claim, ClaimLockError, selfIdentity, type ClaimSpec, type Warn } from './process-claim.js';
import { readSmallFile } from './safe-file.js';

const OwnerRecord = ProcessIdentity.extend({ startedAt: z.string() });
export type OwnerRecord = z.infer<typeof OwnerRecord>;

export function ownerPath(stateDir: string): string {
  return join(stateDir, 'owner.json');
}

export function readOwner(stateDir: string): OwnerRecord | null {
  const read = readOwnerRecord(stateDir);
  return 'unreadable' in read ? null : read.record;
}

/**
 * The record, or null when there is none: no file, or something that is no record of an upgrader (not
 * JSON, a link, a FIFO). `unreadable` (with the reason) when the file system refused the read.
 */
export function readOwnerRecord(stateDir: string): { record: OwnerRecord | null; problem: string | null } | { unreadable: string } {
  const path = ownerPath(stateDir);
  const file = readSmallFile(path);
  if (!file.ok) {
    if (file.kind === 'failed') return { unreadable: `${path} ${file.problem}` };
    return { record: null, problem: file.kind === 'refused' ? `${path} ${file.problem}` : null };
  }
  try {
    const parsed = OwnerRecord.safeParse(JSON.parse(file.text));
    return parsed.success ? { record: parsed.data, problem: null } : { record: null, problem: `${path} is not an owner record` };
  } catch {
    return { record: null, problem: `${path} is not valid JSON` };
  }
}

/** The recorded owner, if it is still alive. */
export function liveOwner(stateDir: string): OwnerRecord | null {
  const owner = readOwner(stateDir);
  return owner && isSameProcessAlive(owner) ? owner : null;
}

const ownerSpec = (stateDir: string): ClaimSpec<OwnerRecord> => ({
  stateDir,
  record: 'owner.json',
  lock: 'takeover.lock',
  schema: OwnerRecord,
  stale: 5000,
  retries: { retries: 40, minTimeout: 25, maxTimeout: 250 },
});

function liveOwnerError(owner: OwnerRecord): UpgraderError {
  return new UpgraderError('E_LOCKED', `Another upgrader (PID ${owner.pid}, started ${owner.startedAt}) already runs on this root; leaving it alone.`);
}

export class Ownership {
  private constructor(
    private readonly stateDir: string,
    readonly self: ProcessIdentity,
    /** The root could not be written: nothing is recorded, and every durable write will fail. */
    readonly readOnly: boolean,
  ) {}

  /**
   * Claims the root for this process. On a read-only root nothing can be recorded: the upgrader may still
   * run its agent (it refuses upgrades, which need writes), but only a live owner recorded earlier can keep a
   * second instance out; `readOnly` says so.
   */
  static async acquire(stateDir: string, warn: Warn): Promise<Ownership> {
    let holder: OwnerRecord | null;
    try {
      holder = await claim(ownerSpec(stateDir), { startedAt: new Date().toISOString() }, warn);
    } catch (error) {
      if (!(error instanceof ClaimLockError)) {
        throw new UpgraderError('E_IO', `Cannot record this upgrader in ${ownerPath(stateDir)} (${(error as NodeJS.ErrnoException).code ?? String(error)}).`, { cause: error });
      }
      if (error.code === 'EROFS') return Ownership.readOnly(stateDir);
      if (error.code === 'ELOCKED') throw new UpgraderError('E_LOCKED', `Another upgrader is taking over ${stateDir} right now; try again.`, { cause: error.cause });
      throw new UpgraderError('E_IO', `Cannot take ownership of ${stateDir} (${error.code ?? String(error.cause)}).`, { cause: error.cause });
    }
    if (holder) throw liveOwnerError(holder);
    return new Ownership(stateDir, selfIdentity(), false);
  }

  private static readOnly(stateDir: string): Ownership {
    const owner = liveOwner(stateDir);
    if (owner) throw liveOwnerError(owner);
    return new Ownership(stateDir, selfIdentity(), true);
  }

  /** True while the owner record still names this process. */
  confirm(): boolean {
    if (this.readOnly) return true;
    const read = readOwnerRecord(this.stateDir);
    // A read that fails (EIO, EMFILE, ENOSPC) proves nobody else took the root: keep it, and let the
    // write that follows fail on its own and be reported. Anything else at the name (another record,
    // a link, a FIFO) no longer names us, and a second upgrader would take the root: let it go.
    if ('unreadable' in read) return true;
    const owner = read.record;
    return owner !== null && owner.pid === this.self.pid && owner.startTicks === this.self.startTicks;
  }

  release(): void {
    if (this.readOnly || !this.confirm()) return;
    try {
      rmSync(ownerPath(this.stateDir), { force: true });
    } catch {
      // A record left behind names a dead process, which the next start recognises.
    }
  }
}
