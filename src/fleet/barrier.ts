/**
 * A barrier rollout: for a release whose old and new versions cannot run side by side anywhere in the
 * fleet (a schema or a wire format the old one cannot read). Phases, each recorded in the rollout record
 * before it starts, so that `fleet rollout --resume` carries on from the recorded one after the rollout
 * command, a follower or etcd was killed:
 *
 *   stage    every host of the plan downloads and installs the release (no switch); a failure halts the
 *            rollout with nothing changed anywhere
 *   barrier  every host but the offline ones has staged: the rollout waits for those, listed by name,
 *            until they stage or the operator goes on without them (--exclude)
 *   halt     every host halts its agent (`upgrader halt`); the rollout waits until all are halted
 *   migrate  the --migrate command runs once, here, on the rollout command's machine; its start and end
 *            are recorded, so that it never starts twice unless the operator says so (--rerun-migration)
 *   switch   every host starts the new version from halted, wave by wave (rollout.ts), as a rolling
 *            rollout would; a failure leaves that host halted and halts the rollout
 *
 * The point of no return is the migration's start (or the switch, without a migration): before it, an
 * abort resumes every host on its old version; after it, hosts stay halted.
 *
 * The followers do the hosts' part (follower.ts followBarrier); this module moves the phases on, and
 * runs only in the rollout command.
 */
import { spawn } from 'node:child_process';
import { constants, hostname } from 'node:os';
import type { Watcher } from 'etcd3';
import { FleetError } from './errors.js';
import { knownHosts, readPlan, runsOf } from './rollout.js';
import { isActive, KEYS, type Barrier, type BarrierPhase, type Migration, type Rollout, type Run } from './schema.js';
import type { FleetStore } from './store.js';

import { pastNoReturn } from './barrier-phase.js';

export type BarrierEvents = {
  /** A phase began (recorded). */
  phase(phase: BarrierPhase, rollout: Rollout): void;
  /** The rollout waits on these hosts (online ones still working, offline ones holding the barrier). */
  waiting(phase: BarrierPhase, hosts: { host: string; online: boolean; lastSeen: string | null }[]): void;
  /** The migration command started or ended. */
  migration(migration: Migration): void;
};

export type DriveOptions = { rerunMigration: boolean; events: BarrierEvents; signal?: AbortSignal };

/**
 * Moves a barrier rollout through its phases until its switch has begun or it ended; returns the record
 * then. Anything that is not this command's to decide (a failure, a pause, an abort) is read from etcd.
 */
export async function driveBarrier(store: FleetStore, id: string, o: DriveOptions): Promise<Rollout> {
  const changes = await Changes.open(store, [KEYS.ctlPrefix, KEYS.runPrefix(id), KEYS.presencePrefix]);
  let lastWaiting = '';
  try {
    for (;;) {
      const { rollout: read } = await store.control();
      const rollout = read.value;
      if (!rollout || rollout.id !== id || !rollout.barrier) throw new FleetError('no-rollout', `Rollout ${id} is no longer the fleet's rollout: another replaced it.`);
      const barrier = rollout.barrier;
      if (barrier.phase === 'switch' || rollout.state === 'succeeded' || rollout.state === 'aborted') return rollout;
      if (rollout.state === 'halted' && !(barrier.phase === 'migrate' && o.rerunMigration)) return rollout;
      if (rollout.state === 'paused') {
        await changes.next(o.signal);
        continue;
      }
      const next = await nextStep(store, rollout, barrier, o);
      if (next === 'wait') {
        const waiting = await waitingOn(store, rollout, barrier);
        const key = JSON.stringify(waiting);
        if (key !== lastWaiting) o.events.waiting(barrier.phase, waiting);
        lastWaiting = key;
        await changes.next(o.signal);
        continue;
      }
      lastWaiting = '';
      if (await store.swapRollout(read.mod, next)) {
        if (next.barrier!.phase !== barrier.phase) o.events.phase(next.barrier!.phase, next);
        const started = next.barrier!.migration;
        if (started && started !== barrier.migration && started.endedAt === null) {
          // This command recorded a start: --rerun-migration is spent, whichever run it was.
          o.rerunMigration = false;
          o.events.migration(started);
          await runMigration(store, next, started, o);
        }
      }
    }
  } finally {
    await changes.close();
  }
}

/** The record the rollout moves to next, or `wait` while hosts are still at their part of the phase. */
async function nextStep(store: FleetStore, rollout: Rollout, barrier: Barrier, o: DriveOptions): Promise<Rollout | 'wait'> {
  const at = new Date().toISOString();
  const move = (phase: BarrierPhase, change: Partial<Barrier> = {}, state: Partial<Rollout> = {}): Rollout => ({ ...rollout, ...state, barrier: { ...barrier, ...change, phase }, updatedAt: at });
  if (barrier.phase === 'migrate') return migrateStep(rollout, barrier, o, move);
  const runs = await planRuns(store, rollout, barrier);
  if (barrier.phase === 'stage' || barrier.phase === 'barrier') {
    const missing = runs.filter((r) => r.run === null).map((r) => r.host);
    if (missing.length === 0) return move('halt');
    if (barrier.phase === 'stage') {
      const { online } = await knownHosts(store);
      const present = new Set(online.map((h) => h.host));
      // Only offline hosts left: the barrier now waits for them (fleet status lists them).
      if (missing.every((h) => !present.has(h))) return move('barrier');
    }
    return 'wait';
  }
  // halt
  if (!runs.every((r) => r.run?.state === 'halted')) return 'wait';
  if (barrier.command === null) return move('switch');
  return move('migrate', { migration: { by: `${hostname()} pid ${process.pid}`, startedAt: at, endedAt: null, exitCode: null, runs: 1 } });
}

function migrateStep(rollout: Rollout, barrier: Barrier, o: DriveOptions, move: (phase: BarrierPhase, change?: Partial<Barrier>, state?: Partial<Rollout>) => Rollout): Rollout | 'wait' {
  const m = barrier.migration!;
  if (m.endedAt !== null && m.exitCode === 0) return move('switch');
  const interrupted = m.endedAt === null;
  if (!o.rerunMigration) {
    if (interrupted) {
      throw new FleetError('migration-interrupted', `The migration started at ${m.startedAt} on ${m.by} and its end was never recorded: the rollout command was killed while it ran, so it may have run in part. Every host stays halted. Check what it did, then run fleet rollout --resume --rerun-migration to run it again, or fleet abort (hosts stay halted).`);
    }
    throw new FleetError('migration-failed', `The migration exited with status ${m.exitCode} at ${m.endedAt}; every host stays halted. Fix the cause, then run fleet rollout --resume --rerun-migration, or fleet abort (hosts stay halted).`);
  }
  // Asked to run it again: once, by this command (the flag is spent once the new start is recorded).
  const at = new Date().toISOString();
  return move('migrate', { migration: { by: `${hostname()} pid ${process.pid}`, startedAt: at, endedAt: null, exitCode: null, runs: m.runs + 1 } }, { state: 'running', reason: null });
}

/** Runs the --migrate command (its start, `mine`, is on record already) and records its end; a failure halts the rollout. */
async function runMigration(store: FleetStore, rollout: Rollout, mine: Migration, o: DriveOptions): Promise<void> {
  const barrier = rollout.barrier!;
  const exitCode = await runCommand(barrier.command!, {
    UPGRADER_FLEET: store.prefix,
    UPGRADER_FROM_VERSION: rollout.previousDesired ?? (await mostRunFrom(store, rollout)),
    UPGRADER_TO_VERSION: rollout.to!,
  });
  const endedAt = new Date().toISOString();
  // The end must reach etcd: the migration ran, and a resume must not think it was cut short.
  for (let delay = 250; ; delay = Math.min(5000, delay * 2)) {
    try {
      const { rollout: read } = await store.control();
      const current = read.value;
      const recorded = current?.barrier?.migration;
      // Only the run this command started: another command may have recorded a rerun since.
      if (!current || current.id !== rollout.id || !recorded || recorded.startedAt !== mine.startedAt || recorded.runs !== mine.runs) {
        o.events.migration({ ...mine, endedAt, exitCode });
        return;
      }
      const migration: Migration = { ...recorded, endedAt, exitCode };
      // A rollout aborted meanwhile stays aborted; an active one halts on a failure.
      const failed = exitCode !== 0 && isActive(current.state);
      const next: Rollout = {
        ...current,
        barrier: { ...current.barrier!, migration },
        ...(failed && { state: 'halted' as const, reason: `the migration exited with status ${exitCode}; every host stays halted` }),
        updatedAt: endedAt,
      };
      if (await store.swapRollout(read.mod, next)) {
        o.events.migration(migration);
        return;
      }
    } catch {
      // etcd away: try again, the result is only in this process.
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** With no desired version yet (the fleet's first rollout), the version most hosts ran when they staged. */
async function mostRunFrom(store: FleetStore, rollout: Rollout): Promise<string> {
  const counts = new Map<string, number>();
  for (const run of (await runsOf(store, rollout.id)).values()) if (run.from) counts.set(run.from, (counts.get(run.from) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '';
}

function runCommand(command: string, env: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    // Its output goes to stderr: stdout stays the command's own (--json).
    // In its own process group: a Ctrl-C meant for this command must not cut the migration short; the
    // command waits for it and records its end (a second Ctrl-C, or SIGKILL, leaves its end unrecorded).
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 2, 2], env: { ...process.env, ...env }, detached: true });
    const onInterrupt = () => process.stderr.write('upgrader: the migration is running; waiting for it to end so that its end is recorded (Ctrl-C again to leave it unrecorded)\n');
    process.once('SIGINT', onInterrupt);
    child.on('error', () => resolve(127));
    child.on('exit', (code, signal) => {
      process.removeListener('SIGINT', onInterrupt);
      resolve(code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0));
    });
  });
}

type PlanRun = { host: string; run: Run | null };

/** Every host of the plan but the excluded ones, with its run record (null: nothing yet). */
async function planRuns(store: FleetStore, rollout: Rollout, barrier: Barrier): Promise<PlanRun[]> {
  const [plan, runs] = await Promise.all([readPlan(store, rollout.id), runsOf(store, rollout.id)]);
  const excluded = new Set(barrier.excluded);
  return plan.groups.flatMap((g) => g.waves.flat()).filter((h) => !excluded.has(h)).map((host) => ({ host, run: runs.get(host) ?? null }));
}

/** The hosts the current phase waits on, with whether they are online and when they last reported. */
async function waitingOn(store: FleetStore, rollout: Rollout, barrier: Barrier): Promise<{ host: string; online: boolean; lastSeen: string | null }[]> {
  const [runs, known] = await Promise.all([planRuns(store, rollout, barrier), knownHosts(store)]);
  const wanted = barrier.phase === 'halt' ? (r: PlanRun) => r.run?.state !== 'halted' : (r: PlanRun) => r.run === null;
  const online = new Map(known.online.map((h) => [h.host, h.reportedAt]));
  const offline = new Map(known.offline.map((h) => [h.host, h.reportedAt]));
  return runs.filter(wanted).map(({ host }) => ({ host, online: online.has(host), lastSeen: online.get(host) ?? offline.get(host) ?? null }));
}

/** `--exclude` on a running barrier rollout: these hosts no longer hold it (recorded before the barrier is judged again). */
export async function excludeHosts(store: FleetStore, id: string, hosts: string[]): Promise<void> {
  if (hosts.length === 0) return;
  for (;;) {
    const { rollout: read } = await store.control();
    const rollout = read.value;
    if (!rollout || rollout.id !== id || !rollout.barrier) throw new FleetError('no-rollout', `Rollout ${id} is not a barrier rollout of this fleet.`);
    if (pastNoReturn(rollout.barrier)) throw new FleetError('wrong-state', `Rollout ${id} is past its barrier (${rollout.barrier.phase}): hosts can only be excluded before the migration.`);
    const excluded = [...new Set([...rollout.barrier.excluded, ...hosts])].sort();
    if (await store.swapRollout(read.mod, { ...rollout, barrier: { ...rollout.barrier, excluded }, updatedAt: new Date().toISOString() })) return;
  }
}

/** Wakes a waiting command on any change under the given prefixes: one watcher each for the whole wait. */
class Changes {
  private wake: (() => void) | null = null;
  private changed = false;

  private constructor(private readonly watchers: Watcher[]) {}

  static async open(store: FleetStore, prefixes: string[]): Promise<Changes> {
    const watchers = await Promise.all(prefixes.map((p) => store.ns.watch().prefix(p).create()));
    const changes = new Changes(watchers);
    for (const w of watchers) for (const event of ['put', 'delete', 'connected', 'error']) w.on(event as 'put', () => changes.poke());
    return changes;
  }

  private poke(): void {
    this.changed = true;
    this.wake?.();
  }

  /** Resolves on the next change (at once if one came since the last call), or after 5 s to look again. */
  async next(signal?: AbortSignal): Promise<void> {
    if (!this.changed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 5000);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
        signal?.addEventListener('abort', () => this.wake?.(), { once: true });
      });
    }
    this.wake = null;
    this.changed = false;
    if (signal?.aborted) throw new FleetError('aborted', 'Stopped waiting for the barrier rollout; it goes on in etcd (fleet rollout --resume follows it again).');
  }

  async close(): Promise<void> {
    for (const w of this.watchers) await w.cancel().catch(() => undefined);
  }
}
