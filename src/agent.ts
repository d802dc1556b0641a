/**
 * A small library for agents written for Node.js: the agent's side of protocol v1.
 *
 *   const agent = connectAgent();
 *   await verifyMyself();
 *   agent.ready();                 // a candidate now waits for go; an active agent is simply up
 *   await agent.waitForGo();
 *   agent.onStop(async () => { await finishWork(); });   // then `stopped` is sent and the process exits
 *   const answer = await agent.requestUpgrade('1.2.0');  // { ok: false, reason, code? } if refused or failed
 */
import { encode, LineReader, parseUpgraderLine, type AgentMessage, type HandoffMode, type RefusalCode, type UpgraderMessage } from './protocol.js';

export type Role = 'active' | 'candidate';
/**
 * The upgrader's answer to requestUpgrade: `ok` once this agent is told to stop (its successor is ready), or a
 * refusal or failure with the upgrader's reason and, from upgraders that send one, a stable `code` to act on
 * (one of RefusalCode, or a newer upgrader's code, passed on as it came). Not to be confused with the
 * upgrader's record of a finished upgrade (state.ts's UpgradeResult).
 */
export type UpgradeAnswer = { ok: true } | { ok: false; reason: string; code?: RefusalCode | (string & {}) };

export type AgentOptions = {
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
  env?: NodeJS.ProcessEnv;
  /** Called when stdin ends (the upgrader is gone). Default: exit at once with status 0. */
  onEnd?: () => void;
  /** Called after `stopped` has been written. Default: exit with status 0. */
  exit?: (code: number) => void;
};

export class UpgraderAgent {
  readonly role: Role;
  readonly version: string | undefined;
  readonly root: string | undefined;
  readonly fromVersion: string | undefined;
  /** False when the process was not started by an upgrader (then it behaves as an active agent). */
  readonly supervised: boolean;
  private goReceived: boolean;
  private readonly goWaiters: (() => void)[] = [];
  private stopHandler: () => void | Promise<void> = () => undefined;
  private stopping = false;
  private pendingUpgrade: { version: string; resolve: (answer: UpgradeAnswer) => void } | null = null;
  private readonly output: NodeJS.WritableStream;
  private readonly exit: (code: number) => void;

  constructor(options: AgentOptions = {}) {
    const env = options.env ?? process.env;
    this.supervised = env.UPGRADER_PROTOCOL === '1';
    this.role = env.UPGRADER_ROLE === 'candidate' ? 'candidate' : 'active';
    this.version = env.UPGRADER_VERSION;
    this.root = env.UPGRADER_ROOT;
    this.fromVersion = env.UPGRADER_FROM_VERSION;
    this.goReceived = this.role === 'active';
    this.output = options.output ?? process.stdout;
    this.exit = options.exit ?? ((code) => process.exit(code));
    const input = options.input ?? process.stdin;
    const onEnd = options.onEnd ?? (() => this.exit(0));
    const reader = new LineReader((event) => {
      if (event.kind !== 'line') return;
      const parsed = parseUpgraderLine(event.line);
      if (parsed.kind === 'message') this.handle(parsed.message);
    });
    input.on('data', (chunk: Buffer | string) => reader.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk)));
    input.on('end', onEnd);
  }

  /** Reports readiness. A candidate sends it once it has verified itself, and then does no work until go. */
  ready(): void {
    this.send({ type: 'ready' });
  }

  /** Resolves once this agent may work: at once for an active agent, on `go` for a candidate. */
  waitForGo(): Promise<void> {
    if (this.goReceived) return Promise.resolve();
    return new Promise((resolve) => this.goWaiters.push(resolve));
  }

  get isActive(): boolean {
    return this.goReceived && !this.stopping;
  }

  /** Runs before `stopped` is sent, when the upgrader hands the work to a new version. Finish and release here. */
  onStop(handler: () => void | Promise<void>): void {
    this.stopHandler = handler;
  }

  /**
   * Asks the upgrader to hand off to `version`. Resolves `{ ok: true }` when the new version is ready and this
   * agent is told to stop (the stop handler then runs), or `{ ok: false, reason, code? }` when the upgrade is
   * refused or the candidate fails (this agent carries on). A request made while another is pending is refused
   * here, without a code.
   */
  requestUpgrade(version: string, mode: HandoffMode = 'live'): Promise<UpgradeAnswer> {
    if (this.pendingUpgrade) return Promise.resolve({ ok: false, reason: `an upgrade to ${this.pendingUpgrade.version} is already pending`, code: 'in-progress' });
    return new Promise((resolve) => {
      this.pendingUpgrade = { version, resolve };
      this.send({ type: 'upgrade', version, mode });
    });
  }

  /** Shown by `upgrader status` as the agent's latest message. */
  status(message: string): void {
    this.send({ type: 'status', message });
  }

  private send(message: AgentMessage): void {
    this.output.write(encode(message));
  }

  private settleUpgrade(answer: UpgradeAnswer): void {
    const pending = this.pendingUpgrade;
    this.pendingUpgrade = null;
    pending?.resolve(answer);
  }

  private handle(message: UpgraderMessage): void {
    switch (message.type) {
      case 'go':
        this.goReceived = true;
        for (const resolve of this.goWaiters.splice(0)) resolve();
        return;
      case 'upgrade-failed':
        if (this.pendingUpgrade?.version !== message.version) return;
        this.settleUpgrade(message.code === undefined ? { ok: false, reason: message.reason } : { ok: false, reason: message.reason, code: message.code });
        return;
      case 'stop':
        if (this.stopping) return;
        this.stopping = true;
        this.settleUpgrade({ ok: true });
        void Promise.resolve()
          .then(this.stopHandler)
          .catch((error: unknown) => process.stderr.write(`stop handler failed: ${String(error)}\n`))
          .then(() => this.output.write(encode({ type: 'stopped' }), () => this.exit(0)));
        return;
    }
  }
}

export function connectAgent(options?: AgentOptions): UpgraderAgent {
  return new UpgraderAgent(options);
}

export { PROTOCOL_VERSION } from './protocol.js';
export type { AgentMessage, UpgraderMessage, HandoffMode, RefusalCode } from './protocol.js';
