/**
 * The handoff state machine: every decision the supervisor makes, as one pure function
 * `transition(context, event, config) -> { next, effects }`. Nothing here touches a process,
 * a file or a clock; supervisor.ts carries out the effects and turns the world back into events.
 * docs/protocol.md has the same rules as a state x event table.
 *
 * States
 *   idle       before the first agent is started
 *   running    one active agent does the work (possibly on probation after an upgrade)
 *   verifying  a candidate is starting and verifying itself; in live mode the old agent still works
 *   draining   the old agent has been told `stop`; we wait for `stopped` or its exit
 *   waiting    an agent must be started (a candidate, or the active version again), but an old agent
 *              that has said `stopped` is still exiting: nothing new starts beside it. In a live handoff
 *              the active agent works meanwhile; after a probation rollback nobody does until it is gone.
 *   stopping   the upgrader was asked to stop; every agent is terminating
 *   exited     nothing left to supervise; the upgrader exits with `exitCode`
 *
 * Invariants
 *   - At most one agent is ever told to work: a candidate gets `go` only once the old agent has
 *     sent `stopped` or is gone.
 *   - `current` moves to the new version only after the candidate said `ready`, and moves back
 *     whenever the version that had proved itself is started again.
 *   - Durable effects that an outcome depends on (`required`) come first in their batch: if one fails,
 *     the whole transition is dropped and an `io-failed` event is handled in the state before it.
 *   - No agent is started while an old one is still exiting: at most one old agent, one active agent and
 *     one candidate exist at any instant, and never two processes of the version being restarted.
 *   - Success is reported to an operator only once it is durable (`recorded`); a success that could not be
 *     written is reported as such, and its record is retried until it is written.
 */
import { constants } from 'node:os';
import type { HandoffMode, UpgraderMessage } from './protocol.js';
import type { UpgradeResult } from './state.js';
import { formatDuration } from './duration.js';

export type Config = {
  readyMs: number;
  stopMs: number;
  killMs: number;
  probationMs: number;
};

export type StateName = 'idle' | 'running' | 'verifying' | 'draining' | 'waiting' | 'stopping' | 'exited';
export type Role = 'active' | 'candidate';
/** Who asked for an upgrade: the active agent (answered with upgrade-failed) or an operator (answered with reports). */
export type Origin = 'agent' | 'operator';

export type AgentRef = { id: number; version: string; ready: boolean };

/** An agent on its way out. `stopping`: told to stop; `terminating`: sent SIGTERM; `killing`: its tree got SIGKILL. */
export type Dying = { id: number; version: string; phase: 'stopping' | 'terminating' | 'killing' };

export type Handoff = {
  origin: Origin;
  from: string;
  to: string;
  mode: HandoffMode;
  startedAt: string;
  /** The old agent we are draining (told `stop`), until it sends `stopped` or exits. */
  draining: number | null;
  /** Set when the candidate failed while the old agent was already stopping: restart `from` once it is gone. */
  failure: string | null;
};

export type Probation = { from: string; version: string; mode: HandoffMode; startedAt: string; previous: string | null };

/** An agent to start once every old agent has exited (state `waiting`). */
export type Pending = { role: Role; version: string; fromVersion: string | null };

export type Context = {
  state: StateName;
  active: AgentRef | null;
  candidate: AgentRef | null;
  handoff: Handoff | null;
  probation: Probation | null;
  dying: Dying[];
  /** The version that ran before `current`: what a rollback would return to. */
  previous: string | null;
  nextId: number;
  exitCode: number | null;
  /** What the `waiting` state will start once `dying` is empty. */
  pending: Pending | null;
};

export type TimerName = 'ready' | 'probation' | 'record' | `dying:${number}`;

export type Event =
  | { type: 'start'; version: string; previous: string | null; probation: Probation | null }
  | { type: 'upgrade-requested'; origin: Origin; id: number; version: string; mode: HandoffMode; problem: string | null; at: string }
  | { type: 'ready'; id: number }
  | { type: 'stopped'; id: number }
  | { type: 'protocol-error'; id: number; detail: string }
  /** `error`/`errorCode`: the process could not be started at all (spawn failed with that errno). */
  | { type: 'exited'; id: number; code: number | null; signal: NodeJS.Signals | null; error?: string; errorCode?: string }
  | { type: 'timeout'; timer: TimerName }
  | { type: 'shutdown'; signal: string }
  | { type: 'io-failed'; trigger: Event; error: string }
  /** A `persist` carrying an outcome was written durably. */
  | { type: 'recorded'; outcome: Outcome }
  /** An optional `persist` failed; `outcome` is the result it carried, if any (the supervisor keeps it and writes it with the next persist). */
  | { type: 'record-failed'; outcome: Outcome | null; error: string };

/** An upgrade's result. `quarantine`: the new version itself failed (not the disk, not a signal): keep agents from asking for it again. */
export type Outcome = { origin: Origin; from: string; to: string; mode: HandoffMode; startedAt: string; result: UpgradeResult; reason: string | null; quarantine: boolean };

/** How long a failed record waits before it is written again. */
export const RECORD_RETRY_MS = 5000;

export type Effect =
  | { kind: 'spawn'; id: number; version: string; role: Role; fromVersion: string | null }
  | { kind: 'send'; id: number; message: UpgraderMessage }
  | { kind: 'terminate'; id: number }
  | { kind: 'kill-tree'; id: number }
  | { kind: 'commit-current'; version: string; required: boolean }
  | { kind: 'persist'; required: boolean; outcome: Outcome | null }
  | { kind: 'start-timer'; timer: TimerName; ms: number }
  | { kind: 'cancel-timer'; timer: TimerName }
  | { kind: 'exit'; code: number }
  /** To the operator who asked for this handoff. */
  | { kind: 'report'; outcome: 'accepted' | 'succeeded' | 'failed'; version: string; reason: string | null };

export type Step = { next: Context; effects: Effect[] };

export function initialContext(): Context {
  return { state: 'idle', active: null, candidate: null, handoff: null, probation: null, dying: [], previous: null, nextId: 1, exitCode: null, pending: null };
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

const dyingTimer = (id: number): TimerName => `dying:${id}`;

function stay(ctx: Context): Step {
  return { next: ctx, effects: [] };
}

function outcomeOf(handoff: Handoff | Probation, from: string, to: string, result: UpgradeResult, reason: string | null, quarantine = false): Outcome {
  const origin = 'origin' in handoff ? handoff.origin : 'agent';
  return { origin, from, to, mode: handoff.mode, startedAt: handoff.startedAt, result, reason, quarantine };
}

/**
 * Starts an agent now, or, while an old agent is still exiting, enters `waiting` and starts it once every
 * old agent is gone: two processes of one version (or a third agent) never run side by side.
 */
function startWhenClear(ctx: Context, pending: Pending, config: Config, stateAfter: StateName): Step {
  if (ctx.dying.length > 0) {
    return { next: { ...ctx, state: 'waiting', pending }, effects: [{ kind: 'persist', required: false, outcome: null }] };
  }
  return startNow({ ...ctx, state: stateAfter, pending: null }, pending, config);
}

function startNow(ctx: Context, pending: Pending, config: Config): Step {
  const id = ctx.nextId;
  const agent: AgentRef = { id, version: pending.version, ready: false };
  const spawn: Effect = { kind: 'spawn', id, version: pending.version, role: pending.role, fromVersion: pending.fromVersion };
  if (pending.role === 'active') {
    return { next: { ...ctx, state: 'running', active: agent, pending: null, nextId: id + 1 }, effects: [spawn, { kind: 'persist', required: false, outcome: null }] };
  }
  return {
    next: { ...ctx, state: 'verifying', candidate: agent, pending: null, nextId: id + 1 },
    effects: [spawn, { kind: 'start-timer', timer: 'ready', ms: config.readyMs }, { kind: 'persist', required: false, outcome: null }],
  };
}

/** Puts an agent on its way out with SIGTERM now and its tree killed if it outlives `graceMs`. */
function terminate(ctx: Context, agent: AgentRef | Dying, graceMs: number): Step {
  const others = ctx.dying.filter((d) => d.id !== agent.id);
  return {
    next: { ...ctx, dying: [...others, { id: agent.id, version: agent.version, phase: 'terminating' }] },
    effects: [{ kind: 'terminate', id: agent.id }, { kind: 'start-timer', timer: dyingTimer(agent.id), ms: graceMs }],
  };
}

function killTree(ctx: Context, agent: AgentRef | Dying): Step {
  const others = ctx.dying.filter((d) => d.id !== agent.id);
  return {
    next: { ...ctx, dying: [...others, { id: agent.id, version: agent.version, phase: 'killing' }] },
    effects: [{ kind: 'cancel-timer', timer: dyingTimer(agent.id) }, { kind: 'kill-tree', id: agent.id }],
  };
}

function then(first: Step, more: (ctx: Context) => Step): Step {
  const second = more(first.next);
  return { next: second.next, effects: [...first.effects, ...second.effects] };
}

// ---------------------------------------------------------------- the handoff, step by step

function acceptUpgrade(ctx: Context, active: AgentRef, event: Extract<Event, { type: 'upgrade-requested' }>, config: Config): Step {
  const { version, mode, at, origin } = event;
  const handoff: Handoff = { origin, from: active.version, to: version, mode, startedAt: at, draining: null, failure: null };
  const effects: Effect[] = [{ kind: 'persist', required: true, outcome: null }];
  if (origin === 'operator') effects.push({ kind: 'report', outcome: 'accepted', version, reason: null });
  if (ctx.probation) effects.push({ kind: 'cancel-timer', timer: 'probation' });
  const base: Context = { ...ctx, handoff, probation: null };
  if (mode === 'live') {
    const started = startWhenClear(base, { role: 'candidate', version, fromVersion: active.version }, config, 'verifying');
    return { next: started.next, effects: [...effects, ...started.effects] };
  }
  return drainOld(base, active, effects, config);
}

/** Tells the old agent to stop; it stays on the dying list until it exits. */
function drainOld(ctx: Context, old: AgentRef, before: Effect[], config: Config): Step {
  return {
    next: {
      ...ctx,
      state: 'draining',
      active: null,
      handoff: { ...ctx.handoff!, draining: old.id },
      dying: [...ctx.dying, { id: old.id, version: old.version, phase: 'stopping' }],
    },
    // Written before `stop` is sent, not after: the old agent answers `stopped` at once, and a write
    // still in progress then would hold back `go` (the gap) instead of the old agent's work (free).
    effects: [
      ...before,
      { kind: 'persist', required: false, outcome: null },
      { kind: 'send', id: old.id, message: { type: 'stop' } },
      { kind: 'start-timer', timer: dyingTimer(old.id), ms: config.stopMs },
    ],
  };
}

function candidateReady(ctx: Context, config: Config): Step {
  const handoff = ctx.handoff!;
  const candidate = { ...ctx.candidate!, ready: true };
  const commit: Effect = { kind: 'commit-current', version: handoff.to, required: true };
  const base: Context = { ...ctx, candidate };
  if (ctx.active) {
    // Live mode, the old agent still works: only now is it asked to stop.
    return drainOld(base, ctx.active, [commit, { kind: 'cancel-timer', timer: 'ready' }], config);
  }
  // Sequential mode, or the old agent died while the candidate verified: nobody works now, so go at once.
  return promote({ ...base, state: 'verifying' }, [commit, { kind: 'cancel-timer', timer: 'ready' }], config);
}

/** The candidate becomes the active agent. `go` is sent before anything is written: the gap is one event-loop turn. */
function promote(ctx: Context, before: Effect[], config: Config): Step {
  const handoff = ctx.handoff!;
  const candidate = ctx.candidate!;
  const probation: Probation | null =
    config.probationMs > 0 ? { from: handoff.from, version: handoff.to, mode: handoff.mode, startedAt: handoff.startedAt, previous: ctx.previous } : null;
  const effects: Effect[] = [...before, { kind: 'send', id: candidate.id, message: { type: 'go' } }];
  if (probation) effects.push({ kind: 'start-timer', timer: 'probation', ms: config.probationMs });
  // The operator hears `succeeded` on `recorded`, once this is durable, never before.
  effects.push({ kind: 'persist', required: false, outcome: outcomeOf(handoff, handoff.from, handoff.to, 'succeeded', null) });
  return {
    next: { ...ctx, state: 'running', active: candidate, candidate: null, handoff: null, probation, previous: handoff.from },
    effects,
  };
}

/**
 * The candidate failed (exit, timeout, protocol error, or `current` could not be moved to it).
 * Its tree is killed; if it has already exited, only what it left behind is, and nothing waits for it.
 */
function failCandidate(ctx: Context, reason: string, config: Config, exited = false, versionAtFault = true): Step {
  const handoff = ctx.handoff!;
  let step: Step = { next: { ...ctx, candidate: null }, effects: [{ kind: 'cancel-timer', timer: 'ready' }] };
  if (ctx.candidate) {
    const candidate = ctx.candidate;
    step = exited
      ? then(step, (c) => ({ next: c, effects: [{ kind: 'kill-tree', id: candidate.id }] }))
      : then(step, (c) => killTree(c, candidate));
  }
  const outcome = outcomeOf(handoff, handoff.from, handoff.to, 'failed', reason, versionAtFault);
  if (handoff.origin === 'operator') step = then(step, (c) => ({ next: c, effects: [{ kind: 'report', outcome: 'failed', version: handoff.to, reason }] }));
  if (handoff.draining !== null) {
    // The old agent is already stopping and cannot be called back; start its version again once it is gone.
    return then(step, (c) => ({
      next: { ...c, handoff: { ...handoff, failure: reason } },
      effects: [
        { kind: 'commit-current', version: handoff.from, required: false },
        { kind: 'persist', required: false, outcome },
      ],
    }));
  }
  if (ctx.active) {
    const active = ctx.active;
    return then(step, (c) => ({
      next: { ...c, state: 'running', handoff: null },
      effects: [
        ...(handoff.origin === 'agent' ? [{ kind: 'send', id: active.id, message: { type: 'upgrade-failed', version: handoff.to, reason } } as const] : []),
        { kind: 'persist', required: false, outcome },
      ],
    }));
  }
  return then(step, (c) => restartFrom(c, handoff, outcome, config));
}

/** Nobody works: start the version that proved itself again, as the active agent (once no old agent is left). */
function restartFrom(ctx: Context, handoff: Handoff, outcome: Outcome, config: Config): Step {
  const recorded: Step = {
    next: { ...ctx, handoff: null },
    effects: [
      { kind: 'commit-current', version: handoff.from, required: false },
      { kind: 'persist', required: false, outcome },
    ],
  };
  return then(recorded, (c) => startWhenClear(c, { role: 'active', version: handoff.from, fromVersion: null }, config, 'running'));
}

/** The old agent sent `stopped` or exited: the candidate may go (or, after a failure, the old version comes back). */
function oldReleased(ctx: Context, config: Config): Step {
  const handoff = ctx.handoff!;
  const released: Context = { ...ctx, handoff: { ...handoff, draining: null } };
  if (handoff.failure !== null) {
    return restartFrom(released, handoff, outcomeOf(handoff, handoff.from, handoff.to, 'failed', handoff.failure), config);
  }
  if (ctx.candidate) return promote(released, [], config);
  // Sequential mode: only now does the candidate start.
  return startWhenClear(released, { role: 'candidate', version: handoff.to, fromVersion: handoff.from }, config, 'verifying');
}

function rollBackProbation(ctx: Context, probation: Probation, reason: string, config: Config): Step {
  const outcome = outcomeOf(probation, probation.from, probation.version, 'rolled-back', reason, true);
  const recorded: Step = {
    next: { ...ctx, active: null, probation: null, previous: probation.previous },
    effects: [
      { kind: 'cancel-timer', timer: 'probation' },
      { kind: 'commit-current', version: probation.from, required: false },
      { kind: 'persist', required: false, outcome },
    ],
  };
  return then(recorded, (c) => startWhenClear(c, { role: 'active', version: probation.from, fromVersion: null }, config, 'running'));
}

function shutDown(ctx: Context, signal: string, config: Config): Step {
  let step: Step = { next: { ...ctx, state: 'stopping', exitCode: 0 }, effects: [{ kind: 'cancel-timer', timer: 'ready' }, { kind: 'cancel-timer', timer: 'probation' }] };
  if (ctx.handoff) {
    const handoff = ctx.handoff;
    const reason = `the upgrader received ${signal} during the handoff`;
    step = then(step, (c) => ({
      next: c,
      effects: [
        { kind: 'commit-current', version: handoff.from, required: false },
        { kind: 'persist', required: false, outcome: outcomeOf(handoff, handoff.from, handoff.to, 'failed', reason) },
        ...(handoff.origin === 'operator' ? [{ kind: 'report', outcome: 'failed', version: handoff.to, reason } as const] : []),
      ],
    }));
  }
  const live = [ctx.active, ctx.candidate, ...ctx.dying.filter((d) => d.phase === 'stopping')].filter((a): a is AgentRef | Dying => a !== null);
  step = then(step, (c) => ({ next: { ...c, active: null, candidate: null, handoff: null, probation: null, pending: null }, effects: [] }));
  for (const agent of live) step = then(step, (c) => terminate(c, agent, config.stopMs));
  return then(step, finishIfEmpty);
}

function finishIfEmpty(ctx: Context): Step {
  if (ctx.state !== 'stopping' || ctx.active || ctx.candidate || ctx.dying.length > 0) return stay(ctx);
  return { next: { ...ctx, state: 'exited' }, effects: [{ kind: 'persist', required: false, outcome: null }, { kind: 'exit', code: ctx.exitCode ?? 0 }] };
}

// ---------------------------------------------------------------- events, by what they concern

function onExited(ctx: Context, event: Extract<Event, { type: 'exited' }>, config: Config): Step {
  const { id } = event;
  const dying = ctx.dying.find((d) => d.id === id);
  if (dying) {
    const next: Context = { ...ctx, dying: ctx.dying.filter((d) => d.id !== id) };
    const cleared: Step = { next, effects: [{ kind: 'cancel-timer', timer: dyingTimer(id) }] };
    if (ctx.state === 'draining' && ctx.handoff?.draining === id) return then(cleared, (c) => oldReleased(c, config));
    if (ctx.state === 'waiting' && next.dying.length === 0 && ctx.pending) {
      const pending = ctx.pending;
      return then(cleared, (c) => startNow(c, pending, config));
    }
    if (ctx.state === 'stopping') return then(cleared, finishIfEmpty);
    // The state file lists the agents that live: one that is gone leaves it.
    return then(cleared, (c) => ({ next: c, effects: [{ kind: 'persist', required: false, outcome: null }] }));
  }
  const how = describeExit(event.code, event.signal, event.error);
  if (ctx.candidate?.id === id) {
    const when = event.error ? '' : ` before ${ctx.candidate.ready ? 'it was told go' : 'reporting ready'}`;
    // A host out of descriptors, processes or memory says nothing about the version: no quarantine.
    return failCandidate(ctx, `the candidate ${ctx.candidate.version} ${how}${when}`, config, true, !isResourceError(event.errorCode));
  }
  if (ctx.active?.id !== id) return stay(ctx);
  const active = ctx.active;
  if (ctx.state === 'verifying' || ctx.state === 'waiting') {
    // The old agent died while the candidate verifies (or waits to start): it takes over once it is ready.
    return { next: { ...ctx, active: null }, effects: [{ kind: 'persist', required: false, outcome: null }] };
  }
  if (ctx.probation) {
    return rollBackProbation(ctx, ctx.probation, `${active.version} ${how} during its probation`, config);
  }
  // The agent ended on its own: so do we, with its status, and the init system decides what comes next.
  return finishIfEmpty({ ...ctx, state: 'stopping', active: null, exitCode: runExitStatusForAgent(event.code, event.signal) });
}

function onUpgradeRequest(ctx: Context, event: Extract<Event, { type: 'upgrade-requested' }>, config: Config): Step {
  const fromAgent = event.origin === 'agent';
  if (fromAgent && ctx.candidate?.id === event.id) return failCandidate(ctx, `protocol error: the candidate asked for an upgrade before it was told go`, config);
  const active = ctx.active;
  // Only the active agent may ask; anything else an agent sends of this kind is ignored.
  if (fromAgent && (!active || active.id !== event.id)) return stay(ctx);
  const refuse = (reason: string): Step => ({ next: ctx, effects: [answer(event, active, reason)] });
  if (ctx.state !== 'running' || !active) {
    if (ctx.handoff) return refuse(`a handoff to ${ctx.handoff.to} is already in progress`);
    if (ctx.pending) return refuse(`${ctx.pending.version} is being started again once the old agent has exited`);
    return refuse(`the upgrader is ${ctx.state}, with no active agent`);
  }
  if (event.problem) return refuse(event.problem);
  if (event.version === active.version) return refuse(`${event.version} is the running version`);
  return acceptUpgrade(ctx, active, event, config);
}

/** A refusal, to whoever asked. */
function answer(event: Extract<Event, { type: 'upgrade-requested' }>, active: AgentRef | null, reason: string): Effect {
  if (event.origin === 'operator' || !active) return { kind: 'report', outcome: 'failed', version: event.version, reason };
  return { kind: 'send', id: active.id, message: { type: 'upgrade-failed', version: event.version, reason } };
}

function onTimeout(ctx: Context, timer: TimerName, config: Config): Step {
  if (timer === 'ready') {
    if (ctx.state !== 'verifying' || !ctx.candidate) return stay(ctx);
    return failCandidate(ctx, `the candidate ${ctx.candidate.version} did not report ready within ${formatDuration(config.readyMs)}`, config);
  }
  if (timer === 'probation') {
    if (!ctx.probation) return stay(ctx);
    return { next: { ...ctx, probation: null }, effects: [{ kind: 'persist', required: false, outcome: null }] };
  }
  if (timer === 'record') return { next: ctx, effects: [{ kind: 'persist', required: false, outcome: null }] };
  const id = Number(timer.slice('dying:'.length));
  const dying = ctx.dying.find((d) => d.id === id);
  if (!dying) return stay(ctx);
  if (dying.phase === 'stopping') return terminate(ctx, dying, config.killMs);
  if (dying.phase === 'terminating') return killTree(ctx, dying);
  return stay(ctx);
}

function onIoFailed(ctx: Context, event: Extract<Event, { type: 'io-failed' }>, config: Config): Step {
  const trigger = event.trigger;
  if (trigger.type === 'upgrade-requested') {
    const reason = `the upgrade could not be recorded durably (${event.error}); nothing was changed`;
    return { next: ctx, effects: [answer(trigger, ctx.active, reason)] };
  }
  if (trigger.type === 'ready' && ctx.handoff) {
    // The move of `current` is undone where it got that far (layout.ts); pointing it at `from` again makes
    // sure, so that `current`, the state and the reported failure agree.
    const from = ctx.handoff.from;
    const failed = failCandidate(ctx, `current could not be pointed at ${ctx.handoff.to} (${event.error}); it still names ${from}`, config, false, false);
    return { next: failed.next, effects: [{ kind: 'commit-current', version: from, required: false }, ...failed.effects] };
  }
  return stay(ctx);
}

/** The result an operator waits for is durable now: only now is it told. */
function onRecorded(ctx: Context, outcome: Outcome): Step {
  if (outcome.result !== 'succeeded' || outcome.origin !== 'operator') return stay(ctx);
  return { next: ctx, effects: [{ kind: 'report', outcome: 'succeeded', version: outcome.to, reason: null }] };
}

/**
 * A state write failed. The supervisor keeps the outcome it carried and writes it with the next persist,
 * which a timer brings about; an operator waiting for that success is told it is not recorded yet (so that
 * nobody is ever told `succeeded` of an upgrade that a crash would then undo).
 */
function onRecordFailed(ctx: Context, event: Extract<Event, { type: 'record-failed' }>): Step {
  const effects: Effect[] = [{ kind: 'start-timer', timer: 'record', ms: RECORD_RETRY_MS }];
  const outcome = event.outcome;
  if (outcome?.result === 'succeeded' && outcome.origin === 'operator') {
    const reason = `${outcome.to} runs, but its success could not be recorded (${event.error}); the upgrader retries every ${formatDuration(RECORD_RETRY_MS)}, and a restart before that succeeds goes back to ${outcome.from}`;
    effects.unshift({ kind: 'report', outcome: 'failed', version: outcome.to, reason });
  }
  return { next: ctx, effects };
}

/** The whole state machine. Unknown combinations of state and event change nothing. */
export function transition(ctx: Context, event: Event, config: Config): Step {
  if (ctx.state === 'exited') return stay(ctx);
  switch (event.type) {
    case 'start': {
      if (ctx.state !== 'idle') return stay(ctx);
      const started = startNow({ ...ctx, previous: event.previous, probation: event.probation }, { role: 'active', version: event.version, fromVersion: null }, config);
      if (!event.probation) return started;
      return { next: started.next, effects: [...started.effects, { kind: 'start-timer', timer: 'probation', ms: config.probationMs }] };
    }
    case 'shutdown':
      if (ctx.state === 'stopping' || ctx.state === 'idle') return stay(ctx);
      return shutDown(ctx, event.signal, config);
    case 'exited':
      return onExited(ctx, event, config);
    case 'upgrade-requested':
      return onUpgradeRequest(ctx, event, config);
    case 'ready':
      if (ctx.state === 'verifying' && ctx.candidate?.id === event.id && !ctx.candidate.ready) return candidateReady(ctx, config);
      if (ctx.active?.id === event.id && !ctx.active.ready) {
        return { next: { ...ctx, active: { ...ctx.active, ready: true } }, effects: [{ kind: 'persist', required: false, outcome: null }] };
      }
      return stay(ctx);
    case 'stopped':
      if (ctx.candidate?.id === event.id) return failCandidate(ctx, 'protocol error: the candidate sent stopped before it was told go', config);
      // `stopped` frees the work for a ready candidate at once. Starting a process (the sequential
      // candidate, or the old version again after a failure) waits for the old one to exit instead.
      if (ctx.state === 'draining' && ctx.handoff?.draining === event.id && ctx.candidate?.ready && ctx.handoff.failure === null) {
        return oldReleased(ctx, config);
      }
      return stay(ctx);
    case 'protocol-error':
      if (ctx.candidate?.id === event.id) return failCandidate(ctx, `protocol error from the candidate: ${event.detail}`, config);
      return stay(ctx);
    case 'timeout':
      return onTimeout(ctx, event.timer, config);
    case 'io-failed':
      return onIoFailed(ctx, event, config);
    case 'recorded':
      return onRecorded(ctx, event.outcome);
    case 'record-failed':
      return onRecordFailed(ctx, event);
  }
}

/** The one-word state shown by `status` and written to the state file. */
export function publicState(ctx: Context): 'starting' | 'running' | 'upgrading' | 'stopping' | 'stopped' {
  switch (ctx.state) {
    case 'idle':
      return 'starting';
    case 'running':
      return 'running';
    case 'verifying':
    case 'draining':
    case 'waiting':
      return 'upgrading';
    case 'stopping':
      return 'stopping';
    case 'exited':
      return 'stopped';
  }
}
