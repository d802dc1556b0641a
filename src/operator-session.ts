/**
 * The operator session: what `upgrader upgrade` and `rollback` talk to (over control.ts's socket). One
 * operator at a time; the session turns a request into an upgrade request for the machine, and the
 * machine's reports into replies, for as long as the operator asked to wait: the handoff accepted, done,
 * or done and past its probation.
 */
import { ControlServer, type ControlRequest, type Replier, type WaitUntil } from './control.js';
import type { Report } from './handoff.js';
import type { Logger } from './log.js';
import type { UpgradeRequest } from './upgrade-request.js';

type Waiting =
  | { kind: 'handoff'; replier: Replier; version: string; until: WaitUntil; phase: 'handoff' | 'probation' }
  | { kind: 'halt' | 'resume'; replier: Replier };

export type SessionHost = {
  /** The version a rollback returns to, or null. */
  previousVersion(): string | null;
  requestUpgrade(request: UpgradeRequest): void;
  requestHalt(by: string): void;
  requestResume(): void;
};

export class OperatorSession {
  private server: ControlServer | null = null;
  private waiting: Waiting | null = null;

  constructor(
    private readonly stateDir: string,
    private readonly host: SessionHost,
    private readonly log: Logger,
  ) {}

  async open(): Promise<void> {
    const server = new ControlServer(this.stateDir, (request, replier) => this.onRequest(request, replier));
    const problem = await server.listen();
    if (problem) this.log.warn({ problem }, 'the operator channel is off: upgrader upgrade and rollback cannot reach this upgrader');
    else this.server = server;
  }

  /** `unlink`: false when the socket's path may already be another upgrader's. */
  close(unlink = true): void {
    this.server?.close(unlink);
    this.server = null;
  }

  /** A line of progress for the operator who waits, if any. */
  step(text: string): void {
    this.waiting?.replier.send({ type: 'step', text });
  }

  report(report: Report): void {
    const waiting = this.waiting;
    if (!waiting) return;
    if (waiting.kind !== 'handoff') return this.haltReport(waiting.kind, report);
    if (!('version' in report) || report.version !== waiting.version) return;
    const isProbationReport = report.type === 'probation-passed' || report.type === 'probation-failed';
    if (isProbationReport !== (waiting.phase === 'probation')) return;
    switch (report.type) {
      case 'accepted':
        waiting.replier.send({ type: 'accepted', version: report.version });
        if (waiting.until === 'accepted') this.end();
        return;
      case 'succeeded':
        waiting.replier.send({ type: 'succeeded', version: report.version, probation: report.probation });
        if (waiting.until === 'probation' && report.probation) waiting.phase = 'probation';
        else if (waiting.until === 'probation') this.finish({ type: 'passed', version: report.version });
        else this.end();
        return;
      case 'probation-passed':
        return this.finish({ type: 'passed', version: report.version });
      case 'failed':
      case 'probation-failed':
        return this.finish({ type: 'failed', version: report.version, reason: report.reason, code: report.code });
    }
  }

  /** The one report a halt or a resume waits for: done, or refused. */
  private haltReport(kind: 'halt' | 'resume', report: Report): void {
    if (kind === 'halt' && report.type === 'halted') return this.finish({ type: 'halted', version: report.version, since: report.since });
    if (kind === 'resume' && report.type === 'resumed') return this.finish({ type: 'resumed', version: report.version });
    if (report.type === 'refused' && report.request === kind) return this.finish({ type: 'failed', version: null, reason: report.reason, code: report.code });
  }

  private onRequest(request: ControlRequest, replier: Replier): void {
    const refuse = (reason: string, code: 'busy' | 'no-previous'): void => {
      replier.send({ type: 'failed', version: null, reason, code });
      replier.end();
    };
    if (this.waiting) return refuse(`another operator is waiting for ${describeWait(this.waiting)} to end`, 'busy');
    if (request.type === 'halt' || request.type === 'resume') return this.haltOrResume(request, replier);
    const version = request.type === 'rollback' ? this.host.previousVersion() : request.version;
    if (!version) return refuse('no previous version is recorded: there is nothing to roll back to', 'no-previous');
    const until: WaitUntil = request.until ?? (request.wait ? 'succeeded' : 'accepted');
    const waiting: Waiting = { kind: 'handoff', replier, version, until, phase: 'handoff' };
    this.waiting = waiting;
    replier.onClose(() => {
      if (this.waiting === waiting) this.waiting = null;
    });
    this.log.info({ request, version }, `operator asks for ${request.type === 'rollback' ? `a rollback to ${version}` : `an upgrade to ${version}`}`);
    this.host.requestUpgrade({ origin: 'operator', id: 0, version, mode: 'live', force: request.force });
  }

  private haltOrResume(request: Extract<ControlRequest, { type: 'halt' | 'resume' }>, replier: Replier): void {
    const waiting: Waiting = { kind: request.type, replier };
    this.waiting = waiting;
    replier.onClose(() => {
      if (this.waiting === waiting) this.waiting = null;
    });
    this.log.info({ request }, request.type === 'halt' ? `operator ${request.by} asks for a halt` : 'operator asks to resume');
    if (request.type === 'halt') this.host.requestHalt(request.by);
    else this.host.requestResume();
  }

  private finish(reply: Parameters<Replier['send']>[0]): void {
    this.waiting?.replier.send(reply);
    this.end();
  }

  private end(): void {
    this.waiting?.replier.end();
    this.waiting = null;
  }
}

function describeWait(waiting: Waiting): string {
  if (waiting.kind !== 'handoff') return `a ${waiting.kind}`;
  return waiting.phase === 'probation' ? `the probation of ${waiting.version}` : `the handoff to ${waiting.version}`;
}
