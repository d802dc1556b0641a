/**
 * The agent library (src/agent.ts) over in-memory streams: the upgrader's side is a PassThrough the test
 * writes lines into, the agent's stdout a Writable that records every line as it is written, and `exit` and
 * `onEnd` are injected. Nothing sleeps: each step waits for the event it needs, with a deadline.
 */
import { PassThrough, Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { connectAgent, type AgentOptions, type UpgradeAnswer, type UpgraderAgent } from '../../src/agent.js';

const DEADLINE_MS = 2000;

/** Resolves with `promise`, or fails naming `what` if it has not settled within the deadline. */
function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Whether a promise has settled, observed without waiting for it. */
function track<T>(promise: Promise<T>): { settled: () => boolean; value: () => T | undefined } {
  let settled = false;
  let value: T | undefined;
  void promise.then((v) => {
    settled = true;
    value = v;
  });
  return { settled: () => settled, value: () => value };
}

type Sent = { type: string; [key: string]: unknown };

function harness(env: NodeJS.ProcessEnv = { UPGRADER_PROTOCOL: '1', UPGRADER_ROLE: 'active', UPGRADER_VERSION: '1.0' }) {
  const input = new PassThrough();
  const sent: Sent[] = [];
  const exits: number[] = [];
  /** What had been flushed when each exit was called. */
  const writtenAtExit: string[][] = [];
  let ends = 0;
  const changed = new Set<() => void>();
  const notify = () => {
    for (const check of [...changed]) check();
  };
  let partial = '';
  /** How many of the lines sent have been flushed: the write's callback comes a turn later, as on a pipe. */
  let flushed = 0;
  const output = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      partial += chunk.toString('utf8');
      let newline: number;
      while ((newline = partial.indexOf('\n')) !== -1) {
        sent.push(JSON.parse(partial.slice(0, newline)) as Sent);
        partial = partial.slice(newline + 1);
      }
      notify();
      setImmediate(() => {
        flushed = sent.length;
        callback();
      });
    },
  });
  const options: AgentOptions = {
    input,
    output,
    env,
    exit: (code) => {
      exits.push(code);
      writtenAtExit.push(sent.slice(0, flushed).map((m) => m.type));
      notify();
    },
    onEnd: () => {
      ends += 1;
      notify();
    },
  };
  const agent: UpgraderAgent = connectAgent(options);
  // Registered after the agent's own listener, so it runs once the agent has handled the same chunk.
  const handled: (() => void)[] = [];
  input.on('data', () => handled.shift()?.());

  /** Writes one chunk from the "upgrader" and resolves once the agent has handled it. */
  const deliver = (chunk: string | Buffer | object): Promise<void> => {
    const bytes = typeof chunk === 'string' || Buffer.isBuffer(chunk) ? chunk : `${JSON.stringify(chunk)}\n`;
    const done = new Promise<void>((resolve) => handled.push(resolve));
    input.write(bytes);
    return within(done, `the agent to read ${JSON.stringify(String(bytes).slice(0, 60))}`);
  };
  /** Resolves once `condition` holds, re-checked on every write, exit and end. */
  const until = (condition: () => boolean, what: string): Promise<void> => {
    if (condition()) return Promise.resolve();
    let check!: () => void;
    const met = new Promise<void>((resolve) => {
      check = () => {
        if (condition()) resolve();
      };
      changed.add(check);
    });
    return within(met, what).finally(() => changed.delete(check));
  };
  return { agent, input, sent, exits, writtenAtExit, ends: () => ends, deliver, until, types: () => sent.map((m) => m.type) };
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('environment', () => {
  it('an agent started by the upgrader reads its role, version, root and the version it replaces', () => {
    const { agent } = harness({
      UPGRADER_PROTOCOL: '1',
      UPGRADER_ROLE: 'candidate',
      UPGRADER_VERSION: '2.0',
      UPGRADER_ROOT: '/var/lib/upgrader/x',
      UPGRADER_FROM_VERSION: '1.0',
      UPGRADER_AGENT_ID: 'abc',
    });
    expect(agent).toMatchObject({ supervised: true, role: 'candidate', version: '2.0', root: '/var/lib/upgrader/x', fromVersion: '1.0' });
    expect(agent.isActive).toBe(false);
  });

  it('an active agent has no version it replaces', () => {
    const { agent } = harness({ UPGRADER_PROTOCOL: '1', UPGRADER_ROLE: 'active', UPGRADER_VERSION: '1.0', UPGRADER_ROOT: '/r' });
    expect(agent).toMatchObject({ supervised: true, role: 'active', version: '1.0', root: '/r', fromVersion: undefined });
    expect(agent.isActive).toBe(true);
  });

  it('without UPGRADER_PROTOCOL=1 it is not supervised and behaves as an active agent', async () => {
    const { agent } = harness({});
    expect(agent).toMatchObject({ supervised: false, role: 'active', version: undefined, root: undefined, fromVersion: undefined });
    await within(agent.waitForGo(), 'waitForGo of an unsupervised agent');
    expect(agent.isActive).toBe(true);
    expect(harness({ UPGRADER_PROTOCOL: '2', UPGRADER_ROLE: 'active' }).agent.supervised).toBe(false);
  });

  it('a role it does not know is taken as active', () => {
    expect(harness({ UPGRADER_PROTOCOL: '1', UPGRADER_ROLE: 'observer' }).agent.role).toBe('active');
    expect(harness({ UPGRADER_PROTOCOL: '1' }).agent.role).toBe('active');
  });
});

describe('ready, go and status', () => {
  it('ready and status are one line each on the output', async () => {
    const { agent, sent, until } = harness();
    agent.ready();
    agent.status('42 jobs done');
    await until(() => sent.length === 2, 'two lines');
    expect(sent).toEqual([{ type: 'ready' }, { type: 'status', message: '42 jobs done' }]);
  });

  it('an active agent need not wait for go', async () => {
    const { agent } = harness();
    await within(agent.waitForGo(), 'waitForGo of an active agent');
  });

  it('a candidate waits for go, whatever else arrives first', async () => {
    const { agent, deliver } = harness({ UPGRADER_PROTOCOL: '1', UPGRADER_ROLE: 'candidate', UPGRADER_VERSION: '2.0' });
    agent.ready();
    const go = track(agent.waitForGo());
    const second = track(agent.waitForGo());
    await deliver('not json\n');
    await deliver({ type: 'upgrade-failed', version: '3.0', reason: 'nobody asked' });
    await deliver({ type: 'hello' });
    expect(go.settled()).toBe(false);
    expect(agent.isActive).toBe(false);
    await deliver({ type: 'go' });
    expect(go.settled()).toBe(true);
    expect(second.settled()).toBe(true);
    expect(agent.isActive).toBe(true);
    // Once it has had go, later waits resolve at once.
    await within(agent.waitForGo(), 'waitForGo after go');
  });
});

describe('requestUpgrade', () => {
  it('sends the request, live by default', async () => {
    const { agent, sent, until } = harness();
    void agent.requestUpgrade('2.0');
    await until(() => sent.length === 1, 'the request');
    expect(sent[0]).toEqual({ type: 'upgrade', version: '2.0', mode: 'live' });
  });

  it('sends a sequential request as such', async () => {
    const { agent, sent, until } = harness();
    void agent.requestUpgrade('2.0', 'sequential');
    await until(() => sent.length === 1, 'the request');
    expect(sent[0]).toEqual({ type: 'upgrade', version: '2.0', mode: 'sequential' });
  });

  it('resolves not ok on upgrade-failed for the version it asked for, and only that one', async () => {
    const { agent, deliver } = harness();
    const answer = track(agent.requestUpgrade('2.0'));
    await deliver({ type: 'upgrade-failed', version: '3.0', reason: 'not this one' });
    expect(answer.settled()).toBe(false);
    await deliver({ type: 'upgrade-failed', version: '2.0', reason: 'version 2.0 is quarantined' });
    expect(answer.value()).toEqual({ ok: false, reason: 'version 2.0 is quarantined' });
    expect(agent.isActive).toBe(true);
  });

  it('passes on the refusal code, known or not, and adds none when there is none', async () => {
    const { agent, deliver } = harness();
    const cases: [Record<string, unknown>, UpgradeAnswer][] = [
      [{ reason: 'version 2.0 is quarantined', code: 'quarantined' }, { ok: false, reason: 'version 2.0 is quarantined', code: 'quarantined' }],
      [{ reason: 'a code from a newer upgrader', code: 'solar-flare' }, { ok: false, reason: 'a code from a newer upgrader', code: 'solar-flare' }],
      [{ reason: 'an older upgrader says no code' }, { ok: false, reason: 'an older upgrader says no code' }],
    ];
    for (const [fields, expected] of cases) {
      const answer = track(agent.requestUpgrade('2.0'));
      await deliver({ type: 'upgrade-failed', version: '2.0', ...fields });
      expect(answer.value()).toStrictEqual(expected);
    }
    // A code that is not a string breaks the message's schema: the line is ignored, as any malformed one.
    const answer = track(agent.requestUpgrade('2.0'));
    await deliver({ type: 'upgrade-failed', version: '2.0', reason: 'x', code: 7 });
    expect(answer.settled()).toBe(false);
  });

  it('refuses a second request while one is pending, and accepts a new one once it is answered', async () => {
    const { agent, sent, deliver, until } = harness();
    const first = track(agent.requestUpgrade('2.0'));
    expect(await within(agent.requestUpgrade('3.0'), 'the second request')).toEqual({
      ok: false,
      reason: 'an upgrade to 2.0 is already pending',
      code: 'in-progress',
    });
    await deliver({ type: 'upgrade-failed', version: '2.0', reason: 'candidate exited with status 1' });
    expect(first.value()).toEqual({ ok: false, reason: 'candidate exited with status 1' });
    const again = track(agent.requestUpgrade('3.0'));
    await until(() => sent.length === 2, 'the new request');
    expect(sent.map((m) => m.version)).toEqual(['2.0', '3.0']);
    await deliver({ type: 'upgrade-failed', version: '3.0', reason: 'missing' });
    expect(again.value()).toMatchObject({ ok: false, reason: 'missing' });
  });

  it('resolves ok on stop: the new version is ready and this agent hands over', async () => {
    const { agent, deliver, until, types } = harness();
    const answer = track(agent.requestUpgrade('2.0'));
    await deliver({ type: 'stop' });
    await until(() => answer.settled(), 'the answer');
    expect(answer.value()).toEqual({ ok: true });
    await until(() => types().includes('stopped'), 'stopped');
    expect(agent.isActive).toBe(false);
  });
});

describe('stop', () => {
  it('runs the stop handler to its end before writing stopped, then exits 0', async () => {
    const { agent, sent, exits, deliver, until, types } = harness();
    let release!: () => void;
    const handlerStarted = new Promise<string[]>((started) => {
      agent.onStop(async () => {
        started(types());
        await new Promise<void>((resolve) => (release = resolve));
      });
    });
    await deliver({ type: 'stop' });
    expect(await within(handlerStarted, 'the stop handler')).not.toContain('stopped');
    expect(agent.isActive).toBe(false);
    // The handler has not finished: nothing is written and the process does not exit.
    await deliver('\n');
    expect(types()).not.toContain('stopped');
    expect(exits).toEqual([]);
    release();
    await until(() => exits.length > 0, 'exit');
    expect(exits).toEqual([0]);
    expect(sent.at(-1)).toEqual({ type: 'stopped' });
  });

  it('exits only once stopped has been flushed', async () => {
    const { agent, exits, writtenAtExit, deliver, until } = harness();
    agent.onStop(() => undefined);
    await deliver({ type: 'stop' });
    await until(() => exits.length > 0, 'exit');
    expect(writtenAtExit).toEqual([['stopped']]);
  });

  it('a stop handler that throws still leads to stopped and exit 0', async () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const { agent, exits, deliver, until, types } = harness();
    agent.onStop(() => {
      throw new Error('disk on fire');
    });
    await deliver({ type: 'stop' });
    await until(() => exits.length > 0, 'exit');
    expect(types()).toEqual(['stopped']);
    expect(exits).toEqual([0]);
    expect(stderr).toHaveBeenCalledWith(expect.stringContaining('disk on fire'));
  });

  it('a stop handler that rejects still leads to stopped and exit 0', async () => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const { agent, exits, deliver, until, types } = harness();
    agent.onStop(async () => Promise.reject(new Error('could not flush')));
    await deliver({ type: 'stop' });
    await until(() => exits.length > 0, 'exit');
    expect(types()).toEqual(['stopped']);
    expect(exits).toEqual([0]);
  });

  it('a second stop is ignored: the handler runs once, stopped is written once', async () => {
    const { agent, exits, deliver, until, types } = harness();
    let runs = 0;
    agent.onStop(() => {
      runs += 1;
    });
    await deliver({ type: 'stop' });
    await deliver({ type: 'stop' });
    await until(() => exits.length > 0, 'exit');
    await deliver('\n');
    expect(runs).toBe(1);
    expect(types()).toEqual(['stopped']);
    expect(exits).toEqual([0]);
  });
});

describe('the upgrader going away and what it sends', () => {
  it('the end of stdin calls onEnd, not exit', async () => {
    const { input, exits, ends, until } = harness();
    input.end();
    await until(() => ends() === 1, 'onEnd');
    expect(exits).toEqual([]);
  });

  it('ignores garbage, unknown and malformed lines, and goes on reading', async () => {
    const { agent, deliver, types } = harness();
    const answer = track(agent.requestUpgrade('2.0'));
    const lines: (string | Buffer)[] = [
      'not json at all\n',
      '[1, 2, 3]\n',
      '"a string"\n',
      'null\n',
      '{}\n',
      '{"type": 7}\n',
      '{"type":"go"\n',
      '{"type":"welcome","protocol":2}\n',
      '{"type":"upgrade-failed"}\n',
      '{"type":"upgrade-failed","version":"2.0"}\n',
      '{"type":"upgrade-failed","version":2,"reason":"x"}\n',
      '{"type":"stop","extra":{"nested":[1]}}'.replace('stop', 'st\u00f6p') + '\n',
      Buffer.from([0xff, 0xfe, 0x7b, 0x0a]),
      `{"type":"upgrade-failed","version":"2.0","reason":"${'x'.repeat(70 * 1024)}"}\n`,
      '\n',
      '   \r\n',
    ];
    for (const line of lines) await deliver(line);
    expect(answer.settled()).toBe(false);
    expect(types()).toEqual(['upgrade']);
    // A message split across chunks, with a \r before its newline, still arrives whole.
    await deliver('{"type":"upgrade-failed","vers');
    await deliver('ion":"2.0","reason":"refused","future":true}\r\n');
    expect(answer.value()).toEqual({ ok: false, reason: 'refused' });
    expect(agent.isActive).toBe(true);
  });
});
