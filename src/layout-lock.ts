/**
 * The layout lock: held by whatever adds or removes versions (install's final rename, prune), so that
 * prune cannot remove a version that an install is putting in place, nor two commands race each other.
 * proper-lockfile, in <root>/state/layout.lock; a holder that dies leaves a lock that goes stale in 10 s.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import { UpgraderError } from './errors.js';
import type { Layout } from './layout.js';

export async function withLayoutLock<T>(layout: Layout, work: () => T | Promise<T>): Promise<T> {
  mkdirSync(layout.stateDir, { recursive: true, mode: 0o755 });
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(layout.stateDir, {
      lockfilePath: join(layout.stateDir, 'layout.lock'),
      realpath: false,
      stale: 10_000,
      retries: { retries: 100, minTimeout: 50, maxTimeout: 200 },
    });
  } catch (error) {
    throw new UpgraderError('E_LOCKED', `The versions of ${layout.root} are being changed by another command (state/layout.lock); try again.`, { cause: error });
  }
  try {
    return await work();
  } finally {
    await release().catch(() => undefined);
  }
}
