/**
 * One worker process of `npm run bench -- --fleet` (bench/fleet.ts starts a few): many simulated hosts,
 * each a real Follower (src/fleet/follower.ts) with a stand-in LocalUpgrader that "upgrades" after a fixed
 * delay, all sharing this process's one etcd client. It reports to its parent over the IPC channel only
 * (never through etcd, so that the etcd figures are the followers' own) and exits when the parent says
 * so or goes away.
 *
 * Environment: FLEET_ETCD (endpoint), FLEET_PREFIX (the fleet's key prefix), FLEET_HOSTS (host:group,...),
 * FLEET_LEASE_S, FLEET_UPGRADE_MS, FLEET_FROM (the version every host runs at start).
 */
import pino from 'pino';
import { Follower } from '../src/fleet/follower.js';
import { closeEtcd, connectEtcd, DEFAULT_CALL_TIMEOUT_MS, etcdUnreachable } from '../src/fleet/etcd.js';
import type { LocalUpgrader, LocalView, Progress, UpgradeOutcome, UpgradePhase } from '../src/fleet/local.js';
import type { Release } from '../src/fleet/schema.js';
import { FleetStore } from '../src/fleet/store.js';

export type WorkerEvent = { host: string; what: 'stage' | 'upgrade-start' | 'upgrade-end'; at: number; version: string };
export type WorkerReport = { type: 'report'; events: WorkerEvent[]; logCounts: Record<string, number>; warnings: string[] };
export type WorkerMessage = { type: 'started'; hosts: number } | WorkerReport | { type: 'stopped' };

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`fleet worker: ${name} is not set`);
  return value;
};
const UPGRADE_MS = Number(env('FLEET_UPGRADE_MS'));
const events: WorkerEvent[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The local upgrader, stood in for: stage() returns at once (the release is "installed"), upgrade() takes
 * UPGRADE_MS in all, half of it as the handoff and half as the probation, and always passes.
 */
class StandIn implements LocalUpgrader {
  readonly root: string;
  private running: string;
  private previous: string | null = null;
  private busy = false;
  private readonly installedVersions: Set<string>;
  private lastUpgrade: LocalView['lastUpgrade'] = null;

  constructor(
    private readonly host: string,
    from: string,
  ) {
    this.root = `/srv/${host}`;
    this.running = from;
    this.installedVersions = new Set([from]);
  }

  view(): LocalView {
    return { upgrader: this.busy ? 'upgrading' : 'running', running: this.running, current: this.running, previous: this.previous, busy: this.busy, haltedBy: null, lastUpgrade: this.lastUpgrade };
  }

  installed(version: string): boolean {
    return this.installedVersions.has(version);
  }

  async stage(release: Release, _onProgress: (p: Progress) => void, _signal: AbortSignal): Promise<void> {
    events.push({ host: this.host, what: 'stage', at: Date.now(), version: release.version });
    this.installedVersions.add(release.version);
  }

  /** The bench runs rolling rollouts only: a halt or a resume is never asked for. */
  async halt(): Promise<UpgradeOutcome> {
    return { ok: false, reason: 'the bench stand-in does not halt', code: null, transient: false };
  }

  async resume(): Promise<UpgradeOutcome> {
    return { ok: false, reason: 'the bench stand-in does not resume', code: null, transient: false };
  }

  async upgrade(version: string, onPhase: (phase: UpgradePhase) => void): Promise<UpgradeOutcome> {
    events.push({ host: this.host, what: 'upgrade-start', at: Date.now(), version });
    this.busy = true;
    onPhase('upgrading');
    await sleep(UPGRADE_MS / 2);
    const from = this.running;
    this.previous = from;
    this.running = version;
    onPhase('watching');
    await sleep(UPGRADE_MS / 2);
    this.busy = false;
    this.lastUpgrade = { from, to: version, result: 'succeeded', reason: null, code: null, at: new Date().toISOString() };
    events.push({ host: this.host, what: 'upgrade-end', at: Date.now(), version });
    return { ok: true };
  }

  async settle(signal: AbortSignal): Promise<void> {
    while (this.busy && !signal.aborted) await sleep(20);
  }
}

/** Counts the followers' log lines by message; keeps the first few warnings and errors to show. */
const logCounts: Record<string, number> = {};
const warnings: string[] = [];
const log = pino(
  { level: 'info', base: null, timestamp: false, formatters: { level: (label) => ({ level: label }) } },
  {
    write(line: string): void {
      const entry = JSON.parse(line) as { level: string; msg: string };
      logCounts[`${entry.level}: ${entry.msg}`] = (logCounts[`${entry.level}: ${entry.msg}`] ?? 0) + 1;
      if ((entry.level === 'warn' || entry.level === 'error') && warnings.length < 10) warnings.push(line.trim());
    },
  },
);

async function main(): Promise<void> {
  const client = await connectEtcd({ endpoints: [env('FLEET_ETCD')], callTimeoutMs: DEFAULT_CALL_TIMEOUT_MS });
  // FleetStore holds only the client and its namespace: one per host, all on this process's one client.
  const followers = env('FLEET_HOSTS')
    .split(',')
    .map((entry) => {
      const [host, group] = entry.split(':') as [string, string];
      return new Follower({
        store: new FleetStore(client, env('FLEET_PREFIX')),
        host,
        group,
        local: new StandIn(host, env('FLEET_FROM')),
        log,
        handoffTimeoutMs: 60_000,
        leaseSeconds: Number(env('FLEET_LEASE_S')),
        retryMs: { min: 250, max: 10_000 },
        unreachable: etcdUnreachable,
      });
    });
  const running = followers.map((f) => f.run());
  const send = (message: WorkerMessage) => process.send?.(message);
  send({ type: 'started', hosts: followers.length });

  const stop = async () => {
    await Promise.all(followers.map((f) => f.stop()));
    // Revoking a lease waits on etcd: bounded, then the process goes anyway.
    await Promise.race([Promise.all(running), sleep(10_000)]);
    await closeEtcd(client);
    send({ type: 'stopped' });
    process.exit(0);
  };
  process.on('message', (message: { type: string }) => {
    if (message.type === 'report') send({ type: 'report', events: events.splice(0), logCounts, warnings });
    if (message.type === 'stop') void stop();
  });
  // The parent died or closed the channel: nothing else will stop this process.
  process.on('disconnect', () => process.exit(0));
}

main().catch((error: unknown) => {
  process.stderr.write(`fleet worker: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
