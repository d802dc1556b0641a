/**
 * Hostile and broken agents: none of them may crash the upgrader, grow its memory without bound, stop its
 * timers, or leave a process behind.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, CLI, currentTarget, isAlive, logged, makeRoot, startReady, startUpgrader, Upgrader, waitUntil } from '../helpers.js';
import { FAST, runArgs } from '../timing.js';
import { checkInvariant, rootProcesses } from './invariant.js';

cleanUpAfterEach();

const rssMb = (pid: number) => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

describe('hostile candidates', () => {
  it('megabytes of output and every malformed line before ready: ignored, then the handoff completes', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { fixture: 'hostile.mjs', config: { mode: 'noise' } } }, '1.0.0');
    // Megabytes to wade through before its ready.
    const { up, pid } = await startReady(root, runArgs({ ready: '20s' }));
    askUpgrade(root, pid, '2.0.0');
    await up.waitForSent('go', '2.0.0', 30_000);
    expect(currentTarget(root)).toBe('versions/2.0.0');
    for (const kind of ['overlong', 'bad-utf8', 'garbage'] as const) expect(up.logs.some(logged.agentLine(kind)), kind).toBe(true);
    // The second ready changed nothing: one go, one promotion.
    expect(up.logs.filter(logged.sent('go'))).toHaveLength(1);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(rssMb(up.pid)).toBeLessThan(150);
    await checkInvariant(root, up.pid, { allowed: ['2.0.0'] });
  });

  it('a million lines of garbage: the upgrader keeps up and stays bounded', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { fixture: 'hostile.mjs', config: { mode: 'flood' } } }, '1.0.0');
    // A million lines before its ready.
    const { up, pid } = await startReady(root, runArgs({ ready: '60s' }), '1.0.0');
    // The peak, sampled throughout: garbage is classified without a parser exception per line, so a flood
    // makes little garbage for the collector (it peaked between 130 and 280 MB before).
    let peak = 0;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMb(up.pid))), 50);
    askUpgrade(root, pid, '2.0.0');
    await up.waitForSent('go', '2.0.0', 90_000);
    clearInterval(sampler);
    expect(peak).toBeLessThan(150);
  }, 120_000);

  it('ten megabytes with no newline, then silence: the ready timeout still fires', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { fixture: 'hostile.mjs', config: { mode: 'no-newline' } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    const failed = await up.waitForSent('upgrade-failed', '1.0.0', 15_000);
    expect((failed.message as { reason: string }).reason).toMatch(/did not report ready within 3\.0s/);
    expect(rssMb(up.pid)).toBeLessThan(150);
    await checkInvariant(root, up.pid, { allowed: ['1.0.0'] });
  });

  it('a candidate stopped with SIGSTOP while verifying is still killed', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { fixture: 'hostile.mjs', config: { mode: 'sigstop' } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    const candidate = await up.agentPid('2.0.0', 'candidate');
    await up.waitForSent('upgrade-failed', '1.0.0', 15_000);
    await waitUntil(() => !isAlive(candidate), 'the stopped candidate is gone');
    await checkInvariant(root, up.pid, { allowed: ['1.0.0'] });
  });
});

describe('hostile old agents', () => {
  it.each([
    ['is woken (SIGCONT), terminated, and the handoff completes', {}, { readyDelayMs: 300 }],
    ['and also ignores SIGTERM is killed, and the handoff completes', { ignoreSigterm: true, ignoreStop: true }, {}],
  ])('an old agent stopped with SIGSTOP %s', async (_, oldConfig, newConfig) => {
    const root = makeRoot({ '1.0.0': { config: oldConfig }, '2.0.0': { config: newConfig } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    await up.agentPid('2.0.0', 'candidate');
    process.kill(pid, 'SIGSTOP');
    await up.waitForSent('go', '2.0.0', 15_000);
    expect(isAlive(pid)).toBe(false);
    await checkInvariant(root, up.pid, { allowed: ['2.0.0'] });
  });
});

describe('exit statuses', () => {
  const cases: [string, { code?: number; signal?: NodeJS.Signals }, number][] = [
    ['exit 0', { code: 0 }, 0],
    ['exit 1', { code: 1 }, 1],
    ['exit 42', { code: 42 }, 42],
    ['exit 255', { code: 255 }, 255],
    ['SIGTERM', { signal: 'SIGTERM' }, 143],
    ['SIGKILL', { signal: 'SIGKILL' }, 137],
    ['SIGSEGV', { signal: 'SIGSEGV' }, 139],
    ['SIGABRT', { signal: 'SIGABRT' }, 134],
    ['SIGHUP', { signal: 'SIGHUP' }, 129],
    // The upgrader's own statuses (64 usage ... 78 layout) would tell the units not to restart, or read as
    // "another upgrader owns this root": an agent's becomes 79.
    ['exit 64', { code: 64 }, 79],
    ['exit 75', { code: 75 }, 79],
    ['exit 78', { code: 78 }, 79],
  ];
  it.each(cases)('an agent that ends with %s: the upgrader exits with its status, leaving nothing', async (_, how, status) => {
    const root = makeRoot({ '1.0.0': { config: how.code !== undefined ? { exitAfterGoMs: 50, exitCode: how.code, children: 1 } : { children: 1 } } }, '1.0.0');
    const up = startUpgrader(root, FAST);
    const pid = await up.agentPid('1.0.0');
    if (how.signal) {
      await up.waitForTransition('ready', 'running');
      await waitUntil(() => rootProcesses(root).length >= 2, 'the agent started its child');
      process.kill(pid, how.signal);
    }
    expect((await up.waitForExit()).code).toBe(status);
    await waitUntil(() => rootProcesses(root).length === 0, 'no process of the agent is left');
  });
});

describe('what an agent inherits', () => {
  it('gets file descriptors 0, 1 and 2 only: neither the upgrader\'s files nor what its parent leaked to it', async () => {
    const root = makeRoot({ '1.0.0': { fixture: 'script', script: '#!/bin/sh\necho \'{"type":"ready"}\'\nexec cat\n' } }, '1.0.0');
    // The upgrader's parent leaks two descriptors to it, as a careless init script might: fd 3, which Node
    // itself marks close-on-exec at start-up (libuv does so for the low, contiguous ones), and fd 40, past
    // that range, which only the upgrader's own clean-up keeps from the agents.
    const stdio: ('ignore' | 'pipe')[] = Array.from({ length: 41 }, () => 'ignore');
    stdio[2] = stdio[3] = stdio[40] = 'pipe';
    const child = spawn(process.execPath, [CLI, 'run', '--root', root, ...FAST], { stdio });
    const up = new Upgrader(root, child);
    try {
      const pid = await up.agentPid('1.0.0');
      await up.waitForTransition('ready', 'running');
      const fds = readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b);
      expect(fds).toEqual([0, 1, 2]);
      const closed = await up.waitForLog(logged.closedInheritedFds(), 1_000, 'the log line naming the descriptors closed');
      expect(closed.fds).toContain(40);
    } finally {
      up.kill('SIGTERM');
      await up.exit;
    }
  });
});
