/**
 * The handoff state machine: every decision the supervisor makes, as one pure function
 * `transition(context, event, config) -> step`. Nothing here touches a process, a file or a clock;
 * supervisor.ts carries out the step and turns the world back into events.
 *
 * The machine is a table, `TABLE[state][event]`, one cell per pair, every cell written out: TypeScript
 * refuses a table with a missing cell, and docs/protocol.md prints the same table, generated from this one
 * (`npm run table`; a test keeps the two equal).
 *
 * States
 *   idle       before the first agent is started
 *   running    one active agent does the work (possibly on probation after an upgrade)
 *   verifying  a candidate is starting and verifying itself; in live mode the active agent still works
 *   draining   the retiring agent has been told `stop`; we wait for `stopped` or its exit
 *   waiting    an agent must be started (a candidate, or the active version again), but a retiring agent
 *              is still exiting: nothing new starts beside it. In a live handoff the active agent works
 *              meanwhile; after a probation rollback nobody does until it is gone.
 *   halting    an operator asked for a halt: the active agent is on its way out, and nothing replaces it
 *   halted     no agent runs, on purpose, until an operator resumes `current` or upgrades to a version;
 *              durable: a restarted upgrader comes back halted (a migration may have made the old version
 *              unable to run, so nothing is ever started here on the upgrader's own initiative)
 *   stopping   the upgrader was asked to stop; every agent is on its way out
 *   exited     nothing left to supervise; the upgrader exits with `exitCode`
 *
 * An agent is `active` (does the work), the `candidate` (verifies itself, waits for `go`) or `retiring`
 * (told `stop`, sent SIGTERM, or its tree killed; on its way out either way).
 *
 * Invariants
 *   - At most one agent is ever told to work: a candidate gets `go` only once the retiring agent has
 *     sent `stopped` or is gone.
 *   - `current` moves to the new version only after the candidate said `ready`, and moves back
 *     whenever the version that had proved itself is started again.
 *   - The writes a step depends on are its `durable` list, carried out before anything else of the step
 *     (the types allow them only in the first part of a step: see `then`):
 *     if one fails, the whole step is dropped and an `io-failed` event is handled in the state before it.
 *   - No agent is started while a retiring one is still exiting: at most one retiring agent, one active
 *     agent and one candidate exist at any instant, and never two processes of the version being restarted.
 *   - Success is reported to an operator only once it is durable (`recorded`); a success that could not be
 *     written is reported as such, and its record is retried until it is written.
 */
import { constants } from 'node:os';
import type { HandoffMode, RefusalCode, UpgraderMessage } from './protocol.js';
import type { PublicState, UpgradeResult } from './state.js';
import { formatDuration } from './duration.js';

export type Config = {
  readyMs: number;
  stopMs: number;
  killMs: number;
  probationMs: number;
};

export const STATES = ['idle', 'running', 'verifying', 'draining', 'waiting', 'halting', 'halted', 'stopping', 'exited'] as const;
export type StateName = (typeof STATES)[number];
export type Role = 'active' | 'candidate';
/** Who asked for an upgrade: the active agent (answered with upgrade-failed) or an operator (answered with reports). */
export type Origin = 'agent' | 'operator';

export type AgentRef = { id: number; version: string; ready: boolean };

/** An agent on its way out. `stopping`: told to stop; `terminating`: sent SIGTERM; `killing`: its tree got SIGKILL. */
export type Retiring = { id: number; version: string; phase: 'stopping' | 'terminating' | 'killing' };

export type Handoff = {
  origin: Origin;
  from: string;
  to: string;
  mode: HandoffMode;
  startedAt: string;
  /** The agent told `stop` for this handoff, until it sends `stopped` or exits. */
  retiring: number | null;
  /** Set when the candidate failed while the old agent was already stopping: restart `from` once it is gone. */
  failure: { reason: string; code: RefusalCode } | null;
};

/** `halt`: the halt this upgrade ended (it started from `halted`); a failed probation goes back to it instead of restarting `from`. */
export type Probation = { from: string; version: string; mode: HandoffMode; startedAt: string; previous: string | null; halt: Halt | null };

/** An operator's halt: what `current` named, when, who asked, and why it still holds (a failed upgrade from it). */
export type Halt = { version: string; since: string; by: string; reason: string | null };

/** An agent to start once every retiring agent has exited (state `waiting`). */
export type Pending = { role: Role; version: string; fromVersion: string | null };

export type Context = {
  state: StateName;
  active: AgentRef | null;
  candidate: AgentRef | null;
  handoff: Handoff | null;
  probation: Probation | null;
  retiring: Retiring[];
  /** The version that ran before `current`: what a rollback would return to. */
  previous: string | null;
  nextId: number;
  exitCode: number | null;
  /** What the `waiting` state will start once `retiring` is empty. */
  pending: Pending | null;
  /** Set from a halt request until a resume or an upgrade from `halted` succeeds. */
  halt: Halt | null;
};

export type TimerName = 'ready' | 'probation' | 'record' | `retire:${number}`;

/** Why a request for a version cannot be carried out, found outside the machine (the version's files, quarantine, manifest). */
export type Problem = { code: RefusalCode; reason: string };

export type Event =
  /** `halt`: the state file says the root was halted; nothing is started. */
  | { type: 'start'; version: string; previous: string | null; probation: Probation | null; halt: Halt | null }
  | { type: 'halt-requested'; by: string; at: string }
  | { type: 'resume-requested' }
  /** `force`: an operator's --force, which lifts the version's quarantine once the handoff is accepted. */
  | { type: 'upgrade-requested'; origin: Origin; id: number; version: string; mode: HandoffMode; problem: Problem | null; force: boolean; at: string }
  | { type: 'ready'; id: number }
  | { type: 'stopped'; id: number }
  | { type: 'status'; id: number; message: string }
  | { type: 'protocol-error'; id: number; detail: string }
  /** `error`/`errorCode`: the process could not be started at all (spawn failed with that errno). */
  | { type: 'exited'; id: number; code: number | null; signal: NodeJS.Signals | null; error?: string; errorCode?: string }
  | { type: 'timeout'; timer: TimerName }
  | { type: 'shutdown'; signal: string }
  | { type: 'io-failed'; trigger: Event; error: string }
  /** A `persist` carrying an outcome was written durably. */
  | { type: 'recorded'; outcome: Outcome }
  /** A best-effort `persist` failed; `outcome` is the result it carried, if any (the supervisor keeps it and writes it with the next persist). */
  | { type: 'record-failed'; outcome: Outcome | null; error: string };

export type EventType = Event['type'];
export const EVENT_TYPES: readonly EventType[] = ['start', 'upgrade-requested', 'halt-requested', 'resume-requested', 'ready', 'stopped', 'status', 'protocol-error', 'exited', 'timeout', 'shutdown', 'io-failed', 'recorded', 'record-failed'];

/** An upgrade's result, as the state file's history records it. */
export type Outcome = { origin: Origin; from: string; to: string; mode: HandoffMode; startedAt: string; result: UpgradeResult; reason: string | null; code: RefusalCode | null };

/** How long a failed record waits before it is written again. */
export const RECORD_RETRY_MS = 5000;

/** A write the step depends on: carried out first, and a failure drops the step (`io-failed`). */
export type DurableWrite = { kind: 'commit-current'; version: string } | { kind: 'persist' };

/** What the operator who asked is told (operator-session.ts routes it; with nobody asking it goes nowhere). */
export type Report =
  | { type: 'accepted'; version: string }
  /** `probation`: the version is now on probation, whose end is reported on its own. */
  | { type: 'succeeded'; version: string; probation: boolean }
  | { type: 'failed'; version: string; reason: string; code: RefusalCode }
  | { type: 'probation-passed'; version: string }
  | { type: 'probation-failed'; version: string; reason: string; code: RefusalCode }
  | { type: 'halted'; version: string; since: string }
  | { type: 'resumed'; version: string }
  | { type: 'refused'; request: 'halt' | 'resume'; reason: string; code: RefusalCode };

export type Effect =
  | { kind: 'spawn'; id: number; version: string; role: Role; fromVersion: string | null }
  | { kind: 'send'; id: number; message: UpgraderMessage }
  | { kind: 'terminate'; id: number }
  | { kind: 'kill-tree'; id: number }
  /** Best effort: a failure is logged, and start-up repairs `current` from the state file. */
  | { kind: 'commit-current'; version: string }
  /** Best effort: answered with `recorded` or `record-failed`. */
  | { kind: 'persist'; outcome: Outcome | null }
  | { kind: 'quarantine'; version: string; reason: string }
  | { kind: 'lift-quarantine'; version: string }
  | { kind: 'record-status'; id: number; message: string }
  | { kind: 'start-timer'; timer: TimerName; ms: number }
  | { kind: 'cancel-timer'; timer: TimerName }
  | { kind: 'exit'; code: number }
  | { kind: 'report'; report: Report };

/** A step: the next context, the writes it depends on (done first), then everything else in order. `ignored` says why nothing happens. */
export type Step = { next: Context; durable: DurableWrite[]; effects: Effect[]; ignored?: string };

export function initialContext(): Context {
  return { state: 'idle', active: null, candidate: null, handoff: null, probation: null, retiring: [], previous: null, nextId: 1, exitCode: null, pending: null, halt: null };
}

/** The exit status a shell would report: the code, or 128 + the signal's number. */
export function exitStatusOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
}

/** The statuses `upgrader run` keeps for its own conditions (64 usage ... 78 layout; see errors.ts). */
export const RESERVED_EXIT_STATUSES = { first: 64, last: 78 } as const;
/** What `upgrader run` exits with when its agent exited with a reserved status. */
export const AGENT_RESERVED_STATUS = 79;

/**
 * The status `upgrader run` exits with when its agent ends on its own: the agent's status, except one the
 * upgrader reserves (an agent exiting 78 must not read as a broken layout, which the units never restart),
 * which becomes 79.
 */
export function runExitStatusForAgent(code: number | null, signal: NodeJS.Signals | null): number {
  const status = exitStatusOf(code, signal);
  return status >= RESERVED_EXIT_STATUSES.first && status <= RESERVED_EXIT_STATUSES.last ? AGENT_RESERVED_STATUS : status;
}

/** Spawn failures that say the host is short of something, not that the version is bad: they never quarantine. */
const RESOURCE_ERRORS = new Set(['EMFILE', 'ENFILE', 'EAGAIN', 'ENOMEM', 'ENOSPC']);
export const isResourceError = (code: string | undefined): boolean => code !== undefined && RESOURCE_ERRORS.has(code);

function describeExit(code: number | null, signal: NodeJS.Signals | null, error?: string): string {
  if (error) return `could not be started (${error})`;
  return signal ? `was killed by ${signal}` : `exited with code ${code}`;
}

const retireTimer = (id: number): TimerName => `retire:${id}`;

// ---------------------------------------------------------------- building steps

/** A step with no durable writes: the only kind that can follow another (its writes would come after effects). */
type Followup = Step & { durable: [] };

const step = (next: Context, effects: Effect[] = []): Followup => ({ next, durable: [], effects });
const durableStep = (durable: DurableWrite[], next: Context, effects: Effect[] = []): Step => ({ next, durable, effects });

function ignore(ctx: Context, why: string): Followup {
  return { next: ctx, durable: [], effects: [], ignored: why };
}

/** One step after another. The type keeps durable writes out of the second: they would follow the first's effects. */
function then<S extends Step>(first: S, more: (ctx: Context) => Followup): S {
  const second = more(first.next);
  return { ...first, next: second.next, effects: [...first.effects, ...second.effects] };
}

const persist = (outcome: Outcome | null = null): Effect => ({ kind: 'persist', outcome });
const report = (r: Report): Effect => ({ kind: 'report', report: r });

function outcomeOf(handoff: Handoff | Probation, to: string, result: UpgradeResult, failure: { reason: string; code: RefusalCode } | null): Outcome {
  const origin = 'origin' in handoff ? handoff.origin : 'agent';
  return { origin, from: handoff.from, to, mode: handoff.mode, startedAt: handoff.startedAt, result, reason: failure?.reason ?? null, code: failure?.code ?? null };
}

/**
 * Starts an agent now, or, while a retiring agent is still exiting, enters `waiting` and starts it once every
 * retiring agent is gone: two processes of one version (or a fourth agent) never run side by side.
 */
function startWhenClear(ctx: Context, pending: Pending, config: Config, stateAfter: StateName): Followup {
  if (ctx.retiring.length > 0) return step({ ...ctx, state: 'waiting', pending }, [persist()]);
  return startNow({ ...ctx, state: stateAfter, pending: null }, pending, config);
}

function startNow(ctx: Context, pending: Pending, config: Config): Followup {
  const id = ctx.nextId;
  const agent: AgentRef = { id, version: pending.version, ready: false };
  const spawn: Effect = { kind: 'spawn', id, version: pending.version, role: pending.role, fromVersion: pending.fromVersion };
  if (pending.role === 'active') {
    return step({ ...ctx, state: 'running', active: agent, pending: null, nextId: id + 1 }, [spawn, persist()]);
  }
  return step({ ...ctx, state: 'verifying', candidate: agent, pending: null, nextId: id + 1 }, [spawn, { kind: 'start-timer', timer: 'ready', ms: config.readyMs }, persist()]);
}

/** Tells an agent to stop; it is retiring from now on, and gets SIGTERM if it outlives `stopMs`. */
function tellToStop(ctx: Context, agent: AgentRef, config: Config): Followup {
  return step({ ...ctx, retiring: [...ctx.retiring, { id: agent.id, version: agent.version, phase: 'stopping' }] }, [
    { kind: 'send', id: agent.id, message: { type: 'stop' } },
    { kind: 'start-timer', timer: retireTimer(agent.id), ms: config.stopMs },
  ]);
}

/** SIGTERM now, and the tree killed if the agent outlives `graceMs`. */
function terminate(ctx: Context, agent: AgentRef | Retiring, graceMs: number): Followup {
  const others = ctx.retiring.filter((r) => r.id !== agent.id);
  return step({ ...ctx, retiring: [...others, { id: agent.id, version: agent.version, phase: 'terminating' }] }, [
    { kind: 'terminate', id: agent.id },
    { kind: 'start-timer', timer: retireTimer(agent.id), ms: graceMs },
  ]);
}

function killTree(ctx: Context, agent: AgentRef | Retiring): Followup {
  const others = ctx.retiring.filter((r) => r.id !== agent.id);
  return step({ ...ctx, retiring: [...others, { id: agent.id, version: agent.version, phase: 'killing' }] }, [
    { kind: 'cancel-timer', timer: retireTimer(agent.id) },
    { kind: 'kill-tree', id: agent.id },
  ]);
}

// ---------------------------------------------------------------- the handoff, step by step

function acceptUpgrade(ctx: Context, active: AgentRef, event: Extract<Event, { type: 'upgrade-requested' }>, config: Config): Step {
  const { version, mode, at, origin } = event;
  const handoff: Handoff = { origin, from: active.version, to: version, mode, startedAt: at, retiring: null, failure: null };
  const effects: Effect[] = [];
  if (event.force) effects.push({ kind: 'lift-quarantine', version });
  if (origin === 'operator') effects.push(report({ type: 'accepted', version }));
  if (ctx.probation) {
    const cut = ctx.probation.version;
    effects.push({ kind: 'cancel-timer', timer: 'probation' }, report({ type: 'probation-failed', version: cut, code: 'superseded', reason: `the probation of ${cut} was cut short by an upgrade to ${version}` }));
  }
  const accepted = durableStep([{ kind: 'persist' }], { ...ctx, handoff, probation: null }, effects);
  if (mode === 'live') {
    return then(accepted, (c) => startWhenClear(c, { role: 'candidate', version, fromVersion: active.version }, config, 'verifying'));
  }
  return then(accepted, (c) => drainOld(c, active, config));
}

/** Tells the active agent to stop for the handoff; it is retiring until it exits. */
function drainOld(ctx: Context, old: AgentRef, config: Config): Followup {
  // Written before `stop` is sent, not after: the old agent answers `stopped` at once, and a write
  // still in progress then would hold back `go` (the gap) instead of the old agent's work (free).
  const draining: Context = { ...ctx, state: 'draining', active: null, handoff: { ...ctx.handoff!, retiring: old.id } };
  return then(step(draining, [persist()]), (c) => tellToStop(c, old, config));
}

function candidateReady(ctx: Context, config: Config): Step {
  const handoff = ctx.handoff!;
  const base: Context = { ...ctx, candidate: { ...ctx.candidate!, ready: true } };
  const committed = durableStep([{ kind: 'commit-current', version: handoff.to }], base, [{ kind: 'cancel-timer', timer: 'ready' }]);
  // Live mode, the old agent still works: only now is it asked to stop.
  if (ctx.active) return then(committed, (c) => drainOld(c, ctx.active!, config));
  // Sequential mode, or the old agent died while the candidate verified: nobody works now, so go at once.
  return then(committed, (c) => promote(c, config));
}

/** The candidate becomes the active agent. `go` is sent before anything is written: the gap is one event-loop turn. */
function promote(ctx: Context, config: Config): Followup {
  const handoff = ctx.handoff!;
  const candidate = ctx.candidate!;
  const probation: Probation | null =
    config.probationMs > 0 ? { from: handoff.from, version: handoff.to, mode: handoff.mode, startedAt: handoff.startedAt, previous: ctx.previous, halt: ctx.halt } : null;
  const effects: Effect[] = [{ kind: 'send', id: candidate.id, message: { type: 'go' } }];
  if (probation) effects.push({ kind: 'start-timer', timer: 'probation', ms: config.probationMs });
  // The operator hears `succeeded` on `recorded`, once this is durable, never before.
  effects.push(persist(outcomeOf(handoff, handoff.to, 'succeeded', null)));
  return step({ ...ctx, state: 'running', active: candidate, candidate: null, handoff: null, probation, previous: handoff.from, halt: null }, effects);
}

/**
 * The candidate failed (exit, timeout, protocol error, or `current` could not be moved to it).
 * Its tree is killed; if it has already exited, only what it left behind is, and nothing waits for it.
 * `versionAtFault`: the version itself failed (not the disk, not the host): it is quarantined.
 */
function failCandidate(ctx: Context, failure: { reason: string; code: RefusalCode }, config: Config, exited = false, versionAtFault = true): Followup {
  const handoff = ctx.handoff!;
  const { reason } = failure;
  let failed = step({ ...ctx, candidate: null }, [{ kind: 'cancel-timer', timer: 'ready' }]);
  const candidate = ctx.candidate;
  if (candidate) failed = exited ? then(failed, (c) => step(c, [{ kind: 'kill-tree', id: candidate.id }])) : then(failed, (c) => killTree(c, candidate));
  const outcome = outcomeOf(handoff, handoff.to, 'failed', failure);
  const aftermath: Effect[] = [persist(outcome)];
  if (versionAtFault) aftermath.push({ kind: 'quarantine', version: handoff.to, reason });
  if (handoff.origin === 'operator') aftermath.push(report({ type: 'failed', version: handoff.to, ...failure }));
  if (handoff.retiring !== null) {
    // The old agent is already stopping and cannot be called back; start its version again once it is gone.
    return then(failed, (c) => step({ ...c, handoff: { ...handoff, failure } }, [{ kind: 'commit-current', version: handoff.from }, ...aftermath]));
  }
  if (ctx.active) {
    const active = ctx.active;
    const tellAgent: Effect[] = handoff.origin === 'agent' ? [{ kind: 'send', id: active.id, message: { type: 'upgrade-failed', version: handoff.to, ...failure } }] : [];
    return then(failed, (c) => step({ ...c, state: 'running', handoff: null }, [...tellAgent, ...aftermath]));
  }
  // From `halted` nothing is started on our own: the old version may not run any more (a migration).
  if (ctx.halt) return then(failed, (c) => haltAgain({ ...c, handoff: null }, { ...ctx.halt!, reason }, [{ kind: 'commit-current', version: handoff.from }, ...aftermath]));
  return then(failed, (c) => restartFrom(c, handoff, aftermath, config));
}

/** Nobody works: start the version that proved itself again, as the active agent (once no retiring agent is left). */
function restartFrom(ctx: Context, handoff: Handoff, aftermath: Effect[], config: Config): Followup {
  const recorded = step({ ...ctx, handoff: null }, [{ kind: 'commit-current', version: handoff.from }, ...aftermath]);
  return then(recorded, (c) => startWhenClear(c, { role: 'active', version: handoff.from, fromVersion: null }, config, 'running'));
}

/** The retiring agent sent `stopped` or exited: the candidate may go (or, after a failure, the old version comes back). */
function oldReleased(ctx: Context, config: Config): Followup {
  const handoff = ctx.handoff!;
  const released: Context = { ...ctx, handoff: { ...handoff, retiring: null } };
  if (handoff.failure !== null) return restartFrom(released, handoff, [], config);
  if (ctx.candidate) return promote(released, config);
  // Sequential mode: only now does the candidate start.
  return startWhenClear(released, { role: 'candidate', version: handoff.to, fromVersion: handoff.from }, config, 'verifying');
}

function rollBackProbation(ctx: Context, probation: Probation, reason: string, config: Config): Followup {
  const failure = { reason, code: 'rolled-back' as const };
  const recorded = step({ ...ctx, active: null, probation: null, previous: probation.previous }, [
    { kind: 'cancel-timer', timer: 'probation' },
    { kind: 'commit-current', version: probation.from },
    persist(outcomeOf(probation, probation.version, 'rolled-back', failure)),
    { kind: 'quarantine', version: probation.version, reason },
    report({ type: 'probation-failed', version: probation.version, ...failure }),
  ]);
  if (probation.halt) return then(recorded, (c) => haltAgain(c, { ...probation.halt!, reason }, []));
  return then(recorded, (c) => startWhenClear(c, { role: 'active', version: probation.from, fromVersion: null }, config, 'running'));
}

// ---------------------------------------------------------------- halt and resume

/** `upgrader halt`: written durably first (a restart from here on comes back halted), then the active agent is told `stop`. */
function haltRequested(ctx: Context, event: Extract<Event, { type: 'halt-requested' }>, config: Config): Step {
  const active = ctx.active;
  if (!active) return step(ctx, [refuseHalt(ctx)]);
  const halt: Halt = { version: active.version, since: event.at, by: event.by, reason: null };
  const effects: Effect[] = [];
  if (ctx.probation) {
    const cut = ctx.probation.version;
    effects.push({ kind: 'cancel-timer', timer: 'probation' }, report({ type: 'probation-failed', version: cut, code: 'superseded', reason: `the probation of ${cut} was cut short by a halt` }));
  }
  // The durable write names the agent as retiring, so that a crash right after it leaves its PID on record.
  const stopping = tellToStop({ ...ctx, state: 'halting', active: null, probation: null, halt }, active, config);
  return durableStep([{ kind: 'persist' }], stopping.next, [...effects, ...stopping.effects]);
}

/** Back to halted after a failed upgrade from it (once the candidate's tree is gone, if it is still exiting). */
function haltAgain(ctx: Context, halt: Halt, effects: Effect[]): Followup {
  return step({ ...ctx, state: ctx.retiring.length > 0 ? 'halting' : 'halted', halt }, effects);
}

/** The last agent of a halt is gone: halted. */
function halted(ctx: Context): Followup {
  const halt = ctx.halt!;
  return step({ ...ctx, state: 'halted' }, [persist(), report({ type: 'halted', version: halt.version, since: halt.since })]);
}

function refuseHalt(ctx: Context): Effect {
  if (ctx.handoff || ctx.pending) return report({ type: 'refused', request: 'halt', code: 'in-progress', reason: `a handoff is in progress (the upgrader is ${ctx.state}); halt once it has ended` });
  if (ctx.state === 'halting') return report({ type: 'refused', request: 'halt', code: 'in-progress', reason: 'the agent is already being halted' });
  return report({ type: 'refused', request: 'halt', code: 'not-running', reason: `the upgrader is ${ctx.state}, with no active agent to halt` });
}

function refuseResume(ctx: Context): Effect {
  if (ctx.state === 'halting') return report({ type: 'refused', request: 'resume', code: 'in-progress', reason: 'the agent is still being halted; resume once it is halted' });
  return report({ type: 'refused', request: 'resume', code: 'not-halted', reason: `the upgrader is ${ctx.state}, not halted: there is nothing to resume` });
}

/** `upgrader resume`: the halt is lifted durably, then the version `current` names starts as the active agent. */
function resume(ctx: Context, config: Config): Step {
  const halt = ctx.halt!;
  const lifted = durableStep([{ kind: 'persist' }], { ...ctx, halt: null });
  const started = then(lifted, (c) => startNow(c, { role: 'active', version: halt.version, fromVersion: null }, config));
  return then(started, (c) => step(c, [report({ type: 'resumed', version: halt.version })]));
}

/** `upgrader upgrade` from halted: the candidate starts with nobody to take over from, and gets `go` once ready. */
function upgradeFromHalt(ctx: Context, event: Extract<Event, { type: 'upgrade-requested' }>, config: Config): Step {
  if (event.origin !== 'operator') return ignore(ctx, 'no agent runs while halted');
  if (event.problem) return step(ctx, [answer(event, null, event.problem)]);
  const from = ctx.halt!.version;
  const handoff: Handoff = { origin: 'operator', from, to: event.version, mode: 'sequential', startedAt: event.at, retiring: null, failure: null };
  const effects: Effect[] = [report({ type: 'accepted', version: event.version })];
  if (event.force) effects.unshift({ kind: 'lift-quarantine', version: event.version });
  const accepted = durableStep([{ kind: 'persist' }], { ...ctx, handoff }, effects);
  return then(accepted, (c) => startNow(c, { role: 'candidate', version: event.version, fromVersion: from }, config));
}

/**
 * The upgrader was asked to stop (SIGTERM, SIGINT, SIGHUP). The active agent is told `stop` as in a
 * handoff, so that its stop handler runs on `systemctl stop` too: `stopped` and exit within `--stop-timeout`,
 * then SIGTERM, then its tree killed after `--kill-timeout`. A candidate does no work: SIGTERM at once.
 * Agents already retiring keep their deadlines.
 */
function shutDown(ctx: Context, signal: string, config: Config): Followup {
  let stopping = step({ ...ctx, state: 'stopping', exitCode: 0, active: null, candidate: null, handoff: null, probation: null, pending: null }, [
    { kind: 'cancel-timer', timer: 'ready' },
    { kind: 'cancel-timer', timer: 'probation' },
  ]);
  const failure = { reason: `the upgrader received ${signal}`, code: 'interrupted' as const };
  const handoff = ctx.handoff;
  if (handoff) {
    const during = { ...failure, reason: `${failure.reason} during the handoff` };
    stopping = then(stopping, (c) =>
      step(c, [
        { kind: 'commit-current', version: handoff.from },
        persist(outcomeOf(handoff, handoff.to, 'failed', during)),
        ...(handoff.origin === 'operator' ? [report({ type: 'failed', version: handoff.to, ...during })] : []),
      ]),
    );
  }
  const probation = ctx.probation;
  if (probation) stopping = then(stopping, (c) => step(c, [report({ type: 'probation-failed', version: probation.version, code: 'interrupted', reason: `${failure.reason} before the probation of ${probation.version} ended` })]));
  const active = ctx.active;
  if (active) stopping = then(stopping, (c) => tellToStop(c, active, config));
  const candidate = ctx.candidate;
  if (candidate) stopping = then(stopping, (c) => terminate(c, candidate, config.killMs));
  if (stopping.next.retiring.length > 0) return then(stopping, (c) => step(c, [persist()]));
  return then(stopping, finishIfEmpty);
}

function finishIfEmpty(ctx: Context): Followup {
  if (ctx.state !== 'stopping' || ctx.active || ctx.candidate || ctx.retiring.length > 0) return step(ctx);
  return step({ ...ctx, state: 'exited' }, [persist(), { kind: 'exit', code: ctx.exitCode ?? 0 }]);
}

// ---------------------------------------------------------------- cells shared by several states

type Cell<E extends EventType> = (ctx: Context, event: Extract<Event, { type: E }>, config: Config) => Step;
type Row = { [E in EventType]: Cell<E> };

const ignoring =
  (why: string) =>
  (ctx: Context): Followup =>
    ignore(ctx, why);

const isRetiring = (ctx: Context, id: number): boolean => ctx.retiring.some((r) => r.id === id);

/** Only `idle` starts; `start` is sent once, at start-up. */
const startAgain = ignoring('the upgrader has already started');

function recordStatus(ctx: Context, event: Extract<Event, { type: 'status' }>): Followup {
  const known = ctx.active?.id === event.id || ctx.candidate?.id === event.id || isRetiring(ctx, event.id);
  if (!known) return ignore(ctx, 'not from an agent of this upgrader');
  return step(ctx, [{ kind: 'record-status', id: event.id, message: event.message }]);
}

/** `ready` from the active agent (after a restart, or started by recovery): it is up. */
function activeReady(ctx: Context, event: Extract<Event, { type: 'ready' }>): Followup {
  if (ctx.active?.id !== event.id) return ignore(ctx, 'only the active agent or a verifying candidate reports ready');
  if (ctx.active.ready) return ignore(ctx, 'the active agent already said ready');
  return step({ ...ctx, active: { ...ctx.active, ready: true } }, [persist()]);
}

/** `stopped` outside a handoff's drain: from the candidate it is a protocol error; otherwise the exit decides. */
function stoppedOutOfTurn(ctx: Context, event: Extract<Event, { type: 'stopped' }>, config: Config): Followup {
  if (ctx.candidate?.id === event.id) return failCandidate(ctx, { reason: 'protocol error: the candidate sent stopped before it was told go', code: 'candidate-failed' }, config);
  return ignore(ctx, 'only the agent draining for a handoff frees the work with stopped; others are awaited by their exit');
}

function candidateProtocolError(ctx: Context, event: Extract<Event, { type: 'protocol-error' }>, config: Config): Followup {
  if (ctx.candidate?.id !== event.id) return ignore(ctx, 'an active or retiring agent is not judged by its lines (they are logged)');
  return failCandidate(ctx, { reason: `protocol error from the candidate: ${event.detail}`, code: 'candidate-failed' }, config);
}

/** A retiring agent is gone: it leaves the list. The caller writes the state (which names live agents) once, in what follows. */
function forget(ctx: Context, id: number): Followup {
  return step({ ...ctx, retiring: ctx.retiring.filter((r) => r.id !== id) }, [{ kind: 'cancel-timer', timer: retireTimer(id) }]);
}

/** A retiring agent is gone and nothing follows from it: the state file stops naming it. */
function retiredExit(ctx: Context, id: number): Followup {
  return then(forget(ctx, id), (c) => step(c, [persist()]));
}

function candidateExited(ctx: Context, event: Extract<Event, { type: 'exited' }>, config: Config): Followup {
  const candidate = ctx.candidate!;
  const how = describeExit(event.code, event.signal, event.error);
  const when = event.error ? '' : ` before ${candidate.ready ? 'it was told go' : 'reporting ready'}`;
  // A host out of descriptors, processes or memory says nothing about the version: no quarantine.
  return failCandidate(ctx, { reason: `the candidate ${candidate.version} ${how}${when}`, code: 'candidate-failed' }, config, true, !isResourceError(event.errorCode));
}

/** The active agent ended on its own, outside probation: so do we, with its status, and the init system decides what comes next. */
function activeEnded(ctx: Context, event: Extract<Event, { type: 'exited' }>): Followup {
  return finishIfEmpty({ ...ctx, state: 'stopping', active: null, exitCode: runExitStatusForAgent(event.code, event.signal) });
}

/** Everything an upgrade request can be refused for, in the order it is checked. */
function refusal(ctx: Context, event: Extract<Event, { type: 'upgrade-requested' }>): Problem | null {
  if (ctx.handoff) return { code: 'in-progress', reason: `a handoff to ${ctx.handoff.to} is already in progress` };
  if (ctx.pending) return { code: 'in-progress', reason: `${ctx.pending.version} is being started again once the old agent has exited` };
  if (ctx.state !== 'running' || !ctx.active) return { code: 'not-running', reason: `the upgrader is ${ctx.state}, with no active agent` };
  if (event.problem) return event.problem;
  if (event.version === ctx.active.version) return { code: 'running-version', reason: `${event.version} is the running version` };
  return null;
}

function upgradeRequested(ctx: Context, event: Extract<Event, { type: 'upgrade-requested' }>, config: Config): Step {
  const fromAgent = event.origin === 'agent';
  if (fromAgent && ctx.candidate?.id === event.id) {
    return failCandidate(ctx, { reason: 'protocol error: the candidate asked for an upgrade before it was told go', code: 'candidate-failed' }, config);
  }
  if (fromAgent && ctx.active?.id !== event.id) return ignore(ctx, 'only the active agent may ask for an upgrade');
  const problem = refusal(ctx, event);
  if (problem) return step(ctx, [answer(event, ctx.active, problem)]);
  return acceptUpgrade(ctx, ctx.active!, event, config);
}

/** A refusal, to whoever asked. */
function answer(event: Extract<Event, { type: 'upgrade-requested' }>, active: AgentRef | null, problem: Problem): Effect {
  if (event.origin === 'operator' || !active) return report({ type: 'failed', version: event.version, ...problem });
  return { kind: 'send', id: active.id, message: { type: 'upgrade-failed', version: event.version, ...problem } };
}

/** A retiring agent's deadline passed: `stop` unanswered -> SIGTERM; SIGTERM unanswered -> its tree is killed. */
function retireTimeout(ctx: Context, timer: TimerName, config: Config): Followup {
  const id = Number(timer.slice('retire:'.length));
  const retiring = ctx.retiring.find((r) => r.id === id);
  if (!retiring) return ignore(ctx, 'the agent has exited already');
  if (retiring.phase === 'stopping') return terminate(ctx, retiring, config.killMs);
  if (retiring.phase === 'terminating') return killTree(ctx, retiring);
  return ignore(ctx, 'its tree has been killed; the exit is awaited');
}

const isRetireTimer = (timer: TimerName): boolean => timer.startsWith('retire:');

/** The timers that mean the same in every state with agents: retiring agents' deadlines and the record retry. */
function commonTimeout(ctx: Context, timer: TimerName, config: Config): Followup | null {
  if (isRetireTimer(timer)) return retireTimeout(ctx, timer, config);
  if (timer === 'record') return step(ctx, [persist()]);
  return null;
}

/** A write this step depended on failed: the step was dropped. What is told, and to whom. */
function ioFailed(ctx: Context, event: Extract<Event, { type: 'io-failed' }>, config: Config): Followup {
  const trigger = event.trigger;
  if (trigger.type === 'upgrade-requested') {
    return step(ctx, [answer(trigger, ctx.active, { code: 'io', reason: `the upgrade could not be recorded durably (${event.error}); nothing was changed` })]);
  }
  if (trigger.type === 'halt-requested' || trigger.type === 'resume-requested') {
    const request = trigger.type === 'halt-requested' ? 'halt' : 'resume';
    return step(ctx, [report({ type: 'refused', request, code: 'io', reason: `the ${request} could not be recorded durably (${event.error}); nothing was changed` })]);
  }
  if (trigger.type === 'ready' && ctx.handoff && ctx.candidate?.id === trigger.id) {
    // The move of `current` is undone where it got that far (layout.ts); pointing it at `from` again makes
    // sure, so that `current`, the state and the reported failure agree.
    const { from, to } = ctx.handoff;
    const failed = failCandidate(ctx, { reason: `current could not be pointed at ${to} (${event.error}); it still names ${from}`, code: 'io' }, config, false, false);
    if (failed.effects.some((e) => e.kind === 'commit-current')) return failed;
    return { ...failed, effects: [{ kind: 'commit-current', version: from }, ...failed.effects] };
  }
  return ignore(ctx, 'only an accepted upgrade, a halt, a resume and a candidate\'s ready write durably first');
}

/** The result an operator waits for is durable now: only now is it told. */
function recorded(ctx: Context, event: Extract<Event, { type: 'recorded' }>): Followup {
  const { outcome } = event;
  if (outcome.result !== 'succeeded' || outcome.origin !== 'operator') return ignore(ctx, 'only an operator waits for a success');
  return step(ctx, [report({ type: 'succeeded', version: outcome.to, probation: ctx.probation?.version === outcome.to })]);
}

/**
 * A state write failed. The supervisor keeps the outcome it carried and writes it with the next persist,
 * which a timer brings about; an operator waiting for that success is told it is not recorded yet (so that
 * nobody is ever told `succeeded` of an upgrade that a crash would then undo).
 */
function recordFailed(ctx: Context, event: Extract<Event, { type: 'record-failed' }>): Followup {
  const effects: Effect[] = [{ kind: 'start-timer', timer: 'record', ms: RECORD_RETRY_MS }];
  const outcome = event.outcome;
  if (outcome?.result === 'succeeded' && outcome.origin === 'operator') {
    const reason = `${outcome.to} runs, but its success could not be recorded (${event.error}); the upgrader retries every ${formatDuration(RECORD_RETRY_MS)}, and a restart before that succeeds goes back to ${outcome.from}`;
    effects.unshift(report({ type: 'failed', version: outcome.to, reason, code: 'not-recorded' }));
  }
  return step(ctx, effects);
}

// ---------------------------------------------------------------- the table

const stopOnSignal: Cell<'shutdown'> = (ctx, event, config) => shutDown(ctx, event.signal, config);
const refusesHalt: Cell<'halt-requested'> = (ctx) => step(ctx, [refuseHalt(ctx)]);
const refusesResume: Cell<'resume-requested'> = (ctx) => step(ctx, [refuseResume(ctx)]);
/** A state with no timer of its own: retiring agents' deadlines and the record retry, nothing else. */
const onlyCommonTimers: Cell<'timeout'> = (ctx, event, config) => commonTimeout(ctx, event.timer, config) ?? ignore(ctx, 'a timer of a state already left');

const idle: Row = {
  start: (ctx, event, config) => {
    // Halted before the restart: halted still, and nothing is started.
    if (event.halt) return step({ ...ctx, state: 'halted', previous: event.previous, halt: { ...event.halt, version: event.version } }, [persist()]);
    const started = startNow({ ...ctx, previous: event.previous, probation: event.probation }, { role: 'active', version: event.version, fromVersion: null }, config);
    if (!event.probation) return started;
    return { ...started, effects: [...started.effects, { kind: 'start-timer', timer: 'probation', ms: config.probationMs }] };
  },
  'upgrade-requested': (ctx, event) => (event.origin === 'operator' ? step(ctx, [answer(event, null, refusal(ctx, event)!)]) : ignore(ctx, 'no agent exists yet')),
  'halt-requested': refusesHalt,
  'resume-requested': refusesResume,
  ready: ignoring('no agent exists yet'),
  stopped: ignoring('no agent exists yet'),
  status: ignoring('no agent exists yet'),
  'protocol-error': ignoring('no agent exists yet'),
  exited: ignoring('no agent exists yet'),
  timeout: ignoring('no timer runs yet'),
  shutdown: (ctx) => step({ ...ctx, state: 'exited', exitCode: 0 }, [persist(), { kind: 'exit', code: 0 }]),
  'io-failed': ignoring('nothing has been written yet'),
  recorded: ignoring('nothing has been written yet'),
  'record-failed': ignoring('nothing has been written yet'),
};

const running: Row = {
  start: startAgain,
  'upgrade-requested': upgradeRequested,
  'halt-requested': haltRequested,
  'resume-requested': refusesResume,
  ready: activeReady,
  stopped: stoppedOutOfTurn,
  status: recordStatus,
  'protocol-error': candidateProtocolError,
  exited: (ctx, event, config) => {
    if (isRetiring(ctx, event.id)) return retiredExit(ctx, event.id);
    if (ctx.active?.id !== event.id) return ignore(ctx, 'not an agent of this upgrader');
    if (ctx.probation) return rollBackProbation(ctx, ctx.probation, `${ctx.active.version} ${describeExit(event.code, event.signal, event.error)} during its probation`, config);
    return activeEnded(ctx, event);
  },
  timeout: (ctx, event, config) => {
    const common = commonTimeout(ctx, event.timer, config);
    if (common) return common;
    if (event.timer === 'probation' && ctx.probation) {
      const version = ctx.probation.version;
      return step({ ...ctx, probation: null }, [persist(), report({ type: 'probation-passed', version })]);
    }
    return ignore(ctx, 'a timer of a state already left');
  },
  shutdown: stopOnSignal,
  'io-failed': ioFailed,
  recorded,
  'record-failed': recordFailed,
};

const verifying: Row = {
  start: startAgain,
  'upgrade-requested': upgradeRequested,
  'halt-requested': refusesHalt,
  'resume-requested': refusesResume,
  ready: (ctx, event, config) => (ctx.candidate?.id === event.id && !ctx.candidate.ready ? candidateReady(ctx, config) : activeReady(ctx, event)),
  stopped: stoppedOutOfTurn,
  status: recordStatus,
  'protocol-error': candidateProtocolError,
  exited: (ctx, event, config) => {
    if (ctx.candidate?.id === event.id) return candidateExited(ctx, event, config);
    if (isRetiring(ctx, event.id)) return retiredExit(ctx, event.id);
    // The old agent died while the candidate verifies: it takes over once it is ready.
    if (ctx.active?.id === event.id) return step({ ...ctx, active: null }, [persist()]);
    return ignore(ctx, 'not an agent of this upgrader');
  },
  timeout: (ctx, event, config) => {
    const common = commonTimeout(ctx, event.timer, config);
    if (common) return common;
    if (event.timer === 'ready' && ctx.candidate) {
      return failCandidate(ctx, { reason: `the candidate ${ctx.candidate.version} did not report ready within ${formatDuration(config.readyMs)}`, code: 'candidate-failed' }, config);
    }
    return ignore(ctx, 'a timer of a state already left');
  },
  shutdown: stopOnSignal,
  'io-failed': ioFailed,
  recorded,
  'record-failed': recordFailed,
};

const draining: Row = {
  start: startAgain,
  'upgrade-requested': upgradeRequested,
  'halt-requested': refusesHalt,
  'resume-requested': refusesResume,
  ready: ignoring('no agent here is waiting to report ready: the candidate has, the retiring agent is leaving'),
  stopped: (ctx, event, config) => {
    const handoff = ctx.handoff!;
    // `stopped` frees the work for a ready candidate at once. Starting a process (the sequential
    // candidate, or the old version again after a failure) waits for the old one to exit instead.
    if (handoff.retiring !== event.id) return stoppedOutOfTurn(ctx, event, config);
    if (ctx.candidate?.ready && handoff.failure === null) return oldReleased(ctx, config);
    return ignore(ctx, 'a process starts only once the retiring agent has exited');
  },
  status: recordStatus,
  'protocol-error': candidateProtocolError,
  exited: (ctx, event, config) => {
    if (ctx.candidate?.id === event.id) return candidateExited(ctx, event, config);
    // No write between this exit and `go`: promote writes the outcome after sending it.
    if (ctx.handoff!.retiring === event.id) return then(forget(ctx, event.id), (c) => oldReleased(c, config));
    if (isRetiring(ctx, event.id)) return retiredExit(ctx, event.id);
    return ignore(ctx, 'not an agent of this upgrader');
  },
  timeout: onlyCommonTimers,
  shutdown: stopOnSignal,
  'io-failed': ioFailed,
  recorded,
  'record-failed': recordFailed,
};

const waiting: Row = {
  start: startAgain,
  'upgrade-requested': upgradeRequested,
  'halt-requested': refusesHalt,
  'resume-requested': refusesResume,
  ready: activeReady,
  stopped: stoppedOutOfTurn,
  status: recordStatus,
  'protocol-error': candidateProtocolError,
  exited: (ctx, event, config) => {
    if (isRetiring(ctx, event.id)) {
      const pending = ctx.pending!;
      if (ctx.retiring.length > 1) return retiredExit(ctx, event.id);
      return then(forget(ctx, event.id), (c) => startNow(c, pending, config));
    }
    // The active agent died while its candidate waits to start: the candidate takes over once ready.
    if (ctx.active?.id === event.id) return step({ ...ctx, active: null }, [persist()]);
    return ignore(ctx, 'not an agent of this upgrader');
  },
  timeout: onlyCommonTimers,
  shutdown: stopOnSignal,
  'io-failed': ioFailed,
  recorded,
  'record-failed': recordFailed,
};

const halting: Row = {
  start: startAgain,
  'upgrade-requested': (ctx, event) => (event.origin === 'operator' ? step(ctx, [answer(event, null, { code: 'in-progress', reason: 'the agent is being halted; upgrade once it is halted' })]) : ignore(ctx, 'the retiring agent may not ask for an upgrade')),
  'halt-requested': refusesHalt,
  'resume-requested': refusesResume,
  ready: ignoring('the agent is being halted; nothing waits for ready'),
  stopped: ignoring('a halted agent is awaited by its exit'),
  status: recordStatus,
  'protocol-error': ignoring('a retiring agent is not judged by its lines (they are logged)'),
  exited: (ctx, event) => {
    if (!isRetiring(ctx, event.id)) return ignore(ctx, 'not an agent of this upgrader');
    return ctx.retiring.length > 1 ? retiredExit(ctx, event.id) : then(forget(ctx, event.id), halted);
  },
  timeout: onlyCommonTimers,
  // The halt is on record: stopping keeps it, and the next start comes back halted.
  shutdown: stopOnSignal,
  'io-failed': ioFailed,
  recorded,
  'record-failed': recordFailed,
};

const haltedRow: Row = {
  start: startAgain,
  'upgrade-requested': upgradeFromHalt,
  'halt-requested': (ctx) => step(ctx, [report({ type: 'halted', version: ctx.halt!.version, since: ctx.halt!.since })]),
  'resume-requested': (ctx, _event, config) => resume(ctx, config),
  ready: ignoring('no agent runs while halted'),
  stopped: ignoring('no agent runs while halted'),
  status: ignoring('no agent runs while halted'),
  'protocol-error': ignoring('no agent runs while halted'),
  exited: ignoring('no agent runs while halted'),
  timeout: onlyCommonTimers,
  shutdown: (ctx) => step({ ...ctx, state: 'exited', exitCode: 0 }, [persist(), { kind: 'exit', code: 0 }]),
  'io-failed': ioFailed,
  recorded,
  'record-failed': recordFailed,
};

const stopping: Row = {
  start: startAgain,
  'upgrade-requested': (ctx, event) => (event.origin === 'operator' ? step(ctx, [answer(event, null, refusal(ctx, event)!)]) : ignore(ctx, 'only the active agent may ask for an upgrade, and none is left')),
  'halt-requested': refusesHalt,
  'resume-requested': refusesResume,
  ready: ignoring('the upgrader is stopping'),
  stopped: ignoring('the upgrader is stopping; each agent is awaited by its exit'),
  status: recordStatus,
  'protocol-error': ignoring('the upgrader is stopping'),
  exited: (ctx, event) => {
    if (!isRetiring(ctx, event.id)) return ignore(ctx, 'not an agent of this upgrader');
    return ctx.retiring.length > 1 ? retiredExit(ctx, event.id) : then(forget(ctx, event.id), finishIfEmpty);
  },
  timeout: onlyCommonTimers,
  shutdown: ignoring('already stopping: the running deadlines bound the stop'),
  'io-failed': ignoring('only an accepted upgrade, a halt, a resume and a candidate\'s ready write durably first'),
  recorded,
  'record-failed': recordFailed,
};

const exitedRow: Row = {
  start: ignoring('the upgrader has exited'),
  'upgrade-requested': ignoring('the upgrader has exited'),
  'halt-requested': ignoring('the upgrader has exited'),
  'resume-requested': ignoring('the upgrader has exited'),
  ready: ignoring('the upgrader has exited'),
  stopped: ignoring('the upgrader has exited'),
  status: ignoring('the upgrader has exited'),
  'protocol-error': ignoring('the upgrader has exited'),
  exited: ignoring('the upgrader has exited'),
  timeout: ignoring('the upgrader has exited'),
  shutdown: ignoring('the upgrader has exited'),
  'io-failed': ignoring('the upgrader has exited'),
  recorded: ignoring('the upgrader has exited'),
  'record-failed': ignoring('the upgrader has exited'),
};

export const TABLE: Record<StateName, Row> = { idle, running, verifying, draining, waiting, halting, halted: haltedRow, stopping, exited: exitedRow };

/** The whole state machine: the cell of the table for this state and event. */
export function transition(ctx: Context, event: Event, config: Config): Step {
  const cell = TABLE[ctx.state][event.type] as (ctx: Context, event: Event, config: Config) => Step;
  return cell(ctx, event, config);
}

/** The one-word state shown by `status` and written to the state file. */
export function publicState(ctx: Context): PublicState {
  switch (ctx.state) {
    case 'idle':
      return 'starting';
    case 'running':
      return 'running';
    case 'verifying':
    case 'draining':
    case 'waiting':
      return 'upgrading';
    case 'halting':
      return 'halting';
    case 'halted':
      return 'halted';
    case 'stopping':
      return 'stopping';
    case 'exited':
      return 'stopped';
  }
}
