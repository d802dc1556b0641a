/**
 * `npm run bench -- --fleet`: the fleet layer at scale. One real etcd (single member, loopback, a temporary
 * data directory), N simulated hosts in a few worker processes (bench/fleet-worker.ts: each host a real
 * Follower with a stand-in local upgrader that upgrades in UPGRADE_MS, probation included; one etcd client
 * per worker), one release and one rollout through the real code (beginRollout), measured from etcd's own
 * /metrics, the run records and the workers' clocks:
 *
 *   - rollout overhead per wave beyond the hosts' own upgrade time (target < 1 s at 1,000 hosts);
 *   - etcd requests and bytes per host for the whole rollout, and per minute at idle before and after it
 *     (target: idle independent of fleet activity, O(1) per host per lease interval);
 *   - time from publish and from rollout to the first host reacting (target < 1 s, watch-driven).
 *
 *   npm run bench -- --fleet           DEFAULT_HOSTS hosts in 4 workers (below); writes docs/bench/fleet.{json,md} and
 *                                      the README's "Fleet at scale" block
 *   npm run bench -- --fleet --smoke   50 hosts in 2 workers, short idle windows; writes bench/out/
 *   --hosts N --workers W --batch B --idle SECONDS   override the defaults
 *
 * Every process it starts (etcd, workers) and every temporary directory is removed at the end, also on
 * failure or SIGINT/SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { freePort } from '../examples/free-port.js';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Etcd3, Watcher } from 'etcd3';
import { closeEtcd, connectEtcd, DEFAULT_CALL_TIMEOUT_MS } from '../src/fleet/etcd.js';
import { beginRollout, runsOf } from '../src/fleet/rollout.js';
import { ENDED, fleetPrefix, HostRecord, KEYS, Rollout as RolloutSchema, SCHEMA, serialize, type Release, type Plan, type Rollout } from '../src/fleet/schema.js';
import { FleetStore, parsed } from '../src/fleet/store.js';
import type { WorkerEvent, WorkerMessage, WorkerReport } from './fleet-worker.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const WORKER = join(REPO, 'bench/fleet-worker.ts');

type Config = {
  smoke: boolean;
  hosts: number;
  workers: number;
  canaryGroup: number;
  canaries: number;
  batch: number;
  upgradeMs: number;
  leaseSeconds: number;
  idleSeconds: number;
  settleSeconds: number;
};

/**
 * The full run's default fleet: the issue's 1,000 hosts, waves of 50. It needs the machine to itself: on
 * this project's 2-core machine with a load average of 13 to 60 from other work, the same run stalled
 * (etcd calls over the client's 10.5 s budget, presence leases lapsing, hosts re-opening sessions).
 */
const DEFAULT_HOSTS = 1000;
const DEFAULT_BATCH = 50;

function config(argv: string[]): Config {
  const smoke = argv.includes('--smoke');
  const option = (name: string, fallback: number) => {
    const i = argv.indexOf(`--${name}`);
    if (i === -1) return fallback;
    const value = Number(argv[i + 1]);
    if (!Number.isInteger(value) || value < 1) throw new Error(`bench: --${name} takes a whole number, not ${JSON.stringify(argv[i + 1])}`);
    return value;
  };
  const hosts = option('hosts', smoke ? 50 : DEFAULT_HOSTS);
  return {
    smoke,
    hosts,
    workers: option('workers', smoke ? 2 : 4),
    canaryGroup: Math.max(1, Math.round(hosts / 100)),
    canaries: 1,
    batch: option('batch', smoke ? 10 : DEFAULT_BATCH),
    upgradeMs: 200,
    leaseSeconds: 10,
    idleSeconds: option('idle', smoke ? 10 : 60),
    settleSeconds: smoke ? 3 : 5,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- processes and cleanup

const children = new Set<ChildProcess>();
const scratch: string[] = [];

/** Synchronous, so that it also runs from process.on('exit'). */
function cleanUpNow(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGKILL');
      } catch {
        // gone already
      }
    }
  }
  children.clear();
  for (const dir of scratch.splice(0)) rmSync(dir, { recursive: true, force: true });
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

type Etcd = { endpoint: string; metricsUrl: string; child: ChildProcess; log: string };

/** One etcd member on loopback, ports the kernel picked, data under `base`; resolves once /health says so. */
async function startEtcd(base: string): Promise<Etcd> {
  for (let attempt = 1; ; attempt++) {
    const [client, peer, metrics] = await Promise.all([freePort(), freePort(), freePort()]);
    if (new Set([client, peer, metrics]).size !== 3) continue;
    const log = join(base, `etcd-${attempt}.log`);
    const child = track(
      spawn(
        '/usr/bin/etcd',
        [
          '--name', 'bench', '--data-dir', join(base, `data-${attempt}`),
          '--listen-client-urls', `http://127.0.0.1:${client}`, '--advertise-client-urls', `http://127.0.0.1:${client}`,
          '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
          '--initial-cluster', `bench=http://127.0.0.1:${peer}`, '--initial-cluster-state', 'new',
          '--listen-metrics-urls', `http://127.0.0.1:${metrics}`,
          '--logger', 'zap', '--log-outputs', log,
        ],
        { stdio: 'ignore' },
      ),
    );
    const metricsUrl = `http://127.0.0.1:${metrics}`;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      try {
        const body = (await (await fetch(`${metricsUrl}/health`, { signal: AbortSignal.timeout(1_000) })).json()) as { health?: string };
        if (body.health === 'true') return { endpoint: `http://127.0.0.1:${client}`, metricsUrl, child, log };
      } catch {
        // not up yet
      }
      await sleep(50);
    }
    child.kill('SIGKILL');
    const tail = (() => {
      try {
        return readFileSync(log, 'utf8').split('\n').slice(-10).join('\n');
      } catch {
        return '(no log)';
      }
    })();
    if (!/address already in use/.test(tail) || attempt >= 3) throw new Error(`bench: etcd did not start:\n${tail}`);
  }
}

// ---------------------------------------------------------------- etcd's own counters

type Counters = { msgsIn: number; msgsOut: number; unary: number; bytesIn: number; bytesOut: number; byMethod: Record<string, number>; at: number };

async function scrape(etcd: Etcd): Promise<Counters> {
  const text = await (await fetch(`${etcd.metricsUrl}/metrics`)).text();
  const c: Counters = { msgsIn: 0, msgsOut: 0, unary: 0, bytesIn: 0, bytesOut: 0, byMethod: {}, at: Date.now() };
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const space = line.lastIndexOf(' ');
    const name = line.slice(0, line.indexOf('{') === -1 ? space : line.indexOf('{'));
    const value = Number(line.slice(space + 1));
    const method = /grpc_method="([^"]+)"/.exec(line)?.[1];
    if (name === 'grpc_server_msg_received_total') {
      c.msgsIn += value;
      if (method) c.byMethod[method] = (c.byMethod[method] ?? 0) + value;
    } else if (name === 'grpc_server_msg_sent_total') c.msgsOut += value;
    else if (name === 'grpc_server_handled_total' && line.includes('grpc_type="unary"')) c.unary += value;
    else if (name === 'etcd_network_client_grpc_received_bytes_total') c.bytesIn += value;
    else if (name === 'etcd_network_client_grpc_sent_bytes_total') c.bytesOut += value;
  }
  return c;
}

function diff(a: Counters, b: Counters): Counters {
  const byMethod: Record<string, number> = {};
  for (const m of new Set([...Object.keys(a.byMethod), ...Object.keys(b.byMethod)])) {
    const d = (b.byMethod[m] ?? 0) - (a.byMethod[m] ?? 0);
    if (d) byMethod[m] = d;
  }
  return { msgsIn: b.msgsIn - a.msgsIn, msgsOut: b.msgsOut - a.msgsOut, unary: b.unary - a.unary, bytesIn: b.bytesIn - a.bytesIn, bytesOut: b.bytesOut - a.bytesOut, byMethod, at: b.at - a.at };
}

// ---------------------------------------------------------------- workers

type Worker = { child: ChildProcess; hosts: number; next: (type: WorkerMessage['type']) => Promise<WorkerMessage> };

function startWorker(index: number, hosts: string[], env: Record<string, string>, logDir: string): Worker {
  const stderr = openSync(join(logDir, `worker-${index}.log`), 'w');
  const child = track(
    spawn(process.execPath, ['--import', 'tsx', WORKER], {
      cwd: REPO,
      stdio: ['ignore', 'ignore', stderr, 'ipc'],
      env: { ...process.env, ...env, FLEET_HOSTS: hosts.join(',') },
    }),
  );
  closeSync(stderr);
  const waiting = new Map<string, (m: WorkerMessage) => void>();
  child.on('message', (m: WorkerMessage) => {
    waiting.get(m.type)?.(m);
    waiting.delete(m.type);
  });
  return {
    child,
    hosts: hosts.length,
    next: (type) =>
      new Promise((resolveMessage, reject) => {
        const onExit = () => reject(new Error(`bench: fleet worker ${index} exited (log: ${join(logDir, `worker-${index}.log`)})`));
        child.once('exit', onExit);
        waiting.set(type, (m) => {
          child.off('exit', onExit);
          resolveMessage(m);
        });
      }),
  };
}

async function report(workers: Worker[]): Promise<WorkerReport[]> {
  const replies = workers.map((w) => w.next('report') as Promise<WorkerReport>);
  for (const w of workers) w.child.send({ type: 'report' });
  return Promise.all(replies);
}

async function stopWorkers(workers: Worker[]): Promise<void> {
  await Promise.all(
    workers.map(async (w) => {
      if (w.child.exitCode !== null || w.child.signalCode !== null) return;
      const exited = new Promise<void>((r) => w.child.once('exit', () => r()));
      w.child.send({ type: 'stop' });
      await Promise.race([exited, sleep(20_000)]);
      if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
      await exited;
    }),
  );
}

// ---------------------------------------------------------------- helpers

async function countKeys(store: FleetStore, prefix: string): Promise<number> {
  return Number(await store.ns.getAll().prefix(prefix).count());
}

async function waitUntil(what: string, probe: () => Promise<boolean>, ms: number, everyMs = 500): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out (${ms / 1000} s) waiting for ${what}`);
    await sleep(everyMs);
  }
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

const f0 = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : 'n/a');
const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : 'n/a');
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : 'n/a');
const kb = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;

type Wave = { group: string; wave: number; hosts: number; startMs: number; admitMs: number; spreadMs: number; durationMs: number; overheadMs: number };

/**
 * Per wave, from the run records: the wave begins when the previous one ended (its last run's endedAt; the
 * first wave when beginRollout committed) and ends with its own last endedAt. Its overhead is its length
 * less the hosts' own upgrade time: the wave move, the watch fan-out, the admissions, the run records and
 * any timer slippage of a loaded machine.
 */
function waves(plan: Plan, runs: Map<string, { startedAt: string | null; endedAt: string | null; state: string }>, begunAt: number, upgradeMs: number): Wave[] {
  const out: Wave[] = [];
  let previousEnd = begunAt;
  for (const group of plan.groups) {
    group.waves.forEach((hosts, wave) => {
      const records = hosts.map((h) => runs.get(h));
      const started = records.map((r) => (r?.startedAt ? Date.parse(r.startedAt) : NaN));
      const ended = records.map((r) => (r?.endedAt ? Date.parse(r.endedAt) : NaN));
      const end = Math.max(...ended);
      const first = Math.min(...started);
      out.push({
        group: group.name,
        wave,
        hosts: hosts.length,
        startMs: previousEnd - begunAt,
        admitMs: first - previousEnd,
        spreadMs: Math.max(...started) - first,
        durationMs: end - previousEnd,
        overheadMs: end - previousEnd - upgradeMs,
      });
      previousEnd = end;
    });
  }
  return out;
}

/** The README's "Fleet at scale" block, between its markers. */
function updateReadme(block: string): void {
  const path = join(REPO, 'README.md');
  const text = readFileSync(path, 'utf8');
  const begin = '<!-- fleet-bench:begin -->';
  const end = '<!-- fleet-bench:end -->';
  const start = text.indexOf(begin);
  const stop = text.indexOf(end);
  if (start === -1 || stop === -1) throw new Error('bench: README.md has no fleet-bench markers');
  writeFileSync(path, `${text.slice(0, start + begin.length)}\n${block}\n${text.slice(stop)}`);
}

// ---------------------------------------------------------------- the run

export async function fleetBench(argv: string[]): Promise<void> {
  const c = config(argv);
  const began = Date.now();
  const onSignal = (signal: NodeJS.Signals) => {
    cleanUpNow();
    process.kill(process.pid, signal);
  };
  process.once('exit', cleanUpNow);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const base = mkdtempSync(join(tmpdir(), 'bench-fleet-'));
  scratch.push(base);
  let client: Etcd3 | null = null;
  let watcher: Watcher | null = null;
  let workers: Worker[] = [];
  const progress = (line: string) => process.stderr.write(`[fleet ${((Date.now() - began) / 1000).toFixed(1)} s] ${line}\n`);
  try {
    const etcd = await startEtcd(base);
    progress(`etcd up at ${etcd.endpoint}`);
    const prefix = fleetPrefix('/upgrader/', 'bench');
    client = await connectEtcd({ endpoints: [etcd.endpoint], callTimeoutMs: DEFAULT_CALL_TIMEOUT_MS });
    const store = new FleetStore(client, prefix);

    // Hosts h0000..: the first canaryGroup in group "canary", the rest in "prod"; dealt round-robin to the
    // workers so that every worker has hosts of every wave.
    const names = Array.from({ length: c.hosts }, (_, i) => `h${String(i).padStart(String(c.hosts - 1).length, '0')}:${i < c.canaryGroup ? 'canary' : 'prod'}`);
    const env = { FLEET_ETCD: etcd.endpoint, FLEET_PREFIX: prefix, FLEET_LEASE_S: String(c.leaseSeconds), FLEET_UPGRADE_MS: String(c.upgradeMs), FLEET_FROM: 'v1', UPGRADER_LOG_LEVEL: 'info' };
    workers = Array.from({ length: c.workers }, (_, w) => startWorker(w, names.filter((_, i) => i % c.workers === w), env, base));
    await Promise.all(workers.map((w) => w.next('started')));
    const joinStarted = Date.now();
    let counts = [0, 0];
    let lastShown = Date.now();
    try {
      await waitUntil(
        `${c.hosts} hosts present with a record`,
        async () => {
          counts = [await countKeys(store, KEYS.presencePrefix), await countKeys(store, KEYS.hostPrefix)];
          if (Date.now() - lastShown > 10_000) (lastShown = Date.now()), progress(`joining: ${counts[0]} present, ${counts[1]} records`);
          return counts[0] === c.hosts && counts[1] === c.hosts;
        },
        300_000,
      );
    } catch (error) {
      const logs = await report(workers);
      process.stderr.write(`${counts[0]} present, ${counts[1]} records; follower log lines: ${JSON.stringify(logs.map((l) => l.logCounts))}\n${logs.flatMap((l) => l.warnings).slice(0, 5).join('\n')}\n`);
      throw error;
    }
    const joinMs = Date.now() - joinStarted;
    progress(`${c.hosts} hosts joined in ${workers.length} workers (${(joinMs / 1000).toFixed(1)} s)`);
    await sleep(c.settleSeconds * 1000);

    // Idle, before any rollout.
    const idleBefore = diff(await scrape(etcd), (await sleep(c.idleSeconds * 1000), await scrape(etcd)));
    progress(`idle before: ${idleBefore.msgsIn} requests in ${c.idleSeconds} s`);

    // The rollout: the waiting operator's watch first (as `fleet rollout` waits), then publish and rollout.
    let rolloutId: string | null = null;
    let finished: ((r: Rollout) => void) | null = null;
    const ended = new Promise<Rollout>((r) => (finished = r));
    watcher = await store.ns.watch().key(KEYS.rollout).create();
    watcher.on('put', (kv) => {
      const r = parsed(RolloutSchema, { key: KEYS.rollout, value: kv.value.toString(), mod: kv.mod_revision, lease: kv.lease }).value;
      if (r && r.id === rolloutId) progress(`rollout ${r.state} at ${r.groupNames[r.group] ?? r.group} wave ${r.wave}`);
      if (r && r.id === rolloutId && ENDED.includes(r.state)) finished?.(r);
    });
    await workers.reduce((p, w) => p.then(() => report([w]).then(() => undefined)), Promise.resolve()); // drop join-time events
    const before = await scrape(etcd);
    const loadBefore = loadavg()[0]!;
    const publishAt = Date.now();
    const release: Release = { schema: SCHEMA, version: 'v2', artifact: '/nonexistent/agent-v2.tar.gz', sha256: '0'.repeat(64), size: 1024, upgradeFrom: null, sequential: null, barrier: false, publishedAt: new Date().toISOString() };
    const put = await store.ns.if(KEYS.release('v2'), 'Create', '==', 0).then(store.ns.put(KEYS.release('v2')).value(serialize(release))).commit();
    if (!put.succeeded) throw new Error('bench: release v2 exists already');
    const rolloutAt = Date.now();
    const { rollout, plan } = await beginRollout(store, { to: 'v2', groups: ['canary', 'prod'], canaries: c.canaries, batch: String(c.batch), maxFailures: 0, pauseMs: 0 });
    const committedAt = Date.now();
    rolloutId = rollout.id;
    const current = await store.read(RolloutSchema, KEYS.rollout);
    let timer: NodeJS.Timeout | undefined;
    const result = current.value && current.value.id === rollout.id && ENDED.includes(current.value.state) ? current.value : await Promise.race([ended, new Promise<null>((r) => (timer = setTimeout(() => r(null), 600_000)))]);
    clearTimeout(timer);
    if (!result) throw new Error('bench: the rollout did not end within 10 minutes');
    const endedAt = Date.now();
    const loadDuring = loadavg()[0]!;
    progress(`rollout ${result.state} in ${((endedAt - committedAt) / 1000).toFixed(1)} s`);
    await sleep(c.settleSeconds * 1000);
    const during = diff(before, await scrape(etcd));
    const events = (await report(workers)).flatMap((r) => r.events);

    // Idle, after the rollout.
    const idleAfter = diff(await scrape(etcd), (await sleep(c.idleSeconds * 1000), await scrape(etcd)));
    progress(`idle after: ${idleAfter.msgsIn} requests in ${c.idleSeconds} s`);

    // Read back (after every measured window): run records and host records.
    const runs = await runsOf(store, rollout.id);
    const wavesOf = waves(plan, runs, committedAt, c.upgradeMs);
    const hosts = (await store.range(KEYS.hostPrefix)).entries.map((e) => parsed(HostRecord, e).value);
    const onNew = hosts.filter((h) => h?.running === 'v2').length;
    const presentAfter = await countKeys(store, KEYS.presencePrefix);
    const finalReports = await report(workers);
    const logCounts: Record<string, number> = {};
    for (const r of finalReports) for (const [k, n] of Object.entries(r.logCounts)) logCounts[k] = (logCounts[k] ?? 0) + n;
    const warnings = finalReports.flatMap((r) => r.warnings).slice(0, 5);
    const firstOf = (what: WorkerEvent['what']) => Math.min(...events.filter((e) => e.what === what).map((e) => e.at));
    const firstStage = firstOf('stage');
    const firstUpgrade = firstOf('upgrade-start');
    const upgrades = events.filter((e) => e.what === 'upgrade-start').length;

    // Figures.
    const overheads = wavesOf.map((w) => w.overheadMs);
    const full = wavesOf.filter((w) => w.hosts === c.batch);
    const perMinute = (d: Counters, v: number) => (v / c.hosts) * (60_000 / d.at);
    const idleReq = [perMinute(idleBefore, idleBefore.msgsIn), perMinute(idleAfter, idleAfter.msgsIn)];
    const idleBytes = [perMinute(idleBefore, idleBefore.bytesIn + idleBefore.bytesOut), perMinute(idleAfter, idleAfter.bytesIn + idleAfter.bytesOut)];
    const keepalivesPerLease = (idleBefore.byMethod.LeaseKeepAlive ?? 0) / c.hosts / (idleBefore.at / 1000 / c.leaseSeconds);
    const figures = {
      overheadP50: quantile(overheads, 0.5),
      overheadP95: quantile(overheads, 0.95),
      overheadMax: Math.max(...overheads),
      fullWaveOverheadP50: quantile(full.map((w) => w.overheadMs), 0.5),
      fullWaveOverheadP95: quantile(full.map((w) => w.overheadMs), 0.95),
      admitP50: quantile(wavesOf.map((w) => w.admitMs), 0.5),
      rolloutRequestsPerHost: during.msgsIn / c.hosts,
      rolloutUnaryPerHost: during.unary / c.hosts,
      rolloutBytesInPerHost: during.bytesIn / c.hosts,
      rolloutBytesOutPerHost: during.bytesOut / c.hosts,
      idleRequestsPerHostMin: idleReq,
      idleBytesPerHostMin: idleBytes,
      keepalivesPerHostPerLease: keepalivesPerLease,
      publishToFirstMs: firstStage - publishAt,
      rolloutToFirstMs: firstStage - rolloutAt,
      commitToFirstMs: firstStage - committedAt,
      rolloutToFirstUpgradeMs: firstUpgrade - rolloutAt,
      beginRolloutMs: committedAt - rolloutAt,
      rolloutWallSeconds: (endedAt - committedAt) / 1000,
    };
    const yes = (ok: boolean) => (ok ? 'yes' : '**no**');
    const table = [
      `| figure (${c.hosts.toLocaleString('en-US')} hosts, ${c.workers} workers, 1 etcd) | measured | target | met |`,
      '| --- | ---: | --- | :---: |',
      `| rollout overhead per wave beyond the ${c.upgradeMs} ms upgrade, median / p95 (${wavesOf.length} waves) | ${f0(figures.overheadP50)} / ${f0(figures.overheadP95)} ms | < 1,000 ms | ${yes(figures.overheadP95 < 1000)} |`,
      `| the same, waves of ${c.batch} hosts only (${full.length}), median / p95 | ${f0(figures.fullWaveOverheadP50)} / ${f0(figures.fullWaveOverheadP95)} ms | < 1,000 ms | ${yes(figures.fullWaveOverheadP95 < 1000)} |`,
      `| whole rollout: etcd requests per host (unary calls) | ${f1(figures.rolloutRequestsPerHost)} (${f1(figures.rolloutUnaryPerHost)}) | | |`,
      `| whole rollout: bytes per host, to etcd / from etcd | ${kb(figures.rolloutBytesInPerHost)} / ${kb(figures.rolloutBytesOutPerHost)} | | |`,
      `| idle: requests per host per minute, before / after the rollout | ${f2(idleReq[0]!)} / ${f2(idleReq[1]!)} | equal, O(1) per lease interval | ${yes(Math.abs(idleReq[0]! - idleReq[1]!) <= 0.1 * idleReq[0]! + 0.1)} |`,
      `| idle: bytes per host per minute, before / after | ${f0(idleBytes[0]!)} / ${f0(idleBytes[1]!)} B | equal | ${yes(Math.abs(idleBytes[0]! - idleBytes[1]!) <= 0.1 * idleBytes[0]! + 50)} |`,
      `| idle: lease keepalives per host per ${c.leaseSeconds} s lease | ${f2(keepalivesPerLease)} | O(1) | ${yes(keepalivesPerLease < 5)} |`,
      `| publish -> first host reacts (stages the release), rollout begun right after | ${f0(figures.publishToFirstMs)} ms | < 1,000 ms | ${yes(figures.publishToFirstMs < 1000)} |`,
      `| rollout command -> first host reacts (beginRollout itself: ${f0(figures.beginRolloutMs)} ms) | ${f0(figures.rolloutToFirstMs)} ms | < 1,000 ms | ${yes(figures.rolloutToFirstMs < 1000)} |`,
      `| rollout committed -> first host reacts / -> first upgrade starts | ${f0(figures.commitToFirstMs)} / ${f0(firstUpgrade - committedAt)} ms | < 1,000 ms | ${yes(figures.commitToFirstMs < 1000)} |`,
      `| hosts present (presence key) after the rollout and idle window | ${presentAfter} | all ${c.hosts} | ${yes(presentAfter === c.hosts)} |`,
      `| rollout: ${result.state}, wall time from commit to the end; hosts on v2 / upgrades done | ${f1(figures.rolloutWallSeconds)} s; ${onNew} / ${upgrades} | all ${c.hosts} | ${yes(result.state === 'succeeded' && onNew === c.hosts)} |`,
    ].join('\n');
    const methods = Object.entries(during.byMethod).sort((a, b) => b[1] - a[1]).map(([m, n]) => `${m} ${f1(n / c.hosts)}`).join(', ');
    const waveRows = wavesOf.map((w) => `| ${w.group} | ${w.wave} | ${w.hosts} | ${f0(w.startMs)} | ${f0(w.admitMs)} | ${f0(w.spreadMs)} | ${f0(w.durationMs)} | ${f0(w.overheadMs)} |`);
    const method = [
      `Method: one etcd ${'3.4'} member on loopback; ${c.hosts} hosts in ${c.workers} worker processes (bench/fleet-worker.ts), each host a real \`Follower\` with a stand-in local upgrader`,
      `(stage() returns at once, upgrade() takes ${c.upgradeMs} ms, probation included), one etcd client per worker, lease ${c.leaseSeconds} s. Groups canary (${c.canaryGroup}) and prod (${c.hosts - c.canaryGroup}),`,
      `\`--canaries ${c.canaries} --batch ${c.batch}\`, started with \`beginRollout\` right after the release record is written. etcd's /metrics before and after each phase:`,
      'requests are `grpc_server_msg_received_total` (every unary call and every message on a stream: keepalives, watch creates), bytes',
      '`etcd_network_client_grpc_{received,sent}_bytes_total`; the rollout window runs from the publish to ' + `${c.settleSeconds} s after the rollout ended and includes the operator's one watch;`,
      `idle windows are ${c.idleSeconds} s. Wave overhead: from the previous wave's last run \`endedAt\` (the first: the rollout's commit) to the wave's last \`endedAt\`, less ${c.upgradeMs} ms.`,
      `First reaction: the earliest \`stage()\` call on any host (workers' clocks; same machine). 2-core machine: etcd, the ${c.workers} workers and the bench share it`,
      `(1-minute load average ${f1(loadBefore)} as the rollout began, ${f1(loadDuring)} as it ended: other work on the machine shares the cores too).`,
    ].join('\n');
    const md = [
      `# Fleet at scale (\`npm run bench -- --fleet${c.smoke ? ' --smoke' : ''}\`)`,
      '',
      table,
      '',
      `Requests per host for the whole rollout, by method: ${methods}.`,
      `Hosts joined in ${f1(joinMs / 1000)} s. Follower log lines: ${Object.entries(logCounts).map(([k, n]) => `${k} x${n}`).join('; ') || 'none'}.`,
      '',
      method,
      '',
      '| group | wave | hosts | begins at (ms after commit) | first start after begin (ms) | start spread (ms) | length (ms) | overhead (ms) |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...waveRows,
      '',
    ].join('\n');
    process.stdout.write(`${table}\n\nRequests per host for the whole rollout, by method: ${methods}.\n`);
    if (warnings.length) process.stdout.write(`First follower warnings:\n${warnings.join('\n')}\n`);

    const out = join(REPO, c.smoke ? 'bench/out' : 'docs/bench');
    mkdirSync(out, { recursive: true });
    const json = { date: new Date().toISOString(), smoke: c.smoke, node: process.version, config: c, figures, presentAfter, loadAverage: { atStart: loadBefore, atEnd: loadDuring }, joinMs, rollout: { id: result.id, state: result.state, reason: result.reason, failures: result.failures }, hostsOnNew: onNew, counters: { idleBefore, during, idleAfter }, waves: wavesOf, logCounts, warnings, durationSeconds: (Date.now() - began) / 1000 };
    writeFileSync(join(out, 'fleet.json'), `${JSON.stringify(json, null, 2)}\n`);
    writeFileSync(join(out, 'fleet.md'), md);
    progress(`wrote ${join(out, 'fleet.json')} and fleet.md`);
    if (!c.smoke) updateReadme([table, '', method, '', `Per-wave figures: [docs/bench/fleet.md](docs/bench/fleet.md); raw: [docs/bench/fleet.json](docs/bench/fleet.json).`].join('\n'));
    if (result.state !== 'succeeded' || onNew !== c.hosts) throw new Error(`bench: the rollout ${result.state} with ${onNew} of ${c.hosts} hosts on v2`);
  } finally {
    await (watcher as Watcher | null)?.cancel().catch(() => undefined);
    if (client) await closeEtcd(client);
    await stopWorkers(workers).catch(() => undefined);
    cleanUpNow();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    progress('cleaned up');
  }
}
