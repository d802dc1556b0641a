import { chmodSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  agentPidsOf, askUpgrade, cleanUpAfterEach, currentTarget, isAlive, logged, makeRoot, readLines, runCli, startReady, startUpgrader, statusJson, waitForSavedState, waitUntil,
} from '../helpers.js';
import { FAST, runArgs } from '../timing.js';

cleanUpAfterEach();

describe('refused upgrade requests', () => {
  const cases: [string, RegExp][] = [
    ['../../etc', /is not a valid version name/],
    ['a/b', /is not a valid version name/],
    ['..', /is not a valid version name/],
    ['-rf', /is not a valid version name/],
    ['', /is not a valid version name/],
    ['9.9.9', /version 9\.9\.9 is not installed/],
    ['noentry', /has no entry point/],
    ['noexec', /is not executable/],
    ['1.0.0', /1\.0\.0 is the running version/],
  ];
  it('answers each bad request with upgrade-failed and keeps running', async () => {
    const root = makeRoot({ '1.0.0': {}, noentry: { fixture: 'none' }, noexec: {} }, '1.0.0');
    chmodSync(join(root, 'versions/noexec/bin/agent'), 0o644);
    const { up, pid } = await startReady(root, FAST);
    for (const [version, reason] of cases) {
      askUpgrade(root, pid, version);
      const sent = await up.waitForLog(
        (l) => logged.sent('upgrade-failed')(l) && (l.message as { version: string }).version === version,
        5000,
        `refusal of ${JSON.stringify(version)}`,
      );
      expect((sent.message as { reason: string }).reason).toMatch(reason);
    }
    expect(up.logs.some(logged.spawned('candidate'))).toBe(false);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(isAlive(pid)).toBe(true);
  });

  it('refuses a second upgrade while a handoff is in progress', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { readyDelayMs: 1500 } }, '3.0.0': {} }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    await up.agentPid('2.0.0', 'candidate');
    askUpgrade(root, pid, '3.0.0');
    const sent = await up.waitForSent('upgrade-failed', '1.0.0');
    expect(sent.message).toMatchObject({ version: '3.0.0', reason: 'a handoff to 2.0.0 is already in progress' });
    await up.waitForSent('go', '2.0.0');
    expect(currentTarget(root)).toBe('versions/2.0.0');
  });
});

describe('one upgrader per root', () => {
  it('refuses a second upgrader and leaves the first undisturbed', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const { up: first, pid } = await startReady(root, FAST);
    const second = startUpgrader(root, FAST);
    const { code } = await second.waitForExit();
    expect(code).toBe(75);
    expect(second.stderrText.join('\n')).toMatch(new RegExp(`Another upgrader \\(PID ${first.pid}, started .*\\) already runs on this root`));
    expect(isAlive(pid)).toBe(true);
    expect(agentPidsOf(root)).toEqual([pid]);
    const { code: statusCode, report } = await statusJson(root);
    expect(statusCode).toBe(0);
    expect(report.upgraderPid).toBe(first.pid);
  });
});

describe('the agent ends on its own', () => {
  it.each([
    [{ exitAfterGoMs: 100, exitCode: 7 }, 7],
    [{ exitAfterGoMs: 100, exitCode: 0 }, 0],
  ])('the upgrader exits with the agent status (%j -> %i)', async (config, status) => {
    const root = makeRoot({ '1.0.0': { config: { ...config, upgradeOnStart: undefined } } }, '1.0.0');
    // exitAfterGoMs applies to active agents from their start in this fixture.
    const up = startUpgrader(root, FAST);
    await up.agentPid('1.0.0');
    const { code } = await up.waitForExit();
    expect(code).toBe(status);
    const { code: statusCode, report } = await statusJson(root);
    expect(statusCode).toBe(3);
    expect(report).toMatchObject({ running: false, state: 'stopped', agent: null, current: '1.0.0' });
  });

  it('reports death by a signal as 128 + the signal number', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    process.kill(pid, 'SIGKILL');
    expect((await up.waitForExit()).code).toBe(137);
  });
});

describe('SIGTERM to the upgrader', () => {
  it('stops the agent gracefully and exits 0', async () => {
    const root = makeRoot({ '1.0.0': { config: { children: 1 } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    await waitUntil(() => readLines(root, 'children.log').length > 0, 'children started');
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);
    expect(isAlive(pid)).toBe(false);
    expect(agentPidsOf(root)).toEqual([]);
  });

  it('mid-handoff: kills both agents, puts current back, records the handoff as failed', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { ignoreStop: true } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    const candidate = await up.agentPid('2.0.0', 'candidate');
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);
    expect([pid, candidate].filter(isAlive)).toEqual([]);
    expect(agentPidsOf(root)).toEqual([]);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    const { report } = await statusJson(root);
    expect(report.lastUpgrade).toMatchObject({ from: '1.0.0', to: '2.0.0', result: 'failed' });
    expect(report.lastUpgrade.reason).toMatch(/received SIGTERM during the handoff/);
  });

  it('an agent that ignores stop and SIGTERM: SIGTERM after --stop-timeout, its tree killed after --kill-timeout', async () => {
    const root = makeRoot({ '1.0.0': { config: { ignoreStop: true, ignoreSigterm: true } } }, '1.0.0');
    const { up, pid } = await startReady(root, runArgs({ stop: '500ms', kill: '500ms' }));
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);
    expect(isAlive(pid)).toBe(false);
    // Two deadlines passed while stopping: stop unanswered, then SIGTERM unanswered.
    expect(up.logs.filter((l) => l.event === 'timeout' && l.from === 'stopping')).toHaveLength(2);
  });
});

describe('kill -9 of the upgrader, then restart', () => {
  type Point = { name: string; candidate: Record<string, unknown>; waitFor: (up: ReturnType<typeof startUpgrader>) => Promise<unknown> };
  const points: Point[] = [
    { name: 'while the candidate verifies', candidate: { neverReady: true }, waitFor: (up) => up.agentPid('2.0.0', 'candidate') },
    { name: 'while the old agent drains', candidate: {}, waitFor: (up) => up.waitForSent('stop', '1.0.0') },
  ];
  for (const point of points) {
    it(`${point.name}: one agent of the proven version runs, the handoff is recorded as failed, nothing is left over`, async () => {
      const root = makeRoot({ '1.0.0': { config: { ignoreStop: true } }, '2.0.0': { config: point.candidate } }, '1.0.0');
      const { up: first, pid } = await startReady(root, FAST);
      askUpgrade(root, pid, '2.0.0');
      await point.waitFor(first);
      first.kill('SIGKILL');
      await first.exit;

      const { up: second, pid: restarted } = await startReady(root, FAST);
      expect(currentTarget(root)).toBe('versions/1.0.0');
      expect(agentPidsOf(root)).toEqual([restarted]);
      const { code, report } = await statusJson(root);
      expect(code).toBe(0);
      expect(report).toMatchObject({ running: true, upgraderPid: second.pid, state: 'running', current: '1.0.0', agent: { pid: restarted, version: '1.0.0' } });
      expect(report.lastUpgrade).toMatchObject({ from: '1.0.0', to: '2.0.0', result: 'failed' });
      expect(report.lastUpgrade.reason).toMatch(/the upgrader stopped during the handoff/);
    });
  }

  it('after go: the new version stays', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const { up: first, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    await first.waitForSent('go', '2.0.0');
    await waitForSavedState(root, (s) => s.history[0]?.result === 'succeeded', 'the upgrade succeeded');
    first.kill('SIGKILL');
    await first.exit;
    const second = startUpgrader(root, FAST);
    const restarted = await second.agentPid('2.0.0');
    await second.waitForTransition('ready', 'running');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    expect(agentPidsOf(root)).toEqual([restarted]);
    const { report } = await statusJson(root);
    expect(report.lastUpgrade).toMatchObject({ from: '1.0.0', to: '2.0.0', result: 'succeeded' });
  });

  it('during probation: the new version restarts on probation and is rolled back if it dies', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitAfterGoMs: 1500, exitCode: 4 } } }, '1.0.0');
    const { up: first, pid } = await startReady(root, runArgs({ probation: '10s' }));
    askUpgrade(root, pid, '2.0.0');
    await first.waitForSent('go', '2.0.0');
    await waitForSavedState(root, (s) => s.history[0]?.result === 'succeeded' && s.probation?.version === '2.0.0', 'the upgrade on probation');
    first.kill('SIGKILL');
    await first.exit;
    const second = startUpgrader(root, runArgs({ probation: '10s' }));
    await second.agentPid('2.0.0');
    // The fixture exits 1.5 s after it starts working; as an active agent it works at once.
    await second.waitForLog(logged.spawned('active', '1.0.0'), 10_000, 'the rollback to 1.0.0');
    expect(currentTarget(root)).toBe('versions/1.0.0');
    const { report } = await statusJson(root);
    expect(report.lastUpgrade).toMatchObject({ from: '1.0.0', to: '2.0.0', result: 'rolled-back' });
  });

  it('repairs a missing current from the state file', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '2.0.0');
    const first = startUpgrader(root, FAST);
    await first.waitForTransition('ready', 'running');
    first.kill('SIGKILL');
    await first.exit;
    unlinkSync(join(root, 'current'));
    const second = startUpgrader(root, FAST);
    await second.agentPid('2.0.0');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    expect(second.logs.some((l) => logged.repaired()(l) && l.version === '2.0.0')).toBe(true);
  });

  it('never bricks while a good version is on disk: current naming a deleted version falls back to the previous one, loudly and on record', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    await up.waitForSent('go', '2.0.0');
    await waitForSavedState(root, (s) => s.previous === '1.0.0' && s.current === '2.0.0' && s.handoff === null, 'the upgrade to 2.0.0 recorded');
    up.kill('SIGKILL');
    await up.exit;
    // Both current and the state name 2.0.0, which is now gone (deleted by hand, a bad disk).
    rmSync(join(root, 'versions/2.0.0'), { recursive: true });
    const second = startUpgrader(root, FAST);
    await second.agentPid('1.0.0');
    await second.waitForTransition('ready', 'running');
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(second.logs.find(logged.repaired())).toMatchObject({ level: 'error', version: '1.0.0' });
    const { code, report } = await statusJson(root);
    expect(code).toBe(0);
    expect(report.repair).toMatchObject({ version: '1.0.0', problem: expect.stringContaining('2.0.0') });
    await waitForSavedState(root, (s) => s.repair?.version === '1.0.0', 'the repair recorded');
  });

  it('refuses to start (78) only when no version it knows to have run can run', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    chmodSync(join(root, 'versions/1.0.0/bin/agent'), 0o644);
    const up = startUpgrader(root, FAST);
    expect((await up.waitForExit()).code).toBe(78);
  });

  it('falls back to current when the state file is garbage', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const first = startUpgrader(root, FAST);
    await first.waitForTransition('ready', 'running');
    first.kill('SIGKILL');
    await first.exit;
    writeFileSync(join(root, 'state/state.json'), '{"format":"upgrader-state","schema":1,"sha256":"00","body":{}}');
    const second = startUpgrader(root, FAST);
    await second.waitForTransition('ready', 'running');
    expect(second.logs.some((l) => logged.ignoredStateFile()(l) && /checksum/.test(l.problem as string))).toBe(true);
  });
});

describe('status', () => {
  it('exits 3 with no upgrader, 4 while the agent is not ready, 0 once it is', async () => {
    const root = makeRoot({ '1.0.0': { config: { readyDelayMs: 1500 } } }, '1.0.0');
    let result = await statusJson(root);
    expect(result.code).toBe(3);
    expect(result.report).toMatchObject({ running: false, state: 'stopped', current: '1.0.0', agent: null, lastUpgrade: null, history: [] });
    const up = startUpgrader(root, FAST);
    const pid = await up.agentPid('1.0.0');
    await up.waitForLog((l) => l.event === 'start');
    result = await statusJson(root);
    expect(result.code).toBe(4);
    expect(result.report.agent).toMatchObject({ pid, ready: false });
    await up.waitForTransition('ready', 'running');
    result = await statusJson(root);
    expect(result.code).toBe(0);
    expect(result.report.agent).toMatchObject({ pid, ready: true, version: '1.0.0' });
  });

  it('shows an upgrade in progress, and answers while the upgrader is stopped with SIGSTOP', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { neverReady: true } } }, '1.0.0');
    // The candidate must still be there while the upgrader is stopped and status is read.
    const { up, pid } = await startReady(root, runArgs({ ready: '20s' }));
    askUpgrade(root, pid, '2.0.0');
    const candidate = await up.agentPid('2.0.0', 'candidate');
    await waitForSavedState(root, (s) => s.agents.some((a: { role: string }) => a.role === 'candidate'), 'the candidate');
    process.kill(up.pid, 'SIGSTOP');
    try {
      // It answers at all (runCli gives up after 10 s): status reads files, never asks the stopped upgrader.
      const { code, report } = await statusJson(root);
      expect(code).toBe(0);
      expect(report).toMatchObject({
        running: true,
        state: 'upgrading',
        agent: { pid, version: '1.0.0' },
        candidate: { pid: candidate, version: '2.0.0', ready: false },
        handoff: { from: '1.0.0', to: '2.0.0', mode: 'live' },
      });
      const human = await runCli(['status', '--root', root]);
      expect(human.stdout).toMatch(/state\s+upgrading/);
      expect(human.stdout).toMatch(/candidate\s+PID \d+, 2\.0\.0/);
    } finally {
      process.kill(up.pid, 'SIGCONT');
    }
  });
});

describe('command line', () => {
  it('prints help and the version', async () => {
    for (const args of [['--help'], ['run', '--help'], ['status', '--help']]) {
      const { code, stdout } = await runCli(args);
      expect(code).toBe(0);
      expect(stdout).toMatch(/Usage:\s+upgrader/);
    }
    expect((await runCli(['--version'])).stdout).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it.each([
    [['run'], 64, /--root <dir> is required/],
    [['frobnicate'], 64, /Unknown command "frobnicate"/],
    [['run', '--root', '/nonexistent-root'], 78, /The root \/nonexistent-root does not exist/],
    [['run', '--root', '/tmp', '--ready-timeout', '30'], 64, /--ready-timeout must be a duration with a unit/],
    [['run', '--root', '/tmp', '--bogus'], 64, /Unknown option '--bogus'/],
    [['run', '--root', '/tmp', '--entry', '../x'], 64, /--entry must be a relative path inside the version directory/],
    [['status', '--root', '/tmp'], 78, /has no versions\/ directory/],
  ])('%j exits %i with one clear sentence', async (args, status, message) => {
    const { code, stderr } = await runCli(args);
    expect(code).toBe(status);
    expect(stderr).toMatch(message);
    expect(stderr.trim().split('\n')).toHaveLength(1);
  });

  it('refuses to start with no usable current and no state', async () => {
    const root = makeRoot({ '1.0.0': {} });
    symlinkSync('../../etc', join(root, 'current'));
    const up = startUpgrader(root, FAST);
    const { code } = await up.waitForExit();
    expect(code).toBe(78);
    expect(up.stderrText.join('\n')).toMatch(/Nothing to launch: .*current points at "..\/..\/etc", not at versions\/<version>/);
    rmSync(join(root, 'current'));
  });
});

describe('ownership', () => {
  it('an upgrader whose owner record is taken over stops touching the root and takes its agent down', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    // Another process (here: this test runner) claims the root behind the upgrader's back.
    const stat = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
    const startTicks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    writeFileSync(join(root, 'state/owner.json'), JSON.stringify({ pid: process.pid, startTicks, bootId, startedAt: new Date().toISOString() }));
    askUpgrade(root, pid, '2.0.0');
    const { code } = await up.waitForExit();
    expect(code).toBe(75);
    expect(up.logs.some(logged.ownershipLost())).toBe(true);
    expect(up.logs.some(logged.spawned('candidate', '2.0.0'))).toBe(false);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    await waitUntil(() => !isAlive(pid), 'its agent is gone');
  });
});
