/**
 * What a reader of the upgrader's stderr can do to the upgrader: a stderr that nobody reads may neither
 * grow the upgrader nor stall a handoff.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { askUpgrade, CLI, cleanupRoots, makeRoot, readLines, startUpgrader, stopAllUpgraders, Upgrader, waitUntil, workSpans } from '../helpers.js';

const cleanups: (() => void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) cleanup();
  await stopAllUpgraders();
  cleanupRoots();
});

const FAST = ['--ready-timeout', '10s', '--stop-timeout', '1s', '--kill-timeout', '500ms', '--probation', '0s'];

type StderrKind = 'socket pair' | 'FIFO';

/** An upgrader whose stderr is a socket pair (as journald's stream) or a FIFO; the test reads it, and can stop. */
function startWithStderr(root: string, kind: StderrKind): { up: Upgrader; fifoWriter: number | null } {
  if (kind === 'socket pair') return { up: startUpgrader(root, FAST), fifoWriter: null };
  const dir = mkdtempSync(join(tmpdir(), 'stderr-fifo-'));
  const path = join(dir, 'stderr');
  execFileSync('mkfifo', [path]);
  const readFd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  // Kept open by the test too: the same open file, whose flags the upgrader must leave as it found them.
  const fifoWriter = openSync(path, constants.O_WRONLY);
  const child = spawn(process.execPath, [CLI, 'run', '--root', root, ...FAST], { stdio: ['ignore', 'ignore', fifoWriter] });
  const reader = new Socket({ fd: readFd, readable: true, writable: false });
  (child as { stderr: Readable | null }).stderr = reader;
  cleanups.push(() => {
    child.kill('SIGKILL');
    reader.destroy();
    closeSync(fifoWriter);
    rmSync(dir, { recursive: true, force: true });
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
    await waitUntil(() => toldGo(root, '2.0.0'), 'the candidate is told go, with stderr unread', 10_000);
    expect(readLines(root, 'events.log').some((l) => l.includes('2.0.0 wrote its stderr'))).toBe(true);
    const [old, next] = workSpans(root);
    expect(old!.version).toBe('1.0.0');
    expect(next!.first - old!.last).toBeLessThan(1_000);

    up.child.stderr!.resume();
    const report = await up.waitForLog((l) => typeof l.droppedLines === 'number', 10_000, 'the count of dropped lines');
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
