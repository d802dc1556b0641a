/**
 * The installed versions of a root, for `upgrader versions` and `upgrader prune`.
 *
 * Order, newest first: by semantic version when every name is one (semver), otherwise by install time
 * (when versions/<v> was renamed into place: the directory's ctime).
 */
import { lstatSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import semver from 'semver';
import { fsyncDirectory } from './durable.js';
import type { Layout } from './layout.js';
import { versionNameProblem } from './layout.js';
import { withLayoutLock } from './layout-lock.js';
import { readStatus } from './status.js';

export type Marker = 'current' | 'previous' | 'running' | 'candidate' | 'quarantined';

export type VersionInfo = {
  version: string;
  installedAt: string;
  sizeBytes: number;
  complete: boolean;
  problem: string | null;
  markers: Marker[];
};

function sizeOf(path: string): number {
  const stat = lstatSync(path);
  if (!stat.isDirectory()) return stat.size;
  return readdirSync(path).reduce((sum, name) => sum + sizeOf(join(path, name)), 0);
}

function markersOf(layout: Layout): Map<string, Marker[]> {
  const report = readStatus(layout);
  const markers = new Map<string, Marker[]>();
  const mark = (version: string | null | undefined, marker: Marker) => {
    if (version) markers.set(version, [...(markers.get(version) ?? []), marker]);
  };
  mark(report.current, 'current');
  mark(report.previous, 'previous');
  mark(report.agent?.version, 'running');
  mark(report.candidate?.version, 'candidate');
  for (const entry of report.quarantined) mark(entry.version, 'quarantined');
  return markers;
}

export function listVersions(layout: Layout): VersionInfo[] {
  const markers = markersOf(layout);
  const infos = readdirSync(layout.versionsDir)
    .filter((name) => versionNameProblem(name) === null && lstatSync(join(layout.versionsDir, name)).isDirectory())
    .map((version): VersionInfo => {
      const dir = join(layout.versionsDir, version);
      const problem = layout.versionProblem(version);
      return {
        version,
        installedAt: lstatSync(dir).ctime.toISOString(),
        sizeBytes: sizeOf(dir),
        complete: problem === null,
        problem,
        markers: markers.get(version) ?? [],
      };
    });
  return newestFirst(infos);
}

export function newestFirst(infos: VersionInfo[]): VersionInfo[] {
  const allSemver = infos.every((info) => semver.valid(info.version) !== null);
  return [...infos].sort((a, b) =>
    allSemver ? semver.rcompare(a.version, b.version) : b.installedAt.localeCompare(a.installedAt) || b.version.localeCompare(a.version),
  );
}

export type PruneResult = { removed: string[]; kept: { version: string; why: string }[]; dryRun: boolean };

/**
 * Removes the versions beyond the newest `keep`, except those marked current, previous, running or
 * candidate. Holds the layout lock throughout, so it cannot race an install. Each version is first
 * renamed to a temporary name (gone in one step), then deleted; a crash leaves only that temporary.
 */
export async function pruneVersions(layout: Layout, keep: number, dryRun: boolean): Promise<PruneResult> {
  return withLayoutLock(layout, () => {
    const result: PruneResult = { removed: [], kept: [], dryRun };
    for (const [index, info] of listVersions(layout).entries()) {
      const protecting = info.markers.filter((m) => m !== 'quarantined');
      if (protecting.length > 0) result.kept.push({ version: info.version, why: protecting.join(', ') });
      else if (index < keep) result.kept.push({ version: info.version, why: `among the newest ${keep}` });
      else result.removed.push(info.version);
    }
    if (dryRun) return result;
    for (const version of result.removed) {
      const doomed = join(layout.versionsDir, `.${version}.tmp-${process.pid}-prune`);
      renameSync(join(layout.versionsDir, version), doomed);
      fsyncDirectory(layout.versionsDir);
      rmSync(doomed, { recursive: true, force: true });
    }
    return result;
  });
}
