/**
 * `upgrader follow`: one per root per host, beside `upgrader run`. It keeps the host's presence alive,
 * publishes the host record, and does what the fleet's shared state asks of this host: its part of the
 * rollout, or else converging to the desired version.
 *
 * It is level-triggered: every pass reads the control keys and this host's run record afresh and acts on
 * what they say now, so a missed watch event, a compacted history, a restart or an etcd outage costs one
 * more pass and nothing else. Watch events, a new session and retries only wake the loop. The local
 * agent never depends on etcd: while etcd is away the follower only retries.
 */
import type { IKeyValue, Lease, Watcher } from 'etcd3';
import type { Logger } from '../log.js';
import { haltedByRollout, pastNoReturn } from './barrier-phase.js';
import { UPGRADER_VERSION } from '../upgrader-version.js';
import { FleetError } from './errors.js';
import type { LocalUpgrader, LocalView, Progress, UpgradeOutcome } from './local.js';
import { positionOf, STAGE_AHEAD, stagesNow, targetOf, waveHosts, type Position } from './plan.js';
import { advanceIfWaveEnded, endRunDone, endRunFailed, markStaged, readPlan, readRun, stagedRun, startRun, writeRun, type RunKey } from './rollout.js';
import { isActive, KEYS, parseRecord, Release, RolloutWake, SCHEMA, serialize, type HostPhase, type HostRecord, type Plan, type Rollout, type Run } from './schema.js';
import type { FleetStore } from './store.js';

export type FollowerOptions = {
  store: FleetStore;
  host: string;
  group: string;
  local: LocalUpgrader;
  log: Logger;
  /** Presence lease TTL in seconds: how soon a dead follower shows as offline. */
  leaseSeconds: number;
  /** Backoff between failed passes and sessions. */
  retryMs: { min: number; max: number };
  /** How long one handoff on this host may take, probation included, before the follower stops waiting and asks again. */
  handoffTimeoutMs: number;
  /** Rate limit of progress writes while downloading. */
  progressEveryMs?: number;
  /** Errors of etcd calls that mean "etcd is away" rather than "a bug". */
  unreachable: (error: unknown) => boolean;
  /** Told when etcd becomes reachable or unreachable (for the root's state/follower.json). */
  onEtcd?: (state: 'reachable' | 'unreachable', error: unknown) => void;
};

type Problem = { message: string; code: string | null; at: string };
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });

/** Another live follower holds this host name (a twin, or this host's previous follower until its lease lapses). */
class PresenceTaken extends Error {
  constructor(host: string) {
    super(`another follower holds the presence of host ${host}; waiting until its lease lapses (two hosts with one name, or this host's previous follower)`);
  }
}

export class Follower {
  private phase: HostPhase = 'idle';
  private progress: Progress | null = null;
  private error: Problem | null = null;
  private asked: HostRecord['asked'] = null;
  private published = '';
  /** The rollout and state the last pass acted on (see farFrom). */
  private acted: { id: string; state: string; phase: string | null; plan: Plan } | null = null;
  private publishing: Promise<void> = Promise.resolve();
  private lastProgressAt = 0;
  private wake: (() => void) | null = null;
  private kicked = true;
  private readonly stopping = new AbortController();
  /** Desired versions that failed here: not tried again until the desired version changes or the follower restarts. */
  private readonly gaveUp = new Set<string>();
  /** Whether etcd answered the last call (null: not asked yet); said in the log once per change. */
  private reachable: boolean | null = null;

  constructor(private readonly o: FollowerOptions) {}

  /** Runs until stop(). */
  async run(): Promise<void> {
    await Promise.all([this.sessions(), this.passes()]);
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.kick();
  }

  private get stopped(): boolean {
    return this.stopping.signal.aborted;
  }

  /**
   * Whether an active rollout has nothing for this host yet: its record names the hosts that may act now
   * (its front), and this host is not one of them. Such a host neither reads the plan nor moves: it is in
   * a later wave, or not in the plan and converges once the rollout has ended. So a new rollout wakes its
   * first wave, not the whole fleet.
   */
  private notInFront(rollout: Pick<Rollout, 'kind' | 'state' | 'front'>): boolean {
    return rollout.kind === 'rollout' && isActive(rollout.state) && rollout.front !== null && !rollout.front.includes(this.o.host);
  }

  /**
   * Whether a change of the rollout record cannot concern this host: it is not in the record's front; or,
   * for a record without one, the same rollout in the same state whose position moved, and this host's
   * wave is behind it (ended) or more than STAGE_AHEAD waves ahead (nothing to stage yet). Anything else
   * (another record, a new state, one that does not parse) wakes the pass, which reads afresh.
   */
  private farFrom(kv: IKeyValue): boolean {
    const key = kv.key.toString();
    if (key !== KEYS.rollout && !key.endsWith(`/${KEYS.rollout}`)) return false;
    const next = parseRecord(RolloutWake, kv.value.toString()).value;
    if (next && this.notInFront(next)) return true;
    if (!next || !this.acted || next.id !== this.acted.id || next.state !== this.acted.state || (next.barrier?.phase ?? null) !== this.acted.phase) return false;
    const at = positionOf(this.acted.plan.groups, this.o.host);
    if (!at) return true;
    if (at.group !== next.group) return true;
    return at.wave < next.wave || at.wave > next.wave + STAGE_AHEAD;
  }

  private kick(): void {
    this.kicked = true;
    this.wake?.();
  }

  // ---------------------------------------------------------------- presence and watch

  /** One session: a lease, the presence key on it, one watcher on the control keys. Renewed whenever either dies. */
  private async sessions(): Promise<void> {
    let delay = this.o.retryMs.min;
    while (!this.stopped) {
      try {
        // A session that could not start (etcd away, the name held) backs off; one that ran starts over soon.
        delay = (await this.session()) ? this.o.retryMs.min : Math.min(this.o.retryMs.max, delay * 2);
      } catch (error) {
        this.noteEtcd(error, 'session');
        delay = Math.min(this.o.retryMs.max, delay * 2);
      }
      await sleep(delay, this.stopping.signal);
    }
  }

  /**
   * One session: a lease, this host's presence key on it (taken only if no other live follower holds the
   * name), and watches on the control keys and on that presence key. Ends when the lease is lost, a watch
   * fails, or the presence key is deleted under it; the next session starts afresh.
   */
  private async session(): Promise<boolean> {
    const { store, host } = this.o;
    let started = false;
    const lease: Lease = store.ns.lease(this.o.leaseSeconds);
    const watchers: Watcher[] = [];
    let end: (why: string) => void = () => undefined;
    const ended = new Promise<string>((resolve) => (end = resolve));
    const onStop = () => end('stopping');
    this.stopping.signal.addEventListener('abort', onStop, { once: true });
    lease.on('lost', (e: Error) => end(`presence lease lost (${e.message})`));
    try {
      const id = await lease.grant();
      const presence = { schema: SCHEMA, pid: process.pid, startedAt: new Date().toISOString(), follower: UPGRADER_VERSION };
      const key = KEYS.presence(host);
      const taken = await store.ns.if(key, 'Create', '==', 0).then(store.ns.put(key).value(serialize(presence)).lease(id)).commit();
      if (!taken.succeeded) throw new PresenceTaken(host);
      const control = await store.ns.watch().prefix(KEYS.ctlPrefix).create();
      const own = await store.ns.watch().key(key).create();
      watchers.push(control, own);
      for (const w of watchers) w.on('error', (e: Error) => end(`watch ended (${e.message})`));
      control.on('put', (kv: IKeyValue) => {
        if (!this.farFrom(kv)) this.kick();
      });
      control.on('delete', () => this.kick());
      control.on('connected', () => this.kick());
      own.on('delete', () => end('presence key deleted'));
      this.published = '';
      started = true;
      this.markReachable();
      this.kick();
    } catch (error) {
      if (this.o.unreachable(error)) this.noteEtcd(error, 'session');
      end(error instanceof PresenceTaken ? error.message : `could not open a session (${error instanceof Error ? error.message : String(error)})`);
    }
    const why = await ended;
    this.stopping.signal.removeEventListener('abort', onStop);
    if (why !== 'stopping') this.o.log.warn({ host, why }, 'fleet session ended; opening a new one');
    for (const w of watchers) await w.cancel().catch(() => undefined);
    if (why === 'stopping') await lease.revoke().catch(() => undefined);
    else lease.release();
    lease.removeAllListeners();
    return started;
  }

  // ---------------------------------------------------------------- the passes

  private async passes(): Promise<void> {
    let delay = this.o.retryMs.min;
    while (!this.stopped) {
      if (!this.kicked) await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
      if (this.stopped) break;
      this.kicked = false;
      try {
        await this.pass();
        delay = this.o.retryMs.min;
      } catch (error) {
        this.noteEtcd(error, 'pass');
        await sleep(delay, this.stopping.signal);
        delay = Math.min(this.o.retryMs.max, delay * 2);
        this.kicked = true;
      }
    }
  }

  private async pass(): Promise<void> {
    const control = await this.o.store.control();
    this.markReachable();
    const rollout = control.rollout.value;
    for (const problem of [control.rollout.problem, control.desired.problem, control.pause.problem]) {
      if (problem) this.o.log.warn({ host: this.o.host, problem }, 'ignoring a malformed fleet record');
    }
    if (rollout && this.notInFront(rollout)) {
      this.acted = null;
      return this.publish();
    }
    const plan = rollout ? await readPlan(this.o.store, rollout.id) : null;
    this.acted = rollout && plan ? { id: rollout.id, state: rollout.state, phase: rollout.barrier?.phase ?? null, plan } : null;
    const at = plan ? positionOf(plan.groups, this.o.host) : null;
    if (rollout?.barrier && plan) return this.followBarrier(rollout, plan, control.rollout.mod!, at, control.pause.mod !== null, control.desired.value?.version ?? null);
    if (rollout && plan && at && rollout.state !== 'succeeded') {
      // Paused whenever the key exists, readable or not: the start transaction compares its existence.
      await this.followRollout(rollout, plan, control.rollout.mod!, at, control.pause.mod !== null);
      return;
    }
    // While a rollback runs, the version it returns the fleet to is the one to converge to, not the one it undoes.
    const rollingBack = rollout?.kind === 'rollback' && isActive(rollout.state);
    const desired = rollingBack ? rollout.desiredAfter : (control.desired.value?.version ?? null);
    await this.converge(desired);
  }

  /** This host's part in a rollout that names it. */
  private async followRollout(rollout: Rollout, plan: Plan, rolloutMod: string, at: Position, paused: boolean): Promise<void> {
    const target = targetOf(rollout, plan, this.o.host)!;
    const k: RunKey = { rolloutId: rollout.id, at, host: this.o.host };
    this.asked = { version: target, rolloutId: rollout.id };
    let { run, mod } = await readRun(this.o.store, k);
    if (run?.state === 'done' || run?.state === 'failed') {
      await this.publish();
      if (rollout.group === at.group && rollout.wave === at.wave) await advanceIfWaveEnded(this.o.store);
      return;
    }
    if (run?.state === 'upgrading') return this.carryOut(k, run, true);
    const local = this.o.local.view();
    const startsNow = rollout.state === 'running' && rollout.group === at.group && rollout.wave === at.wave && !paused;
    if (!run && stagesNow(rollout, at)) {
      if (!(await this.stageOrFail(k, local.running, target))) return;
      // A host whose wave is on starts at once: its start creates the run record (no `staged` in between).
      if (startsNow) run = stagedRun(this.o.host, local.running, target);
      else {
        await markStaged(this.o.store, k, local.running, target);
        ({ run, mod } = await readRun(this.o.store, k));
      }
    }
    if (!startsNow || !run) return this.publish();
    // The record is written beside the start, not before it: it only reports.
    void this.publish().catch(() => undefined);
    // Lost to a change of the rollout record (a failure, a pause) or of the run: read again, after a backoff.
    const started = await startRun(this.o.store, k, rolloutMod, mod, local.running, target);
    if (!started) throw new RetryLater('the start lost its compare');
    await this.carryOut(k, started, false);
  }

  /**
   * This host's part in a barrier rollout (docs/fleet.md "Barrier rollouts"): stage in `stage` and
   * `barrier`, halt in `halt`, nothing during `migrate`, then start the new version from halted at its
   * wave in `switch`. An abort before the point of no return resumes the host, if this rollout halted it;
   * after it, the host stays halted. A host the barrier goes on without (excluded, or not in the plan) is
   * kept off the old version.
   */
  private async followBarrier(rollout: Rollout, plan: Plan, rolloutMod: string, at: Position | null, paused: boolean, desired: string | null): Promise<void> {
    const barrier = rollout.barrier!;
    const to = rollout.to!;
    if (!at || barrier.excluded.includes(this.o.host)) return this.keepOffOldVersion(rollout, desired);
    if (rollout.state === 'succeeded') return this.converge(desired);
    const k: RunKey = { rolloutId: rollout.id, at, host: this.o.host };
    this.asked = { version: to, rolloutId: rollout.id };
    const { run, mod } = await readRun(this.o.store, k);
    const state = run?.state ?? null;
    if (state === 'upgrading') return this.carryOut(k, run!, true);
    if (rollout.state === 'aborted') {
      // Before the point of no return the old version can still run: the abort gives the host back to it,
      // if this rollout halted it (whatever its run record says: the halt may have landed before the record).
      if (!pastNoReturn(barrier) && (state === 'halted' || state === 'staged') && (await this.resumeIfHaltedBy(rollout.id))) await writeRun(this.o.store, k, { ...run!, state: 'resumed' });
      return this.publish();
    }
    if (state === 'done' || state === 'failed' || state === 'resumed') {
      await this.publish();
      if (barrier.phase === 'switch' && rollout.group === at.group && rollout.wave === at.wave) await advanceIfWaveEnded(this.o.store);
      return;
    }
    if (!isActive(rollout.state)) return this.publish();
    if (state === null) return this.stageForBarrier(k, to);
    if (barrier.phase === 'halt' && state === 'staged' && rollout.state === 'running') return this.haltForBarrier(k, run!);
    if (barrier.phase === 'switch' && onlyExcluded(plan, rollout)) await advanceIfWaveEnded(this.o.store);
    const ourWave = rollout.group === at.group && rollout.wave === at.wave;
    if (barrier.phase !== 'switch' || state !== 'halted' || rollout.state !== 'running' || !ourWave || paused) return this.publish();
    const started = await startRun(this.o.store, k, rolloutMod, mod, null, to);
    if (!started) throw new RetryLater('the start lost its compare');
    await this.carryOut(k, started, false);
  }

  private async stageForBarrier(k: RunKey, to: string): Promise<void> {
    const from = this.o.local.view().running;
    if (await this.stageOrFail(k, from, to)) await markStaged(this.o.store, k, from, to);
    await this.publish();
  }

  /** Stages `to` for this host's run; a failure is the run's failure (recorded, the host record says why). */
  private async stageOrFail(k: RunKey, from: string | null, to: string): Promise<boolean> {
    const staged = await this.stage(to);
    if (staged === true) return true;
    this.error = staged;
    this.setPhase('failed');
    await endRunFailed(this.o.store, k, stagedRun(this.o.host, from, to), staged.message, staged.code);
    await this.publish();
    return false;
  }

  private async haltForBarrier(k: RunKey, run: Run): Promise<void> {
    const outcome = await this.haltHere(haltedByRollout(k.rolloutId));
    if (outcome.ok) {
      await writeRun(this.o.store, k, { ...run, state: 'halted' });
      return this.publish();
    }
    this.setPhase('failed');
    await endRunFailed(this.o.store, k, run, `could not halt: ${outcome.reason}`, outcome.code ?? 'halt-failed');
    await this.publish();
  }

  /** Halts the local agent (retried later when the upgrader says "not now"); a refusal is returned. */
  private async haltHere(by: string): Promise<UpgradeOutcome> {
    this.setPhase('halting');
    const outcome = await this.o.local.halt(by, this.handoffDeadline());
    if (outcome.ok) {
      this.setPhase('halted');
      return outcome;
    }
    this.error = { message: outcome.reason, code: outcome.code, at: now() };
    if (outcome.transient) {
      await this.publish();
      throw new RetryLater(outcome.reason);
    }
    return outcome;
  }

  /**
   * After an abort before the point of no return: resumes the old version if this rollout halted the root
   * (not an operator, nor an earlier rollout). True when it resumed it.
   */
  private async resumeIfHaltedBy(rolloutId: string): Promise<boolean> {
    const view = this.o.local.view();
    if (view.haltedBy !== haltedByRollout(rolloutId)) {
      // The upgrader is away or between states: whether this rollout's halt is on record is not known yet.
      if (view.upgrader !== 'halted' && view.running === null) throw new RetryLater('the local upgrader does not say whether it is halted');
      return false;
    }
    const outcome = await this.o.local.resume(this.handoffDeadline());
    if (!outcome.ok) {
      this.error = { message: outcome.reason, code: outcome.code, at: now() };
      await this.publish();
      throw new RetryLater(outcome.reason);
    }
    this.setPhase('idle');
    return true;
  }

  /**
   * A host the barrier goes on without (excluded, or not in the plan). From the halt phase on, its old
   * version must not work beside the migration or the new version: it is halted (as the rollout's own
   * hosts are, so that an abort before the point of no return resumes it too), and taken to the rollout's
   * version from halted once the rollout has succeeded.
   */
  private async keepOffOldVersion(rollout: Rollout, desired: string | null): Promise<void> {
    const barrier = rollout.barrier!;
    const to = rollout.to!;
    const view = this.o.local.view();
    if (rollout.state === 'aborted' && !pastNoReturn(barrier)) {
      await this.resumeIfHaltedBy(rollout.id);
      return this.publish();
    }
    const haltsNow = barrier.phase === 'halt' || pastNoReturn(barrier);
    if (!haltsNow || view.running === to) return this.converge(desired);
    if (view.busy || (view.running === null && view.upgrader !== 'halted')) throw new RetryLater('the local upgrader is busy or away; the old version must not come back');
    if (view.running !== null) {
      const outcome = await this.haltHere(haltedByRollout(rollout.id));
      if (!outcome.ok) return this.publish();
    }
    if (rollout.state !== 'succeeded' || desired !== to || this.gaveUp.has(to)) return this.publish();
    return this.upgradeTo(to, rollout.id);
  }

  /** Takes the host to `run.to`, or reads back how a handoff begun before a restart ended. */
  private async carryOut(k: RunKey, run: Run, resumed: boolean): Promise<void> {
    const local = this.o.local;
    if (resumed) await local.settle(this.stopping.signal);
    for (let delay = this.o.retryMs.min, first = !resumed; !this.stopped; delay = Math.min(this.o.retryMs.max, delay * 2), first = false) {
      const view = local.view();
      if (view.running === run.to && !view.busy) return this.ended(k, run, null);
      const earlier = endedSince(view, run);
      if (earlier) return this.ended(k, run, earlier);
      // Asking again (the upgrader was down, busy, or this follower restarted): only while the rollout
      // still wants it. A halt or abort does not start a handoff later that it would have stopped now.
      if (!first && !view.busy && !(await this.stillWanted(k))) return this.ended(k, run, { message: 'the rollout ended before this host could start its handoff', code: 'aborted', at: now() });
      const staged = await this.stage(run.to);
      if (staged !== true) return this.ended(k, run, staged);
      this.setPhase('upgrading');
      const deadline = this.handoffDeadline();
      const outcome = await local.upgrade(run.to, (phase) => this.setPhase(phase), deadline);
      if (outcome.ok) return this.ended(k, run, null);
      if (!outcome.transient) return this.ended(k, run, { message: outcome.reason, code: outcome.code, at: now() });
      this.error = { message: outcome.reason, code: outcome.code, at: now() };
      await this.publish().catch(() => undefined);
      await sleep(delay, this.stopping.signal);
      await local.settle(this.stopping.signal);
    }
  }

  /** How long one request to the local upgrader may take (a handoff and its probation, a halt): --handoff-timeout, or until the follower stops. */
  private handoffDeadline(): AbortSignal {
    return AbortSignal.any([this.stopping.signal, AbortSignal.timeout(this.o.handoffTimeoutMs)]);
  }

  private async stillWanted(k: RunKey): Promise<boolean> {
    const { rollout } = await this.o.store.control();
    return rollout.value?.id === k.rolloutId && isActive(rollout.value.state);
  }

  private async ended(k: RunKey, run: Run, problem: Problem | null): Promise<void> {
    if (problem === null) {
      this.setPhase('succeeded');
      this.error = null;
      await endRunDone(this.o.store, k, run);
    } else {
      this.setPhase(failedPhase(problem.code));
      this.error = problem;
      await endRunFailed(this.o.store, k, run, problem.message, problem.code);
    }
    await this.publish();
  }

  /** Outside any rollout: run the fleet's desired version, once a rollout has set one. */
  private async converge(desired: string | null): Promise<void> {
    const view = this.o.local.view();
    if (desired === null || view.running === desired || view.running === null || view.busy || this.gaveUp.has(desired)) return this.publish();
    this.gaveUp.clear();
    return this.upgradeTo(desired, null);
  }

  /** Outside a rollout's waves: stage `version` and hand off to it; a failure is not tried again until the version changes. */
  private async upgradeTo(version: string, rolloutId: string | null): Promise<void> {
    this.asked = { version, rolloutId };
    const staged = await this.stage(version);
    const deadline = this.handoffDeadline();
    const outcome = staged === true ? await this.o.local.upgrade(version, (phase) => this.setPhase(phase), deadline) : { ok: false as const, reason: staged.message, code: staged.code, transient: false };
    if (outcome.ok) {
      this.setPhase('succeeded');
      this.error = null;
    } else if (outcome.transient) {
      this.error = { message: outcome.reason, code: outcome.code, at: now() };
      throw new RetryLater(outcome.reason);
    } else {
      this.gaveUp.add(version);
      this.setPhase(failedPhase(outcome.code));
      this.error = { message: outcome.reason, code: outcome.code, at: now() };
    }
    await this.publish();
  }

  /** Download and install `version` (no switch): true, or the problem. */
  private async stage(version: string): Promise<true | Problem> {
    const release = await this.o.store.read(Release, KEYS.release(version));
    // A version this host has (a rollback's target, a release staged before) needs no release record.
    if (!release.value && this.o.local.installed(version)) return true;
    if (!release.value || release.value.version !== version) {
      return { message: release.problem ?? `no release ${version} is published in this fleet`, code: 'no-release', at: now() };
    }
    this.setPhase('downloading');
    try {
      await this.o.local.stage(release.value, (p) => this.onProgress(p), this.stopping.signal);
    } catch (error) {
      const code = error instanceof FleetError ? error.code : 'install-refused';
      return { message: error instanceof Error ? error.message : String(error), code, at: now() };
    } finally {
      this.progress = null;
    }
    this.setPhase('staged');
    await this.publish();
    return true;
  }

  private onProgress(p: Progress): void {
    this.progress = p;
    const at = Date.now();
    if (at - this.lastProgressAt < (this.o.progressEveryMs ?? 1000)) return;
    this.lastProgressAt = at;
    void this.publish().catch(() => undefined);
  }

  private setPhase(phase: HostPhase): void {
    if (this.phase === phase) return;
    this.phase = phase;
    this.o.log.info({ host: this.o.host, phase, asked: this.asked?.version ?? null }, 'fleet phase');
    void this.publish().catch(() => undefined);
  }

  // ---------------------------------------------------------------- the host record

  private record(view: LocalView): HostRecord {
    return {
      schema: SCHEMA,
      host: this.o.host,
      group: this.o.group,
      root: this.o.local.root,
      upgrader: view.upgrader,
      running: view.running,
      current: view.current,
      previous: view.previous,
      lastUpgrade: view.lastUpgrade,
      asked: this.asked,
      phase: this.phase,
      progress: this.progress,
      error: this.error,
      reportedAt: now(),
    };
  }

  /**
   * Writes the host record when something in it changed (not only the time). One write at a time, in
   * order: a retried older write can never land after a newer one.
   */
  private publish(): Promise<void> {
    const next = this.publishing.catch(() => undefined).then(() => this.publishNow());
    this.publishing = next;
    return next;
  }

  private async publishNow(): Promise<void> {
    const record = this.record(this.o.local.view());
    const { reportedAt: _, ...content } = record;
    const key = JSON.stringify(content);
    if (key === this.published) return;
    await this.o.store.ns.put(KEYS.host(this.o.host)).value(serialize(record));
    this.published = key;
  }

  private markReachable(): void {
    if (this.reachable === true) return;
    if (this.reachable === false) this.o.log.info({ host: this.o.host }, 'etcd answers again');
    this.reachable = true;
    this.o.onEtcd?.('reachable', null);
    this.kick();
  }

  private noteEtcd(error: unknown, during: string): void {
    const message = error instanceof Error ? error.message : String(error);
    if (this.o.unreachable(error)) {
      if (this.reachable !== false) {
        this.o.log.warn({ host: this.o.host, during, error: message }, 'etcd is unreachable; the agent keeps running, retrying');
        this.o.onEtcd?.('unreachable', error);
      }
      this.reachable = false;
      return;
    }
    if (error instanceof RetryLater) return;
    this.o.log.error({ host: this.o.host, during, error: message }, 'fleet pass failed; retrying');
  }
}

const now = () => new Date().toISOString();

/** The phase a failure leaves: `rolled-back` when the new version ran and failed its probation. */
const failedPhase = (code: string | null): HostPhase => (code === 'rolled-back' ? 'rolled-back' : 'failed');

/** Whether every host of a barrier rollout's current wave is excluded: nobody of it will end it, so any follower moves it on. */
function onlyExcluded(plan: Plan, rollout: Rollout): boolean {
  const excluded = new Set(rollout.barrier?.excluded ?? []);
  return waveHosts(plan.groups, { group: rollout.group, wave: rollout.wave }).every((h) => excluded.has(h));
}

/** A pass that could not finish for a passing reason (already in the host record): try again after the backoff. */
class RetryLater extends Error {}

/** How the handoff to `run.to` ended, if the upgrader recorded its end after the run started. */
function endedSince(view: LocalView, run: Run): Problem | null {
  const last = view.lastUpgrade;
  if (!last || last.to !== run.to || last.result === 'succeeded' || !run.startedAt || last.at < run.startedAt) return null;
  return { message: last.reason ?? `the handoff to ${run.to} ${last.result}`, code: last.code, at: last.at };
}
