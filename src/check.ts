/**
 * `upgrader check`: proves an agent against protocol v1 before it meets a live root. The agent is
 * installed into a scratch root of its own (never a live one) and run in the roles the upgrader gives it,
 * through the same AgentProcess the supervisor uses (same environment, same line reader, same tree kill).
 * Each check ends as passed, failed (with what was seen: the line, the time, the exit status), a warning,
 * or not applicable. Loaded only by `upgrader check` and `install --check`.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentProcess, type AgentLineEvent } from './agent-process.js';
import { installVersion } from './install.js';
import { Layout } from './layout.js';
import type { UpgraderMessage } from './protocol.js';

export type CheckStatus = 'passed' | 'failed' | 'warning' | 'n/a';
export type CheckResult = { check: string; status: CheckStatus; detail: string };
/** `sha256`: the archive's expected digest, checked before anything is unpacked (install --check --sha256). */
export type CheckOptions = { source: string; entry?: string; sha256?: string; readyMs: number; stopMs: number };

/** How long an agent may take to exit once its stdin is closed (the upgrader that ran it is gone). */
export const EOF_EXIT_MS = 5000;
/** How long an agent must stay up after `go`, or after an `upgrade-failed`, to count as having kept running. */
const KEEPS_RUNNING_MS = 1000;
const VERSION = 'check';

/** Runs every check on the agent in `source` (a version directory or a .tar.gz); the scratch root is removed after. */
export async function checkAgent(o: CheckOptions): Promise<CheckResult[]> {
  const root = join(mkdtempSync(join(tmpdir(), 'upgrader-check-')), 'root');
  let runs: Runs | null = null;
  // Interrupted (Ctrl-C, a CI job cancelled): the copies, which run in sessions of their own, go too.
  const interrupted = () => {
    runs?.killNow();
    rmSync(join(root, '..'), { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    await installVersion({ root, version: VERSION, source: o.source, entry: o.entry, sha256: o.sha256 });
    const layout = Layout.open(root, o.entry);
    const results: CheckResult[] = [];
    runs = new Runs(layout);
    try {
      results.push(...(await checkActive(runs, o)));
      results.push(...(await checkCandidateAndStop(runs, o)));
      results.push(...(await checkLiveHandoff(runs, o)));
      results.push(...(await checkUpgradeFailedAndSigterm(runs, o)));
      results.push(runs.upgradeRequests(), runs.lineWarnings());
    } finally {
      await runs.killAll();
    }
    return results;
  } finally {
    process.removeListener('SIGINT', interrupted);
    process.removeListener('SIGTERM', interrupted);
    rmSync(join(root, '..'), { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }
}

// ---------------------------------------------------------------- one run of the agent

type Seen = { at: number; event: AgentLineEvent };

/** One copy of the agent: what it sent, when, and how it ended. */
class Run {
  readonly seen: Seen[] = [];
  readonly started = Date.now();
  exit: { code: number | null; signal: NodeJS.Signals | null; error: string | null; at: number } | null = null;
  /** Its stdout has ended: every line it wrote has been read. */
  outputEnded = false;

  /** The exit, read afresh (a method, so that a check made before an await does not narrow what follows it). */
  exitNow(): Run['exit'] {
    return this.exit;
  }
  private waiters: (() => void)[] = [];
  readonly agent: AgentProcess;

  constructor(layout: Layout, id: number, role: 'active' | 'candidate', fromVersion: string | null) {
    this.agent = new AgentProcess(
      { id, root: layout.root, version: VERSION, versionDir: layout.versionDir(VERSION), entryPath: layout.entryPath(VERSION), role, fromVersion },
      {
        onLine: (event) => {
          if (event.kind === 'end') this.outputEnded = true;
          this.note({ at: Date.now(), event });
        },
        onExit: (code, signal, error) => {
          this.exit = { code, signal, error: error && code === null && signal === null ? error.message : null, at: Date.now() };
          this.wake();
        },
      },
    );
  }

  private note(seen: Seen): void {
    this.seen.push(seen);
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The protocol messages it sent, of these types. */
  messages(...types: string[]): Seen[] {
    return this.seen.filter((s) => s.event.kind === 'message' && types.includes(s.event.message.type));
  }

  /** Resolves true once `fact` holds, false at the deadline. */
  async until(fact: () => boolean, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!fact()) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return true;
  }

  send(message: UpgraderMessage): number {
    this.agent.send(message);
    return Date.now();
  }

  describeExit(): string {
    if (!this.exit) return 'still running';
    if (this.exit.error) return `could not be started (${this.exit.error})`;
    return this.exit.signal ? `was killed by ${this.exit.signal}` : `exited with status ${this.exit.code}`;
  }

  /** Once it has exited, the lines still in the pipe are read before anything is judged (bounded). */
  async settled(): Promise<void> {
    if (this.exit) await this.until(() => this.outputEnded, 500);
  }

  /** The messages it sent after the `index`-th thing seen, other than status: what must not come then. */
  messagesAfter(index: number): Seen[] {
    return this.seen.slice(index + 1).filter((s) => s.event.kind === 'message' && s.event.message.type !== 'status');
  }

  /** Ends this copy and its tree, if it is still there, so that the next check does not run beside it. */
  async end(): Promise<void> {
    if (!this.exit) await this.agent.killTree();
    else this.agent.killGroupAndMarked();
  }

  since(at: number): string {
    return `${((at - this.started) / 1000).toFixed(2)} s after start`;
  }
}

/** Every copy started, so that lines of all of them are judged and none outlives the check. */
class Runs {
  private readonly all: Run[] = [];
  private nextId = 1;
  /** Whether the agent said ready as active: if not, later active copies are not waited for in vain. */
  activeSaysReady = true;
  constructor(private readonly layout: Layout) {}

  start(role: 'active' | 'candidate', fromVersion: string | null = null): Run {
    const run = new Run(this.layout, this.nextId++, role, fromVersion);
    this.all.push(run);
    return run;
  }

  /** Every `upgrade` it sent parses as protocol v1; n/a when it sent none. */
  upgradeRequests(): CheckResult {
    const check = 'its upgrade requests are well-formed';
    const seen = this.all.flatMap((r) => r.seen);
    const bad = seen.find((s) => s.event.kind === 'invalid' && s.event.type === 'upgrade');
    if (bad && bad.event.kind === 'invalid') return { check, status: 'failed', detail: `${bad.event.detail}: ${clip(bad.event.line)}` };
    const good = seen.filter((s) => s.event.kind === 'message' && s.event.message.type === 'upgrade').length;
    return good ? { check, status: 'passed', detail: `${good} request(s), each valid` } : { check, status: 'n/a', detail: 'it sent no upgrade request' };
  }

  /** Lines that are not protocol: a warning each kind, with the first such line. */
  lineWarnings(): CheckResult {
    const check = 'every stdout line is protocol v1';
    const odd = this.all.flatMap((r) => r.seen).filter((s) => s.event.kind !== 'message' && s.event.kind !== 'end');
    if (odd.length === 0) return { check, status: 'passed', detail: 'one JSON message per line, all of known types' };
    const first = odd[0]!.event;
    const line = 'line' in first ? `: ${clip(first.line)}` : '';
    const invalid = odd.some((s) => s.event.kind === 'invalid');
    return { check, status: invalid ? 'failed' : 'warning', detail: `${odd.length} line(s) that are not protocol v1 messages (the upgrader ignores them); the first is ${first.kind}${line}` };
  }

  async killAll(): Promise<void> {
    await Promise.all(this.all.map((r) => r.end()));
  }

  /** On an interrupt: SIGKILL to every copy's group and marked descendants, synchronously. */
  killNow(): void {
    for (const r of this.all) r.agent.killGroupAndMarked();
  }

  /** An active copy is up: it said ready, or (an agent that does not) it is simply running. */
  async activeUp(run: Run, o: CheckOptions): Promise<void> {
    const wait = this.activeSaysReady ? o.readyMs : KEEPS_RUNNING_MS;
    await run.until(() => run.messages('ready').length > 0 || run.exit !== null, wait);
  }
}

const clip = (line: string) => (line.length > 200 ? `${JSON.stringify(line.slice(0, 200))}...` : JSON.stringify(line));
const pass = (check: string, detail: string): CheckResult => ({ check, status: 'passed', detail });
const fail = (check: string, detail: string): CheckResult => ({ check, status: 'failed', detail });

// ---------------------------------------------------------------- the checks

/** As `active`: starts, maybe says ready, and exits with its whole tree once its stdin is closed. */
async function checkActive(runs: Runs, o: CheckOptions): Promise<CheckResult[]> {
  const run = runs.start('active');
  const results: CheckResult[] = [];
  await run.until(() => run.messages('ready').length > 0 || run.exit !== null, o.readyMs);
  // Up means still up a moment later, not only at the instant it said ready.
  await run.until(() => run.exitNow() !== null, KEEPS_RUNNING_MS);
  const said = run.messages('ready')[0];
  runs.activeSaysReady = said !== undefined;
  const exit = run.exitNow();
  if (exit) results.push(fail('as active: starts and keeps running', `it ${run.describeExit()} ${run.since(exit.at)}`));
  else results.push(pass('as active: starts and keeps running', `running as PID ${run.agent.pid}`));
  results.push(said ? pass('as active: says ready (optional)', `ready ${run.since(said.at)}`) : { check: 'as active: says ready (optional)', status: 'warning', detail: `no ready within ${o.readyMs / 1000} s: run it with --ready-on-spawn` });
  if (exit) return results;
  run.agent.closeInput();
  const closedAt = Date.now();
  const exited = await run.until(() => run.exit !== null, EOF_EXIT_MS);
  const check = `as active: exits within ${EOF_EXIT_MS / 1000} s once its stdin is closed, leaving no process behind`;
  if (!exited) {
    await run.end();
    return [...results, fail(check, `still running ${EOF_EXIT_MS / 1000} s after stdin was closed: an agent must exit when its upgrader is gone`)];
  }
  // Its children get a moment to follow it out.
  await run.until(() => run.agent.leftovers().length === 0, 1000);
  const left = run.agent.leftovers();
  if (left.length) {
    const named = left.map(describeProcess).join(', ');
    await run.end();
    return [...results, fail(check, `it ${run.describeExit()} after ${((run.exit!.at - closedAt) / 1000).toFixed(2)} s, but left ${named} running`)];
  }
  return [...results, pass(check, `it ${run.describeExit()} ${((run.exit!.at - closedAt) / 1000).toFixed(2)} s after`)];
}

/** As `candidate`: ready in time, silent but for ready/status before go, running after go; then told stop. */
async function checkCandidateAndStop(runs: Runs, o: CheckOptions): Promise<CheckResult[]> {
  const run = runs.start('candidate', VERSION);
  const results: CheckResult[] = [];
  const readyCheck = `as candidate: says ready within ${o.readyMs / 1000} s`;
  if (!(await run.until(() => run.messages('ready').length > 0 || run.exit !== null, o.readyMs))) {
    await run.end();
    return [fail(readyCheck, `no ready within ${o.readyMs / 1000} s`)];
  }
  if (run.exit && run.messages('ready').length === 0) return [fail(readyCheck, `it ${run.describeExit()} ${run.since(run.exit.at)} without saying ready`)];
  results.push(pass(readyCheck, `ready ${run.since(run.messages('ready')[0]!.at)}`));
  // The upgrader sends go only once the old agent has let go: a candidate waits, doing and saying nothing.
  await run.until(() => run.exitNow() !== null, KEEPS_RUNNING_MS);
  const early = run.messages('upgrade', 'stopped')[0];
  const quiet = 'as candidate: sends nothing but ready and status before go';
  results.push(early && early.event.kind === 'message' ? fail(quiet, `it sent ${early.event.message.type} ${run.since(early.at)}, before go`) : pass(quiet, 'nothing else'));
  if (run.exitNow()) return [...results, fail('as candidate: keeps running after go', `it ${run.describeExit()} before go`)];
  const goAt = run.send({ type: 'go' });
  await run.until(() => run.exit !== null, KEEPS_RUNNING_MS);
  const keeps = 'as candidate: keeps running after go';
  if (run.exit) return [...results, fail(keeps, `it ${run.describeExit()} ${((run.exit.at - goAt) / 1000).toFixed(2)} s after go`)];
  results.push(pass(keeps, `still running ${KEEPS_RUNNING_MS / 1000} s after go`));
  return [...results, ...(await checkStop(run, o, 'stop'))];
}

/** Told stop: `stopped`, then exit within --stop-timeout, and nothing but status after `stopped`. */
async function checkStop(run: Run, o: CheckOptions, label: string): Promise<CheckResult[]> {
  const from = run.seen.length;
  const sentAt = run.send({ type: 'stop' });
  const check = `${label}: says stopped, then exits within ${o.stopMs / 1000} s`;
  await run.until(() => run.exit !== null, o.stopMs);
  await run.settled();
  const index = run.seen.findIndex((s, i) => i >= from && s.event.kind === 'message' && s.event.message.type === 'stopped');
  const stopped = run.seen[index];
  if (!stopped) {
    await run.end();
    return [fail(check, run.exit ? `it ${run.describeExit()} without saying stopped` : `no stopped within ${o.stopMs / 1000} s of stop`)];
  }
  if (!run.exit) {
    await run.end();
    return [fail(check, `it said stopped after ${((stopped.at - sentAt) / 1000).toFixed(2)} s but is still running ${o.stopMs / 1000} s after stop`)];
  }
  const after = run.messagesAfter(index);
  const results = [pass(check, `stopped after ${((stopped.at - sentAt) / 1000).toFixed(2)} s, ${run.describeExit()} after ${((run.exit.at - sentAt) / 1000).toFixed(2)} s`)];
  const quiet = `${label}: sends nothing but status after stopped`;
  const first = after[0];
  results.push(first && first.event.kind === 'message' ? fail(quiet, `it sent ${first.event.message.type} after stopped`) : pass(quiet, 'nothing else'));
  return results;
}

/** A live handoff from the agent to itself: the old copy's last line comes before the new copy's go. */
async function checkLiveHandoff(runs: Runs, o: CheckOptions): Promise<CheckResult[]> {
  const check = 'a live handoff to itself: the old copy has said its last before the new copy is told go';
  const old = runs.start('active');
  await runs.activeUp(old, o);
  if (old.exitNow()) return [fail(check, `the old copy ${old.describeExit()} ${old.since(old.exitNow()!.at)}`)];
  const next = runs.start('candidate', VERSION);
  if (!(await next.until(() => next.messages('ready').length > 0 || next.exit !== null, o.readyMs)) || next.exit) {
    await old.end();
    return [fail(check, `the new copy ${next.exit ? next.describeExit() : `said no ready within ${o.readyMs / 1000} s`}`)];
  }
  const stopIndex = old.seen.length;
  const stopAt = old.send({ type: 'stop' });
  await old.until(() => old.seen.slice(stopIndex).some((s) => s.event.kind === 'message' && s.event.message.type === 'stopped') || old.exit !== null, o.stopMs);
  const early = next.messages('upgrade', 'stopped')[0];
  const goIndex = old.seen.length;
  const goAt = next.send({ type: 'go' });
  await old.until(() => old.exit !== null, o.stopMs);
  await old.settled();
  const late = old.messagesAfter(goIndex - 1);
  const results: CheckResult[] = [];
  if (!old.exit) results.push(fail(check, `the old copy is still running ${(o.stopMs / 1000).toFixed(0)} s after stop`));
  else if (late.length && late[0]!.event.kind === 'message') results.push(fail(check, `the old copy sent ${late[0]!.event.message.type} after the new copy was told go`));
  else if (early && early.event.kind === 'message') results.push(fail(check, `the new copy sent ${early.event.message.type} before it was told go`));
  else results.push(pass(check, `old copy ${old.describeExit()}; new copy told go ${((goAt - stopAt) / 1000).toFixed(2)} s after stop`));
  await old.end();
  await next.until(() => next.exit !== null, KEEPS_RUNNING_MS);
  results.push(next.exit ? fail('a live handoff to itself: the new copy keeps running', `it ${next.describeExit()} after go`) : pass('a live handoff to itself: the new copy keeps running', 'running after go'));
  if (!next.exit) results.push(...(await checkStop(next, o, 'the new copy, told stop')));
  return results;
}

/** `upgrade-failed` is an answer, not an order to leave; SIGTERM is. */
async function checkUpgradeFailedAndSigterm(runs: Runs, o: CheckOptions): Promise<CheckResult[]> {
  const run = runs.start('active');
  await runs.activeUp(run, o);
  if (run.exitNow()) return [fail('upgrade-failed does not make it exit', `it ${run.describeExit()} before anything was sent`)];
  const sentAt = run.send({ type: 'upgrade-failed', version: 'check-2', reason: 'upgrader check: a refused upgrade', code: 'missing' });
  await run.until(() => run.exit !== null, KEEPS_RUNNING_MS);
  const results = [run.exit ? fail('upgrade-failed does not make it exit', `it ${run.describeExit()} ${((run.exit.at - sentAt) / 1000).toFixed(2)} s after upgrade-failed`) : pass('upgrade-failed does not make it exit', `still running ${KEEPS_RUNNING_MS / 1000} s after it`)];
  if (run.exitNow()) return results;
  const termAt = Date.now();
  run.agent.terminate();
  const check = `SIGTERM makes it exit within ${o.stopMs / 1000} s`;
  await run.until(() => run.exit !== null, o.stopMs);
  results.push(run.exit ? pass(check, `it ${run.describeExit()} ${((run.exit.at - termAt) / 1000).toFixed(2)} s after SIGTERM`) : fail(check, `still running ${o.stopMs / 1000} s after SIGTERM`));
  await run.end();
  return results;
}

function describeProcess(pid: number): string {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    return `PID ${pid} (${cmd.slice(0, 80)})`;
  } catch {
    return `PID ${pid}`;
  }
}

/** One line per check, for a terminal or a CI log. */
export function formatChecks(results: CheckResult[]): string {
  const mark: Record<CheckStatus, string> = { passed: 'ok  ', failed: 'FAIL', warning: 'warn', 'n/a': 'n/a ' };
  return results.map((r) => `${mark[r.status]}  ${r.check}: ${r.detail}`).join('\n');
}
