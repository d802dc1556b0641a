/**
 * Only one `upgrader run` may own a root. The owner is recorded in <root>/state/owner.json as a process
 * identity (PID, start time, boot id). A root is taken only when no live process matches that record,
 * so an owner that is merely stopped (SIGSTOP) or slow is never displaced, however long it stays so.
 *
 * The check-and-claim is made atomic between contenders with proper-lockfile, held only for that step:
 * no lock is held while running, so an idle upgrader has no lock to refresh and never wakes up.
 * Before each durable change the owner confirms the record still names it (see `confirm`): if anything
 * has replaced it, the upgrader stops touching the root at once.
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import { z } from 'zod';
import { UpgraderError } from './errors.js';
import { replaceFileAtomically } from './durable.js';
import { identify, isSameProcessAlive, type ProcessIdentity } from './proc.js';

const OwnerRecord = z.object({
  pid: z.number().int().positive(),
  startTicks: z.number().int().nonnegative(),
  bootId: z.string(),
  startedAt: z.string(),
});
export type OwnerRecord = z.infer<typeof OwnerRecord>;

export function ownerPath(stateDir: string): string {
  return join(stateDir, 'owner.json');
}

export function readOwner(stateDir: string): OwnerRecord | null {
  try {
    const parsed = OwnerRecord.safeParse(JSON.parse(readFileSync(ownerPath(stateDir), 'utf8')));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** The recorded owner, if it is still alive. */
export function liveOwner(stateDir: string): OwnerRecord | null {
  const owner = readOwner(stateDir);
  return owner && isSameProcessAlive(owner) ? owner : null;
}

export class Ownership {
  private constructor(
    private readonly stateDir: string,
    readonly self: ProcessIdentity,
  ) {}

  static async acquire(stateDir: string): Promise<Ownership> {
    mkdirSync(stateDir, { recursive: true, mode: 0o755 });
    let release: () => Promise<void>;
    try {
      release = await lockfile.lock(stateDir, {
        lockfilePath: join(stateDir, 'takeover.lock'),
        realpath: false,
        stale: 5000,
        retries: { retries: 40, minTimeout: 25, maxTimeout: 250 },
      });
    } catch (error) {
      throw new UpgraderError('E_LOCKED', `Another upgrader is taking over ${stateDir} right now; try again.`, { cause: error });
    }
    try {
      const owner = liveOwner(stateDir);
      if (owner) {
        throw new UpgraderError('E_LOCKED', `Another upgrader (PID ${owner.pid}, started ${owner.startedAt}) already runs on this root; leaving it alone.`);
      }
      const self = identify(process.pid);
      if (!self) throw new UpgraderError('E_INTERNAL', 'Cannot read this process from /proc; the upgrader needs Linux /proc.');
      const record: OwnerRecord = { ...self, startedAt: new Date().toISOString() };
      replaceFileAtomically(ownerPath(stateDir), `${JSON.stringify(record)}\n`);
      return new Ownership(stateDir, self);
    } finally {
      await release().catch(() => undefined);
    }
  }

  /** True while the owner record still names this process. */
  confirm(): boolean {
    const owner = readOwner(this.stateDir);
    return owner !== null && owner.pid === this.self.pid && owner.startTicks === this.self.startTicks;
  }

  release(): void {
    if (this.confirm()) rmSync(ownerPath(this.stateDir), { force: true });
  }
}
