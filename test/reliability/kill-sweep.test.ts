/**
 * kill -9 of the upgrader at every state-changing system call of a start-up and a live handoff, not at a
 * few hand-picked moments: strace counts the calls (write, fsync, fdatasync, rename, symlink, unlink,
 * mkdir, rmdir) on the upgrader's main thread, where all its durable writes happen, then, for each kind
 * and each N, kills it with SIGKILL as it enters the N-th call of that kind. After each kill a fresh `upgrader run` must bring the root to
 * the invariant. UPGRADER_LONG_TESTS=1 also repeats the sweep with a sequential handoff.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, cleanupRoots, logged, makeRoot, missing, runCli, savedState, scratchDir, startUpgrader, titled, Upgrader, waitForSavedState } from '../helpers.js';
import { runArgs } from '../timing.js';
import { countCalls, killTracee, startTraced, STATE_SYSCALLS } from './strace.js';
import { checkHalted, checkInvariant } from './invariant.js';

// Under strace the upgrader is slower: its candidate gets more time to say ready.
const FAST = runArgs({ ready: '5s' });
const LONG = process.env.UPGRADER_LONG_TESTS === '1';
const noStrace = missing('strace');

cleanUpAfterEach();

/** Runs start-up and one handoff; resolves once it completed or the upgrader died on the way. */
async function handoff(up: Upgrader, root: string, mode: 'live' | 'sequential'): Promise<void> {
  const died = up.exit.then(() => 'died' as const);
  const ready = up.waitForTransition('ready', 'running', 10_000).then(
    () => 'ready' as const,
    () => 'died' as const,
  );
  if ((await Promise.race([died, ready])) === 'died') return;
  const agentPid = up.logs.find(logged.spawned('active', '1.0.0'))!.agentPid as number;
  askUpgrade(root, agentPid, '2.0.0', mode);
  // Done means quiet: the success recorded, and then the old agent's exit (the last write of a handoff).
  const quiet = (s: any) => s.history[0]?.result === 'succeeded' && s.agents.length === 1 && s.agents[0].version === '2.0.0';
  const done = waitForSavedState(root, quiet, 'the upgrade succeeded and the old agent gone', 10_000).then(
    () => undefined,
    () => undefined,
  );
  await Promise.race([died, done]);
}

/**
 * Runs start-up, `upgrader halt`, then `upgrader upgrade --to 2.0.0` from halted; resolves once done or the
 * upgrader died. It returns only once no command of it is still under way: one still running would reach
 * the upgrader the sweep starts next.
 */
async function haltThenUpgrade(up: Upgrader, root: string): Promise<void> {
  let dead = false;
  const died = up.exit.then(() => {
    dead = true;
    return 'died' as const;
  });
  const ready = up.waitForTransition('ready', 'running', 10_000).then(
    () => 'ready' as const,
    () => 'died' as const,
  );
  if ((await Promise.race([died, ready])) === 'died') return;
  if (dead || (await runCli(['halt', '--root', root])).code !== 0) return;
  if (dead || (await runCli(['upgrade', '--root', root, '--to', '2.0.0'])).code !== 0) return;
  const quiet = (s: any) => s.halt === null && s.history[0]?.result === 'succeeded' && s.agents.length === 1;
  await Promise.race([died, waitForSavedState(root, quiet, '2.0.0 running after the halt', 10_000).catch(() => undefined)]);
}

/** Sweeps every state-changing call of `scenario` with a kill -9, restarting after each and checking the root with `check`. */
async function sweep(label: string, scenario: (up: Upgrader, root: string) => Promise<void>, check: (root: string, upgraderPid: number, before: any) => Promise<string>): Promise<void> {
  const dir = scratchDir('sweep-');
  const baselineRoot = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
  const baseline = startTraced(baselineRoot, join(dir, 'baseline.trace'), STATE_SYSCALLS, FAST);
  await scenario(baseline, baselineRoot);
  expect(savedState(baselineRoot).history[0]).toMatchObject({ to: '2.0.0', result: 'succeeded' });
  killTracee(baseline);
  await baseline.exit;
  const total = countCalls(join(dir, 'baseline.trace'));
  const points = STATE_SYSCALLS.split(',').flatMap((name) => Array.from({ length: countCalls(join(dir, 'baseline.trace'), name) }, (_, i) => ({ name, n: i + 1 })));
  expect(points).toHaveLength(total);
  const outcomes = new Map<string, number>();
  let died = 0;
  for (const { name, n } of points) {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const victim = startTraced(root, join(dir, `kill-${name}-${n}.trace`), name, FAST, `signal=SIGKILL:when=${n}`);
    await scenario(victim, root);
    if (victim.child.exitCode !== null || victim.child.signalCode !== null) died += 1;
    killTracee(victim);
    await victim.exit;
    const before = savedState(root);
    const up = startUpgrader(root, FAST);
    try {
      const ended = await check(root, up.pid, before);
      outcomes.set(ended, (outcomes.get(ended) ?? 0) + 1);
    } catch (error) {
      const seen = before && { state: before.state, current: before.current, halt: before.halt, handoff: before.handoff, last: before.history?.[0] };
      throw new Error(`after a kill at ${name} #${n} (state file before the restart: ${JSON.stringify(seen)}): ${(error as Error).message}`);
    }
    up.kill('SIGTERM');
    await up.waitForExit();
    cleanupRoots();
  }
  process.stdout.write(`kill sweep (${label}): ${total} kill points, ${died} killed mid-way, ended: ${JSON.stringify(Object.fromEntries(outcomes))}\n`);
  expect(died).toBeGreaterThan(total * 0.9);
}

describe.skipIf(noStrace)(titled('kill -9 at every state-changing system call of a halt and an upgrade from halted', noStrace), () => {
  it('comes back running 1.0.0 before the halt is on record, halted (nothing runs) after it, and on 2.0.0 once that succeeded', async () => {
    await sweep('halt', haltThenUpgrade, async (root, pid, before) => {
      if (before?.history?.[0]?.result === 'succeeded') return checkInvariant(root, pid, { allowed: ['2.0.0'], mustRun: '2.0.0' });
      if (before?.halt) {
        await checkHalted(root, pid, '1.0.0');
        return 'halted';
      }
      return checkInvariant(root, pid, { allowed: ['1.0.0'] });
    });
  }, 600_000);
});

describe.skipIf(noStrace)(titled('kill -9 at every state-changing system call', noStrace), () => {
  for (const mode of ['live', 'sequential'] as const) {
    // The sequential sweep takes as long again: only in the long mode.
    const notNow = mode === 'sequential' && !LONG ? 'only with UPGRADER_LONG_TESTS=1' : null;
    it.skipIf(notNow)(titled(`${mode} handoff: every kill point recovers to the invariant`, notNow), async () => {
      const dir = scratchDir('sweep-');
      // A clean run first, to count the calls there are to kill at.
      const baselineRoot = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
      const baseline = startTraced(baselineRoot, join(dir, 'baseline.trace'), STATE_SYSCALLS, FAST);
      await handoff(baseline, baselineRoot, mode);
      expect(savedState(baselineRoot).history[0]).toMatchObject({ to: '2.0.0', result: 'succeeded' });
      // Stopped before counting: the upgrader goes on writing (the old agent's exit is recorded after the
      // success), and both counts below must come from the same trace.
      killTracee(baseline);
      await baseline.exit;
      const total = countCalls(join(dir, 'baseline.trace'));
      expect(total).toBeGreaterThan(10);

      // strace counts invocations per system call: sweep each call of each kind, so that every one is hit.
      const points = STATE_SYSCALLS.split(',').flatMap((name) =>
        Array.from({ length: countCalls(join(dir, 'baseline.trace'), name) }, (_, i) => ({ name, n: i + 1 })),
      );
      expect(points).toHaveLength(total);
      const outcomes = { died: 0, completed: 0, keptNew: 0 };
      for (const { name, n } of points) {
        const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
        const victim = startTraced(root, join(dir, `kill-${name}-${n}.trace`), name, FAST, `signal=SIGKILL:when=${n}`);
        await handoff(victim, root, mode);
        const diedHere = victim.child.exitCode !== null || victim.child.signalCode !== null;
        killTracee(victim);
        await victim.exit;
        outcomes[diedHere ? 'died' : 'completed'] += 1;

        const before = savedState(root);
        const succeeded = before?.history?.[0]?.result === 'succeeded';
        const up = startUpgrader(root, FAST);
        try {
          const version = await checkInvariant(root, up.pid, { allowed: succeeded ? ['2.0.0'] : ['1.0.0'], mustRun: succeeded ? '2.0.0' : undefined });
          if (version === '2.0.0') outcomes.keptNew += 1;
        } catch (error) {
          throw new Error(`after a kill at ${name} #${n}: ${(error as Error).message}`);
        }
        up.kill('SIGTERM');
        await up.waitForExit();
        cleanupRoots();
      }
      process.stdout.write(`kill sweep (${mode}): ${total} kill points, ${outcomes.died} killed mid-way, ${outcomes.keptNew} ended on the new version\n`);
      expect(outcomes.died).toBeGreaterThan(total * 0.9);
    }, 600_000);
  }
});

describe('recovery is idempotent', () => {
  it('an upgrader killed again and again while recovering still ends on the proven version', async () => {
    const root = makeRoot({ '1.0.0': { config: { ignoreStop: true } }, '2.0.0': {} }, '1.0.0');
    const first = startUpgrader(root, FAST);
    const pid = await first.agentPid('1.0.0');
    await first.waitForTransition('ready', 'running');
    askUpgrade(root, pid, '2.0.0');
    await first.waitForSent('stop', '1.0.0');
    first.kill('SIGKILL');
    await first.exit;
    for (const delay of [0, 5, 20, 50, 100, 200]) {
      const again = startUpgrader(root, FAST);
      await new Promise((r) => setTimeout(r, delay));
      again.kill('SIGKILL');
      await again.exit;
    }
    const last = startUpgrader(root, FAST);
    await checkInvariant(root, last.pid, { allowed: ['1.0.0'] });
    expect(savedState(root).history[0]).toMatchObject({ to: '2.0.0', result: 'failed' });
  });

  it('a root that cannot be recovered is refused with the reason, and not retried (exit 78)', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const first = startUpgrader(root, FAST);
    await first.waitForTransition('ready', 'running');
    first.kill('SIGKILL');
    await first.exit;
    // Everything that could be launched is gone.
    const { rmSync } = await import('node:fs');
    rmSync(join(root, 'versions/1.0.0'), { recursive: true });
    const again = startUpgrader(root, FAST);
    expect((await again.waitForExit()).code).toBe(78);
    expect(again.stderrText.join('\n')).toMatch(/Nothing to launch: current points at 1\.0\.0, but version 1\.0\.0 is not installed/);
  });
});

describe('a stopped owner is not displaced', () => {
  it('an upgrader stopped with SIGSTOP longer than any lock staleness keeps its root; a second instance is refused', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const first = startUpgrader(root, FAST);
    const pid = await first.agentPid('1.0.0');
    await first.waitForTransition('ready', 'running');
    process.kill(first.pid, 'SIGSTOP');
    try {
      // proper-lockfile's staleness for the take-over lock is 5 s; wait past it.
      await new Promise((r) => setTimeout(r, 6000));
      const second = startUpgrader(root, FAST);
      expect((await second.waitForExit()).code).toBe(75);
      expect(second.stderrText.join('\n')).toMatch(new RegExp(`Another upgrader \\(PID ${first.pid}`));
    } finally {
      process.kill(first.pid, 'SIGCONT');
    }
    await checkInvariant(root, first.pid, { allowed: ['1.0.0'] });
    expect(savedState(root).agents[0].pid).toBe(pid);
  });
});
