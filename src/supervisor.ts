/**
 * The supervisor: the one loop that owns all upgrade state. It has one job: feed events (agent lines,
 * exits, timers, signals, operator requests) one at a time into the handoff state machine (handoff.ts) and
 * carry out the step it returns: the durable writes first, through records.ts, then spawning, messaging
 * and killing agents, arming timers and answering the operator.
 *
 * What it needs from the world comes in as `SupervisorEnv` (starting an agent, timers), so that a unit test
 * can drive it with stand-ins. Start-up recovery is recovery.ts; the operator channel operator-session.ts;
 * systemd's view systemd-status.ts; kill confirmation reaper.ts; vetting a request upgrade-request.ts.
 */
import { performance } from 'node:perf_hooks';
import { AgentProcess, signalQuietly, type AgentCallbacks, type AgentHandle, type AgentLineEvent, type AgentSpec } from './agent-process.js';
import { describeError, EXIT } from './errors.js';
import { transition, initialContext, publicState, type Config, type Context, type DurableWrite, type Effect, type Event, type Step, type TimerName } from './handoff.js';
import { collectGarbage, SETTLE_MS } from './heap-settle.js';
import type { Layout } from './layout.js';
import { holdLogLines, writeLogLines, type Logger } from './log.js';
import { AgentRepeats } from './log-repeats.js';
import { OperatorSession } from './operator-session.js';
import { MAX_STATUS_CHARS, type AgentMessage } from './protocol.js';
import { confirmGone, killAndConfirm } from './reaper.js';
import { LostOwnershipError, type Records, type Snapshot } from './records.js';
import type { RecordedAgent } from './state.js';
import type { SystemdStatus } from './systemd-status.js';
import { vetUpgradeRequest, type UpgradeRequest } from './upgrade-request.js';

export type Timer = { cancel(): void };

/** The supervisor's seams: how an agent is started and how time passes (tableflip's `env`). */
export type SupervisorEnv = {
  startAgent(spec: AgentSpec, callbacks: AgentCallbacks): AgentHandle;
  setTimer(ms: number, fire: () => void): Timer;
  /** A full collection of the heap, run once handoffs have stopped for a while (heap-settle.ts). */
  collectGarbage?: () => void | Promise<void>;
};

export const realEnv: SupervisorEnv = {
  startAgent: (spec, callbacks) => new AgentProcess(spec, callbacks),
  setTimer: (ms, fire) => {
    const timer = setTimeout(fire, ms);
    return { cancel: () => clearTimeout(timer) };
  },
  collectGarbage,
};

/** The durable writes the supervisor carries out (records.ts's Records; a stand-in in unit tests). */
export type RootRecords = Pick<Records, 'history' | 'unrecordedCount' | 'commitCurrent' | 'persist' | 'addQuarantine' | 'liftQuarantine' | 'recordStatus' | 'flush'> & { release(): void };

export type SupervisorParts = {
  layout: Layout;
  records: RootRecords;
  config: Config;
  log: Logger;
  systemd: SystemdStatus;
  readyOnSpawn: boolean;
  env?: SupervisorEnv;
};

export class Supervisor {
  private ctx: Context = initialContext();
  private readonly agents = new Map<number, AgentHandle>();
  private readonly repeats = new WeakMap<AgentHandle, AgentRepeats>();
  private readonly timers = new Map<TimerName, Timer>();
  private readonly queue: Event[] = [];
  private dispatching = false;
  private abandoned = false;
  private handoffStartedMono = 0;
  /** Armed when a handoff ends: the garbage of the handoffs is collected once they have stopped (heap-settle.ts). */
  private settle: Timer | null = null;
  private resolveExit!: (code: number) => void;
  readonly exited: Promise<number>;
  readonly operator: OperatorSession;

  private readonly layout: Layout;
  private readonly records: RootRecords;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly systemd: SystemdStatus;
  private readonly readyOnSpawn: boolean;
  private readonly env: SupervisorEnv;

  constructor(parts: SupervisorParts) {
    ({ layout: this.layout, records: this.records, config: this.config, log: this.log, systemd: this.systemd, readyOnSpawn: this.readyOnSpawn } = parts);
    this.env = parts.env ?? realEnv;
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.operator = new OperatorSession(
      this.layout.stateDir,
      {
        previousVersion: () => this.ctx.previous,
        requestUpgrade: (request) => this.requestUpgrade(request),
        requestHalt: (by) => this.dispatch({ type: 'halt-requested', by, at: new Date().toISOString() }),
        requestResume: () => this.dispatch({ type: 'resume-requested' }),
      },
      this.log,
    );
  }

  /** The machine's context: for tests and the last-resort kill. */
  get context(): Context {
    return this.ctx;
  }

  /** Events are handled strictly one after another, each with all of its effects, in arrival order. */
  dispatch(event: Event): void {
    if (this.abandoned) return;
    this.queue.push(event);
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      while (this.queue.length > 0 && !this.abandoned) this.step(this.queue.shift()!);
    } finally {
      this.dispatching = false;
    }
  }

  private step(event: Event): void {
    const step = transition(this.ctx, event, this.config);
    if (!this.writeDurably(event, step)) return;
    const previous = this.ctx;
    this.ctx = step.next;
    if (!previous.handoff && step.next.handoff) {
      this.handoffStartedMono = performance.now();
      this.cancelSettle();
    }
    for (const effect of step.effects) {
      try {
        this.run(effect, step.next);
      } catch (error) {
        if (error instanceof LostOwnershipError) return this.abandonRoot();
        this.log.error({ effect: effect.kind, err: describeError(error) }, 'an effect failed');
      }
    }
    // Logged after the effects: writing a log line must not stand between `stopped` and `go`.
    this.logTransition(previous, event, step);
    this.systemd.update(previous, step.next, this.records.history[0], (id) => this.agents.get(id)?.pid);
    if (previous.handoff && !step.next.handoff) this.armSettle();
  }

  private armSettle(): void {
    const collect = this.env.collectGarbage;
    if (!collect) return;
    this.cancelSettle();
    this.settle = this.env.setTimer(SETTLE_MS, () => {
      this.settle = null;
      if (this.ctx.handoff) return;
      Promise.resolve()
        .then(collect)
        .catch((error: unknown) => this.log.warn({ err: describeError(error) }, 'the heap could not be collected after the handoffs'));
    });
  }

  private cancelSettle(): void {
    this.settle?.cancel();
    this.settle = null;
  }

  /** The step's durable writes, before anything else of it. False if one failed: the step is dropped and `io-failed` handled next. */
  private writeDurably(event: Event, step: Step): boolean {
    try {
      for (const write of step.durable) this.write(write, step.next);
      return true;
    } catch (error) {
      if (error instanceof LostOwnershipError) {
        this.abandonRoot();
        return false;
      }
      this.log.error({ event: event.type, err: describeError(error) }, 'a durable write failed; the transition is dropped');
      this.queue.unshift({ type: 'io-failed', trigger: event, error: describeError(error) });
      return false;
    }
  }

  private write(write: DurableWrite, next: Context): void {
    if (write.kind === 'commit-current') return this.records.commitCurrent(write.version);
    this.records.persist(this.snapshot(next), null, 0);
  }

  private run(effect: Effect, next: Context): void {
    switch (effect.kind) {
      case 'spawn':
        return this.spawn(effect);
      case 'send':
        return this.send(effect.id, effect.message);
      case 'terminate':
        this.agents.get(effect.id)?.terminate();
        return;
      case 'kill-tree': {
        const agent = this.agents.get(effect.id);
        if (agent) void killAndConfirm(agent, this.log);
        return;
      }
      case 'commit-current':
        return this.commitBestEffort(effect.version);
      case 'persist':
        return this.persistBestEffort(next, effect);
      case 'quarantine':
        return this.records.addQuarantine(effect.version, effect.reason);
      case 'lift-quarantine':
        return this.records.liftQuarantine(effect.version);
      case 'record-status':
        return this.recordStatus(effect.id, effect.message);
      case 'start-timer':
        return this.startTimer(effect.timer, effect.ms);
      case 'cancel-timer':
        this.timers.get(effect.timer)?.cancel();
        this.timers.delete(effect.timer);
        return;
      case 'exit':
        void this.finish(effect.code);
        return;
      case 'report':
        return this.operator.report(effect.report);
    }
  }

  private send(id: number, message: Extract<Effect, { kind: 'send' }>['message']): void {
    const agent = this.agents.get(id);
    agent?.send(message);
    this.log.info({ agentEvent: 'sent', message, agentPid: agent?.pid, version: agent?.spec.version }, `sent ${message.type}`);
    this.operator.step(`sent ${message.type} to ${agent?.spec.version} (pid ${agent?.pid})`);
  }

  private startTimer(name: TimerName, ms: number): void {
    this.timers.get(name)?.cancel();
    this.timers.set(
      name,
      this.env.setTimer(ms, () => {
        this.timers.delete(name);
        this.dispatch({ type: 'timeout', timer: name });
      }),
    );
  }

  /** A `current` the step does not depend on: if it cannot be written, start-up repairs it from the state file. */
  private commitBestEffort(version: string): void {
    try {
      this.records.commitCurrent(version);
    } catch (error) {
      if (error instanceof LostOwnershipError) throw error;
      this.log.error({ version, err: describeError(error) }, `current could not be pointed at ${version}`);
    }
  }

  /** A state write the step does not depend on: a failure is the machine's to handle (`record-failed`), not the step's. */
  private persistBestEffort(next: Context, effect: Extract<Effect, { kind: 'persist' }>): void {
    const { outcome } = effect;
    const duration = outcome ? (this.handoffStartedMono ? performance.now() - this.handoffStartedMono : Date.now() - Date.parse(outcome.startedAt)) : 0;
    try {
      this.records.persist(this.snapshot(next), outcome, duration);
    } catch (error) {
      if (error instanceof LostOwnershipError) throw error;
      this.log.error({ err: describeError(error), unrecorded: this.records.unrecordedCount }, 'the state could not be written; it is kept and written again');
      this.dispatch({ type: 'record-failed', outcome, error: describeError(error) });
      return;
    }
    if (outcome) this.dispatch({ type: 'recorded', outcome });
  }

  private recordStatus(id: number, message: string): void {
    const agent = this.agents.get(id);
    if (!agent) return;
    this.records.recordStatus({ version: agent.spec.version, pid: agent.pid ?? null, message: message.slice(0, MAX_STATUS_CHARS), at: new Date().toISOString() });
  }

  private logTransition(previous: Context, event: Event, step: Step): void {
    const next = step.next;
    // What the agent repeated is reported now: the upgrader may exit before its stdout's end is read.
    const exited = event.type === 'exited' ? this.agents.get(event.id) : undefined;
    if (exited) this.repeats.get(exited)?.end();
    if (event.type === 'status') return;
    const agent = (ref: { id: number; version: string } | null) => (ref ? { version: ref.version, agentPid: this.agents.get(ref.id)?.pid ?? null } : null);
    const detail: Record<string, unknown> = { ...event };
    delete detail.type;
    if (event.type === 'io-failed') detail.trigger = event.trigger.type;
    this.log.info(
      {
        event: event.type,
        detail,
        from: previous.state,
        to: next.state,
        ignored: step.ignored,
        active: agent(next.active),
        candidate: agent(next.candidate),
        handoff: next.handoff ? { from: next.handoff.from, to: next.handoff.to, mode: next.handoff.mode } : null,
      },
      `transition ${previous.state} -> ${next.state} on ${event.type}`,
    );
    if (previous.state !== next.state) this.operator.step(`${previous.state} -> ${next.state} (${event.type})`);
  }

  // ---------------------------------------------------------------- agents

  private spawn(effect: Extract<Effect, { kind: 'spawn' }>): void {
    const spec: AgentSpec = {
      id: effect.id,
      root: this.layout.root,
      version: effect.version,
      versionDir: this.layout.versionDir(effect.version),
      entryPath: this.layout.entryPath(effect.version),
      role: effect.role,
      fromVersion: effect.fromVersion,
    };
    let agent: AgentHandle;
    try {
      agent = this.env.startAgent(spec, {
        onLine: (line) => this.onAgentLine(agent, line),
        onExit: (code, signal, error) => this.onAgentExit(agent, code, signal, error),
      });
    } catch (error) {
      // Out of descriptors or processes: spawn throws before any process exists. Report it as an exit.
      this.log.error({ version: effect.version, role: effect.role, err: describeError(error) }, `could not start ${effect.role} ${effect.version}`);
      this.dispatch({ type: 'exited', id: effect.id, code: 127, signal: null, error: describeError(error), errorCode: (error as NodeJS.ErrnoException).code });
      return;
    }
    this.agents.set(effect.id, agent);
    this.log.info({ agentEvent: 'spawned', agentPid: agent.pid, version: effect.version, role: effect.role }, `spawned ${effect.role} ${effect.version}`);
    this.operator.step(`started ${effect.version} as the ${effect.role} (pid ${agent.pid})`);
    // An agent that does not speak readiness counts as ready once spawned; candidates always must say so.
    if (this.readyOnSpawn && effect.role === 'active') this.dispatch({ type: 'ready', id: effect.id });
  }

  /**
   * A line from an agent, handled and logged. A line that changes nothing is logged in full only the
   * first time of its kind in a window, else counted for a summary (log-repeats.ts): what an agent
   * sends cannot multiply into the log.
   */
  private onAgentLine(agent: AgentHandle, line: AgentLineEvent): void {
    let repeats = this.repeats.get(agent);
    if (!repeats) this.repeats.set(agent, (repeats = new AgentRepeats(agent, this.log)));
    if (line.kind === 'end') return repeats.end();
    if (line.kind === 'message' && line.message.type === 'status') return this.dispatch({ type: 'status', id: agent.spec.id, message: line.message.message });
    if (line.kind !== 'message' && line.kind !== 'invalid') {
      // Ignored whatever the state: only the first of its kind in a window is even made into a log line.
      if (repeats.isFirst(line)) this.handleAgentLine(agent, line);
      return;
    }
    const before = this.ctx;
    const logged = holdLogLines(() => this.handleAgentLine(agent, line));
    if (this.ctx !== before || repeats.isFirst(line)) writeLogLines(logged);
    repeats.noteDroppedReplies();
  }

  private handleAgentLine(agent: AgentHandle, line: Exclude<AgentLineEvent, { kind: 'end' }>): void {
    const who = { agentPid: agent.pid, version: agent.spec.version };
    switch (line.kind) {
      case 'message':
        return this.onAgentMessage(agent, line.message);
      case 'invalid':
        this.log.warn({ ...who, type: line.type, detail: line.detail, line: clip(line.line), lineKind: 'invalid' }, 'protocol error: a message breaks its schema');
        return this.dispatch({ type: 'protocol-error', id: agent.spec.id, detail: `${line.type}: ${line.detail}` });
      case 'unknown':
        this.log.warn({ ...who, type: line.type, line: clip(line.line), lineKind: 'unknown' }, 'ignored a message of unknown type');
        return;
      case 'garbage':
        this.log.warn({ ...who, detail: line.detail, line: clip(line.line), lineKind: 'garbage' }, 'ignored a line that is not a protocol message');
        return;
      case 'overlong':
        this.log.error({ ...who, bytes: line.bytes, lineKind: 'overlong' }, 'discarded a line longer than the 64 KiB limit');
        return;
      case 'bad-utf8':
        this.log.warn({ ...who, bytes: line.bytes, lineKind: 'bad-utf8' }, 'ignored a line that is not valid UTF-8');
        return;
    }
  }

  private onAgentMessage(agent: AgentHandle, message: AgentMessage): void {
    const id = agent.spec.id;
    switch (message.type) {
      case 'ready':
        return this.dispatch({ type: 'ready', id });
      case 'stopped':
        return this.dispatch({ type: 'stopped', id });
      case 'upgrade':
        return this.requestUpgrade({ origin: 'agent', id, version: message.version, mode: message.mode, force: false });
      case 'status':
        return this.dispatch({ type: 'status', id, message: message.message });
    }
  }

  private requestUpgrade(request: UpgradeRequest): void {
    const active = this.ctx.active;
    // From halted, the jump is judged from the version that ran before the halt.
    const from = active && (request.origin === 'operator' || active.id === request.id) ? active.version : request.origin === 'operator' ? (this.ctx.halt?.version ?? null) : null;
    this.dispatch(vetUpgradeRequest(this.layout, request, from));
  }

  private onAgentExit(agent: AgentHandle, code: number | null, signal: NodeJS.Signals | null, error: Error | null): void {
    // Whatever the agent left in its process group goes with it: an exited agent has no work in flight.
    if (agent.pid !== undefined) signalQuietly(-agent.pid, 'SIGKILL');
    this.log.info({ agentEvent: 'exited', agentPid: agent.pid, version: agent.spec.version, code, signal, err: error ? describeError(error) : undefined }, `agent ${agent.spec.version} exited`);
    const failedToStart = error !== null && code === null && signal === null;
    const failure = failedToStart ? { error: describeError(error), errorCode: (error as NodeJS.ErrnoException).code } : {};
    this.dispatch({ type: 'exited', id: agent.spec.id, code: failedToStart ? 127 : code, signal, ...failure });
    void confirmGone(agent, this.log).then(() => this.agents.delete(agent.spec.id));
  }

  private snapshot(next: Context): Snapshot {
    const agents: RecordedAgent[] = [];
    const add = (id: number, role: RecordedAgent['role'], ready: boolean) => {
      const agent = this.agents.get(id);
      if (!agent?.identity || agent.hasExited) return;
      agents.push({ ...agent.identity, version: agent.spec.version, role, ready, since: agent.spawnedAt.toISOString() });
    };
    if (next.active) add(next.active.id, 'active', next.active.ready);
    if (next.candidate) add(next.candidate.id, 'candidate', next.candidate.ready);
    for (const retiring of next.retiring) add(retiring.id, 'retiring', false);
    const handoff = next.handoff;
    return {
      state: publicState(next),
      previous: next.previous,
      agents,
      handoff: handoff ? { from: handoff.from, to: handoff.to, mode: handoff.mode, phase: next.state, startedAt: handoff.startedAt } : null,
      probation: next.probation,
      halt: next.halt,
    };
  }

  /** Another process has taken the root: touch nothing more, take our agents down, and leave. */
  private abandonRoot(): void {
    if (this.abandoned) return;
    this.abandoned = true;
    this.queue.length = 0;
    this.log.fatal({ root: this.layout.root, lostOwnership: true }, 'this upgrader no longer owns the root (state/owner.json names another process); stopping at once');
    for (const agent of this.agents.values()) if (agent.pid !== undefined) signalQuietly(-agent.pid, 'SIGKILL');
    for (const timer of this.timers.values()) timer.cancel();
    this.timers.clear();
    this.cancelSettle();
    // The socket's path may already be the new owner's: close ours, remove nothing.
    this.operator.close(false);
    this.resolveExit(EXIT.locked);
  }

  /** Last resort (an internal error): SIGKILL to every agent's group and marked descendants, synchronously. */
  killAllNow(): void {
    for (const agent of this.agents.values()) agent.killGroupAndMarked();
  }

  private async finish(code: number): Promise<void> {
    this.operator.close();
    this.systemd.stopWatchdog();
    for (const timer of this.timers.values()) timer.cancel();
    this.timers.clear();
    this.cancelSettle();
    await Promise.all([...this.agents.values()].map((agent) => (agent.isGone() ? true : killAndConfirm(agent, this.log))));
    this.records.flush();
    this.records.release();
    this.log.info({ code }, `the upgrader exits with status ${code}`);
    this.resolveExit(code);
  }
}

function clip(line: string): string {
  return line.length > 512 ? `${line.slice(0, 512)}… (${line.length} characters)` : line;
}
