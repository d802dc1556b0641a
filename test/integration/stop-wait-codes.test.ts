/**
 * Three behaviours the fleet layer builds on, with real upgraders and agents: a service stop that runs the
 * agent's stop handler, `--wait probation`, and refusals that carry a code.
 */
import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, currentTarget, logged, makeRoot, readLines, runCli, savedState, startReady, statusJson, waitForSavedState, waitUntil } from '../helpers.js';
import { runArgs } from '../timing.js';

cleanUpAfterEach();

describe('service stop', () => {
  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)('on %s the active agent is told stop, runs its stop handler, says stopped and exits by itself; exit 0', async (signal) => {
    const root = makeRoot({ '1.0.0': { config: { stopDelayMs: 200 } } }, '1.0.0');
    const { up, pid } = await startReady(root, runArgs({ stop: '10s' }));
    up.kill(signal);
    expect((await up.waitForExit()).code).toBe(0);
    expect(readLines(root, 'events.log')).toContain(`${pid} 1.0.0 got {"type":"stop"}`);
    // It left on its own, after `stopped`: nobody had to signal or kill it.
    const exit = up.logs.find((l) => logged.exited('1.0.0')(l) && l.agentPid === pid);
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(up.logs.some(logged.transition('stopped', { from: 'stopping' }))).toBe(true);
    expect(up.logs.some((l) => l.agentEvent === 'killing')).toBe(false);
  });

  it('an agent that ignores stop gets SIGTERM after --stop-timeout, and its tree SIGKILL after --kill-timeout', async () => {
    const root = makeRoot({ '1.0.0': { config: { ignoreStop: true, ignoreSigterm: true } } }, '1.0.0');
    const { up, pid } = await startReady(root, runArgs());
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);
    const events = readLines(root, 'events.log');
    expect(events).toContain(`${pid} 1.0.0 got {"type":"stop"}`);
    expect(events).toContain(`${pid} 1.0.0 ignored SIGTERM`);
    expect(up.logs.find((l) => logged.exited('1.0.0')(l) && l.agentPid === pid)).toMatchObject({ signal: 'SIGKILL' });
  });
});

describe('--wait probation', () => {
  it('exits 0 only once the new version has passed probation, 1 with rolled-back when it is rolled back; a second operator meanwhile is refused busy', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {}, '3.0.0': { config: { exitAfterGoMs: 300 } } }, '1.0.0');
    await startReady(root, runArgs({ probation: '2s' }));
    const waiting = runCli(['upgrade', '--root', root, '--to', '2.0.0', '--wait', 'probation']);
    await waitForSavedState(root, (s) => s.probation?.version === '2.0.0', '2.0.0 is on probation');
    const busy = await runCli(['rollback', '--root', root, '--json']);
    expect(busy.code).toBe(1);
    expect(JSON.parse(busy.stdout.trim())).toMatchObject({ type: 'failed', version: null, code: 'busy' });
    const passed = await waiting;
    expect(passed.code).toBe(0);
    expect(passed.stdout).toMatch(/done: 2\.0\.0 is running; waiting for its probation to end/);
    expect(passed.stdout.trim().split('\n').at(-1)).toBe('passed: 2.0.0 has passed its probation');
    // Said only once the probation was over, and recorded so.
    expect(savedState(root).probation).toBeNull();

    const rolled = await runCli(['upgrade', '--root', root, '--to', '3.0.0', '--wait', 'probation', '--json']);
    expect(rolled.code).toBe(1);
    const replies = rolled.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(replies.map((r) => r.type)).toContain('succeeded');
    expect(replies.at(-1)).toMatchObject({ type: 'failed', version: '3.0.0', code: 'rolled-back', reason: expect.stringMatching(/during its probation/) });
    await waitUntil(() => currentTarget(root) === 'versions/2.0.0', 'current is back on 2.0.0');
  });

  it('with no probation configured, --wait probation returns at once with passed', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    await startReady(root, runArgs());
    const done = await runCli(['upgrade', '--root', root, '--to', '2.0.0', '--wait', 'probation', '--json']);
    expect(done.code).toBe(0);
    expect(done.stdout.trim().split('\n').map((l) => JSON.parse(l)).slice(-2)).toEqual([
      { type: 'succeeded', version: '2.0.0', probation: false },
      { type: 'passed', version: '2.0.0' },
    ]);
  });

  it('refuses a --wait it does not know, and --wait with --no-wait (64)', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    expect((await runCli(['upgrade', '--root', root, '--to', '2.0.0', '--wait', 'forever'])).code).toBe(64);
    expect((await runCli(['rollback', '--root', root, '--wait', 'done', '--no-wait'])).code).toBe(64);
  });
});

describe('refusal codes', () => {
  it('reach the agent in upgrade-failed and the operator in failed, and are recorded with the failure', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitAfterGoMs: 100 } } }, '1.0.0');
    const { up, pid } = await startReady(root, runArgs({ probation: '5s' }));
    const refusalTo = async (version: string) => {
      await waitUntil(() => readLines(root, 'events.log').some((l) => l.startsWith(`${pid} 1.0.0 got {"type":"upgrade-failed","version":"${version}"`)), `the refusal of ${version}`);
      const line = readLines(root, 'events.log').find((l) => l.startsWith(`${pid} 1.0.0 got {"type":"upgrade-failed","version":"${version}"`))!;
      return JSON.parse(line.slice(line.indexOf('{'))).code;
    };
    askUpgrade(root, pid, '9.9.9');
    expect(await refusalTo('9.9.9')).toBe('missing');
    askUpgrade(root, pid, '1.0.0');
    expect(await refusalTo('1.0.0')).toBe('running-version');

    const same = await runCli(['upgrade', '--root', root, '--to', '1.0.0']);
    expect(same.code).toBe(1);
    expect(same.stdout).toMatch(/failed \(1\.0\.0\): 1\.0\.0 is the running version \[running-version\]/);

    // Rolled back in probation, then quarantined: both codes, in the history and to the agent.
    askUpgrade(root, pid, '2.0.0');
    await waitForSavedState(root, (s) => s.history.some((h: { to: string; result: string }) => h.to === '2.0.0' && h.result === 'rolled-back'), '2.0.0 rolled back');
    expect(savedState(root).history[0]).toMatchObject({ to: '2.0.0', result: 'rolled-back', code: 'rolled-back' });
    expect((await statusJson(root)).report.lastUpgrade).toMatchObject({ to: '2.0.0', result: 'rolled-back', code: 'rolled-back' });
    const respawned = await up.waitForLog((l) => logged.spawned('active', '1.0.0')(l) && l.agentPid !== pid, 10_000, 'the old version started again');
    const again = respawned.agentPid as number;
    await up.waitForLog((l) => l.event === 'ready' && (l.active as { agentPid: number } | null)?.agentPid === again, 10_000, 'the restarted agent is ready');
    askUpgrade(root, again, '2.0.0');
    await waitUntil(() => readLines(root, 'events.log').some((l) => l.startsWith(`${again} 1.0.0 got {"type":"upgrade-failed","version":"2.0.0"`)), 'the refusal of the quarantined version');
    const line = readLines(root, 'events.log').find((l) => l.startsWith(`${again} 1.0.0 got {"type":"upgrade-failed","version":"2.0.0"`))!;
    expect(JSON.parse(line.slice(line.indexOf('{')))).toMatchObject({ code: 'quarantined' });
  });
});
