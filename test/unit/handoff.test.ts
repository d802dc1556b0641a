import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { initialContext, transition, exitStatusOf, runExitStatusForAgent, type Config, type Context, type DurableWrite, type Effect, type Event, type TimerName } from '../../src/handoff.js';

const config: Config = { readyMs: 1000, stopMs: 2000, killMs: 500, probationMs: 3000 };

/** Runs events through the machine, collecting every effect. */
function play(events: Event[], ctx = initialContext()): { ctx: Context; durable: DurableWrite[]; effects: Effect[] } {
  const effects: Effect[] = [];
  const durable: DurableWrite[] = [];
  for (const event of events) {
    const step = transition(ctx, event, config);
    ctx = step.next;
    durable.push(...step.durable);
    effects.push(...step.effects);
  }
  return { ctx, durable, effects };
}

const at = '2026-01-01T00:00:00.000Z';
const start: Event = { type: 'start', version: '1', previous: null, probation: null, halt: null };
const upgrade = (id: number, version: string, mode: 'live' | 'sequential' = 'live'): Event => ({ type: 'upgrade-requested', origin: 'agent', id, version, mode, problem: null, force: false, at });
const sends = (effects: Effect[]) => effects.flatMap((e) => (e.kind === 'send' ? [`${e.message.type}->${e.id}`] : []));

describe('handoff transitions', () => {
  it('live: spawn candidate, stop old only after ready, go only after stopped', () => {
    let r = play([start, { type: 'ready', id: 1 }, upgrade(1, '2')]);
    expect(r.ctx.state).toBe('verifying');
    expect(r.effects).toContainEqual({ kind: 'spawn', id: 2, version: '2', role: 'candidate', fromVersion: '1' });
    // The intent is written before the candidate exists: the durable part of the step comes first.
    expect(r.durable).toEqual([{ kind: 'persist' }]);
    r = play([{ type: 'ready', id: 2 }], r.ctx);
    expect(r.ctx.state).toBe('draining');
    expect(r.durable).toEqual([{ kind: 'commit-current', version: '2' }]);
    expect(sends(r.effects)).toEqual(['stop->1']);
    // Every write happens before stop: the old agent's prompt `stopped` must find the loop free.
    const stopAt = r.effects.findIndex((e) => e.kind === 'send');
    expect(r.effects.slice(stopAt).some((e) => e.kind === 'persist' || e.kind === 'commit-current')).toBe(false);
    r = play([{ type: 'stopped', id: 1 }], r.ctx);
    expect(r.ctx.state).toBe('running');
    expect(sends(r.effects)).toEqual(['go->2']);
    // go is the first thing done: nothing durable stands between stopped and go.
    expect(r.effects[0]).toEqual({ kind: 'send', id: 2, message: { type: 'go' } });
    expect(r.ctx.active).toEqual({ id: 2, version: '2', ready: true });
    expect(r.ctx.previous).toBe('1');
  });

  it('live: the old agent dying while the candidate verifies promotes the candidate when it is ready', () => {
    const r = play([start, upgrade(1, '2'), { type: 'exited', id: 1, code: 1, signal: null }, { type: 'ready', id: 2 }]);
    expect(r.ctx.state).toBe('running');
    expect(r.ctx.active?.id).toBe(2);
    expect(sends(r.effects)).toEqual(['go->2']);
  });

  it('live: the old agent dying and the candidate failing restarts the old version, once the candidate is gone', () => {
    const verifying = play([start, upgrade(1, '2'), { type: 'exited', id: 1, code: 1, signal: null }]).ctx;
    let r = play([{ type: 'timeout', timer: 'ready' }], verifying);
    expect(r.effects).toContainEqual({ kind: 'kill-tree', id: 2 });
    expect(r.ctx.state).toBe('waiting');
    expect(r.effects.some((e) => e.kind === 'spawn')).toBe(false);
    r = play([{ type: 'exited', id: 2, code: null, signal: 'SIGKILL' }], r.ctx);
    expect(r.ctx.state).toBe('running');
    expect(r.ctx.active).toEqual({ id: 3, version: '1', ready: false });
    expect(r.effects).toContainEqual({ kind: 'spawn', id: 3, version: '1', role: 'active', fromVersion: null });
  });

  it('probation rollback: the old version starts again only once its previous instance has exited', () => {
    // The old agent said stopped (the candidate got go) but is still exiting when the new one dies.
    let r = play([start, upgrade(1, '2'), { type: 'ready', id: 2 }, { type: 'stopped', id: 1 }]);
    expect(r.ctx.retiring.map((d) => d.id)).toEqual([1]);
    r = play([{ type: 'exited', id: 2, code: 1, signal: null }], r.ctx);
    expect(r.ctx).toMatchObject({ state: 'waiting', active: null, pending: { role: 'active', version: '1' } });
    expect(r.effects.some((e) => e.kind === 'spawn')).toBe(false);
    expect(r.effects).toContainEqual({ kind: 'commit-current', version: '1' });
    expect(sends(play([upgrade(0, '3')], r.ctx).effects)).toEqual([]);
    r = play([{ type: 'exited', id: 1, code: 0, signal: null }], r.ctx);
    expect(r.ctx).toMatchObject({ state: 'running', active: { id: 3, version: '1' }, pending: null });
    expect(r.effects).toContainEqual({ kind: 'spawn', id: 3, version: '1', role: 'active', fromVersion: null });
  });

  it('a new handoff while the previous old agent is still exiting starts its candidate once that agent is gone; the active keeps working', () => {
    let r = play([start, upgrade(1, '2'), { type: 'ready', id: 2 }, { type: 'stopped', id: 1 }, upgrade(2, '3')]);
    expect(r.ctx).toMatchObject({ state: 'waiting', active: { id: 2 }, candidate: null, handoff: { from: '2', to: '3' } });
    expect(r.effects.filter((e) => e.kind === 'spawn' && e.role === 'candidate')).toHaveLength(1); // only the first handoff's
    expect(sends(play([upgrade(2, '4')], r.ctx).effects)).toEqual(['upgrade-failed->2']);
    r = play([{ type: 'exited', id: 1, code: 0, signal: null }], r.ctx);
    expect(r.ctx.state).toBe('verifying');
    expect(r.effects).toContainEqual({ kind: 'spawn', id: 3, version: '3', role: 'candidate', fromVersion: '2' });
    expect(r.effects).toContainEqual({ kind: 'start-timer', timer: 'ready', ms: config.readyMs });
  });

  it('a candidate that cannot be spawned for lack of resources is not quarantined; one whose entry point is missing is', () => {
    const verifying = play([start, upgrade(1, '2')]).ctx;
    const outcome = (errorCode: string) =>
      play([{ type: 'exited', id: 2, code: 127, signal: null, error: `${errorCode}: spawn`, errorCode }], verifying).effects.find((e) => e.kind === 'persist' && e.outcome);
    const quarantines = (errorCode: string) =>
      play([{ type: 'exited', id: 2, code: 127, signal: null, error: `${errorCode}: spawn`, errorCode }], verifying).effects.some((e) => e.kind === 'quarantine' && e.version === '2');
    for (const code of ['EMFILE', 'ENFILE', 'EAGAIN', 'ENOMEM']) {
      expect(outcome(code)).toMatchObject({ outcome: { result: 'failed', code: 'candidate-failed' } });
      expect(quarantines(code)).toBe(false);
    }
    expect(quarantines('ENOENT')).toBe(true);
  });

  it('live: a candidate failing after the old was told stop restarts the old version once it exits', () => {
    let r = play([start, upgrade(1, '2'), { type: 'ready', id: 2 }, { type: 'exited', id: 2, code: 3, signal: null }]);
    expect(r.ctx.state).toBe('draining');
    expect(r.effects).toContainEqual({ kind: 'commit-current', version: '1' });
    // The failure is recorded when it happens, once.
    expect(r.effects.filter((e) => e.kind === 'persist' && e.outcome?.result === 'failed')).toHaveLength(1);
    r = play([{ type: 'stopped', id: 1 }], r.ctx);
    expect(r.ctx.state).toBe('draining'); // stopped is not enough to start a process beside it
    r = play([{ type: 'exited', id: 1, code: 0, signal: null }], r.ctx);
    expect(r.ctx.active).toEqual({ id: 3, version: '1', ready: false });
    expect(r.effects.some((e) => e.kind === 'persist' && e.outcome)).toBe(false);
  });

  it('a protocol error or stopped from a candidate fails it; from the active agent it is ignored', () => {
    for (const bad of [{ type: 'protocol-error', id: 2, detail: 'x' }, { type: 'stopped', id: 2 }, upgrade(2, '3')] as Event[]) {
      const r = play([start, upgrade(1, '2'), bad]);
      expect(r.ctx.state).toBe('running');
      expect(r.ctx.active?.id).toBe(1);
      expect(sends(r.effects)).toEqual(['upgrade-failed->1']);
    }
    const ignored = play([start, { type: 'protocol-error', id: 1, detail: 'x' }, { type: 'stopped', id: 1 }]);
    expect(ignored.ctx.state).toBe('running');
    expect(ignored.ctx.active?.id).toBe(1);
  });

  it('refuses upgrades that make no sense', () => {
    expect(sends(play([start, upgrade(1, '1')]).effects)).toEqual(['upgrade-failed->1']);
    const refused = play([{ ...upgrade(1, '2'), problem: { code: 'quarantined', reason: 'no' } } as Event], play([start]).ctx).effects;
    expect(refused).toEqual([{ kind: 'send', id: 1, message: { type: 'upgrade-failed', version: '2', reason: 'no', code: 'quarantined' } }]);
    expect(sends(play([start, upgrade(1, '2'), upgrade(1, '3')]).effects)).toEqual(['upgrade-failed->1']);
  });

  it('an operator is answered with reports, and the old agent, which did not ask, hears nothing of it', () => {
    const operator = (version: string): Event => ({ type: 'upgrade-requested', origin: 'operator', id: 0, version, mode: 'live', problem: null, force: false, at });
    const reports = (effects: Effect[]) => effects.flatMap((e) => (e.kind === 'report' ? [`${e.report.type} ${'version' in e.report ? e.report.version : ''}`] : []));
    let r = play([start, operator('1')]);
    expect(reports(r.effects)).toEqual(['failed 1']);
    expect(sends(r.effects)).toEqual([]);
    r = play([start, operator('2')]);
    expect(r.durable).toEqual([{ kind: 'persist' }]);
    expect(reports(r.effects)).toEqual(['accepted 2']);
    const failed = play([{ type: 'exited', id: 2, code: 1, signal: null }], r.ctx);
    expect(reports(failed.effects)).toEqual(['failed 2']);
    expect(sends(failed.effects)).toEqual([]);
    const done = play([{ type: 'ready', id: 2 }, { type: 'stopped', id: 1 }], r.ctx);
    // Success is told only once it is durable: on `recorded`, never with `go`.
    expect(reports(done.effects)).toEqual([]);
    const record = done.effects.find((e) => e.kind === 'persist' && e.outcome?.result === 'succeeded');
    if (record?.kind !== 'persist' || !record.outcome) throw new Error('no success record');
    expect(reports(play([{ type: 'recorded', outcome: record.outcome }], done.ctx).effects)).toEqual(['succeeded 2']);
    const unrecorded = play([{ type: 'record-failed', outcome: record.outcome, error: 'ENOSPC' }], done.ctx);
    expect(reports(unrecorded.effects)).toEqual(['failed 2']);
    expect(unrecorded.effects).toContainEqual({ kind: 'start-timer', timer: 'record', ms: expect.any(Number) });
    expect(play([{ type: 'timeout', timer: 'record' }], unrecorded.ctx).effects).toEqual([{ kind: 'persist', outcome: null }]);
    expect(reports(play([upgrade(1, '3')], r.ctx).effects)).toEqual([]);
    expect(reports(play([operator('3')], r.ctx).effects)).toEqual(['failed 3']);
  });

  it('a failed intent write refuses the upgrade and changes nothing', () => {
    const before = play([start]).ctx;
    const r = play([{ type: 'io-failed', trigger: upgrade(1, '2'), error: 'ENOSPC' }], before);
    expect(r.ctx).toEqual(before);
    expect(r.effects).toEqual([{ kind: 'send', id: 1, message: { type: 'upgrade-failed', version: '2', reason: expect.stringMatching(/ENOSPC/), code: 'io' } }]);
  });

  it('a failed move of current fails the candidate, puts current back first and does not quarantine; the old agent carries on', () => {
    const verifying = play([start, upgrade(1, '2')]).ctx;
    const r = play([{ type: 'io-failed', trigger: { type: 'ready', id: 2 }, error: 'EIO' }], verifying);
    expect(r.ctx.state).toBe('running');
    expect(r.ctx.active?.id).toBe(1);
    expect(r.effects[0]).toEqual({ kind: 'commit-current', version: '1' });
    expect(sends(r.effects)).toEqual(['upgrade-failed->1']);
    expect(r.effects.find((e) => e.kind === 'persist' && e.outcome)).toMatchObject({ outcome: { result: 'failed', code: 'io' } });
    expect(r.effects.some((e) => e.kind === 'quarantine')).toBe(false);
  });

  it('sequential: stop first, spawn the candidate only when the old one has exited', () => {
    let r = play([start, upgrade(1, '2', 'sequential')]);
    expect(r.ctx.state).toBe('draining');
    expect(sends(r.effects)).toEqual(['stop->1']);
    r = play([{ type: 'stopped', id: 1 }], r.ctx);
    expect(r.effects.some((e) => e.kind === 'spawn')).toBe(false);
    r = play([{ type: 'exited', id: 1, code: 0, signal: null }], r.ctx);
    expect(r.effects).toContainEqual({ kind: 'spawn', id: 2, version: '2', role: 'candidate', fromVersion: '1' });
    r = play([{ type: 'ready', id: 2 }], r.ctx);
    expect(r.durable).toEqual([{ kind: 'commit-current', version: '2' }]);
    expect(sends(r.effects)).toEqual(['go->2']);
  });

  it('probation: exit rolls back, timeout confirms, an upgrade request ends it', () => {
    const promoted = play([start, upgrade(1, '2'), { type: 'ready', id: 2 }, { type: 'exited', id: 1, code: 0, signal: null }]).ctx;
    expect(promoted.probation).toMatchObject({ from: '1', version: '2' });
    const rolled = play([{ type: 'exited', id: 2, code: null, signal: 'SIGSEGV' }], promoted);
    expect(rolled.ctx.active).toMatchObject({ version: '1' });
    expect(rolled.effects).toContainEqual({ kind: 'commit-current', version: '1' });
    expect(rolled.effects.find((e) => e.kind === 'persist' && e.outcome)).toMatchObject({ outcome: { result: 'rolled-back', reason: '2 was killed by SIGSEGV during its probation', code: 'rolled-back' } });
    expect(rolled.effects).toContainEqual({ kind: 'quarantine', version: '2', reason: '2 was killed by SIGSEGV during its probation' });
    expect(play([{ type: 'timeout', timer: 'probation' }], promoted).ctx.probation).toBeNull();
    expect(play([upgrade(2, '3')], promoted).ctx).toMatchObject({ state: 'verifying', probation: null });
  });

  it('an active agent exiting outside probation ends the upgrader with its status', () => {
    expect(play([start, { type: 'exited', id: 1, code: 7, signal: null }]).effects).toContainEqual({ kind: 'exit', code: 7 });
    expect(play([start, { type: 'exited', id: 1, code: null, signal: 'SIGKILL' }]).effects).toContainEqual({ kind: 'exit', code: 137 });
    expect(exitStatusOf(null, 'SIGTERM')).toBe(143);
  });

  it("an agent's status that the upgrader keeps for itself (64 to 78) becomes 79, so the init system never mistakes it", () => {
    const exitCode = (code: number) => play([start, { type: 'exited', id: 1, code, signal: null }]).effects.find((e) => e.kind === 'exit');
    for (const code of [64, 65, 70, 73, 74, 75, 77, 78]) expect(exitCode(code)).toEqual({ kind: 'exit', code: 79 });
    for (const code of [0, 1, 3, 63, 79, 255]) expect(exitCode(code)).toEqual({ kind: 'exit', code });
    expect(runExitStatusForAgent(null, 'SIGTERM')).toBe(143);
  });

  it('shutdown: the active agent is told stop, the candidate gets SIGTERM; each is escalated on its deadline; exit 0 once all are gone', () => {
    let r = play([start, upgrade(1, '2'), { type: 'shutdown', signal: 'SIGTERM' }]);
    expect(r.ctx.state).toBe('stopping');
    expect(sends(r.effects)).toEqual(['stop->1']);
    expect(r.effects).toContainEqual({ kind: 'start-timer', timer: 'retire:1', ms: config.stopMs });
    expect(r.effects.filter((e) => e.kind === 'terminate')).toEqual([{ kind: 'terminate', id: 2 }]);
    expect(r.effects).toContainEqual({ kind: 'start-timer', timer: 'retire:2', ms: config.killMs });
    expect(r.effects).toContainEqual({ kind: 'commit-current', version: '1' });
    const unanswered = play([{ type: 'timeout', timer: 'retire:1' }], r.ctx);
    expect(unanswered.effects).toEqual([{ kind: 'terminate', id: 1 }, { kind: 'start-timer', timer: 'retire:1', ms: config.killMs }]);
    r = play([{ type: 'timeout', timer: 'retire:2' }], r.ctx);
    expect(r.effects).toContainEqual({ kind: 'kill-tree', id: 2 });
    r = play([{ type: 'exited', id: 1, code: null, signal: 'SIGTERM' }, { type: 'exited', id: 2, code: null, signal: 'SIGKILL' }], r.ctx);
    expect(r.ctx.state).toBe('exited');
    expect(r.effects).toContainEqual({ kind: 'exit', code: 0 });
  });
});

/**
 * Model-based: random sequences of events a real world could produce, checked against the invariant
 * that matters: never two agents working at once, and `current` only ever moved to a proven version.
 */
describe('handoff invariants under random events', () => {
  type World = { ctx: Context; live: Set<number>; working: Set<number>; timers: Set<TimerName>; proven: Set<string>; ready: Set<number> };

  function apply(world: World, event: Event): void {
    const { next, durable, effects } = transition(world.ctx, event, config);
    for (const write of durable) if (write.kind === 'commit-current') expect(world.ctx.candidate && world.ready.has(world.ctx.candidate.id) && world.ctx.candidate.version === write.version).toBeTruthy();
    for (const effect of effects) {
      if (effect.kind === 'spawn') {
        // A halt is lifted only by an operator: from it, an active agent starts on resume and nothing else.
        if (world.ctx.halt && effect.role === 'active') expect(event.type).toBe('resume-requested');
        // Nothing starts beside an agent on its way out: the only other process may be the working active one.
        expect([...world.live].filter((id) => id !== world.ctx.active?.id)).toEqual([]);
        world.live.add(effect.id);
        if (effect.role === 'active') {
          expect(world.working.size).toBe(0);
          world.working.add(effect.id);
        }
      }
      if (effect.kind === 'send' && effect.message.type === 'go') {
        expect([...world.working]).toEqual([]);
        expect(world.ready.has(effect.id)).toBe(true);
        world.working.add(effect.id);
      }
      if (effect.kind === 'commit-current') {
        const candidateReady = world.ctx.candidate && world.ready.has(world.ctx.candidate.id) && world.ctx.candidate.version === effect.version;
        expect(candidateReady || world.proven.has(effect.version)).toBeTruthy();
      }
      if (effect.kind === 'start-timer') world.timers.add(effect.timer);
      if (effect.kind === 'cancel-timer') world.timers.delete(effect.timer);
    }
    world.ctx = next;
    for (const id of world.working) if (world.ctx.active?.id === id) world.proven.add(world.ctx.active.version);
    if (next.state === 'running') expect(next.active).not.toBeNull();
    if (next.state === 'verifying') expect(next.candidate).not.toBeNull();
    if (next.state === 'halted') expect([...world.live]).toEqual([]);
    if (next.state === 'halting' || next.state === 'halted') expect(next.halt).not.toBeNull();
  }

  const eventFor = (world: World, pick: number, kind: number, version: number, mode: boolean, problem: boolean): Event | null => {
    const ids = [...world.live];
    const id = ids.length ? ids[pick % ids.length]! : 1;
    const timers = [...world.timers];
    switch (kind % 8) {
      case 0:
        return { type: 'ready', id };
      case 1:
        return { type: 'stopped', id };
      case 2:
        return world.live.has(id) ? { type: 'exited', id, code: pick % 3, signal: null } : null;
      case 3:
        return {
          ...(upgrade(id, ['1', '2', '3'][version % 3]!, mode ? 'live' : 'sequential') as Extract<Event, { type: 'upgrade-requested' }>),
          origin: pick % 3 === 0 ? 'operator' : 'agent',
          problem: problem ? { code: 'unlaunchable', reason: 'broken' } : null,
        };
      case 4:
        return timers.length ? { type: 'timeout', timer: timers[pick % timers.length]! } : null;
      case 5:
        return { type: 'protocol-error', id, detail: 'x' };
      case 6:
        if (pick % 10 === 0) return { type: 'shutdown', signal: 'SIGTERM' };
        if (pick % 10 === 1) return { type: 'halt-requested', by: 'ops', at };
        if (pick % 10 === 2) return { type: 'resume-requested' };
        return { type: 'ready', id };
      default:
        if (pick % 5 === 0) return { type: 'record-failed', outcome: null, error: 'ENOSPC' };
        return { type: 'io-failed', trigger: pick % 2 ? { type: 'ready', id } : upgrade(id, '2'), error: 'EIO' };
    }
  };

  it('holds for every sequence', () => {
    const step = fc.tuple(fc.nat(), fc.nat(), fc.nat(), fc.boolean(), fc.boolean());
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
        const world: World = { ctx: initialContext(), live: new Set(), working: new Set(), timers: new Set(), proven: new Set(['1']), ready: new Set() };
        apply(world, start);
        for (const [pick, kind, version, mode, problem] of steps) {
          const event = eventFor(world, pick, kind, version, mode, problem);
          if (!event) continue;
          if (event.type === 'exited') {
            world.live.delete(event.id);
            world.working.delete(event.id);
          }
          if (event.type === 'stopped') world.working.delete(event.id);
          // io-failed only follows a transition whose required write failed; model it only where one was asked for.
          if (event.type === 'io-failed') {
            const attempted = transition(world.ctx, event.trigger, config).durable.length > 0;
            if (!attempted) continue;
          }
          if (event.type === 'ready' && world.live.has(event.id)) world.ready.add(event.id);
          if (event.type === 'ready' && !world.live.has(event.id)) continue;
          apply(world, event);
          if (world.ctx.state === 'exited') break;
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('halt and resume', () => {
  const halt: Event = { type: 'halt-requested', by: 'ops', at };
  const operatorUpgrade = (version: string): Event => ({ type: 'upgrade-requested', origin: 'operator', id: 0, version, mode: 'live', problem: null, force: false, at });
  const reports = (effects: Effect[]) => effects.flatMap((e) => (e.kind === 'report' ? [e.report.type] : []));
  const spawns = (effects: Effect[]) => effects.filter((e) => e.kind === 'spawn');
  const halted = () => play([start, { type: 'ready', id: 1 }, halt, { type: 'exited', id: 1, code: 0, signal: null }]).ctx;

  it('writes the halt before stop is sent, and is halted only once the agent has exited', () => {
    let r = play([start, { type: 'ready', id: 1 }, halt]);
    expect(r.durable).toEqual([{ kind: 'persist' }]);
    expect(r.ctx).toMatchObject({ state: 'halting', active: null, halt: { version: '1', by: 'ops', reason: null } });
    // The agent is on record as retiring in that write: a crash right after it leaves its PID behind.
    expect(r.ctx.retiring).toEqual([{ id: 1, version: '1', phase: 'stopping' }]);
    expect(sends(r.effects)).toEqual(['stop->1']);
    expect(reports(r.effects)).toEqual([]);
    r = play([{ type: 'exited', id: 1, code: 0, signal: null }], r.ctx);
    expect(r.ctx.state).toBe('halted');
    expect(reports(r.effects)).toEqual(['halted']);
  });

  it('comes back halted after a restart, starting nothing, and resumes current on request', () => {
    let r = play([{ ...start, halt: { version: '1', since: at, by: 'ops', reason: null } } as Event]);
    expect(r.ctx.state).toBe('halted');
    expect(spawns(r.effects)).toEqual([]);
    r = play([{ type: 'resume-requested' }], r.ctx);
    expect(r.durable).toEqual([{ kind: 'persist' }]);
    expect(r.ctx).toMatchObject({ state: 'running', halt: null, active: { version: '1' } });
    expect(reports(r.effects)).toEqual(['resumed']);
  });

  it('upgrades from halted straight to go, and a failure leaves it halted with the reason, never restarting the old version', () => {
    let r = play([operatorUpgrade('2')], halted());
    expect(r.ctx.state).toBe('verifying');
    r = play([{ type: 'ready', id: 2 }], r.ctx);
    expect(r.ctx).toMatchObject({ state: 'running', halt: null, active: { id: 2, version: '2' } });
    expect(sends(r.effects)).toEqual(['go->2']);

    r = play([operatorUpgrade('2'), { type: 'exited', id: 2, code: 3, signal: null }], halted());
    expect(r.ctx.state).toBe('halted');
    expect(r.ctx.halt?.reason).toMatch(/the candidate 2 exited with code 3/);
    expect(spawns(r.effects).map((e) => (e as { role: string }).role)).toEqual(['candidate']);
    expect(r.effects).toContainEqual({ kind: 'commit-current', version: '1' });
  });

  it('a version that fails its probation after an upgrade from halted goes back to halted', () => {
    const r = play([operatorUpgrade('2'), { type: 'ready', id: 2 }, { type: 'exited', id: 2, code: 1, signal: null }], halted());
    expect(r.ctx.state).toBe('halted');
    expect(r.ctx.halt).toMatchObject({ version: '1', by: 'ops' });
    expect(spawns(r.effects)).toHaveLength(1);
    expect(r.effects).toContainEqual({ kind: 'commit-current', version: '1' });
  });

  it('refuses a halt during a handoff, a resume when not halted, and answers a second halt with halted', () => {
    const verifying = play([start, { type: 'ready', id: 1 }, upgrade(1, '2')]).ctx;
    expect(play([halt], verifying).effects).toContainEqual({ kind: 'report', report: expect.objectContaining({ type: 'refused', request: 'halt', code: 'in-progress' }) });
    const running = play([start, { type: 'ready', id: 1 }]).ctx;
    expect(play([{ type: 'resume-requested' }], running).effects).toContainEqual({ kind: 'report', report: expect.objectContaining({ type: 'refused', request: 'resume', code: 'not-halted' }) });
    expect(reports(play([halt], halted()).effects)).toEqual(['halted']);
  });
});
