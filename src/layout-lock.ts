/**
 * The layout lock: held by whatever adds or removes versions (install's final rename, prune), so that prune
 * cannot remove a version that an install is putting in place, nor two commands race each other.
 *
 * It is a claim by a live process (process-claim.ts), like the root's ownership: state/layout.holder names
 * the holder (PID, start time, boot id, and the command), written under a short lock (state/layout.lock).
 */
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import { UpgraderError } from './errors.js';
import type { Layout } from './layout.js';
import { ProcessIdentity } from './proc.js';
import { claim, ClaimLockError, releaseClaim, type ClaimSpec } from './process-claim.js';

/** How long a command waits for another one's claim before it gives up (exit 75). */
export const LAYOUT_WAIT_MS = 15_000;
const POLL_MS = 100;

const Holder = ProcessIdentity.extend({ startedAt: z.string(), command: z.string() });
type Holder = z.infer<typeof Holder>;

const holderSpec = (stateDir: string): ClaimSpec<Holder> => ({
  stateDir,
  record: 'layout.holder',
  lock: 'layout.lock',
  schema: Holder,
  stale: 10_000,
  retries: { retries: 50, minTimeout: 20, maxTimeout: 100 },
});

export async function withLayoutLock<T>(layout: Layout, command: string, work: () => T | Promise<T>): Promise<T> {
  const spec = holderSpec(layout.stateDir);
  const deadline = performance.now() + LAYOUT_WAIT_MS;
  for (;;) {
    const other = await claimLayout(layout, spec, command);
    if (other === null) break;
    if (performance.now() > deadline) {
      throw new UpgraderError('E_LOCKED', `The versions of ${layout.root} are being changed by another command (${other.command}, PID ${other.pid}, since ${other.startedAt}); try again once it is done.`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  try {
    return await work();
  } finally {
    releaseClaim(spec);
  }
}

/** Claims the layout for this process; returns the live holder that has it instead, or null once claimed. */
async function claimLayout(layout: Layout, spec: ClaimSpec<Holder>, command: string): Promise<Holder | null> {
  try {
    return await claim(spec, { startedAt: new Date().toISOString(), command });
  } catch (error) {
    throw error instanceof ClaimLockError ? lockError(layout, error.cause) : error;
  }
}

function lockError(layout: Layout, error: unknown): UpgraderError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ELOCKED') return new UpgraderError('E_LOCKED', `The versions of ${layout.root} are being changed by another command (state/layout.lock); try again.`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM') {
    return new UpgraderError('E_PERMISSION', `Not allowed to change the versions of ${layout.root} (${code} on its state/ directory); run the command as the root's owner.`, { cause: error });
  }
  return new UpgraderError('E_IO', `Cannot lock the versions of ${layout.root} (${code ?? String(error)}).`, { cause: error });
}
