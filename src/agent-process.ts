/**
 * One agent process: spawned in its own process group, spoken to over stdin/stdout, killed with its
 * whole tree. What the upgrader holds for an agent is bounded whatever the agent does: its stdout is read
 * through the bounded LineReader; what waits for it to read its stdin is bounded by send(); its stderr
 * is passed on to the upgrader's stderr line by line (see StderrForwarder), so that an agent's long
 * lines never cut into the upgrader's own log lines, through the upgrader's bounded stderr queue.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import treeKill from 'tree-kill';
import { writeStderr } from './stderr.js';
import { LineReader, encode, MAX_LINE_BYTES, parseAgentLine, PROTOCOL_VERSION, type AgentMessage, type Parsed, type UpgraderMessage } from './protocol.js';
import { findLiveProcesses, identify, type ProcessIdentity } from './proc.js';

export type AgentSpec = {
  id: number;
  root: string;
  version: string;
  versionDir: string;
  entryPath: string;
  role: 'active' | 'candidate';
  fromVersion: string | null;
};

/**
 * Unread bytes queued for an agent past which it is sent no more `upgrade-failed` replies. `stop` and
 * `go` are each sent at most once per agent, so they are always queued.
 */
export const MAX_UNREAD_BYTES = 64 * 1024;

/** What comes out of an agent's stdout: a line (parsed, or why not), or its end. */
export type AgentLineEvent = Parsed<AgentMessage> | { kind: 'overlong'; bytes: number } | { kind: 'bad-utf8'; bytes: number } | { kind: 'end' };

export type AgentCallbacks = {
  onLine: (event: AgentLineEvent) => void;
  onExit: (code: number | null, signal: NodeJS.Signals | null, error: Error | null) => void;
};

/** Environment variables that mark every process of an agent; inherited by its descendants. */
export function agentMarker(root: string, id: number): string[] {
  return [`UPGRADER_ROOT=${root}`, `UPGRADER_AGENT_ID=${process.pid}.${id}`];
}

/** What the supervisor holds of an agent: an AgentProcess, or a stand-in in unit tests. */
export interface AgentHandle {
  readonly spec: AgentSpec;
  readonly pid: number | undefined;
  readonly identity: ProcessIdentity | null;
  readonly spawnedAt: Date;
  readonly hasExited: boolean;
  send(message: UpgraderMessage): void;
  takeDroppedReplies(): number;
  terminate(): void;
  killTree(): Promise<void>;
  killGroupAndMarked(): void;
  isGone(): boolean;
}

export class AgentProcess implements AgentHandle {
  readonly pid: number | undefined;
  readonly identity: ProcessIdentity | null;
  readonly spawnedAt = new Date();
  private exited = false;
  private droppedReplies = 0;
  private readonly child: ChildProcess;

  constructor(
    readonly spec: AgentSpec,
    callbacks: AgentCallbacks,
  ) {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      UPGRADER_PROTOCOL: String(PROTOCOL_VERSION),
      UPGRADER_ROOT: spec.root,
      UPGRADER_VERSION: spec.version,
      UPGRADER_ROLE: spec.role,
      UPGRADER_AGENT_ID: `${process.pid}.${spec.id}`,
    };
    delete env.UPGRADER_FROM_VERSION;
    // systemd's notification socket belongs to the upgrader alone.
    delete env.NOTIFY_SOCKET;
    delete env.WATCHDOG_USEC;
    delete env.WATCHDOG_PID;
    if (spec.fromVersion) env.UPGRADER_FROM_VERSION = spec.fromVersion;

    this.child = spawn(spec.entryPath, [], {
      cwd: spec.versionDir,
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true, // its own session and process group, so the group can be signalled as a whole
    });
    this.pid = this.child.pid;
    this.identity = this.pid ? identify(this.pid) : null;

    // When spawn fails (no pipes or no process: EMFILE, EAGAIN, ENOENT), there are no streams, and the
    // failure arrives as an 'error' event, reported below as the agent's exit.
    const reader = new LineReader((event) => callbacks.onLine(event.kind === 'line' ? parseAgentLine(event.line) : event));
    this.child.stdout?.on('data', (chunk: Buffer) => reader.push(chunk));
    this.child.stdout?.on('end', () => {
      reader.end();
      callbacks.onLine({ kind: 'end' });
    });
    const stderr = new StderrForwarder();
    this.child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
    this.child.stderr?.on('end', () => stderr.end());
    // Writes to an agent that has gone fail with EPIPE; its exit is reported separately.
    this.child.stdin?.on('error', () => undefined);

    let spawnError: Error | null = null;
    this.child.on('error', (error) => {
      spawnError = error;
      if (this.pid === undefined) this.finish(callbacks, null, null, error);
    });
    this.child.on('exit', (code, signal) => this.finish(callbacks, code, signal, spawnError));
  }

  private finish(callbacks: AgentCallbacks, code: number | null, signal: NodeJS.Signals | null, error: Error | null): void {
    if (this.exited) return;
    this.exited = true;
    callbacks.onExit(code, signal, error);
  }

  get hasExited(): boolean {
    return this.exited;
  }

  /** Queues a message for the agent; an `upgrade-failed` reply to an agent that does not read its stdin is dropped, and counted. */
  send(message: UpgraderMessage): void {
    const stdin = this.child.stdin;
    if (this.exited || !stdin?.writable) return;
    if (message.type === 'upgrade-failed' && stdin.writableLength > MAX_UNREAD_BYTES) {
      this.droppedReplies++;
      return;
    }
    stdin.write(encode(message));
  }

  /** How many replies were dropped since the last call. */
  takeDroppedReplies(): number {
    const dropped = this.droppedReplies;
    this.droppedReplies = 0;
    return dropped;
  }

  /** SIGTERM to the whole group, with SIGCONT so that a stopped process can act on it. */
  terminate(): void {
    this.signalGroup('SIGTERM');
    this.signalGroup('SIGCONT');
  }

  /**
   * SIGKILL to the group, to every descendant still linked to the agent (tree-kill), and to every
   * process that carries this agent's marker in its environment (descendants that escaped with setsid).
   */
  killTree(): Promise<void> {
    this.killGroupAndMarked();
    return new Promise((resolve) => {
      if (this.pid === undefined) return resolve();
      treeKill(this.pid, 'SIGKILL', () => resolve());
    });
  }

  /** SIGKILL to the group and to every marked descendant: what is still reachable once the agent itself has exited. */
  killGroupAndMarked(): void {
    this.signalGroup('SIGKILL');
    for (const pid of this.leftovers()) signalQuietly(pid, 'SIGKILL');
  }

  /** True once the agent, its group and every marked descendant are gone. */
  isGone(): boolean {
    return this.pid === undefined || (this.exited && this.leftovers().length === 0);
  }

  /** Ends the agent's stdin, as an upgrader that died would (`upgrader check`: an agent must then exit). */
  closeInput(): void {
    this.child.stdin?.end();
  }

  /** The live processes of its group and those carrying its marker: what would outlive it. */
  leftovers(): number[] {
    if (this.pid === undefined) return [];
    return findLiveProcesses({ processGroup: this.pid, environment: agentMarker(this.spec.root, this.spec.id) });
  }

  private signalGroup(signal: NodeJS.Signals): void {
    if (this.pid !== undefined) signalQuietly(-this.pid, signal);
  }
}

export function signalQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone, or never ours.
  }
}

/**
 * Passes an agent's stderr on, whole lines at a time. A line longer than the protocol's line limit is
 * passed on in pieces of that size, each ending with a newline, so memory stays bounded.
 */
export class StderrForwarder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** The line was just cut at the limit: its own newline, if it comes next, adds no empty line. */
  private justCut = false;

  constructor(
    private readonly write: (data: Buffer) => void = writeStderr,
    private readonly maxBytes = MAX_LINE_BYTES,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (let newline = chunk.indexOf(0x0a); newline !== -1; newline = chunk.indexOf(0x0a, start)) {
      this.append(chunk.subarray(start, newline));
      if (!(this.justCut && this.pendingBytes === 0)) this.emit();
      this.justCut = false;
      start = newline + 1;
    }
    this.append(chunk.subarray(start));
  }

  end(): void {
    if (this.pendingBytes > 0) this.emit();
  }

  private append(part: Buffer): void {
    while (part.length > 0) {
      const piece = part.subarray(0, this.maxBytes - this.pendingBytes);
      this.pending.push(Buffer.from(piece));
      this.pendingBytes += piece.length;
      this.justCut = false;
      part = part.subarray(piece.length);
      if (this.pendingBytes === this.maxBytes) {
        this.emit();
        this.justCut = true;
      }
    }
  }

  private emit(): void {
    this.pending.push(Buffer.from('\n'));
    this.write(Buffer.concat(this.pending));
    this.pending = [];
    this.pendingBytes = 0;
  }
}
