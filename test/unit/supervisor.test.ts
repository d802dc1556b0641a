/**
 * The supervisor's own rules, driven through its seams (SupervisorEnv and RootRecords): agents and timers
 * are stand-ins, so that what the interpreter does when a write fails, a spawn fails or the root is lost
 * is tested without strace or real processes. The machine's decisions are handoff.test.ts's.
 */
import { describe, expect, it } from 'vitest';
import type { AgentCallbacks, AgentHandle, AgentSpec } from '../../src/agent-process.js';
import type { Config } from '../../src/handoff.js';
import { SETTLE_MS } from '../../src/heap-settle.js';
import { Layout } from '../../src/layout.js';
import { createLogger } from '../../src/log.js';
import { parseAgentLine, type UpgraderMessage } from '../../src/protocol.js';
import { LostOwnershipError } from '../../src/records.js';
import { Supervisor, type RootRecords, type SupervisorEnv, type Timer } from '../../src/supervisor.js';
import type { SystemdStatus } from '../../src/systemd-status.js';
import { cleanUpAfterEach, makeRoot } from '../helpers.js';

cleanUpAfterEach();

const config: Config = { readyMs: 1000, stopMs: 2000, killMs: 500, probationMs: 0 };

class FakeAgent implements AgentHandle {
  readonly pid = undefined;
  readonly identity = null;
  readonly spawnedAt = new Date();
  hasExited = false;
  readonly received: UpgraderMessage['type'][] = [];
  terminated = false;
  constructor(
    readonly spec: AgentSpec,
    private readonly callbacks: AgentCallbacks,
  ) {}
  send(message: UpgraderMessage): void {
    this.received.push(message.type);
  }
  takeDroppedReplies(): number {
    return 0;
  }
  terminate(): void {
    this.terminated = true;
  }
  killTree(): Promise<void> {
    this.exit(null, 'SIGKILL');
    return Promise.resolve();
  }
  killGroupAndMarked(): void {}
  isGone(): boolean {
    return this.hasExited;
  }
  say(message: object): void {
    this.callbacks.onLine(parseAgentLine(JSON.stringify(message)));
  }
  exit(code: number | null, signal: NodeJS.Signals | null = null): void {
    if (this.hasExited) return;
    this.hasExited = true;
    this.callbacks.onExit(code, signal, null);
  }
}

type Faults = { persist?: () => Error; commit?: () => Error; spawn?: (spec: AgentSpec) => Error | null };

function harness(faults: Faults = {}) {
  const root = makeRoot({ '1': {}, '2': {} }, '1');
  const agents: FakeAgent[] = [];
  const timers: { ms: number; fire: () => void; cancelled: boolean }[] = [];
  const collections: number[] = [];
  const env: SupervisorEnv = {
    startAgent: (spec, callbacks) => {
      const error = faults.spawn?.(spec);
      if (error) throw error;
      const agent = new FakeAgent(spec, callbacks);
      agents.push(agent);
      return agent;
    },
    setTimer: (ms, fire): Timer => {
      const timer = { ms, fire, cancelled: false };
      timers.push(timer);
      return { cancel: () => (timer.cancelled = true) };
    },
    collectGarbage: () => void collections.push(collections.length + 1),
  };
  const writes: string[] = [];
  const records: RootRecords = {
    history: [],
    unrecordedCount: 0,
    commitCurrent: (version) => {
      const error = faults.commit?.();
      if (error) throw error;
      writes.push(`current ${version}`);
    },
    persist: (snapshot, outcome) => {
      const error = faults.persist?.();
      if (error) throw error;
      writes.push(`state ${snapshot.state}${outcome ? ` ${outcome.result}` : ''}`);
    },
    addQuarantine: (version) => void writes.push(`quarantine ${version}`),
    liftQuarantine: (version) => void writes.push(`lift ${version}`),
    recordStatus: () => undefined,
    flush: () => undefined,
    release: () => void writes.push('released'),
  };
  const systemd = { update: () => undefined, stopWatchdog: () => undefined } as unknown as SystemdStatus;
  const supervisor = new Supervisor({ layout: Layout.open(root), records, config, log: createLogger('silent'), systemd, readyOnSpawn: false, env });
  supervisor.dispatch({ type: 'start', version: '1', previous: null, probation: null, halt: null });
  agents[0]!.say({ type: 'ready' });
  return { supervisor, agents, timers, writes, faults, collections };
}

const eio = () => Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });

describe('the supervisor carries out steps', () => {
  it('a live handoff end to end: candidate spawned, old told stop after ready, candidate told go after stopped', () => {
    const { supervisor, agents, writes } = harness();
    agents[0]!.say({ type: 'upgrade', version: '2' });
    expect(agents).toHaveLength(2);
    agents[1]!.say({ type: 'ready' });
    expect(agents[0]!.received).toEqual(['stop']);
    agents[0]!.say({ type: 'stopped' });
    expect(agents[1]!.received).toEqual(['go']);
    expect(writes).toContain('current 2');
    expect(supervisor.context.state).toBe('running');
  });

  it('a failed durable write drops the step and handles io-failed instead: the agent is refused with code io, nothing spawns', () => {
    const faults: Faults = {};
    const { supervisor, agents } = harness(faults);
    faults.persist = eio;
    agents[0]!.say({ type: 'upgrade', version: '2' });
    expect(agents).toHaveLength(1);
    expect(agents[0]!.received).toEqual(['upgrade-failed']);
    expect(supervisor.context.state).toBe('running');
  });

  it('a failed move of current fails the candidate, kills it, and the old agent carries on', () => {
    const faults: Faults = {};
    const { supervisor, agents } = harness(faults);
    agents[0]!.say({ type: 'upgrade', version: '2' });
    faults.commit = eio;
    agents[1]!.say({ type: 'ready' });
    expect(agents[0]!.received).toEqual(['upgrade-failed']);
    expect(agents[1]!.received).toEqual([]);
    expect(supervisor.context).toMatchObject({ state: 'running', active: { id: 1 }, candidate: null });
  });

  it('a spawn that throws for lack of resources fails the candidate as an exit, without quarantine', () => {
    const emfile = Object.assign(new Error('spawn EMFILE'), { code: 'EMFILE' });
    const { supervisor, agents, writes } = harness({ spawn: (spec) => (spec.role === 'candidate' ? emfile : null) });
    agents[0]!.say({ type: 'upgrade', version: '2' });
    expect(agents[0]!.received).toEqual(['upgrade-failed']);
    expect(writes.some((w) => w.startsWith('quarantine'))).toBe(false);
    expect(writes).toContain('state running failed');
    expect(supervisor.context.state).toBe('running');
  });

  it('a root taken by another process: nothing more is written or sent, and run exits 75', async () => {
    const faults: Faults = {};
    const { supervisor, agents, writes } = harness(faults);
    agents[0]!.say({ type: 'upgrade', version: '2' });
    const before = writes.length;
    faults.commit = () => new LostOwnershipError();
    agents[1]!.say({ type: 'ready' });
    expect(await supervisor.exited).toBe(75);
    agents[0]!.say({ type: 'stopped' });
    expect(agents[0]!.received).toEqual([]);
    expect(agents[1]!.received).toEqual([]);
    expect(writes.length).toBe(before);
  });

  it('a timer fires as an event: a candidate that never says ready is failed when its ready timer fires', () => {
    const { agents, timers } = harness();
    agents[0]!.say({ type: 'upgrade', version: '2' });
    const ready = timers.find((t) => t.ms === config.readyMs && !t.cancelled)!;
    ready.fire();
    expect(agents[0]!.received).toEqual(['upgrade-failed']);
    expect(agents[1]!.hasExited).toBe(true);
  });

  it('on shutdown the active agent is told stop; SIGTERM only once its stop timeout fires; exit 0 once it is gone', async () => {
    const { supervisor, agents, timers, writes } = harness();
    supervisor.dispatch({ type: 'shutdown', signal: 'SIGTERM' });
    expect(agents[0]!.received).toEqual(['stop']);
    expect(agents[0]!.terminated).toBe(false);
    timers.find((t) => t.ms === config.stopMs && !t.cancelled)!.fire();
    expect(agents[0]!.terminated).toBe(true);
    agents[0]!.exit(0);
    expect(await supervisor.exited).toBe(0);
    expect(writes.at(-1)).toBe('released');
  });

  it('the heap is collected once, SETTLE_MS after the last handoff ended: never during one, never at idle without handoffs', async () => {
    const { supervisor, agents, timers, collections } = harness();
    const fired = new Set<unknown>();
    const settles = () => timers.filter((t) => t.ms === SETTLE_MS && !t.cancelled && !fired.has(t));
    const fire = async (timer: (typeof timers)[number]) => {
      fired.add(timer);
      timer.fire();
      await new Promise(setImmediate);
    };
    const handoff = (version: string) => {
      const old = agents.at(-1)!;
      old.say({ type: 'upgrade', version });
      expect(settles()).toHaveLength(0);
      agents.at(-1)!.say({ type: 'ready' });
      old.say({ type: 'stopped' });
      old.exit(0);
      expect(supervisor.context.state).toBe('running');
    };
    expect(settles()).toHaveLength(0);
    handoff('2');
    const first = settles();
    expect(first).toHaveLength(1);
    handoff('1');
    expect(first[0]!.cancelled).toBe(true);
    expect(settles()).toHaveLength(1);
    expect(collections).toEqual([]);
    await fire(settles()[0]!);
    expect(collections).toEqual([1]);
    // A settle timer that fires while a handoff is in flight collects nothing.
    handoff('2');
    const armed = settles()[0]!;
    agents.at(-1)!.say({ type: 'upgrade', version: '1' });
    await fire(armed);
    expect(collections).toEqual([1]);
  });
});
