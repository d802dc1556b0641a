/**
 * The installed versions of a root, for `upgrader versions` and `upgrader prune`.
 *
 * Order, newest first: by semantic version when every name is one (semver), otherwise by install time
 * (when versions/<v> was renamed into place: the directory's ctime).
 */
import { lstatSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import semver from 'semver';
import { fsyncDirectory } from './durable.js';
import type { Layout } from './layout.js';
import { versionNameProblem } from './layout.js';
import { withLayoutLock } from './layout-lock.js';
import { UpgraderError } from './errors.js';
import { assertRemovable, removeTree } from './remove-tree.js';
import { findLiveProcesses } from './proc.js';
import { Quarantine } from './quarantine.js';
import { StateFile } from './state.js';

export type Marker = 'current' | 'previous' | 'running' | 'candidate' | 'retiring' | 'quarantined';

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

/**
 * The versions that must not be removed, and why: what `current` names (its link text, whether or not that
 * version is complete), what the state file names (current, previous, an open handoff's two ends, probation,
 * the recorded agents) and what the root's live agent processes run. It depends on nothing else: not on who
 * asks, nor on whether a version looks safe to that caller. A state file that cannot be read protects
 * nothing it would have named, so it stops the caller instead.
 */
export function protectedVersions(layout: Layout, { lenient = false } = {}): Map<string, Marker[]> {
  const found = new Map<string, Marker[]>();
  const mark = (version: string | null | undefined, marker: Marker) => {
    if (!version) return;
    const markers = found.get(version) ?? [];
    if (!markers.includes(marker)) found.set(version, [...markers, marker]);
  };
  mark(layout.currentLinkVersion(), 'current');
  const read = new StateFile(layout.stateDir).read();
  if (!read.ok && !read.missing && !lenient) {
    throw new UpgraderError('E_STATE', `Cannot tell which versions are in use: ${read.problem} (${layout.stateDir}/state.json). Nothing was removed; the running upgrader rewrites the file at its next change.`);
  }
  if (read.ok) {
    const state = read.state;
    mark(state.current, 'current');
    mark(state.previous, 'previous');
    mark(state.handoff?.from, 'running');
    mark(state.handoff?.to, 'candidate');
    mark(state.probation?.version, 'running');
    mark(state.probation?.from, 'previous');
    for (const agent of state.agents) mark(agent.version, agent.role === 'active' ? 'running' : agent.role);
  }
  for (const version of versionsRunningIn(layout.root)) mark(version, 'running');
  return found;
}

/** What the live processes carrying this root's agent marker run (those this user may read). */
function versionsRunningIn(root: string): string[] {
  const versions: string[] = [];
  for (const pid of findLiveProcesses({ environment: [`UPGRADER_ROOT=${root}`, 'UPGRADER_AGENT_ID='] })) {
    try {
      const entry = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').find((e) => e.startsWith('UPGRADER_VERSION='));
      if (entry) versions.push(entry.slice('UPGRADER_VERSION='.length));
    } catch {
      // gone since
    }
  }
  return versions;
}

/** What `versions` shows: it lists even when the state file cannot be read (then only `current` and the live agents mark). */
function markersOf(layout: Layout, lenient: boolean): Map<string, Marker[]> {
  const markers = protectedVersions(layout, { lenient });
  for (const entry of new Quarantine(layout.stateDir).list()) markers.set(entry.version, [...(markers.get(entry.version) ?? []), 'quarantined']);
  return markers;
}

export function listVersions(layout: Layout, { forPrune = false } = {}): VersionInfo[] {
  const markers = markersOf(layout, !forPrune);
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
 * Keeps the newest `keep` versions that are not quarantined, and those in use (see protectedVersions); removes
 * the rest, quarantined versions included. Holds the layout lock throughout, so it cannot race an install. A
 * handoff is not locked out: instead each version is first renamed away (gone in one step), then what is in
 * use is read again; a version that a handoff took up in the meantime is renamed back and kept. A handoff that starts later finds the version gone and is refused.
 * A crash leaves only the temporary name, which the next install or run removes.
 */
export async function pruneVersions(layout: Layout, keep: number, dryRun: boolean): Promise<PruneResult> {
  return withLayoutLock(layout, 'prune', () => {
    const result: PruneResult = { removed: [], kept: [], dryRun };
    const doomed: string[] = [];
    // The slots go to good versions, newest first: a quarantined version is one nobody may upgrade to, so it
    // must not push a working version out; it stays only while something uses it.
    let good = 0;
    for (const info of listVersions(layout, { forPrune: true })) {
      const quarantined = info.markers.includes('quarantined');
      const protecting = info.markers.filter((m) => m !== 'quarantined');
      const slot = !quarantined && good++ < keep;
      if (protecting.length > 0) result.kept.push({ version: info.version, why: protecting.join(', ') });
      else if (slot) result.kept.push({ version: info.version, why: `among the newest ${keep} not quarantined` });
      else doomed.push(info.version);
    }
    if (dryRun) return { ...result, removed: doomed };
    for (const version of doomed) {
      const kept = removeUnlessTakenUp(layout, version);
      if (kept) result.kept.push({ version, why: `${kept.join(', ')} (taken up while prune ran)` });
      else result.removed.push(version);
    }
    return result;
  });
}

/** Renames `version` away, then keeps it (returning why) if it is in use after all, else deletes it. */
function removeUnlessTakenUp(layout: Layout, version: string): Marker[] | null {
  const live = join(layout.versionsDir, version);
  const away = join(layout.versionsDir, `.${version}.tmp-${process.pid}-prune`);
  assertRemovable(live);
  renameSync(live, away);
  fsyncDirectory(layout.versionsDir);
  let inUse: Marker[] | undefined;
  try {
    inUse = protectedVersions(layout).get(version);
  } catch (error) {
    renameSync(away, live);
    throw error;
  }
  if (inUse) {
    renameSync(away, live);
    fsyncDirectory(layout.versionsDir);
    return inUse;
  }
  removeTree(away);
  return null;
}
