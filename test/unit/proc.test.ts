/**
 * findLiveProcesses against real processes: it parses /proc's bytes itself (so that a scan at every
 * handoff makes next to no garbage), so the awkward cases are checked here on the real thing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { findLiveProcesses } from '../../src/proc.js';

const started: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const child of started.splice(0)) child.kill('SIGKILL');
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A `sleep` in a process group and session of its own (as if it had called setsid). */
function sleeper(env: Record<string, string> = {}, command = 'sleep'): ChildProcess {
  const child = spawn(command, ['600'], { stdio: 'ignore', detached: true, env: { ...process.env, ...env } });
  started.push(child);
  return child;
}

/** The members of a process group and their states, read the plain way. */
function groupMembers(group: number): { pid: number; state: string }[] {
  const members: { pid: number; state: string }[] = [];
  for (const name of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) === group) members.push({ pid: Number(name), state: fields[0]! });
  }
  return members;
}

async function until<T>(probe: () => T | undefined): Promise<T> {
  for (let i = 0; i < 500; i++) {
    const value = probe();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('timed out');
}

it('finds a process by its process group, and only that one', async () => {
  const child = sleeper();
  const other = sleeper();
  const found = await until(() => {
    const pids = findLiveProcesses({ processGroup: child.pid! });
    return pids.length > 0 ? pids : undefined;
  });
  expect(found).toEqual([child.pid]);
  expect(found).not.toContain(other.pid);
});

it('finds a process by environment pairs: the whole pair, or any value for a pair ending in =', async () => {
  const marker = `UPGRADER_TEST_MARK=${process.pid}-${Date.now()}`;
  const child = sleeper({ UPGRADER_TEST_MARK: marker.split('=')[1]!, UPGRADER_TEST_OTHER: 'x' });
  await until(() => (findLiveProcesses({ environment: [marker] }).includes(child.pid!) ? true : undefined));
  expect(findLiveProcesses({ environment: [marker, 'UPGRADER_TEST_OTHER='] })).toEqual([child.pid]);
  expect(findLiveProcesses({ environment: [marker, 'UPGRADER_TEST_OTHER=y'] })).toEqual([]);
  // A value is matched whole, not as a prefix of a longer one.
  expect(findLiveProcesses({ environment: [marker.slice(0, -1)] })).toEqual([]);
});

it('reads an environment larger than its buffer', async () => {
  const marker = `UPGRADER_TEST_MARK=${process.pid}-big`;
  const child = sleeper({ UPGRADER_TEST_PADDING: 'p'.repeat(100_000), UPGRADER_TEST_MARK: marker.split('=')[1]! });
  await until(() => (findLiveProcesses({ environment: [marker] }).includes(child.pid!) ? true : undefined));
  expect(findLiveProcesses({ environment: [marker, 'UPGRADER_TEST_PADDING='] })).toEqual([child.pid]);
});

it('is not misled by parentheses, spaces and a Z in the command name', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'upgrader-proc-'));
  dirs.push(dir);
  const odd = join(dir, 'a) Z 1 (b');
  symlinkSync('/bin/sleep', odd);
  const child = sleeper({}, odd);
  const found = await until(() => {
    const pids = findLiveProcesses({ processGroup: child.pid! });
    return pids.length > 0 ? pids : undefined;
  });
  expect(found).toEqual([child.pid]);
});

it('skips zombies', async () => {
  // sh starts a short sleep and becomes a long one, which never reaps the short one.
  const child = spawn('sh', ['-c', 'sleep 0 & exec sleep 600'], { stdio: 'ignore', detached: true });
  started.push(child);
  const zombie = await until(() => groupMembers(child.pid!).find((m) => m.state === 'Z'));
  expect(zombie.pid).not.toBe(child.pid);
  expect(findLiveProcesses({ processGroup: child.pid! })).toEqual([child.pid]);
});
