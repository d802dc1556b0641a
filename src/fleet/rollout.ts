/**
 * A rollout's life in etcd: begin, pause, resume, abort, roll back, and the three steps hosts take inside
 * it (start their run, end it, move the rollout to the next wave). The whole state is the rollout record
 * `ctl/rollout` and the hosts' run records `runs/<id>/<group>.<wave>/<host>`; any follower or command may
 * take any step, and a compare on the rollout record's revision makes sure only one of them does.
 *
 * States: running -> paused -> running; running|paused -> halted (failures over --max-failures) ->
 * aborted; running -> succeeded (the last wave ended); running|paused|halted -> aborted (operator).
 * A host starts only in `running`, and only while the rollout's position is its wave; a halt, pause or
 * abort changes the record's revision, so a start decided before it fails its compare.
 */
import { randomBytes } from 'node:crypto';
import { pastNoReturn } from './barrier-phase.js';
import { FleetError } from './errors.js';
import { buildPlan, firstPosition, frontOf, nextPosition, waveHosts, type Position } from './plan.js';
import { isActive, KEYS, Plan as PlanSchema, Presence, Release, Run as RunSchema, serialize, HostRecord, SCHEMA, type Desired, type Plan, type PlanGroup, type Rollout, type RolloutState, type Run } from './schema.js';
import { parsed, type FleetStore, type Write } from './store.js';

export type RolloutOptions = {
  to: string;
  groups: string[];
  canaries: number;
  batch: string;
  maxFailures: number;
  pauseMs: number;
  /** A barrier rollout (barrier.ts): the migration command, and hosts to go on without. */
  barrier?: { command: string | null; exclude: string[] };
};

const now = () => new Date().toISOString();

/** A pause left by an earlier rollout never holds up the next one. */
const NO_PAUSE: Write = { key: KEYS.pause, value: null };

function newRolloutId(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}

/** Hosts known to the fleet, split by whether their follower is present now. */
export async function knownHosts(store: FleetStore): Promise<{ online: HostRecord[]; offline: HostRecord[]; problems: string[] }> {
  const [hosts, presence] = await Promise.all([store.range(KEYS.hostPrefix), store.range(KEYS.presencePrefix)]);
  const present = new Set(presence.entries.filter((e) => parsed(Presence, e).value).map((e) => e.key.slice(KEYS.presencePrefix.length)));
  const online: HostRecord[] = [];
  const offline: HostRecord[] = [];
  const problems: string[] = [];
  for (const entry of hosts.entries) {
    const record = parsed(HostRecord, entry);
    if (!record.value || `hosts/${record.value.host}` !== entry.key) {
      problems.push(record.problem ?? `${entry.key}: names another host`);
      continue;
    }
    (present.has(record.value.host) ? online : offline).push(record.value);
  }
  return { online, offline, problems };
}

/** Refuses while another rollout is running or paused, with that rollout's state. */
function refuseIfActive(current: Rollout | null): void {
  if (current && isActive(current.state)) {
    const to = current.to ?? 'the previous versions';
    throw new FleetError('rollout-active', `Rollout ${current.id} (to ${to}) is ${current.state} at group ${current.groupNames[current.group] ?? current.group}, wave ${current.wave + 1}, ${current.failures} failed: one rollout per fleet runs at a time (pause, resume or abort it first).`);
  }
}

/**
 * A new rollout record at the plan's first wave. A rollback names no front: the hosts it does not move
 * converge to its `desiredAfter` while it runs, so each of them reads the plan to learn that it is not in it.
 */
function record(base: Omit<Rollout, 'schema' | 'state' | 'group' | 'wave' | 'front' | 'failures' | 'failed' | 'reason' | 'startedAt' | 'updatedAt'>, groups: PlanGroup[], start: Position): Rollout {
  const at = now();
  const front = base.kind === 'rollout' && !base.barrier ? frontOf(groups, { ...start, canaries: base.canaries }) : null;
  return { schema: SCHEMA, ...base, state: 'running', group: start.group, wave: start.wave, front, failures: 0, failed: [], reason: null, startedAt: at, updatedAt: at };
}

export type Begun = { rollout: Rollout; plan: Plan };

/** Starts `rollout` with its plan (written together), unless another command changed the rollout since `mod`. */
async function begin(store: FleetStore, mod: string | null, rollout: Rollout, plan: Plan): Promise<Begun> {
  const planWrite: Write = { key: KEYS.plan(plan.id), value: serialize(plan) };
  if (!(await store.swapRollout(mod, rollout, NO_PAUSE, planWrite))) return raced(store);
  return { rollout, plan };
}

/** `fleet rollout`: plans the waves from the hosts present now and starts the rollout, if none is active. */
export async function beginRollout(store: FleetStore, o: RolloutOptions): Promise<Begun> {
  const release = await store.read(Release, KEYS.release(o.to));
  if (!release.value) throw new FleetError('no-release', release.problem ? `The release ${o.to} is unreadable (${release.problem}).` : `No release ${o.to} is published in this fleet: publish it first (upgrader fleet publish).`);
  if (release.value.barrier && !o.barrier) throw new FleetError('needs-barrier', `Release ${o.to} was published as needing a barrier (old and new cannot run side by side): roll it out with --barrier.`);
  const control = await store.control();
  refuseIfActive(control.rollout.value);
  await refuseIfInFlight(store, control.rollout.value);
  const { online, offline } = await knownHosts(store);
  // A barrier waits for every known host, offline ones included (they hold it until excluded).
  const excluded = new Set(o.barrier?.exclude ?? []);
  const members = o.barrier ? [...online, ...offline].filter((h) => !excluded.has(h.host)) : online;
  const groups = buildPlan(members.map((h) => ({ host: h.host, group: h.group })), o.groups, o.canaries, o.batch);
  const start = firstPosition(groups);
  if (!start) throw new FleetError('no-hosts', 'No host of this fleet is present (no follower has a live presence key): nothing to roll out to.');
  const id = newRolloutId();
  const next = record(
    {
      id, kind: 'rollout', to: o.to, undoes: null, groupNames: groups.map((g) => g.name), canaries: o.canaries, batch: o.batch,
      // A barrier rollout stops at the first failure: every host is halted by then, and the next wave must not start.
      maxFailures: o.barrier ? 0 : o.maxFailures, pauseMs: o.pauseMs, previousDesired: control.desired.value?.version ?? null, desiredAfter: o.to,
      barrier: o.barrier ? { phase: 'stage', command: o.barrier.command, migration: null, excluded: [...excluded].sort() } : null,
    },
    groups,
    start,
  );
  return begin(store, control.rollout.mod, next, { schema: SCHEMA, id, groups, targets: null, offline: o.barrier ? [] : offline.map((h) => h.host) });
}

const plans = new Map<string, Promise<Plan>>();

/**
 * A rollout's plan. Plans never change, so each is read once per process (the last few are kept), and
 * callers that ask while it is being read share that read: a process running many followers (the fleet
 * bench) fetches and parses it once, as one host does.
 */
export function readPlan(store: FleetStore, id: string): Promise<Plan> {
  const known = plans.get(id);
  if (known) return known;
  const reading = fetchPlan(store, id);
  if (plans.size >= 8) plans.delete(plans.keys().next().value!);
  plans.set(id, reading);
  // A failed read (etcd away, a bad record) is not kept: the next caller reads again.
  reading.catch(() => plans.get(id) === reading && plans.delete(id));
  return reading;
}

async function fetchPlan(store: FleetStore, id: string): Promise<Plan> {
  const read = await store.read(PlanSchema, KEYS.plan(id));
  if (!read.value || read.value.id !== id) throw new FleetError('bad-plan', `The plan of rollout ${id} is ${read.problem ?? 'missing'}; abort the rollout.`);
  return read.value;
}

/**
 * Refuses while a host of the last rollout is still upgrading (a halt or an abort lets them finish): the
 * next rollout's first wave on top of them would exceed its --batch.
 */
async function refuseIfInFlight(store: FleetStore, last: Rollout | null): Promise<Map<string, Run>> {
  if (!last) return new Map();
  const runs = await runsOf(store, last.id);
  const inFlight = [...runs.values()].filter((r) => r.state === 'upgrading').map((r) => r.host);
  if (inFlight.length) throw new FleetError('in-flight', `Hosts of rollout ${last.id} are still upgrading (${inFlight.join(', ')}); start the next one once they have ended (fleet status shows them).`);
  return runs;
}

async function raced(store: FleetStore): Promise<never> {
  const control = await store.control();
  refuseIfActive(control.rollout.value);
  throw new FleetError('conflict', 'Another command changed the rollout at the same moment; run the command again.');
}

/**
 * `fleet rollback`: a rollout that takes every host the last rollout moved (its run ended `done`) back to
 * the version it ran before, in the same groups and waves. Refused while that rollout is active or while a
 * host of it is still in flight.
 */
export async function beginRollback(store: FleetStore, o: Partial<Pick<RolloutOptions, 'canaries' | 'batch' | 'maxFailures' | 'pauseMs'>>): Promise<Begun> {
  const control = await store.control();
  const last = control.rollout.value;
  if (!last) throw new FleetError('no-rollout', 'This fleet has no rollout to roll back.');
  refuseIfActive(last);
  if (last.kind === 'rollback') throw new FleetError('no-rollout', `The last rollout (${last.id}) is itself a rollback; start a rollout to the version you want instead.`);
  if (last.barrier && pastNoReturn(last.barrier)) throw new FleetError('no-rollout', `The last rollout (${last.id}) passed a barrier and ran its migration: the versions before it may not run any more, so it is not rolled back; roll forward with a new barrier rollout.`);
  const runs = await refuseIfInFlight(store, last);
  const targets: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const run of runs.values()) if (run.state === 'done' && run.from && run.from !== run.to) targets[run.host] = run.from;
  const lastPlan = await readPlan(store, last.id);
  const groups: PlanGroup[] = lastPlan.groups.map((g) => ({ name: g.name, waves: g.waves.map((w) => w.filter((h) => Object.hasOwn(targets, h))).filter((w) => w.length) }));
  const start = firstPosition(groups);
  if (!start) throw new FleetError('nothing-moved', `Rollout ${last.id} moved no host (${last.state}): there is nothing to roll back; the fleet is where it was before it.`);
  const id = newRolloutId();
  const next = record(
    {
      id, kind: 'rollback', to: null, undoes: last.id, groupNames: groups.map((g) => g.name),
      canaries: o.canaries ?? last.canaries, batch: o.batch ?? last.batch, maxFailures: o.maxFailures ?? last.maxFailures, pauseMs: o.pauseMs ?? last.pauseMs,
      previousDesired: control.desired.value?.version ?? null, desiredAfter: last.previousDesired, barrier: null,
    },
    groups,
    start,
  );
  return begin(store, control.rollout.mod, next, { schema: SCHEMA, id, groups, targets, offline: [] });
}

const TRANSITIONS: Record<'pause' | 'resume' | 'abort', { from: RolloutState[]; to: RolloutState }> = {
  pause: { from: ['running'], to: 'paused' },
  resume: { from: ['paused'], to: 'running' },
  abort: { from: ['running', 'paused', 'halted'], to: 'aborted' },
};

/** `fleet pause | resume | abort`. Hosts already in flight finish in every case. */
export async function changeRollout(store: FleetStore, action: keyof typeof TRANSITIONS, reason: string | null = null): Promise<Rollout> {
  const { from, to } = TRANSITIONS[action];
  for (;;) {
    const { rollout } = await store.control();
    if (!rollout.value) throw new FleetError('no-rollout', 'This fleet has no rollout.');
    if (!from.includes(rollout.value.state)) throw new FleetError('wrong-state', `Rollout ${rollout.value.id} is ${rollout.value.state}: ${action} applies to a rollout that is ${from.join(' or ')}.`);
    const next = { ...rollout.value, state: to, reason: reason ?? rollout.value.reason, updatedAt: now() };
    if (await store.swapRollout(rollout.mod, next, ...(to === 'aborted' ? [NO_PAUSE] : []))) return next;
  }
}

/** Every run record of a rollout, by host; malformed ones are left out. */
export async function runsOf(store: FleetStore, rolloutId: string, at?: Position): Promise<Map<string, Run>> {
  const prefix = at ? KEYS.wavePrefix(rolloutId, at.group, at.wave) : KEYS.runPrefix(rolloutId);
  const { entries } = await store.range(prefix);
  const runs = new Map<string, Run>();
  for (const entry of entries) {
    const run = parsed(RunSchema, entry).value;
    if (run && entry.key.endsWith(`/${run.host}`)) runs.set(run.host, run);
  }
  return runs;
}

// ---------------------------------------------------------------- a host's steps

export type RunKey = { rolloutId: string; at: Position; host: string };
const runKey = (k: RunKey) => KEYS.run(k.rolloutId, k.at.group, k.at.wave, k.host);

export async function readRun(store: FleetStore, k: RunKey): Promise<{ run: Run | null; mod: string | null }> {
  const { value, mod } = await store.read(RunSchema, runKey(k));
  return { run: value, mod };
}

/** A host's own change of its run record outside a start (halted, resumed): only the host writes it then. */
export async function writeRun(store: FleetStore, k: RunKey, run: Run): Promise<void> {
  await store.ns.put(runKey(k)).value(serialize(run));
}

/** A host's run before it starts: staged from `from` to `to`. */
export function stagedRun(host: string, from: string | null, to: string): Run {
  return { schema: SCHEMA, host, state: 'staged', from, to, reason: null, code: null, startedAt: null, endedAt: null };
}

/** Staged ahead of its wave: only the host itself writes its run record before it starts. */
export async function markStaged(store: FleetStore, k: RunKey, from: string | null, to: string): Promise<void> {
  await store.ns.put(runKey(k)).value(serialize(stagedRun(k.host, from, to)));
}

/**
 * The admission: the host's run becomes `upgrading` only if the rollout record is still the one read
 * (running, at this wave), no pause is pending, and the run record is still the one read (absent, for
 * `runMod` null). Returns the run written, or null when something moved: read again.
 */
export async function startRun(store: FleetStore, k: RunKey, rolloutMod: string, runMod: string | null, from: string | null, to: string): Promise<Run | null> {
  const run: Run = { schema: SCHEMA, host: k.host, state: 'upgrading', from, to, reason: null, code: null, startedAt: now(), endedAt: null };
  const key = runKey(k);
  const result = await store.ns
    .if(KEYS.rollout, 'Mod', '==', rolloutMod)
    .and(KEYS.pause, 'Create', '==', 0)
    .and(key, runMod === null ? 'Create' : 'Mod', '==', runMod ?? 0)
    .then(store.ns.put(key).value(serialize(run)))
    .commit();
  return result.succeeded ? run : null;
}

/** The host's run ended well: recorded, then the wave is moved on if this was its last host. */
export async function endRunDone(store: FleetStore, k: RunKey, run: Run): Promise<void> {
  await store.ns.put(runKey(k)).value(serialize({ ...run, state: 'done', reason: null, code: null, endedAt: now() } satisfies Run));
  await advanceIfWaveEnded(store);
}

/**
 * The host's run failed: recorded together with the rollout's failure count in one transaction, and the
 * rollout halted when the count passes --max-failures, so that no host starts after the failure that
 * should have stopped it.
 */
export async function endRunFailed(store: FleetStore, k: RunKey, run: Run, reason: string, code: string | null): Promise<void> {
  const failedRun: Run = { ...run, state: 'failed', reason, code, endedAt: now() };
  for (;;) {
    const { rollout } = await store.control();
    const current = rollout.value;
    if (!current || current.id !== k.rolloutId) {
      await store.ns.put(runKey(k)).value(serialize(failedRun));
      return;
    }
    const failures = current.failures + 1;
    const halts = failures > current.maxFailures && isActive(current.state);
    const next: Rollout = {
      ...current,
      failures,
      failed: [...current.failed, { host: k.host, reason, code }].slice(-100),
      state: halts ? 'halted' : current.state,
      reason: halts ? `${k.host} failed: ${reason}` : current.reason,
      updatedAt: now(),
    };
    if (await store.swapRollout(rollout.mod, next, { key: runKey(k), value: serialize(failedRun) })) break;
  }
  await advanceIfWaveEnded(store);
}

/** etcd's shortest lease; a shorter pause is rounded up to it. */
const MIN_LEASE_SECONDS = 2;

/**
 * Moves the rollout on when every host of its current wave has ended: to the next wave (behind a pause
 * timer when --pause is set), or to `succeeded`, which also sets the fleet's desired version. Anyone may
 * call it any number of times: the compare on the rollout record lets one call through per wave.
 */
export async function advanceIfWaveEnded(store: FleetStore): Promise<void> {
  for (;;) {
    const { rollout } = await store.control();
    const current = rollout.value;
    if (!current || current.state !== 'running') return;
    // A barrier rollout's waves move only in its switch phase (barrier.ts moves the phases before it).
    if (current.barrier && current.barrier.phase !== 'switch') return;
    const at: Position = { group: current.group, wave: current.wave };
    const plan = await readPlan(store, current.id);
    const excluded = new Set(current.barrier?.excluded ?? []);
    const hosts = waveHosts(plan.groups, at).filter((h) => !excluded.has(h));
    const runs = await runsOf(store, current.id, at);
    if (!hosts.every((h) => runs.get(h)?.state === 'done' || runs.get(h)?.state === 'failed')) return;
    const next = nextPosition(plan.groups, at);
    if (await store.swapRollout(rollout.mod, ...(next ? await toWave(store, current, plan, next) : finished(current)))) return;
  }
}

function finished(current: Rollout): [Rollout, ...Write[]] {
  const at = now();
  const done: Rollout = { ...current, state: 'succeeded', reason: null, updatedAt: at };
  // A rollback of the fleet's first rollout leaves no desired version, as before that rollout.
  if (current.desiredAfter === null) return [done, { key: KEYS.desired, value: null }];
  const desired: Desired = { schema: SCHEMA, version: current.desiredAfter, rolloutId: current.id, since: at };
  return [done, { key: KEYS.desired, value: serialize(desired) }];
}

async function toWave(store: FleetStore, current: Rollout, plan: Plan, next: Position): Promise<[Rollout, ...Write[]]> {
  // A barrier rollout names no front: hosts outside its plan must see every change (follower.ts keepOffOldVersion).
  const front = current.kind === 'rollout' && !current.barrier ? frontOf(plan.groups, { ...next, canaries: current.canaries }) : null;
  const moved: Rollout = { ...current, group: next.group, wave: next.wave, front, updatedAt: now() };
  if (current.pauseMs === 0) return [moved];
  const seconds = Math.max(MIN_LEASE_SECONDS, Math.ceil(current.pauseMs / 1000));
  // A lease nobody keeps alive: etcd deletes the pause key when it ends, whichever process granted it.
  const lease = store.ns.lease(seconds, { autoKeepAlive: false });
  const id = await lease.grant();
  lease.release();
  const until = new Date(Date.now() + seconds * 1000).toISOString();
  return [moved, { key: KEYS.pause, value: serialize({ schema: SCHEMA, rolloutId: current.id, group: next.group, wave: next.wave, until }), lease: id }];
}
