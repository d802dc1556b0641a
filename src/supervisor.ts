/**
 * The supervisor: the one loop that owns all upgrade state. It feeds events (agent lines, exits,
 * timers, signals) one at a time into the handoff state machine and carries out the effects it returns:
 * spawning, messaging and killing agents, moving `current`, writing state, arming timers.
 * Start-up recovery after a crash of a previous upgrader lives here too.
 */
import { performance } from 'node:perf_hooks';
import { AgentProcess, agentMarker, signalQuietly } from './agent-process.js';
import { describeError, EXIT, UpgraderError } from './errors.js';
import { transition, initialContext, publicState, type Config, type Context, type Effect, type Event, type Origin, type Outcome, type Probation, type TimerName } from './handoff.js';
import type { Layout } from './layout.js';
import { holdLogLines, writeLogLines, type Logger } from './log.js';
import { AgentRepeats } from './log-repeats.js';
import { AgentStatusFile } from './agent-status.js';
import type { Ownership } from './ownership.js';
import type { SystemdNotifier } from './notify.js';
import { jumpProblem, readManifest } from './manifest.js';
import { ControlServer, type ControlRequest, type Replier } from './control.js';
import { Quarantine } from './quarantine.js';
import { findLiveProcesses, isSameProcessAlive } from './proc.js';
import { MAX_STATUS_CHARS, type AgentMessage, type HandoffMode, type Parsed } from './protocol.js';
import { withUpgrade, type PersistedState, type RecordedAgent, type Repair, type StateFile, type UpgradeRecord } from './state.js';
import treeKill from 'tree-kill';

/** How long a killed process tree may take to disappear before the upgrader reports it. */
const KILL_CONFIRM_MS = 5000;
const POLL_MS = 20;

type LineEvent = Parsed<AgentMessage> | { kind: 'overlong'; bytes: number } | { kind: 'bad-utf8'; bytes: number } | { kind: 'end' };

const isRequired = (effect: Effect): boolean => (effect.kind === 'persist' || effect.kind === 'commit-current') && effect.required;

class LostOwnershipError extends Error {}

export class Supervisor {
  private ctx: Context = initialContext();
  private readonly procs = new Map<number, AgentProcess>();
  private readonly repeats = new WeakMap<AgentProcess, AgentRepeats>();
  private readonly timers = new Map<TimerName, NodeJS.Timeout>();
  private readonly queue: Event[] = [];
  private dispatching = false;
  private handoffStartedMono = 0;
  private announcedReady = false;
  private resolveExit!: (code: number) => void;
  readonly exited: Promise<number>;

  private readonly layout: Layout;
  private readonly stateFile: StateFile;
  private readonly agentStatus: AgentStatusFile;
  private readonly ownership: Ownership;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly notifier: SystemdNotifier;
  private readonly readyOnSpawn: boolean;
  private readonly quarantine: Quarantine;
  /** The upgrades recorded durably in the state file, newest first. */
  private history: UpgradeRecord[];
  /** Outcomes whose write failed: added to the next state written. */
  private readonly unrecorded: UpgradeRecord[] = [];
  /** What start-up did when `current` could not be run (recorded until the next repair). */
  private readonly repair: Repair | null;
  private current: string | null;
  private control: ControlServer | null = null;
  /** The operator waiting on the handoff they asked for, if any. */
  private operator: { replier: Replier; wait: boolean; force: boolean } | null = null;

  constructor(options: StartOptions, recovered: { history: UpgradeRecord[]; current: string | null; repair: Repair | null }) {
    ({
      layout: this.layout,
      stateFile: this.stateFile,
      agentStatus: this.agentStatus,
      ownership: this.ownership,
      config: this.config,
      log: this.log,
      notifier: this.notifier,
      readyOnSpawn: this.readyOnSpawn,
    } = options);
    ({ history: this.history, current: this.current, repair: this.repair } = recovered);
    this.quarantine = new Quarantine(this.layout.stateDir);
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  /** Events are handled strictly one after another, each with all of its effects, in arrival order. */
  dispatch(event: Event): void {
    this.queue.push(event);
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      while (this.queue.length > 0) this.step(this.queue.shift()!);
    } finally {
      this.dispatching = false;
    }
  }

  private step(event: Event): void {
    const { next, effects } = transition(this.ctx, event, this.config);
    const firstOptional = effects.findIndex((e) => !isRequired(e));
    const required = firstOptional === -1 ? effects : effects.slice(0, firstOptional);
    const rest = firstOptional === -1 ? [] : effects.slice(firstOptional);
    if (rest.some(isRequired)) throw new Error(`bug: a required effect follows an optional one after ${event.type}`);
    try {
      for (const effect of required) this.run(effect, next);
    } catch (error) {
      if (error instanceof LostOwnershipError) return this.abandonRoot();
      this.log.error({ event: event.type, err: describeError(error) }, 'a durable write failed; the transition is dropped');
      this.queue.unshift({ type: 'io-failed', trigger: event, error: describeError(error) });
      return;
    }
    const previous = this.ctx;
    this.ctx = next;
    if (!previous.handoff && next.handoff) this.handoffStartedMono = performance.now();
    for (const effect of rest) {
      try {
        this.run(effect, next);
      } catch (error) {
        if (error instanceof LostOwnershipError) return this.abandonRoot();
        this.log.error({ effect: effect.kind, err: describeError(error) }, 'an effect failed');
      }
    }
    // Logged after the effects: writing a log line must not stand between `stopped` and `go`.
    this.logTransition(previous, event, next);
    this.notifySystemd(previous, next);
  }

  private notifySystemd(previous: Context, next: Context): void {
    if (!this.notifier.enabled) return;
    if (next.active?.ready && !this.announcedReady) {
      this.announcedReady = true;
      this.notifier.ready();
    }
    if (next.state === 'stopping' && previous.state !== 'stopping') this.notifier.stopping();
    this.notifier.status(this.statusLine(next));
  }

  /** One line for `systemctl status`: what runs, and what the last upgrade did. */
  private statusLine(ctx: Context): string {
    const last = this.history[0];
    const lastText = last ? `; last upgrade ${last.from} -> ${last.to} ${last.result}${last.reason ? `: ${last.reason}` : ''}` : '';
    switch (ctx.state) {
      case 'verifying':
      case 'draining':
      case 'waiting':
        if (!ctx.handoff) return `restarting ${ctx.pending?.version} once the old agent has exited${lastText}`;
        return `upgrading ${ctx.handoff.from} -> ${ctx.handoff.to} (${ctx.state})${lastText}`;
      case 'running': {
        const active = ctx.active!;
        const pid = this.procs.get(active.id)?.pid;
        return `running ${active.version} (pid ${pid}${active.ready ? '' : ', not ready yet'}${ctx.probation ? ', on probation' : ''})${lastText}`;
      }
      default:
        return `${ctx.state}${lastText}`;
    }
  }

  private logTransition(previous: Context, event: Event, next: Context): void {
    // What the agent repeated is reported now: the upgrader may exit before its stdout's end is read.
    const exited = event.type === 'exited' ? this.procs.get(event.id) : undefined;
    if (exited) this.repeats.get(exited)?.end();
    const agent = (ref: { id: number; version: string } | null) => (ref ? { version: ref.version, agentPid: this.procs.get(ref.id)?.pid ?? null } : null);
    const detail: Record<string, unknown> = { ...event };
    delete detail.type;
    if (event.type === 'io-failed') detail.trigger = event.trigger.type;
    this.log.info(
      {
        event: event.type,
        detail,
        from: previous.state,
        to: next.state,
        active: agent(next.active),
        candidate: agent(next.candidate),
        handoff: next.handoff ? { from: next.handoff.from, to: next.handoff.to, mode: next.handoff.mode } : null,
      },
      `transition ${previous.state} -> ${next.state} on ${event.type}`,
    );
    if (previous.state !== next.state) this.tellOperator(`${previous.state} -> ${next.state} (${event.type})`);
  }

  private run(effect: Effect, next: Context): void {
    switch (effect.kind) {
      case 'spawn':
        return this.spawn(effect);
      case 'send': {
        const proc = this.procs.get(effect.id);
        proc?.send(effect.message);
        this.log.info({ message: effect.message, agentPid: proc?.pid, version: proc?.spec.version }, `sent ${effect.message.type}`);
        this.tellOperator(`sent ${effect.message.type} to ${proc?.spec.version} (pid ${proc?.pid})`);
        return;
      }
      case 'terminate':
        this.procs.get(effect.id)?.terminate();
        return;
      case 'kill-tree': {
        const proc = this.procs.get(effect.id);
        if (proc) void this.killAndConfirm(proc);
        return;
      }
      case 'commit-current':
        return this.commitCurrent(effect.version);
      case 'persist':
        return effect.required ? this.persist(next, null) : this.persistOptional(next, effect.outcome);
      case 'start-timer': {
        clearTimeout(this.timers.get(effect.timer));
        const timer = setTimeout(() => {
          this.timers.delete(effect.timer);
          this.dispatch({ type: 'timeout', timer: effect.timer });
        }, effect.ms);
        this.timers.set(effect.timer, timer);
        return;
      }
      case 'cancel-timer':
        clearTimeout(this.timers.get(effect.timer));
        this.timers.delete(effect.timer);
        return;
      case 'exit':
        void this.finish(effect.code);
        return;
      case 'report':
        return this.reportToOperator(effect);
    }
  }

  // ---------------------------------------------------------------- the operator channel

  async openControlChannel(): Promise<void> {
    const control = new ControlServer(this.layout.stateDir, (request, replier) => this.onOperatorRequest(request, replier));
    const problem = await control.listen();
    if (problem) this.log.warn({ problem }, 'the operator channel is off: upgrader upgrade and rollback cannot reach this upgrader');
    else this.control = control;
  }

  private onOperatorRequest(request: ControlRequest, replier: Replier): void {
    if (this.operator) {
      replier.send({ type: 'failed', version: null, reason: 'another operator request is in progress' });
      return replier.end();
    }
    const version = request.type === 'rollback' ? this.ctx.previous : request.version;
    if (!version) {
      replier.send({ type: 'failed', version: null, reason: 'no previous version is recorded: there is nothing to roll back to' });
      return replier.end();
    }
    this.operator = { replier, wait: request.wait, force: request.force };
    replier.onClose(() => {
      if (this.operator?.replier === replier) this.operator = null;
    });
    this.log.info({ request }, `operator asks for ${request.type === 'rollback' ? `a rollback to ${version}` : `an upgrade to ${version}`}`);
    this.requestUpgrade('operator', 0, version, 'live', request.force);
  }

  private reportToOperator(effect: Extract<Effect, { kind: 'report' }>): void {
    const operator = this.operator;
    if (!operator) return;
    if (effect.outcome === 'accepted') {
      if (operator.force && this.quarantine.lift(effect.version)) this.log.info({ version: effect.version }, `lifted the quarantine of ${effect.version} (--force)`);
      operator.replier.send({ type: 'accepted', version: effect.version });
      if (operator.wait) return;
    } else if (effect.outcome === 'succeeded') {
      operator.replier.send({ type: 'succeeded', version: effect.version });
    } else {
      operator.replier.send({ type: 'failed', version: effect.version, reason: effect.reason ?? 'the upgrade failed' });
    }
    operator.replier.end();
    this.operator = null;
  }

  private tellOperator(text: string): void {
    this.operator?.replier.send({ type: 'step', text });
  }

  private spawn(effect: Extract<Effect, { kind: 'spawn' }>): void {
    let proc: AgentProcess;
    try {
      proc = this.createAgent(effect);
    } catch (error) {
      // Out of descriptors or processes: spawn throws before any process exists. Report it as an exit.
      this.log.error({ version: effect.version, role: effect.role, err: describeError(error) }, `could not start ${effect.role} ${effect.version}`);
      this.dispatch({ type: 'exited', id: effect.id, code: 127, signal: null, error: describeError(error), errorCode: (error as NodeJS.ErrnoException).code });
      return;
    }
    this.procs.set(effect.id, proc);
    this.log.info({ agentPid: proc.pid, version: effect.version, role: effect.role }, `spawned ${effect.role} ${effect.version}`);
    this.tellOperator(`started ${effect.version} as the ${effect.role} (pid ${proc.pid})`);
    // An agent that does not speak readiness counts as ready once spawned; candidates always must say so.
    if (this.readyOnSpawn && effect.role === 'active') this.dispatch({ type: 'ready', id: effect.id });
  }

  private createAgent(effect: Extract<Effect, { kind: 'spawn' }>): AgentProcess {
    const proc: AgentProcess = new AgentProcess(
      {
        id: effect.id,
        root: this.layout.root,
        version: effect.version,
        versionDir: this.layout.versionDir(effect.version),
        entryPath: this.layout.entryPath(effect.version),
        role: effect.role,
        fromVersion: effect.fromVersion,
      },
      {
        onLine: (line) => this.onAgentLine(proc, line),
        onExit: (code, signal, error) => this.onAgentExit(proc, code, signal, error),
      },
    );
    return proc;
  }

  /**
   * A line from an agent, handled and logged. A line that changes nothing is logged in full only the
   * first time of its kind in a window, else counted for a summary (log-repeats.ts): what an agent
   * sends cannot multiply into the log.
   */
  private onAgentLine(proc: AgentProcess, line: LineEvent): void {
    let repeats = this.repeats.get(proc);
    if (!repeats) this.repeats.set(proc, (repeats = new AgentRepeats(proc, this.log)));
    if (line.kind === 'end') return repeats.end();
    if (line.kind === 'message' && line.message.type === 'status') return this.onAgentMessage(proc, line.message);
    if (line.kind !== 'message' && line.kind !== 'invalid') {
      // Ignored whatever the state: only the first of its kind in a window is even made into a log line.
      if (repeats.isFirst(line)) this.handleAgentLine(proc, line);
      return;
    }
    const before = this.ctx;
    const logged = holdLogLines(() => this.handleAgentLine(proc, line));
    if (this.ctx !== before || repeats.isFirst(line)) writeLogLines(logged);
    repeats.noteDroppedReplies();
  }

  private handleAgentLine(proc: AgentProcess, line: Exclude<LineEvent, { kind: 'end' }>): void {
    const who = { agentPid: proc.pid, version: proc.spec.version };
    switch (line.kind) {
      case 'message':
        return this.onAgentMessage(proc, line.message);
      case 'invalid':
        this.log.warn({ ...who, type: line.type, detail: line.detail, line: clip(line.line) }, 'protocol error: a message breaks its schema');
        return this.dispatch({ type: 'protocol-error', id: proc.spec.id, detail: `${line.type}: ${line.detail}` });
      case 'unknown':
        this.log.warn({ ...who, type: line.type, line: clip(line.line) }, 'ignored a message of unknown type');
        return;
      case 'garbage':
        this.log.warn({ ...who, detail: line.detail, line: clip(line.line) }, 'ignored a line that is not a protocol message');
        return;
      case 'overlong':
        this.log.error({ ...who, bytes: line.bytes }, 'discarded a line longer than the 64 KiB limit');
        return;
      case 'bad-utf8':
        this.log.warn({ ...who, bytes: line.bytes }, 'ignored a line that is not valid UTF-8');
        return;
    }
  }

  private onAgentMessage(proc: AgentProcess, message: AgentMessage): void {
    const id = proc.spec.id;
    switch (message.type) {
      case 'ready':
        return this.dispatch({ type: 'ready', id });
      case 'stopped':
        return this.dispatch({ type: 'stopped', id });
      case 'upgrade':
        return this.requestUpgrade('agent', id, message.version, message.mode, false);
      case 'status':
        this.agentStatus.record({ version: proc.spec.version, pid: proc.pid ?? null, message: message.message.slice(0, MAX_STATUS_CHARS), at: new Date().toISOString() });
        return;
    }
  }

  private onAgentExit(proc: AgentProcess, code: number | null, signal: NodeJS.Signals | null, error: Error | null): void {
    // Whatever the agent left in its process group goes with it: an exited agent has no work in flight.
    if (proc.pid !== undefined) signalQuietly(-proc.pid, 'SIGKILL');
    this.log.info({ agentPid: proc.pid, version: proc.spec.version, code, signal, err: error ? describeError(error) : undefined }, `agent ${proc.spec.version} exited`);
    const failedToStart = error !== null && code === null && signal === null;
    const failure = failedToStart ? { error: describeError(error), errorCode: (error as NodeJS.ErrnoException).code } : {};
    this.dispatch({ type: 'exited', id: proc.spec.id, code: failedToStart ? 127 : code, signal, ...failure });
    void this.confirmGone(proc).then(() => this.procs.delete(proc.spec.id));
  }

  private async killAndConfirm(proc: AgentProcess): Promise<void> {
    this.log.warn({ agentPid: proc.pid, version: proc.spec.version }, `killing the process tree of ${proc.spec.version}`);
    await proc.killTree();
    await this.confirmGone(proc);
  }

  /** A kill is confirmed, never assumed: wait until the agent, its group and its marked descendants are gone. */
  private async confirmGone(proc: AgentProcess): Promise<boolean> {
    const deadline = performance.now() + KILL_CONFIRM_MS;
    while (!proc.isGone()) {
      if (performance.now() > deadline) {
        this.log.error({ agentPid: proc.pid, version: proc.spec.version }, 'an agent process tree is still alive after SIGKILL');
        return false;
      }
      // Once the agent has exited its descendants have lost their parent link, so tree-kill (which runs
      // ps each time) finds nothing more: the group and the environment marker are what is left to hit.
      if (proc.hasExited) proc.killLeftovers();
      await delay(POLL_MS);
    }
    return true;
  }

  private commitCurrent(version: string): void {
    const now = this.layout.readCurrent();
    if ('version' in now && now.version === version) {
      this.current = version;
      return;
    }
    this.assertOwnership();
    this.layout.commitCurrent(version);
    this.current = version;
    this.log.info({ version }, `current -> versions/${version}`);
  }

  /**
   * Writes the state, with the outcome (if any) and every outcome a failed write left unrecorded. `history`
   * changes only once the write succeeded: what `status`, STATUS= and the log call done is durable.
   */
  private persist(next: Context, outcome: Outcome | null): void {
    this.assertOwnership();
    if (outcome) {
      const now = new Date();
      const mono = this.handoffStartedMono ? performance.now() - this.handoffStartedMono : now.getTime() - Date.parse(outcome.startedAt);
      const { quarantine, origin: _origin, ...record } = outcome;
      this.unrecorded.push({ ...record, at: now.toISOString(), durationMs: Math.max(0, Math.round(mono)) });
      if (quarantine) this.quarantineVersion(outcome.to, outcome.reason ?? outcome.result);
    }
    const history = this.unrecorded.reduce(withUpgrade, this.history);
    this.stateFile.write(this.snapshot(next, history));
    this.history = history;
    for (const record of this.unrecorded.splice(0)) {
      const memory = process.memoryUsage();
      this.log.info({ ...record, rss: memory.rss, heapUsed: memory.heapUsed }, `upgrade ${record.from} -> ${record.to} ${record.result}`);
    }
  }

  /** A write the step does not depend on: a failure is the machine's to handle (`record-failed`), not the step's. */
  private persistOptional(next: Context, outcome: Outcome | null): void {
    try {
      this.persist(next, outcome);
    } catch (error) {
      if (error instanceof LostOwnershipError) throw error;
      this.log.error({ err: describeError(error), unrecorded: this.unrecorded.length }, 'the state could not be written; it is kept and written again');
      this.dispatch({ type: 'record-failed', outcome, error: describeError(error) });
      return;
    }
    if (outcome) this.dispatch({ type: 'recorded', outcome });
  }

  private quarantineVersion(version: string, reason: string): void {
    try {
      this.quarantine.add(version, reason);
      this.log.warn({ version, reason }, `quarantined ${version}: agents' requests for it are refused until it is re-installed`);
    } catch (error) {
      this.log.error({ version, err: describeError(error) }, `could not quarantine ${version}`);
    }
  }

  /**
   * Hands a request for `version` to the state machine, with what the machine cannot know: whether the
   * version is launchable, quarantined, or a jump its manifest forbids (an operator's `force` waives the
   * last two, never the first), and whether its manifest makes the handoff sequential.
   */
  private requestUpgrade(origin: Origin, id: number, version: string, mode: HandoffMode, force: boolean): void {
    const active = this.ctx.active;
    const from = active && (origin === 'operator' || active.id === id) ? active.version : undefined;
    let problem = this.layout.launchProblem(version);
    const read = problem === null ? readManifest(this.layout.versionDir(version)) : null;
    const manifest = read && 'manifest' in read ? read.manifest : {};
    if (problem === null && !force) {
      const quarantined = this.quarantine.get(version);
      if (quarantined) problem = `${version} is quarantined since ${quarantined.at} (${quarantined.reason}); re-install it to try again`;
      else if (from) problem = jumpProblem(from, version, manifest);
    }
    const effectiveMode = manifest.sequential ? 'sequential' : mode;
    this.dispatch({ type: 'upgrade-requested', origin, id, version, mode: effectiveMode, problem, at: new Date().toISOString() });
  }

  private snapshot(next: Context, history: UpgradeRecord[]): PersistedState {
    const agents: RecordedAgent[] = [];
    const add = (id: number, role: RecordedAgent['role'], ready: boolean) => {
      const proc = this.procs.get(id);
      if (!proc?.identity || proc.hasExited) return;
      agents.push({ ...proc.identity, version: proc.spec.version, role, ready, since: proc.spawnedAt.toISOString() });
    };
    if (next.active) add(next.active.id, 'active', next.active.ready);
    if (next.candidate) add(next.candidate.id, 'candidate', next.candidate.ready);
    for (const dying of next.dying) add(dying.id, 'retiring', false);
    const handoff = next.handoff;
    return {
      state: publicState(next),
      current: this.current,
      previous: next.previous,
      agents,
      handoff: handoff ? { from: handoff.from, to: handoff.to, mode: handoff.mode, phase: next.state, startedAt: handoff.startedAt } : null,
      probation: next.probation,
      history,
      repair: this.repair,
      updatedAt: new Date().toISOString(),
    };
  }

  private assertOwnership(): void {
    if (!this.ownership.confirm()) throw new LostOwnershipError();
  }

  /** Another process has taken the root: touch nothing more, take our agents down, and leave. */
  private abandonRoot(): void {
    this.log.fatal({ root: this.layout.root }, 'this upgrader no longer owns the root (state/owner.json names another process); stopping at once');
    for (const proc of this.procs.values()) if (proc.pid !== undefined) signalQuietly(-proc.pid, 'SIGKILL');
    for (const timer of this.timers.values()) clearTimeout(timer);
    // The socket's path may already be the new owner's: close ours, remove nothing.
    this.control?.close(false);
    this.resolveExit(EXIT.locked);
  }

  /** Last resort (an internal error): SIGKILL to every agent's group and marked descendants, synchronously. */
  killAllNow(): void {
    for (const proc of this.procs.values()) proc.killLeftovers();
  }

  private async finish(code: number): Promise<void> {
    this.control?.close();
    this.notifier.stopWatchdog();
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    await Promise.all([...this.procs.values()].map((proc) => (proc.isGone() ? true : this.killAndConfirm(proc))));
    this.agentStatus.flush();
    this.ownership.release();
    this.log.info({ code }, `the upgrader exits with status ${code}`);
    this.resolveExit(code);
  }
}

function clip(line: string): string {
  return line.length > 512 ? `${line.slice(0, 512)}… (${line.length} characters)` : line;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------- start-up and recovery

export type StartOptions = {
  layout: Layout;
  stateFile: StateFile;
  agentStatus: AgentStatusFile;
  ownership: Ownership;
  config: Config;
  log: Logger;
  notifier: SystemdNotifier;
  readyOnSpawn: boolean;
};

/**
 * Brings a root back to a known state after whatever happened to the previous upgrader, then starts
 * the active agent. An open handoff is always undone: its candidate never finished proving itself
 * under an upgrader that saw it through, so the version it replaced runs again.
 */
export async function startSupervisor(options: StartOptions): Promise<Supervisor> {
  const { layout, stateFile, log } = options;
  for (const path of layout.removeStaleTemporaries()) log.warn({ path }, 'removed a temporary file left by a crash');

  const read = stateFile.read();
  if (!read.ok && !read.missing) log.error({ problem: read.problem, path: stateFile.path }, 'ignoring the state file; falling back to what current says');
  const saved = read.ok ? read.state : null;

  await killLeftovers(layout.root, saved?.agents ?? [], log);

  let history = saved?.history ?? [];
  let probation: Probation | null = saved?.probation ?? null;
  const previous = saved?.previous ?? null;
  let chosen: { version: string; repair: Repair | null };

  if (saved?.handoff) {
    const h = saved.handoff;
    const reason = `the upgrader stopped during the handoff (phase ${h.phase}); ${h.from} was started again`;
    if (layout.launchProblem(h.from) === null) {
      chosen = { version: h.from, repair: null };
      tryCommit(layout, h.from, log);
    } else {
      chosen = chooseVersion(layout, saved, log);
    }
    history = withUpgrade(history, { from: h.from, to: h.to, mode: h.mode, result: 'failed', reason, startedAt: h.startedAt, at: new Date().toISOString(), durationMs: Math.max(0, Date.now() - Date.parse(h.startedAt)) });
    log.warn({ from: h.from, to: h.to, phase: h.phase }, 'recovered an interrupted handoff: rolled back');
    probation = null;
  } else {
    chosen = chooseVersion(layout, saved, log);
  }
  const version = chosen.version;
  if (probation && probation.version !== version) probation = null;

  const supervisor = new Supervisor(options, { history, current: version, repair: chosen.repair ?? saved?.repair ?? null });
  supervisor.dispatch({ type: 'start', version, previous, probation });
  await supervisor.openControlChannel();
  return supervisor;
}

/**
 * The version to launch: what `current` says, if it can run. If not, the host is not bricked while a good
 * version is on disk: the first runnable one of the state's `current`, its `previous`, then every version
 * the history shows running, newest first. `current` is repaired to it, loudly, and the repair recorded.
 * Only when none of them can run does the upgrader refuse to start (78).
 */
function chooseVersion(layout: Layout, saved: PersistedState | null, log: Logger): { version: string; repair: Repair | null } {
  const current = layout.readCurrent();
  const problem = 'version' in current ? layout.launchProblem(current.version) : current.problem;
  if (problem === null && 'version' in current) return { version: current.version, repair: null };
  const known = [saved?.current, saved?.previous, ...(saved?.history ?? []).flatMap((u) => (u.result === 'succeeded' ? [u.to, u.from] : [u.from]))];
  const fallback = [...new Set(known)].find((v): v is string => typeof v === 'string' && layout.launchProblem(v) === null);
  if (!fallback) throw new UpgraderError('E_CURRENT', `Nothing to launch: ${problem}, and no version the state file names as having run can run.`);
  const repair: Repair = { at: new Date().toISOString(), problem: problem ?? 'current is unusable', version: fallback };
  log.error({ problem, version: fallback, repaired: true }, `current cannot be run (${problem}); running ${fallback}, the last version known to have run, and pointing current at it`);
  tryCommit(layout, fallback, log);
  return { version: fallback, repair };
}

/**
 * Points `current` at a version during recovery. If that cannot be written (read-only or full disk, or a
 * real directory squats the name), the version is launched anyway, from versions/<v> as always: `current`
 * is never removed blindly, and the next start tries again.
 */
function tryCommit(layout: Layout, version: string, log: Logger): void {
  try {
    layout.commitCurrent(version);
  } catch (error) {
    log.error({ version, err: describeError(error) }, `current could not be pointed at ${version}; running it anyway`);
  }
}

/**
 * Kills every agent process of this root that a previous upgrader left behind: those recorded in the
 * state file (checked by PID and start time, so a reused PID is never hit) and any process that carries
 * the root's agent marker in its environment. Returns once all of them are confirmed gone.
 */
async function killLeftovers(root: string, recorded: RecordedAgent[], log: Logger): Promise<void> {
  const marker = [agentMarker(root, 0)[0]!, 'UPGRADER_AGENT_ID='];
  const find = () => [
    ...recorded.filter((agent) => isSameProcessAlive(agent)).map((agent) => agent.pid),
    ...findLiveProcesses({ environment: marker }),
  ];
  let pids = find();
  if (pids.length === 0) return;
  log.warn({ agentPids: pids }, 'killing agent processes left by a previous upgrader');
  const deadline = performance.now() + KILL_CONFIRM_MS;
  while (pids.length > 0) {
    for (const pid of pids) {
      signalQuietly(-pid, 'SIGKILL');
      signalQuietly(pid, 'SIGKILL');
      treeKill(pid, 'SIGKILL');
    }
    if (performance.now() > deadline) {
      throw new UpgraderError('E_INTERNAL', `Agent processes left by a previous upgrader survive SIGKILL (PIDs ${pids.join(', ')}); not starting another agent beside them.`);
    }
    await delay(POLL_MS);
    pids = find();
  }
}
