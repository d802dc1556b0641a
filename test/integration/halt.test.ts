/** `upgrader halt` and `resume` on real upgraders and agents: a halt that holds across kill -9, and the ways out of it. */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { emptyState, encodeState } from '../../src/state.js';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanUpAfterEach, currentTarget, logged, makeRoot, rootProcesses, runCli, startReady, startUpgrader, statusJson, waitForSavedState, workSpans } from '../helpers.js';
import { FAST } from '../timing.js';

cleanUpAfterEach();

const events = (root: string) => readFileSync(join(root, 'events.log'), 'utf8');

describe('upgrader halt and resume', () => {
  it('halts through the protocol and stays halted across a kill -9 of the upgrader; resume starts current again', async () => {
    const root = makeRoot({ '1.0.0': { config: { workEveryMs: 20 } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    const halted = await runCli(['halt', '--root', root, '--by', 'migration 42']);
    expect(halted.code).toBe(0);
    expect(halted.stdout).toMatch(/^halted: 1\.0\.0 is stopped, since /m);
    // Stopped the graceful way: told stop, answered stopped, exited.
    expect(events(root)).toMatch(new RegExp(`${pid} 1\\.0\\.0 got .*"stop"`));
    expect(rootProcesses(root)).toEqual([]);
    let status = await statusJson(root);
    expect(status.report).toMatchObject({ state: 'halted', running: true, agent: null, halt: { version: '1.0.0', by: 'migration 42', reason: null } });
    expect(status.code).toBe(4);
    expect((await runCli(['status', '--root', root])).stdout).toMatch(/^halted +since .* ago, asked by migration 42 \(current 1\.0\.0\)/m);
    // Asked again: already halted, which is success.
    expect((await runCli(['halt', '--root', root])).code).toBe(0);

    up.kill('SIGKILL');
    await up.waitForExit();
    const again = startUpgrader(root, FAST);
    await again.waitForLog((l) => typeof l.msg === 'string' && /the root is halted since/.test(l.msg), 15_000, 'the halted start');
    await waitForSavedState(root, (s) => s.state === 'halted', 'halted after the restart');
    expect(again.logs.some(logged.spawned('active'))).toBe(false);
    expect(rootProcesses(root)).toEqual([]);

    const resumed = await runCli(['resume', '--root', root]);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(/^resumed: 1\.0\.0 is running again$/m);
    status = await statusJson(root);
    expect(status.report).toMatchObject({ state: 'running', halt: null, agent: { version: '1.0.0' } });
    expect((await runCli(['resume', '--root', root])).code).toBe(1);
  });

  it('upgrade from halted starts the new version directly; no agent worked in between', async () => {
    const root = makeRoot({ '1.0.0': { config: { workEveryMs: 10 } }, '2.0.0': { config: { workEveryMs: 10, readyDelayMs: 100 } } }, '1.0.0');
    await startReady(root, FAST);
    expect((await runCli(['halt', '--root', root])).code).toBe(0);
    const haltedAt = Date.now();
    const upgraded = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(upgraded.code).toBe(0);
    expect(upgraded.stdout.trim().split('\n').at(-1)).toBe('done: 2.0.0 is running');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    await waitForSavedState(root, (s) => s.state === 'running' && s.halt === null, 'running 2.0.0, no halt');
    const [old, next] = workSpans(root);
    expect(old?.version).toBe('1.0.0');
    expect(next?.version).toBe('2.0.0');
    expect(old!.last).toBeLessThan(haltedAt);
    expect(next!.first).toBeGreaterThan(haltedAt);
  });

  it('a failed upgrade from halted stays halted with the reason and never restarts the old version', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitBeforeReady: 6 } } }, '1.0.0');
    const { up } = await startReady(root, FAST);
    expect((await runCli(['halt', '--root', root])).code).toBe(0);
    const failed = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/failed \(2\.0\.0\): the candidate 2\.0\.0 exited with code 6 before reporting ready/);
    await waitForSavedState(root, (s) => s.state === 'halted', 'halted again');
    const { report } = await statusJson(root);
    expect(report.halt.reason).toMatch(/the candidate 2\.0\.0 exited with code 6/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(up.logs.filter(logged.spawned('active'))).toHaveLength(1);
    expect(rootProcesses(root)).toEqual([]);
  });

  it('a probation that failed after an upgrade from halted, cut short by a kill before it was recorded, comes back halted', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    // What the state file holds when the upgrader dies between moving current back to 1.0.0 and recording it.
    const at = new Date().toISOString();
    const state = { ...emptyState(), state: 'running' as const, current: '2.0.0', previous: '1.0.0', probation: { version: '2.0.0', from: '1.0.0', mode: 'sequential' as const, startedAt: at, previous: null, halt: { version: '1.0.0', since: at, by: 'ops', reason: null } } };
    mkdirSync(join(root, 'state'), { recursive: true });
    writeFileSync(join(root, 'state/state.json'), encodeState(state));
    const up = startUpgrader(root, FAST);
    await waitForSavedState(root, (s) => s.state === 'halted', 'halted');
    expect(up.logs.some(logged.spawned('active'))).toBe(false);
    expect(rootProcesses(root)).toEqual([]);
    expect((await statusJson(root)).report.halt).toMatchObject({ version: '1.0.0', by: 'ops', reason: expect.stringMatching(/going back from its probation/) });
  });

  it('refuses a halt while nothing runs, and says why', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const result = await runCli(['halt', '--root', root]);
    expect(result.code).toBe(3);
    expect(result.stderr).toMatch(/No upgrader runs on/);
  });
});
