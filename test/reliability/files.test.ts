/**
 * Hostile and broken files: a full disk or an I/O error at each kind of write, a read-only root, state and
 * `current` in every broken shape, leftovers from a crash, symlinks planted at the upgrader's names, and
 * versions that another user could change while the upgrader runs as root.
 */
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lchownSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, currentTarget, FIXTURES, isAlive, logged, makeRoot, missing, REPO, runCli, savedState, scratchDir, startReady, startUpgrader, titled, Upgrader, waitForSavedState, waitUntil } from '../helpers.js';
import { FAST, runArgs } from '../timing.js';
import { checkInvariant } from './invariant.js';
import { countCalls, killTraced, killTracee, startTraced } from './strace.js';

cleanUpAfterEach();

const noRoot = missing('root');
const noStrace = missing('strace');
const leftovers = (dir: string) => readdirSync(dir).filter((name) => name.includes('.tmp-'));

describe.skipIf(noStrace)(titled('full disk and I/O errors', noStrace), () => {
  /**
   * Starts under strace with `syscall` failing with `error` from its first call after start-up. Start-up
   * reads /proc once per process on the machine, so its count of `openat` can differ between the probe
   * and the real run when other tests start or end processes meanwhile: the real run's own count before
   * the fault is checked, and the pair is tried again when it differs.
   */
  async function startFailingAfterReady(syscall: string, error: string): Promise<{ up: Upgrader; root: string; pid: number }> {
    for (let attempt = 1; ; attempt++) {
      const dir = scratchDir('inject-');
      const probe = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
      const counting = startTraced(probe, join(dir, 'count.trace'), syscall, FAST);
      await counting.waitForTransition('ready', 'running');
      await waitForSavedState(probe, (s) => s.agents.some((a: { ready: boolean }) => a.ready), 'the ready agent');
      const startup = countCalls(join(dir, 'count.trace'), syscall);
      killTraced();
      const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
      const up = startTraced(root, join(dir, 'fail.trace'), syscall, FAST, `error=${error}:when=${startup + 1}+`);
      // With more processes on the machine than in the probe, the fault comes during start-up instead.
      const started = await up.waitForTransition('ready', 'running').then(() => true, () => attempt === 5 && Promise.reject(new Error('never started')));
      const calls = () => countCalls(join(dir, 'fail.trace'), syscall);
      if (started) await waitUntil(() => calls() >= startup, 'the start-up calls traced', 3000).catch(() => undefined);
      const sameStart = started && calls() === startup;
      if (sameStart || attempt === 5) {
        const pid = up.logs.find(logged.spawned('active', '1.0.0'))!.agentPid as number;
        return { up, root, pid };
      }
      killTraced();
    }
  }

  it.each([
    ['openat', 'ENOSPC'],
    ['openat', 'EMFILE'],
    ['fsync', 'EIO'],
    ['rename', 'EIO'],
    ['rename', 'ENOSPC'],
  ])('%s failing with %s: the upgrade is refused before anything changes', async (syscall, error) => {
    const { up, root, pid } = await startFailingAfterReady(syscall, error);
    askUpgrade(root, pid, '2.0.0');
    const refused = await up.waitForSent('upgrade-failed', '1.0.0');
    // An open that fails may hit the candidate's files (as root, all of them are checked) before the state file: refused either way.
    const reason = syscall === 'openat' ? `(could not be recorded durably|upgrader\\.json cannot be read|cannot be checked) \\(${error}` : `could not be recorded durably \\(${error}`;
    expect((refused.message as { reason: string }).reason).toMatch(new RegExp(reason));
    expect(up.logs.some(logged.spawned('candidate', '2.0.0'))).toBe(false);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(isAlive(pid)).toBe(true);
    expect(leftovers(join(root, 'state'))).toEqual([]);
  });

  it('out of descriptors when the candidate is spawned: the upgrade fails with the reason, the old agent carries on', async () => {
    const { up, root, pid } = await startFailingAfterReady('socketpair', 'EMFILE');
    askUpgrade(root, pid, '2.0.0');
    const failed = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((failed.message as { reason: string }).reason).toMatch(/the candidate 2\.0\.0 could not be started \(.*EMFILE/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(isAlive(pid)).toBe(true);
    // The host was short of descriptors; the version did nothing wrong: it is not quarantined.
    await waitForSavedState(root, (s) => s.history[0]?.result === 'failed', 'the failure recorded');
    expect(existsSync(join(root, 'state/quarantine/2.0.0.json'))).toBe(false);
  });

  it('symlink failing with ENOSPC when current moves: the candidate fails, the old agent carries on', async () => {
    const dir = scratchDir('inject-');
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const up = startTraced(root, join(dir, 'symlink.trace'), 'symlink', FAST, 'error=ENOSPC');
    await up.waitForTransition('ready', 'running');
    const pid = up.logs.find(logged.spawned('active', '1.0.0'))!.agentPid as number;
    askUpgrade(root, pid, '2.0.0');
    const failed = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((failed.message as { reason: string }).reason).toMatch(/current could not be pointed at 2\.0\.0 \(ENOSPC/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(isAlive(pid)).toBe(true);
    expect(leftovers(root)).toEqual([]);
    expect(up.logs.some(logged.sent('stop'))).toBe(false);
  });
});

describe.skipIf(noStrace)(titled('a write failing after the point of no return', noStrace), () => {
  /**
   * Runs an operator's live handoff 1.0.0 -> 2.0.0 under strace and returns the calls `syscalls` made, in
   * order: the run the real test repeats, so that a call can be picked by its position.
   */
  async function probeHandoff(syscalls: string): Promise<string[]> {
    const dir = scratchDir('inject-');
    const probe = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const up = startTraced(probe, join(dir, 'probe.trace'), syscalls, FAST);
    await up.waitForTransition('ready', 'running');
    expect((await runCli(['upgrade', '--root', probe, '--to', '2.0.0'])).code).toBe(0);
    killTracee(up);
    await up.exit;
    return readFileSync(join(dir, 'probe.trace'), 'utf8').split('\n').filter((l) => /^[a-z_0-9]+\(/.test(l));
  }

  it('the fsync after current was renamed fails: current is put back, and current, the state and the reported failure agree', async () => {
    const calls = await probeHandoff('fsync,symlink');
    const dirFsync = calls.slice(0, calls.findIndex((l) => l.startsWith('symlink('))).filter((l) => l.startsWith('fsync(')).length + 1;
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const up = startTraced(root, join(scratchDir('inject-'), 'fsync.trace'), 'fsync', FAST, `error=EIO:when=${dirFsync}`);
    await up.waitForTransition('ready', 'running');
    const pid = up.logs.find(logged.spawned('active', '1.0.0'))!.agentPid as number;
    const answer = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(answer.code).toBe(1);
    expect(answer.stdout).toMatch(/current could not be pointed at 2\.0\.0 \(EIO.*it still names 1\.0\.0/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    await waitForSavedState(root, (s) => s.history[0]?.result === 'failed' && s.current === '1.0.0' && s.handoff === null, 'the failure recorded');
    expect(isAlive(pid)).toBe(true);
    // The next start agrees with what was reported: 1.0.0.
    killTracee(up);
    await up.exit;
    const next = startUpgrader(root, FAST);
    await next.agentPid('1.0.0');
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('the success record after go cannot be written: nobody is told succeeded until it is, and once it is, it stays', async () => {
    const calls = (await probeHandoff('rename,symlink')).filter((l) => /^(rename|symlink)\(/.test(l));
    const moved = calls.findIndex((l) => l.startsWith('symlink('));
    // After current moves: its rename, the state written before stop, then the record written after go.
    const afterGo = calls.slice(moved).filter((l) => l.startsWith('rename(') && l.includes('state.json'))[1];
    const recordAt = calls.filter((l) => l.startsWith('rename(')).indexOf(afterGo!) + 1;
    expect(recordAt).toBeGreaterThan(0);
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const up = startTraced(root, join(scratchDir('inject-'), 'rename.trace'), 'rename', FAST, `error=ENOSPC:when=${recordAt}`);
    await up.waitForTransition('ready', 'running');
    const answer = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(answer.code).toBe(1);
    expect(answer.stdout).toMatch(/2\.0\.0 runs, but its success could not be recorded \(ENOSPC/);
    expect(answer.stdout).not.toMatch(/^done/m);
    // The record is written again and sticks: with the next state written (here, when the old agent's exit
    // is recorded), or by the record timer.
    await waitForSavedState(root, (s) => s.history[0]?.result === 'succeeded' && s.history[0]?.to === '2.0.0' && s.handoff === null, 'the success recorded by a later write', 15_000);
    // Not claimed before it was durable: the log says "succeeded" only after the failed write was reported.
    const claimed = () => up.logs.findIndex(logged.outcome({ from: '1.0.0', to: '2.0.0', result: 'succeeded' }));
    await waitUntil(() => claimed() !== -1, 'the success logged once recorded');
    const failedWrite = up.logs.findIndex(logged.stateWriteFailed());
    expect(failedWrite).toBeGreaterThan(-1);
    expect(claimed()).toBeGreaterThan(failedWrite);
    killTracee(up);
    await up.exit;
    const next = startUpgrader(root, FAST);
    await next.agentPid('2.0.0');
    expect(currentTarget(root)).toBe('versions/2.0.0');
  });
});

describe.skipIf(noRoot)(titled('a read-only root', noRoot), () => {
  it('runs the agent and refuses upgrades with the reason', async () => {
    const root = makeRoot({ '1.0.0': { fixture: 'sh-agent.sh', files: { 'upgrade-to': '2.0.0' } }, '2.0.0': { fixture: 'sh-agent.sh' } }, '1.0.0');
    mkdirSync(join(root, 'state'));
    // A private mount namespace: the root is read-only for the upgrader only.
    const script = `mount --bind "$R" "$R" && mount -o remount,bind,ro "$R" && exec "${process.execPath}" "${join(REPO, 'dist/upgrader.cjs')}" run --root "$R" ${FAST.join(' ')}`;
    const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, R: root } });
    const up = new Upgrader(root, child);
    try {
      await up.waitForTransition('ready', 'running');
      const refused = await up.waitForSent('upgrade-failed', '1.0.0');
      expect((refused.message as { reason: string }).reason).toMatch(/could not be recorded durably \(EROFS/);
      expect(currentTarget(root)).toBe('versions/1.0.0');
    } finally {
      up.kill('SIGKILL');
    }
  });
});

describe('broken state files', () => {
  const variants: [string, string][] = [
    ['empty', ''],
    ['truncated', '{"format":"upgrader-state","schema":1,"sha256":"ab'],
    ['garbage', '\x00\x01garbage\xff'],
    ['from an unknown schema', '{"format":"upgrader-state","schema":99,"sha256":"","body":{}}'],
  ];
  it.each(variants)('%s: detected, reported, and the agent starts from current', async (_, content) => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    mkdirSync(join(root, 'state'));
    writeFileSync(join(root, 'state/state.json'), content);
    const { up } = await startReady(root, FAST);
    expect(up.logs.some(logged.ignoredStateFile())).toBe(true);
    await checkInvariant(root, up.pid, { allowed: ['1.0.0'] });
  });
});

describe('broken current', () => {
  /** A root whose state file names 1.0.0, then `current` broken by `breakIt`. */
  async function withState(breakIt: (root: string) => void): Promise<{ root: string; up: Upgrader }> {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const { up: first } = await startReady(root, FAST);
    first.kill('SIGKILL');
    await first.exit;
    breakIt(root);
    return { root, up: startUpgrader(root, FAST) };
  }
  const link = (target: string) => (root: string) => {
    unlinkSync(join(root, 'current'));
    symlinkSync(target, join(root, 'current'));
  };
  it.each([
    ['dangling', link('versions/9.9.9')],
    ['pointing outside versions/', link('../../etc')],
    ['a loop', link('current')],
    ['an empty file', (root: string) => { unlinkSync(join(root, 'current')); writeFileSync(join(root, 'current'), ''); }],
  ])('%s: repaired from the state file', async (_, breakIt) => {
    const { root, up } = await withState(breakIt);
    await up.waitForTransition('ready', 'running');
    expect(readlinkSync(join(root, 'current'))).toBe('versions/1.0.0');
    await checkInvariant(root, up.pid, { allowed: ['1.0.0'] });
  });

  it('a real directory: never deleted; the agent runs from the state file and the error is reported', async () => {
    const { root, up } = await withState((r) => {
      unlinkSync(join(r, 'current'));
      mkdirSync(join(r, 'current'));
      writeFileSync(join(r, 'current/precious'), 'keep');
    });
    await up.waitForTransition('ready', 'running');
    expect(readFileSync(join(root, 'current/precious'), 'utf8')).toBe('keep');
    expect(up.logs.some(logged.currentNotRepointed('1.0.0'))).toBe(true);
  });

  it('broken with no state file to repair it from: refused with exit 78', async () => {
    const root = makeRoot({ '1.0.0': {} });
    symlinkSync('versions/9.9.9', join(root, 'current'));
    const up = startUpgrader(root, FAST);
    expect((await up.waitForExit()).code).toBe(78);
  });
});

describe('leftovers and planted links', () => {
  it('temporary links and files from a crash are removed at start', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    mkdirSync(join(root, 'state'));
    // Named after their creator's PID, as the upgrader names them; 999999 is not running.
    symlinkSync('versions/1.0.0', join(root, '.current.tmp-999999-dead'));
    writeFileSync(join(root, 'state/.state.json.tmp-999999-dead'), 'half');
    const { up } = await startReady(root, FAST);
    expect(leftovers(root)).toEqual([]);
    expect(leftovers(join(root, 'state'))).toEqual([]);
    expect(up.logs.filter(logged.removedLeftover()).map((l) => l.path)).toEqual(expect.arrayContaining([join(root, '.current.tmp-999999-dead'), join(root, 'state/.state.json.tmp-999999-dead')]));
    expect(up.logs.filter(logged.removedLeftover())).toHaveLength(2);
  });

  it('symlinks planted at the state and owner files are replaced, never written through', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const victims = scratchDir('victim-');
    writeFileSync(join(victims, 'a'), 'untouched');
    writeFileSync(join(victims, 'b'), 'untouched');
    mkdirSync(join(root, 'state'));
    symlinkSync(join(victims, 'a'), join(root, 'state/state.json'));
    symlinkSync(join(victims, 'b'), join(root, 'state/owner.json'));
    await startReady(root, FAST);
    expect(readFileSync(join(victims, 'a'), 'utf8')).toBe('untouched');
    expect(readFileSync(join(victims, 'b'), 'utf8')).toBe('untouched');
    expect(lstatSync(join(root, 'state/state.json')).isSymbolicLink()).toBe(false);
  });

  it.each([
    ['a symlink to a directory', (path: string, victim: string) => symlinkSync(victim, path)],
    ['a file', (path: string) => writeFileSync(path, 'not a lock')],
  ])('%s planted at the take-over lock is unlinked, never followed, and the upgrader starts', async (_, plant) => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const victim = scratchDir('victim-');
    writeFileSync(join(victim, 'a'), 'untouched');
    mkdirSync(join(root, 'state'));
    plant(join(root, 'state/takeover.lock'), victim);
    const { up } = await startReady(root, FAST);
    expect(up.logs.some((l) => l.level === 'warn' && logged.removedForeignLock(join(root, 'state/takeover.lock'))(l))).toBe(true);
    expect(readdirSync(victim)).toEqual(['a']);
    expect(readFileSync(join(victim, 'a'), 'utf8')).toBe('untouched');
    expect(() => lstatSync(join(root, 'state/takeover.lock'))).toThrow(/ENOENT/);
  });
});

describe.skipIf(noRoot)(titled('running as root: versions another user could change are refused', noRoot), () => {
  it.each([
    ['a version directory writable by others', (root: string) => chmodSync(join(root, 'versions/2.0.0'), 0o777), /versions\/2\.0\.0 is writable by its group and others \(mode 0777\)/],
    ['an entry point writable by its group', (root: string) => chmodSync(join(root, 'versions/2.0.0/bin/agent'), 0o775), /bin\/agent is writable by its group \(mode 0775\)/],
    ['an entry point owned by another user', (root: string) => chownSync(join(root, 'versions/2.0.0/bin/agent'), 1234, 0), /bin\/agent is owned by uid 1234, not root/],
    ['an ancestor writable by others', (root: string) => chmodSync(join(root, 'versions'), 0o777), /versions is writable by its group and others \(mode 0777\)/],
    ['a script the entry point runs, writable by others', (root: string) => {
      writeFileSync(join(root, 'versions/2.0.0/bin/helper.sh'), '#!/bin/sh\n');
      chmodSync(join(root, 'versions/2.0.0/bin/helper.sh'), 0o666);
    }, /bin\/helper\.sh is writable by its group and others \(mode 0666\)/],
    ['a directory inside it writable by its group', (root: string) => {
      mkdirSync(join(root, 'versions/2.0.0/lib'));
      chmodSync(join(root, 'versions/2.0.0/lib'), 0o775);
    }, /2\.0\.0\/lib is writable by its group \(mode 0775\)/],
    ['its manifest owned by another user', (root: string) => {
      writeFileSync(join(root, 'versions/2.0.0/upgrader.json'), '{}');
      chownSync(join(root, 'versions/2.0.0/upgrader.json'), 1234, 0);
    }, /upgrader\.json is owned by uid 1234, not root/],
    ['a link inside it owned by another user', (root: string) => {
      symlinkSync('agent', join(root, 'versions/2.0.0/bin/alias'));
      lchownSync(join(root, 'versions/2.0.0/bin/alias'), 1234, 0);
    }, /bin\/alias is owned by uid 1234, not root/],
    ['a link inside it that really leads outside', (root: string) => {
      mkdirSync(join(root, 'versions/2.0.0/d'));
      symlinkSync('..', join(root, 'versions/2.0.0/d/up'));
      symlinkSync('d/up/..', join(root, 'versions/2.0.0/upgrader.json'));
    }, /upgrader\.json leads outside the version directory/],
  ])('%s', async (_, weaken, reason) => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    weaken(root);
    askUpgrade(root, pid, '2.0.0');
    const refused = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((refused.message as { reason: string }).reason).toMatch(reason);
    expect(up.logs.some(logged.spawned('candidate', '2.0.0'))).toBe(false);
  });
});

it('a wall-clock jump cannot move a timeout nor a recorded duration: an hour ahead, then back, during handoffs', async () => {
  // The upgrader's Date jumps (test/fixtures/clock-jump.mjs), as after an NTP step; its monotonic clock does not.
  const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { neverReady: true } }, '3.0.0': { config: { neverReady: true } } }, '1.0.0');
  const up = startUpgrader(root, runArgs({ ready: '2s' }), { NODE_OPTIONS: `--import ${join(FIXTURES, 'clock-jump.mjs')}` });
  const pid = await up.agentPid('1.0.0');
  await up.waitForTransition('ready', 'running');
  for (const [version, jump] of [['2.0.0', 'SIGUSR1'], ['3.0.0', 'SIGUSR2']] as const) {
    askUpgrade(root, pid, version);
    await up.agentPid(version, 'candidate');
    const jumpedAt = performance.now();
    process.kill(up.pid, jump);
    // An hour ahead must not fire the ready timeout at once, an hour back must not delay it by an hour.
    const failed = await up.waitForLog((l) => (l.message as { type?: string; version?: string } | undefined)?.version === version && (l.message as { type: string }).type === 'upgrade-failed', 15_000, `the failure of ${version}`);
    expect((failed.message as { reason: string }).reason).toMatch(/did not report ready within 2\.0s/);
    expect(performance.now() - jumpedAt).toBeGreaterThan(1_000);
  }
  await waitForSavedState(root, (s) => s.history.length === 2, 'both failures recorded');
  // Measured on the monotonic clock: neither an hour too long (ahead) nor nothing (back, clamped at 0).
  for (const record of savedState(root).history) {
    expect(record.result).toBe('failed');
    expect(record.durationMs).toBeGreaterThan(1_000);
    expect(record.durationMs).toBeLessThan(30_000);
  }
});
