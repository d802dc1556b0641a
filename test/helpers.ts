/**
 * Test harness: real roots in temporary directories, a real `upgrader run` process (the compiled CLI),
 * and waits on its log lines or on observable facts, always with a deadline.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterEach } from 'vitest';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = join(REPO, 'dist/src/cli.js');
export const FIXTURES = join(REPO, 'test/fixtures');
export const EXAMPLE_AGENT = join(REPO, 'dist/examples/example-agent.js');

/** What some tests need of the machine, beyond Node.js. */
export type Need = 'root' | 'strace' | 'mkfifo' | 'useradd' | 'systemd-nspawn' | 'mmdebstrap' | 'etcd' | 'openssl' | 'python3';

const onPath = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
const available: Record<Need, () => boolean> = {
  root: () => process.getuid?.() === 0,
  strace: () => spawnSync('strace', ['-V']).status === 0,
  mkfifo: () => onPath('mkfifo'),
  useradd: () => onPath('useradd'),
  'systemd-nspawn': () => onPath('systemd-nspawn'),
  mmdebstrap: () => onPath('mmdebstrap'),
  // test/etcd.ts starts etcd (Debian's etcd-server, /usr/bin/etcd) and uses etcdctl (etcd-client).
  etcd: () => onPath('etcd') && onPath('etcdctl'),
  openssl: () => onPath('openssl'),
  python3: () => onPath('python3'),
};

/** Why tests needing `needs` cannot run here ("needs root, strace"), or null when they can: for skipIf. */
export function missing(...needs: Need[]): string | null {
  const lacking = needs.filter((need) => !available[need]());
  return lacking.length > 0 ? `needs ${lacking.join(', ')}` : null;
}

/**
 * The title of a suite or test skipped when `why` is set (from missing()): the reason goes into the title and
 * onto the console, which the default reporter shows (it counts skipped tests without naming them).
 */
export function titled(title: string, why: string | null): string {
  if (why === null) return title;
  console.log(`skipped: ${title} (${why})`);
  return `${title} (skipped: ${why})`;
}

export type VersionSpec =
  | { fixture?: 'agent.mjs' | 'hostile.mjs'; config?: Record<string, unknown> }
  | { fixture: 'script'; script: string }
  | { fixture: 'sh-agent.sh'; files?: Record<string, string> }
  | { fixture: 'example'; config?: Record<string, unknown> }
  | { fixture: 'none' };

const roots: string[] = [];

/** A root with the given versions installed and `current` pointing at `current`. */
export function makeRoot(versions: Record<string, VersionSpec>, current?: string): string {
  const root = mkdtempSync(join(tmpdir(), 'upgrader-test-'));
  roots.push(root);
  mkdirSync(join(root, 'versions'));
  for (const [name, spec] of Object.entries(versions)) addVersion(root, name, spec);
  if (current) symlinkSync(`versions/${current}`, join(root, 'current'));
  return root;
}

export function addVersion(root: string, name: string, spec: VersionSpec): void {
  const dir = join(root, 'versions', name);
  mkdirSync(join(dir, 'bin'), { recursive: true });
  const entry = join(dir, 'bin/agent');
  const fixture = spec.fixture ?? 'agent.mjs';
  if (fixture === 'none') return;
  if (fixture === 'script' && 'script' in spec) {
    writeFileSync(entry, spec.script);
  } else if (fixture === 'sh-agent.sh') {
    copyFileSync(join(FIXTURES, 'sh-agent.sh'), entry);
    for (const [file, text] of Object.entries('files' in spec ? (spec.files ?? {}) : {})) writeFileSync(join(dir, file), text);
  } else {
    const script = fixture === 'example' ? EXAMPLE_AGENT : join(FIXTURES, fixture === 'hostile.mjs' ? 'hostile.mjs' : 'agent.mjs');
    writeFileSync(entry, `#!/bin/sh\nexec node ${script}\n`);
    const config = 'config' in spec ? spec.config : undefined;
    if (config) writeFileSync(join(dir, fixture === 'example' ? 'example.json' : 'fixture.json'), JSON.stringify(config));
  }
  chmodSync(entry, 0o755);
}

export function cleanupRoots(): void {
  for (const root of roots.splice(0)) {
    // Agents of a killed upgrader may still be writing into the root for a moment.
    for (const pid of agentPidsOf(root)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    rmSync(root, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
  }
}

const scratches: string[] = [];

/** A temporary directory for one test (an archive, a base of roots, a trace), removed after it. */
export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratches.push(dir);
  return dir;
}

const cleanups: (() => void)[] = [];

/** Something to undo after the current test (a process, a descriptor), before its upgraders and files go. */
export function onCleanup(undo: () => void): void {
  cleanups.push(undo);
}

/**
 * After each test, pass or fail: what it registered with onCleanup (newest first), every upgrader it
 * started and whatever agents are left on its roots, its roots, its scratch directories. One call at the
 * top of a test file: `cleanUpAfterEach()`.
 */
export async function cleanUp(): Promise<void> {
  for (const undo of cleanups.splice(0).reverse()) {
    try {
      undo();
    } catch {
      // already undone
    }
  }
  await stopAllUpgraders();
  cleanupRoots();
  for (const dir of scratches.splice(0)) rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
}

export function cleanUpAfterEach(): void {
  afterEach(cleanUp);
}

export type LogLine = Record<string, unknown> & { msg: string };
type Match = (line: LogLine) => boolean;

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null;

/**
 * Which log line is which, told by the fields the upgrader logs with it (pino JSON lines), never by its
 * message text, which is for people and may be reworded.
 */
export const logged = {
  /** A transition of the state machine on `event` (its `from` and `to` states when given). */
  transition: (event: string, states: { from?: string; to?: string } = {}): Match => (l) =>
    l.event === event && typeof l.to === 'string' && (states.from === undefined || l.from === states.from) && (states.to === undefined || l.to === states.to),
  /** A message sent to an agent (of `version`, when given): the line carries the message. */
  sent: (type: string, version?: string): Match => (l) => isObject(l.message) && l.message.type === type && (version === undefined || l.version === version),
  /** An agent spawned in `role` (of `version`, when given). */
  spawned: (role: 'active' | 'candidate', version?: string): Match => (l) => l.agentEvent === 'spawned' && l.role === role && (version === undefined || l.version === version),
  /** An agent's exit: the line with its exit code and signal. */
  exited: (version: string): Match => (l) => l.agentEvent === 'exited' && l.version === version,
  /** The outcome of an upgrade (its history record): from, to, mode, result, reason. */
  outcome: (record: { from?: string; to?: string; result?: string } = {}): Match => (l) =>
    typeof l.result === 'string' && typeof l.durationMs === 'number' && Object.entries(record).every(([key, value]) => l[key] === value),
  /** The summary of what an agent repeated, of this kind. */
  repeated: (kind: string): Match => (l) => l.repeated === kind,
  /** The first upgrade-failed reply dropped because the agent does not read its stdin. */
  unreadStdin: (): Match => (l) => typeof l.unreadLimit === 'number',
  /** The count of lines dropped while stderr was blocked. */
  droppedLines: (): Match => (l) => typeof l.droppedLines === 'number',
  /** The descriptors inherited from the parent that were closed at start. */
  closedInheritedFds: (): Match => (l) => Array.isArray(l.fds),
  /** The start-up line with the configuration. */
  starting: (): Match => (l) => isObject(l.config),
  /** A state write failed; what it had to record is kept and written again. */
  stateWriteFailed: (): Match => (l) => typeof l.unrecorded === 'number',
  /** Start-up ran another version than current named, and pointed current at it. */
  repaired: (): Match => (l) => l.repaired === true,
  /** Something that was not the take-over lock's directory, removed from where it belongs (at `path`). */
  removedForeignLock: (path: string): Match => (l) => l.removed === path,

  /** A line from an agent that was ignored or refused, by what was wrong with it. */
  agentLine: (kind: 'garbage' | 'unknown' | 'invalid' | 'overlong' | 'bad-utf8'): Match => (l) => l.lineKind === kind,
  /** A temporary file or directory of a crashed writer removed at start (at `path`, when given). */
  removedLeftover: (path?: string): Match => (l) => l.removedLeftover === true && (path === undefined || l.path === path),
  /** The state file could not be used; start-up falls back to current. */
  ignoredStateFile: (): Match => (l) => l.stateFileIgnored === true,
  /** current could not be pointed at the version start-up runs anyway. */
  currentNotRepointed: (version: string): Match => (l) => l.repointed === false && l.version === version,
  /** A version quarantined. */
  quarantined: (version: string): Match => (l) => l.quarantined === true && l.version === version,
  /** A quarantine lifted by --force. */
  quarantineLifted: (version: string): Match => (l) => l.quarantined === false && l.version === version,
  /** Another process took the root's owner record; this upgrader stops. */
  ownershipLost: (): Match => (l) => l.lostOwnership === true,
};

const running: Upgrader[] = [];

/** An `upgrader run` (or what wraps it: strace, sh, unshare) and its log; stopped after the test (cleanUp). */
export class Upgrader {
  readonly logs: LogLine[] = [];
  readonly stderrText: string[] = [];
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: (() => void)[] = [];

  constructor(
    readonly root: string,
    readonly child: ChildProcess,
  ) {
    running.push(this);
    let partial = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        this.stderrText.push(line);
        if (line.startsWith('{')) {
          try {
            this.logs.push(JSON.parse(line) as LogLine);
          } catch {
            // an agent's own stderr line that happens to start with a brace
          }
        }
      }
      for (const wake of this.waiters.splice(0)) wake();
    });
    this.exit = new Promise((resolvePromise) => child.on('exit', (code, signal) => resolvePromise({ code, signal })));
    void this.exit.then(() => {
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Resolves with the first log line (past or future) that matches; fails after `ms`. */
  async waitForLog(match: (line: LogLine) => boolean, ms = 15_000, what = 'a log line'): Promise<LogLine> {
    const deadline = Date.now() + ms;
    let seen = 0;
    for (;;) {
      for (; seen < this.logs.length; seen++) if (match(this.logs[seen]!)) return this.logs[seen]!;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`the upgrader exited while waiting for ${what}\n${this.stderrText.slice(-30).join('\n')}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}\n${this.stderrText.slice(-30).join('\n')}`);
      await new Promise<void>((wake) => {
        const timer = setTimeout(wake, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          wake();
        });
      });
    }
  }

  waitForTransition(event: string, to: string, ms?: number): Promise<LogLine> {
    return this.waitForLog(logged.transition(event, { to }), ms, `transition to ${to} on ${event}`);
  }

  waitForSent(type: string, version?: string, ms?: number): Promise<LogLine> {
    return this.waitForLog(logged.sent(type, version), ms, `sent ${type}${version ? ` to ${version}` : ''}`);
  }

  /** The PID of the agent of `version` spawned in `role`, from the upgrader's own log. */
  async agentPid(version: string, role: 'active' | 'candidate' = 'active', ms?: number): Promise<number> {
    const line = await this.waitForLog(logged.spawned(role, version), ms, `spawn of ${role} ${version}`);
    return line.agentPid as number;
  }

  async waitForExit(ms = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the upgrader did not exit within ${ms} ms\n${this.stderrText.slice(-30).join('\n')}`)), ms);
    });
    try {
      return await Promise.race([this.exit, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }
}

export function startUpgrader(root: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Upgrader {
  const child = spawn(process.execPath, [CLI, 'run', '--root', root, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  return new Upgrader(root, child);
}

/** Starts an upgrader and waits until its first agent (of `version`) has reported ready. */
export async function startReady(root: string, args: string[] = [], version = '1.0.0'): Promise<{ up: Upgrader; pid: number }> {
  const up = startUpgrader(root, args);
  const pid = await up.agentPid(version);
  await up.waitForTransition('ready', 'running');
  return { up, pid };
}

/** Kills every upgrader a test started and whatever agents are left on its root. */
export async function stopAllUpgraders(): Promise<void> {
  for (const upgrader of running.splice(0)) {
    if (upgrader.child.exitCode === null && upgrader.child.signalCode === null) {
      upgrader.kill('SIGKILL');
      await upgrader.exit;
    }
    for (const pid of agentPidsOf(upgrader.root)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

export async function runCli(args: string[], timeoutMs = 10_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await execa(process.execPath, [CLI, ...args], { reject: false, timeout: timeoutMs });
  return { code: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
}

export async function statusJson(root: string): Promise<{ code: number; report: any }> {
  const { code, stdout } = await runCli(['status', '--root', root, '--json']);
  return { code, report: JSON.parse(stdout) };
}

export function currentTarget(root: string): string {
  return readlinkSync(join(root, 'current'));
}

export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Polls an observable fact until it holds; for facts with no event to wait on (a process being gone). */
export async function waitUntil(fact: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fact()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Asks the fixture agent `pid` to send an upgrade request. */
export function askUpgrade(root: string, pid: number, version: string, mode?: 'live' | 'sequential'): void {
  writeFileSync(join(root, 'request.json'), JSON.stringify({ type: 'upgrade', version, ...(mode ? { mode } : {}) }));
  process.kill(pid, 'SIGUSR1');
}

export function readLines(root: string, file: string): string[] {
  const path = join(root, file);
  return existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean) : [];
}

export type RootProcess = { pid: number; ppid: number; agentId: string; version: string };

/** Every live process carrying this root's agent marker: agents and anything they started. */
export function rootProcesses(root: string): RootProcess[] {
  const found: RootProcess[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const env = readFileSync(`/proc/${name}/environ`, 'utf8').split('\0');
      if (!env.includes(`UPGRADER_ROOT=${root}`)) continue;
      const agentId = env.find((e) => e.startsWith('UPGRADER_AGENT_ID='));
      if (!agentId || !isAlive(Number(name))) continue;
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const version = env.find((e) => e.startsWith('UPGRADER_VERSION='))!.slice('UPGRADER_VERSION='.length);
      found.push({ pid: Number(name), ppid, agentId: agentId.slice('UPGRADER_AGENT_ID='.length), version });
    } catch {
      // gone, or not readable
    }
  }
  return found;
}

export function agentPidsOf(root: string): number[] {
  return rootProcesses(root).map((p) => p.pid);
}

/** Work intervals per agent PID from work.log: first and last timestamps (ms, fractional). */
export function workSpans(root: string): { pid: number; version: string; first: number; last: number }[] {
  const spans = new Map<number, { pid: number; version: string; first: number; last: number }>();
  for (const line of readLines(root, 'work.log')) {
    const [at, version, pid] = line.split(' ');
    const t = Number(at);
    const span = spans.get(Number(pid));
    if (span) span.last = Math.max(span.last, t);
    else spans.set(Number(pid), { pid: Number(pid), version: version!, first: t, last: t });
  }
  return [...spans.values()].sort((a, b) => a.first - b.first);
}

/** The body of the state file as the upgrader last wrote it, or null. */
export function savedState(root: string): any {
  try {
    return JSON.parse(readFileSync(join(root, 'state/state.json'), 'utf8')).body;
  } catch {
    return null;
  }
}

export function waitForSavedState(root: string, fact: (state: any) => boolean, what: string, ms?: number): Promise<void> {
  return waitUntil(() => {
    const state = savedState(root);
    return state !== null && fact(state);
  }, `the state file shows ${what}`, ms);
}
