/**
 * Quarantined versions: a version whose candidate failed, or which was rolled back in probation, is
 * marked in <root>/state/quarantine/<version>.json, and an agent's request for it is refused, so that an
 * agent cannot loop on a broken release. Re-installing the version (`upgrader install`) lifts it.
 * One file per version: marking and lifting are each a single atomic step, with no lock to share.
 */
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { replaceFileAtomically } from './durable.js';
import { readRecord } from './safe-file.js';

const Entry = z.object({ version: z.string(), reason: z.string(), at: z.string() });
export type QuarantineEntry = z.infer<typeof Entry>;

export class Quarantine {
  readonly dir: string;
  constructor(stateDir: string) {
    this.dir = join(stateDir, 'quarantine');
  }

  add(version: string, reason: string): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    replaceFileAtomically(join(this.dir, `${version}.json`), `${JSON.stringify({ version, reason, at: new Date().toISOString() })}\n`);
  }

  lift(version: string): boolean {
    const path = join(this.dir, `${version}.json`);
    const had = this.get(version) !== null;
    rmSync(path, { force: true });
    return had;
  }

  /** The version's record; anything but a regular file holding one (a link, a FIFO) is no record. */
  get(version: string): QuarantineEntry | null {
    const entry = readRecord(join(this.dir, `${version}.json`), Entry);
    return entry?.version === version ? entry : null;
  }

  list(): QuarantineEntry[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return [];
    }
    return names.filter((n) => n.endsWith('.json') && !n.startsWith('.')).flatMap((n) => this.get(n.slice(0, -'.json'.length)) ?? []);
  }
}
