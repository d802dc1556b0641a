/**
 * Start-up: brings a root back to a known state after whatever happened to the previous upgrader, then
 * starts the supervisor with the active agent. An open handoff is always undone: its candidate never
 * finished proving itself under an upgrader that saw it through, so the version it replaced runs again.
 */
import { describeError, UpgraderError } from './errors.js';
import type { Config, Probation } from './handoff.js';
import type { Layout } from './layout.js';
import type { Logger } from './log.js';
import type { SystemdNotifier } from './notify.js';
import type { Ownership } from './ownership.js';
import { reapOrphans } from './reaper.js';
import { Records } from './records.js';
import { withUpgrade, type PersistedState, type Repair, type StateFile } from './state.js';
import { Supervisor, type SupervisorEnv } from './supervisor.js';
import { SystemdStatus } from './systemd-status.js';

export type StartOptions = {
  layout: Layout;
  stateFile: StateFile;
  ownership: Ownership;
  config: Config;
  log: Logger;
  notifier: SystemdNotifier;
  readyOnSpawn: boolean;
  env?: SupervisorEnv;
};

export async function startSupervisor(options: StartOptions): Promise<Supervisor> {
  const { layout, stateFile, log } = options;
  for (const path of layout.removeStaleTemporaries()) log.warn({ path, removedLeftover: true }, 'removed a temporary file left by a crash');

  const read = stateFile.read();
  if (!read.ok && !read.missing) log.error({ problem: read.problem, path: stateFile.path, stateFileIgnored: true }, 'ignoring the state file; falling back to what current says');
  const saved = read.ok ? read.state : null;

  await reapOrphans(layout.root, saved?.agents ?? [], log);

  let history = saved?.history ?? [];
  let probation: Probation | null = saved?.probation ?? null;
  let chosen: { version: string; repair: Repair | null };
  if (saved?.handoff) {
    const h = saved.handoff;
    const reason = `the upgrader stopped during the handoff (phase ${h.phase}); ${h.from} was started again`;
    if (layout.launchProblem(h.from) === null) {
      chosen = { version: h.from, repair: null };
      tryCommit(layout, h.from, log);
    } else {
      chosen = chooseVersion(layout, saved, log);
    }
    const durationMs = Math.max(0, Date.now() - Date.parse(h.startedAt));
    history = withUpgrade(history, { from: h.from, to: h.to, mode: h.mode, result: 'failed', reason, code: 'interrupted', startedAt: h.startedAt, at: new Date().toISOString(), durationMs });
    log.warn({ from: h.from, to: h.to, phase: h.phase }, 'recovered an interrupted handoff: rolled back');
    probation = null;
  } else {
    chosen = chooseVersion(layout, saved, log);
  }
  const version = chosen.version;
  if (probation && probation.version !== version) probation = null;

  const records = new Records(layout, stateFile, options.ownership, log, { history, current: version, repair: chosen.repair ?? saved?.repair ?? null });
  const supervisor = new Supervisor({ layout, records, config: options.config, log, systemd: new SystemdStatus(options.notifier), readyOnSpawn: options.readyOnSpawn, env: options.env });
  // A probation after an upgrade from halted keeps that halt: if `current` is back on the version before it
  // (the probation failed and the upgrader died before writing so), the root is halted again, never running it.
  const failedFromHalt = saved?.probation?.halt && saved.probation.version !== version ? { ...saved.probation.halt, reason: `the upgrader stopped while ${saved.probation.version} was going back from its probation` } : null;
  const halt = saved?.halt ?? failedFromHalt;
  if (halt) log.warn({ halt }, `the root is halted since ${halt.since} (asked by ${halt.by}): no agent is started until upgrader resume or upgrade`);
  supervisor.dispatch({ type: 'start', version, previous: saved?.previous ?? null, probation: halt ? null : probation, halt });
  await supervisor.operator.open();
  return supervisor;
}

/**
 * The version to launch: what `current` says, if it can run. If not, the host is not bricked while a good
 * version is on disk: the first runnable one of the state's `current`, its `previous`, then every version
 * the history shows running, newest first. `current` is repaired to it, loudly, and the repair recorded.
 * Only when none of them can run does the upgrader refuse to start (78).
 */
function chooseVersion(layout: Layout, saved: PersistedState | null, log: Logger): { version: string; repair: Repair | null } {
  const current = layout.readCurrent();
  const problem = 'version' in current ? layout.launchProblem(current.version) : current.problem;
  if (problem === null && 'version' in current) return { version: current.version, repair: null };
  const known = [saved?.current, saved?.previous, ...(saved?.history ?? []).flatMap((u) => (u.result === 'succeeded' ? [u.to, u.from] : [u.from]))];
  const fallback = [...new Set(known)].find((v): v is string => typeof v === 'string' && layout.launchProblem(v) === null);
  if (!fallback) throw new UpgraderError('E_CURRENT', `Nothing to launch: ${problem}, and no version the state file names as having run can run.`);
  const repair: Repair = { at: new Date().toISOString(), problem: problem ?? 'current is unusable', version: fallback };
  log.error({ problem, version: fallback, repaired: true }, `current cannot be run (${problem}); running ${fallback}, the last version known to have run, and pointing current at it`);
  tryCommit(layout, fallback, log);
  return { version: fallback, repair };
}

/**
 * Points `current` at a version during recovery. If that cannot be written (read-only or full disk, or a
 * real directory squats the name), the version is launched anyway, from versions/<v> as always: `current`
 * is never removed blindly, and the next start tries again.
 */
function tryCommit(layout: Layout, version: string, log: Logger): void {
  try {
    layout.commitCurrent(version);
  } catch (error) {
    log.error({ version, err: describeError(error), repointed: false }, `current could not be pointed at ${version}; running it anyway`);
  }
}
