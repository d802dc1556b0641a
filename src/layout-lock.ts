/**
 * The layout lock: held by whatever adds or removes versions (install's final rename, prune), so that prune
 * cannot remove a version that an install is putting in place, nor two commands race each other.
 *
 * It is a claim by a live process, like the root's ownership (ownership.ts): state/layout.holder names the
 * holder (PID, start time, boot id), written under a short proper-lockfile lock (state/layout.lock) so that
 * two claims cannot interleave. The claim lasts exactly as long as its holder lives, however long its work
 * takes and however busy or stopped its event loop: there is nothing to refresh and nothing to go stale.
 * A holder that dies leaves a record naming a dead process, which the next claim replaces.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import lockfile from 'proper-lockfile';
import { z } from 'zod';
import { replaceFileAtomically } from './durable.js';
import { UpgraderError } from './errors.js';
import type { Layout } from './layout.js';
import { identify, isSameProcessAlive, ProcessIdentity } from './proc.js';
import { readRecord } from './safe-file.js';

/** How long a command waits for another one's claim before it gives up (exit 75). */
export const LAYOUT_WAIT_MS = 15_000;
const POLL_MS = 100;

const Holder = ProcessIdentity.extend({ startedAt: z.string(), command: z.string() });
type Holder = z.infer<typeof Holder>;

const holderPath = (stateDir: string) => join(stateDir, 'layout.holder');

export async function withLayoutLock<T>(layout: Layout, command: string, work: () => T | Promise<T>): Promise<T> {
  const deadline = performance.now() + LAYOUT_WAIT_MS;
  for (;;) {
    const other = await claim(layout, command);
    if (other === null) break;
    if (performance.now() > deadline) {
      throw new UpgraderError('E_LOCKED', `The versions of ${layout.root} are being changed by another command (${other.command}, PID ${other.pid}, since ${other.startedAt}); try again once it is done.`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  try {
    return await work();
  } finally {
    release(layout.stateDir);
  }
}

/** Claims the layout for this process; returns the live holder that has it instead, or null once claimed. */
async function claim(layout: Layout, command: string): Promise<Holder | null> {
  const stateDir = layout.stateDir;
  let unlock: () => Promise<void>;
  try {
    mkdirSync(stateDir, { recursive: true, mode: 0o755 });
    unlock = await lockfile.lock(stateDir, {
      lockfilePath: join(stateDir, 'layout.lock'),
      realpath: false,
      stale: 10_000,
      retries: { retries: 50, minTimeout: 20, maxTimeout: 100 },
      // Held for milliseconds; if it ever went stale, the holder record below still decides.
      onCompromised: () => undefined,
    });
  } catch (error) {
    throw lockError(layout, error);
  }
  try {
    const holder = readHolder(stateDir);
    if (holder && holder.pid !== process.pid && isSameProcessAlive(holder)) return holder;
    const self = identify(process.pid);
    if (!self) throw new UpgraderError('E_INTERNAL', 'Cannot read this process from /proc; the upgrader needs Linux /proc.');
    replaceFileAtomically(holderPath(stateDir), `${JSON.stringify({ ...self, startedAt: new Date().toISOString(), command })}\n`);
    return null;
  } finally {
    await unlock().catch(() => undefined);
  }
}

function readHolder(stateDir: string): Holder | null {
  return readRecord(holderPath(stateDir), Holder);
}

function release(stateDir: string): void {
  if (readHolder(stateDir)?.pid !== process.pid) return;
  try {
    rmSync(holderPath(stateDir), { force: true });
  } catch {
    // A record left behind names a dead process once we exit, which the next claim replaces.
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
