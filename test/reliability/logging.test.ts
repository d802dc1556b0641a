/**
 * What an agent, or a reader of the upgrader's stderr, can do to the upgrader's memory and log: an agent
 * that never reads its stdin, an agent that repeats itself, a stderr that nobody reads. None of them may
 * grow the upgrader, stall a handoff, or multiply into the log.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, CLI, logged, makeRoot, onCleanup, readLines, scratchDir, startReady, startUpgrader, Upgrader, waitUntil, workSpans, type LogLine } from '../helpers.js';
import { runArgs } from '../timing.js';

cleanUpAfterEach();

// A candidate writes 4 MiB to a stderr nobody reads before it is ready: it gets 10 s. The SIGTERM test bounds
// the exit by the stop timeout (1 s) plus half a second for stderr.
const FAST = runArgs({ ready: '10s', stop: '1s' });
const rssMb = (pid: number) => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
const summed = (up: Upgrader, kind: string) => up.logs.filter((l) => l.repeated === kind).reduce((n, l) => n + (l.count as number), 0);

describe('an agent that never reads its stdin', () => {
  it('and floods upgrade requests: the upgrader stays bounded, drops the replies past 64 KiB and says so, summarised', async () => {
    const root = makeRoot({ '1.0.0': { fixture: 'hostile.mjs', config: { mode: 'deaf' } } }, '1.0.0');
    const { up } = await startReady(root, FAST);
    const baseline = rssMb(up.pid);
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMb(up.pid))), 100);
    let refused: LogLine;
    try {
      // The refused requests are summarised at the end of their first window (10 s).
      refused = await up.waitForLog(logged.repeated('upgrade live 9.9.9'), 20_000, 'the summary of the refused requests');
    } finally {
      clearInterval(sampler);
    }
    expect(refused.count as number).toBeGreaterThan(10_000);
    expect(peak - baseline).toBeLessThan(40);
    const dropped = await up.waitForLog(logged.repeated('dropped-reply'), 1_000, 'the summary of the dropped replies');
    expect(dropped.count as number).toBeGreaterThan(10_000);
    expect(up.logs.filter(logged.unreadStdin())).toHaveLength(1);
    // The first refusal in full, then summaries only.
    expect(up.logs.filter(logged.sent('upgrade-failed'))).toHaveLength(1);
    expect(up.logs.length).toBeLessThan(40);
  }, 40_000);
});

describe('an agent that repeats itself', () => {
  it('100,000 ready lines and 10,000 each of other no-op lines: a bounded log, with the counts', async () => {
    const repeats = {
      '{"type":"ready"}': 100_000,
      '{"type":"stopped"}': 10_000,
      'not json': 10_000,
      '{"type":"no-such-type"}': 10_000,
      '{"type":"upgrade"}': 10_000,
      '{"type":"upgrade","version":"9.9.9"}': 10_000,
    };
    const root = makeRoot({ '1.0.0': { fixture: 'hostile.mjs', config: { mode: 'repeats', repeats } } }, '1.0.0');
    const { up } = await startReady(root, FAST);
    await waitUntil(() => readLines(root, 'state/agent-status.json').some((l) => l.includes('repeats sent')), 'the agent has sent every line', 60_000);
    // The agent's exit reports what is still counted.
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);
    const first = (match: (line: LogLine) => boolean) => up.logs.filter(match).length;
    // The first of each kind (after the ready that made the agent ready) in full, the rest counted.
    expect(first(logged.transition('ready', { from: 'running', to: 'running' }))).toBe(2);
    expect(summed(up, 'ready')).toBe(99_999);
    expect(first(logged.transition('stopped', { from: 'running', to: 'running' }))).toBe(1);
    // 9,999 repeats, and its answer to the `stop` that SIGTERM made the upgrader send: ignored alike while stopping.
    expect(summed(up, 'stopped')).toBe(10_000);
    expect(first(logged.agentLine('garbage'))).toBe(1);
    expect(summed(up, 'garbage')).toBe(9_999);
    expect(first(logged.agentLine('unknown'))).toBe(1);
    expect(summed(up, 'unknown')).toBe(9_999);
    expect(first(logged.agentLine('invalid'))).toBe(1);
    expect(summed(up, 'invalid')).toBe(9_999);
    expect(first(logged.sent('upgrade-failed'))).toBe(1);
    expect(summed(up, 'upgrade live 9.9.9')).toBe(9_999);
    expect(up.logs.find(logged.repeated('ready'))!.msg).toMatch(/^ready \(changing nothing\) repeated [\d,]+ times in the last \d+ s$/);
    expect(up.logs.length).toBeLessThan(60);
  }, 90_000);
});

type StderrKind = 'socket pair' | 'FIFO';

/** An upgrader whose stderr is a socket pair (as journald's stream) or a FIFO; the test reads it, and can stop. */
function startWithStderr(root: string, kind: StderrKind): { up: Upgrader; fifoWriter: number | null } {
  if (kind === 'socket pair') return { up: startUpgrader(root, FAST), fifoWriter: null };
  const dir = scratchDir('stderr-fifo-');
  const path = join(dir, 'stderr');
  execFileSync('mkfifo', [path]);
  const readFd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  // Kept open by the test too: the same open file, whose flags the upgrader must leave as it found them.
  const fifoWriter = openSync(path, constants.O_WRONLY);
  const child = spawn(process.execPath, [CLI, 'run', '--root', root, ...FAST], { stdio: ['ignore', 'ignore', fifoWriter] });
  const reader = new Socket({ fd: readFd, readable: true, writable: false });
  (child as { stderr: Readable | null }).stderr = reader;
  onCleanup(() => {
    child.kill('SIGKILL');
    reader.destroy();
    closeSync(fifoWriter);
  });
  return { up: new Upgrader(root, child), fifoWriter };
}

const toldGo = (root: string, version: string) => readLines(root, 'events.log').some((l) => l.includes(`${version} got {"type":"go"}`));
const isNonBlocking = (fd: number) => (Number.parseInt(/^flags:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8) & constants.O_NONBLOCK) !== 0;

describe('a stderr that nobody reads', () => {
  // The candidate writes 4 MiB to its stderr, which the upgrader passes on to a stderr that is not read.
  const versions = { '1.0.0': {}, '2.0.0': { config: { stderrBytes: 4 * 1024 * 1024 } } };

  it.each<StderrKind>(['socket pair', 'FIFO'])('(%s): a live handoff completes with no added gap; once read again, the dropped lines are counted', async (kind) => {
    const root = makeRoot(versions, '1.0.0');
    const { up } = startWithStderr(root, kind);
    const pid = await up.agentPid('1.0.0');
    await up.waitForTransition('ready', 'running');
    up.child.stderr!.pause();
    askUpgrade(root, pid, '2.0.0');
    await waitUntil(() => workSpans(root).some((span) => span.version === '2.0.0'), 'the new version works, with stderr unread', 10_000);
    expect(readLines(root, 'events.log').some((l) => l.includes('2.0.0 wrote its stderr'))).toBe(true);
    const [old, next] = workSpans(root);
    expect(old!.version).toBe('1.0.0');
    expect(next!.first - old!.last).toBeLessThan(1_000);

    up.child.stderr!.resume();
    const report = await up.waitForLog(logged.droppedLines(), 10_000, 'the count of dropped lines');
    expect(report.msg).toMatch(/^\d+ lines were dropped while stderr was blocked/);
    expect(report.droppedLines as number).toBeGreaterThan(0);
    // Lines are dropped whole: none is cut, none cuts into another.
    expect(up.stderrText.every((line) => (line.startsWith('{') ? isJson(line) : /^e{999}$/.test(line)))).toBe(true);
  });

  it('(FIFO): the upgrader still exits promptly on SIGTERM, and leaves the descriptor blocking as it found it', async () => {
    const root = makeRoot(versions, '1.0.0');
    const { up, fifoWriter } = startWithStderr(root, 'FIFO');
    const pid = await up.agentPid('1.0.0');
    await up.waitForTransition('ready', 'running');
    up.child.stderr!.pause();
    askUpgrade(root, pid, '2.0.0');
    await waitUntil(() => toldGo(root, '2.0.0'), 'the candidate is told go, with stderr unread', 10_000);
    expect(isNonBlocking(fifoWriter!)).toBe(true);
    up.kill('SIGTERM');
    // --stop-timeout (1 s) for the agent, then at most half a second for stderr.
    expect((await up.waitForExit(4_000)).code).toBe(0);
    expect(isNonBlocking(fifoWriter!)).toBe(false);
  });
});

function isJson(line: string): boolean {
  try {
    JSON.parse(line);
    return true;
  } catch {
    return false;
  }
}
