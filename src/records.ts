/**
 * Every durable write of a running upgrader, in one place, each behind the ownership check: the state
 * file (with the upgrade history), `current`, quarantine marks and the agent's status line. A process
 * that no longer owns the root (state/owner.json names another) writes nothing: LostOwnershipError.
 */
import { describeError } from './errors.js';
import type { Outcome } from './handoff.js';
import type { Layout } from './layout.js';
import type { Logger } from './log.js';
import type { Ownership } from './ownership.js';
import { Quarantine } from './quarantine.js';
import { AgentStatusFile, type AgentStatus } from './agent-status.js';
import { withUpgrade, type PersistedState, type Repair, type StateFile, type UpgradeRecord } from './state.js';

export class LostOwnershipError extends Error {}

/** The state file's contents except what Records keeps itself (current, history, repair, the time). */
export type Snapshot = Omit<PersistedState, 'current' | 'history' | 'repair' | 'updatedAt'>;

export type Recovered = { history: UpgradeRecord[]; current: string | null; repair: Repair | null };

export class Records {
  /** The upgrades recorded durably in the state file, newest first: what `status`, STATUS= and the log call done. */
  history: UpgradeRecord[];
  /** Outcomes whose write failed: added to the next state written. */
  private readonly unrecorded: UpgradeRecord[] = [];
  private readonly repair: Repair | null;
  private current: string | null;
  private readonly quarantine: Quarantine;
  private readonly agentStatus: AgentStatusFile;

  constructor(
    private readonly layout: Layout,
    private readonly stateFile: StateFile,
    private readonly ownership: Ownership,
    private readonly log: Logger,
    recovered: Recovered,
  ) {
    ({ history: this.history, current: this.current, repair: this.repair } = recovered);
    this.quarantine = new Quarantine(layout.stateDir);
    this.agentStatus = new AgentStatusFile(layout.stateDir, () => this.ownership.confirm());
  }

  commitCurrent(version: string): void {
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
   * Writes the state, with the outcome (if any) and every outcome a failed write left unrecorded.
   * `history` changes only once the write succeeded. `durationMs`: how long the upgrade took.
   */
  persist(snapshot: Snapshot, outcome: Outcome | null, durationMs: number): void {
    this.assertOwnership();
    if (outcome) {
      const { origin: _origin, ...record } = outcome;
      this.unrecorded.push({ ...record, at: new Date().toISOString(), durationMs: Math.max(0, Math.round(durationMs)) });
    }
    const history = this.unrecorded.reduce(withUpgrade, this.history);
    this.stateFile.write({ ...snapshot, current: this.current, history, repair: this.repair, updatedAt: new Date().toISOString() });
    this.history = history;
    for (const record of this.unrecorded.splice(0)) {
      const memory = process.memoryUsage();
      this.log.info({ ...record, rss: memory.rss, heapUsed: memory.heapUsed }, `upgrade ${record.from} -> ${record.to} ${record.result}`);
    }
  }

  get unrecordedCount(): number {
    return this.unrecorded.length;
  }

  /** A version that failed is marked, so that agents cannot loop on it. Best effort: a failure is logged. */
  addQuarantine(version: string, reason: string): void {
    this.assertOwnership();
    try {
      this.quarantine.add(version, reason);
      this.log.warn({ version, reason, quarantined: true }, `quarantined ${version}: agents' requests for it are refused until it is re-installed`);
    } catch (error) {
      this.log.error({ version, err: describeError(error) }, `could not quarantine ${version}`);
    }
  }

  liftQuarantine(version: string): void {
    this.assertOwnership();
    try {
      if (this.quarantine.lift(version)) this.log.info({ version, quarantined: false }, `lifted the quarantine of ${version} (--force)`);
    } catch (error) {
      this.log.error({ version, err: describeError(error) }, `could not lift the quarantine of ${version}`);
    }
  }

  recordStatus(status: AgentStatus): void {
    this.assertOwnership();
    this.agentStatus.record(status);
  }

  flush(): void {
    this.agentStatus.flush();
  }

  /** Gives the root up (the upgrader exits). */
  release(): void {
    this.ownership.release();
  }

  private assertOwnership(): void {
    if (!this.ownership.confirm()) throw new LostOwnershipError();
  }
}
