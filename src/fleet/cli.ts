/**
 * `upgrader follow` and `upgrader fleet ...`. Loaded only by those commands (cli.ts imports this module on
 * demand), so `upgrader run` never loads the etcd client, and its start-up and memory stay as measured.
 */
import { hostname, tmpdir } from 'node:os';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parse, requireRoot, type Values } from '../args.js';
import { parseDuration } from '../duration.js';
import { EXIT, UpgraderError } from '../errors.js';
import { Layout, versionNameProblem } from '../layout.js';
import { createLogger } from '../log.js';
import { printable } from '../printable.js';
import { refuseForeignRootForRun } from '../privilege.js';
import { claimFollower, releaseFollower, updateFollower } from '../follower-record.js';
import { FleetError } from './errors.js';
import { closeEtcd, connectEtcd, describeEtcdError, ETCD_ARG_OPTIONS, etcdSettings, etcdUnreachable } from './etcd.js';
import { Follower } from './follower.js';
import { RootUpgrader } from './local.js';
import { advanceIfWaveEnded, beginRollback, beginRollout, changeRollout } from './rollout.js';
import { ENDED, fleetPrefix, KEYS, parseRecord, Release, SCHEMA, serialize, type BarrierPhase, type Migration, type Plan } from './schema.js';
import { driveBarrier, excludeHosts, type BarrierEvents } from './barrier.js';
import { pastNoReturn } from './barrier-phase.js';
import { FleetStore } from './store.js';
import type { Watcher } from 'etcd3';
import { fleetExitCode, readFleetView, stalledOn, type FleetView } from './view.js';

const COMMON = { fleet: { type: 'string' }, prefix: { type: 'string', default: '/upgrader/' }, ...ETCD_ARG_OPTIONS } as const;
const ETCD_HELP = `Connecting to etcd (every fleet command):
  --etcd <url,...>          etcd endpoints (default $UPGRADER_ETCD, else http://127.0.0.1:2379)
  --etcd-cacert <file>      CA certificate to verify etcd's (https:// endpoints)
  --etcd-cert <file>, --etcd-key <file>   client certificate and key
  --etcd-user <name>        etcd user (default $UPGRADER_ETCD_USER); the password comes from
                            $UPGRADER_ETCD_PASSWORD or --etcd-password-file <file>, never the command line
  --prefix <p>              key prefix (default /upgrader/); the fleet's keys are <p><fleet>/...`;

const HELP = {
  follow: `Usage: upgrader follow --root <dir> --fleet <name> --artifacts <url-prefix | dir,...> [--host <name>] [--group <name>] [options]

Runs beside "upgrader run" on each host: keeps the host's presence alive in etcd, publishes its record
(version, phase, last upgrade, last error), and carries out the fleet's rollouts and desired version on
this root through the upgrader's own operator channel. The agent keeps running whatever etcd does.

Options:
  --artifacts <list>        where this host accepts release artifacts from: http(s):// URL prefixes and
                            absolute directories, comma-separated (default $UPGRADER_ARTIFACTS; required).
                            Whoever can write etcd picks an artifact and its digest together: this list,
                            not the digest, says whose builds this host runs
  --host <name>             this host's name in the fleet (default: the machine's host name)
  --group <name>            its rollout group (default "default")
  --lease <time>            presence lease: how soon a dead follower shows as offline (default 10s)
  --download-timeout <time> a download that stalls this long is retried (default 60s)
  --max-download <bytes>    largest artifact accepted (default 1073741824)
  --attempts <n>            download attempts (default 5)
  --handoff-timeout <time>  longest wait for the local upgrader to finish a handoff and its probation
                            before asking again (default 10m)

${ETCD_HELP}

Exit status: 0 after SIGTERM or SIGINT; 64 bad arguments; 78 the root is unusable or another user's.`,
  fleet: `Usage: upgrader fleet <command> --fleet <name> [options]

  publish --version <v> --artifact <path|file://|http(s)://> --sha256 <hex> [--barrier]   record a release
  rollout --to <v> [--groups a,b] [--canaries <n>] [--batch <n|p%>] [--max-failures <n>]
          [--pause <time>] [--no-wait] [--json]                                roll it out in waves
  rollout --to <v> --barrier [--migrate "<command>"] [--exclude <host,...>] [wave options]
  rollout --resume [--exclude <host,...>] [--rerun-migration]               a barrier rollout
  pause | resume | abort [--reason <text>]                                     steer the rollout
  rollback [--no-wait] [--json]       take the hosts the last rollout moved back where they were
  status [--json]                     the rollout and one line per host

rollout: groups go in the order of --groups (groups not named follow, by name); each starts with
--canaries hosts (default 1) alone, then waves of at most --batch hosts (default 1; 25% of the group
also works), --pause apart (default 0s). Each host stages the release ahead of its wave; a host is done
once it runs the new version and its probation has passed. More than --max-failures failures (default
0) halt the rollout: no further host starts, hosts in flight finish. It waits and shows progress unless
--no-wait; the rollout goes on in etcd whatever happens to this command.

rollout --barrier: for a release whose old and new versions cannot run side by side (publish --barrier
makes a plain rollout of it refused). Phases, each recorded in etcd before it starts: stage (every known
host installs it; any failure stops here, nothing changed), barrier (waits for offline hosts, listed with
their last-seen time; --exclude goes on without them, and keeps them off the old version until they are
upgraded), halt (every host halts its agent), migrate (--migrate runs once, here, with UPGRADER_FLEET,
UPGRADER_FROM_VERSION and UPGRADER_TO_VERSION; its exit status decides), switch (hosts start the new
version from halted, in waves of --batch). This command drives the phases up to the switch: if it dies,
fleet rollout --resume carries on from the recorded phase. A migration whose end was never recorded is
not run again unless --rerun-migration. abort before the migration resumes every host on its old
version; after it, hosts stay halted.

${ETCD_HELP}

Exit status: 0 done (rollout succeeded; status: every known host online and on the desired version);
1 refused, or the rollout halted or was aborted; 3 status: a rollout is moving; 4 status: hosts are
behind, failed or offline with no rollout moving; 64 bad arguments; 65 the artifact does not match
--sha256; 69 etcd is unreachable; 73 the release exists with another digest.`,
} as const;

export async function fleetMain(command: 'follow' | 'fleet', args: string[]): Promise<number> {
  try {
    if (command === 'follow') return await follow(args);
    return await fleet(args);
  } catch (error) {
    throw asCliError(error);
  }
}

function asCliError(error: unknown): unknown {
  if (error instanceof FleetError) return new UpgraderError(FLEET_ERROR_CODES[error.code] ?? 'E_REFUSED', error.message);
  if (etcdUnreachable(error)) return new UpgraderError('E_ETCD', `etcd is unreachable: ${describeEtcdError(error)}`);
  return error;
}

const FLEET_ERROR_CODES: Record<string, 'E_CHECKSUM' | 'E_VERSION_EXISTS' | 'E_REFUSED' | 'E_IO'> = {
  'digest-mismatch': 'E_CHECKSUM',
  'release-exists': 'E_VERSION_EXISTS',
  'disk-full': 'E_IO',
};

function need(v: Values, name: string): string {
  const value = v[name];
  if (typeof value !== 'string' || value === '') throw new UpgraderError('E_USAGE', `--${name} is required (see --help).`);
  return value;
}

function name(v: Values, option: string, fallback?: string): string {
  const value = typeof v[option] === 'string' ? (v[option] as string) : fallback;
  if (value === undefined) throw new UpgraderError('E_USAGE', `--${option} is required (see --help).`);
  const problem = versionNameProblem(value);
  if (problem) throw new UpgraderError('E_USAGE', `--${option} ${JSON.stringify(value)}: ${problem}.`);
  return value;
}

function count(v: Values, option: string, fallback: number): number {
  const raw = v[option];
  if (raw === undefined) return fallback;
  if (typeof raw !== 'string' || !/^\d{1,15}$/.test(raw)) throw new UpgraderError('E_USAGE', `--${option} takes a whole number, not ${JSON.stringify(raw)}.`);
  return Number(raw);
}

async function openStore(v: Values, settings = etcdSettings(v)): Promise<FleetStore> {
  const prefix = fleetPrefixOrUsage(v.prefix as string, name(v, 'fleet'));
  return new FleetStore(await connectEtcd(settings), prefix);
}

function fleetPrefixOrUsage(prefix: string, fleet: string): string {
  try {
    return fleetPrefix(prefix, fleet);
  } catch (error) {
    throw new UpgraderError('E_USAGE', `--prefix: ${(error as Error).message}.`);
  }
}

// ---------------------------------------------------------------- follow

async function follow(args: string[]): Promise<number> {
  const v = parse(args, {
    ...COMMON,
    root: { type: 'string' },
    host: { type: 'string' },
    group: { type: 'string', default: 'default' },
    lease: { type: 'string', default: '10s' },
    'download-timeout': { type: 'string', default: '60s' },
    'max-download': { type: 'string', default: String(1024 ** 3) },
    attempts: { type: 'string', default: '5' },
    artifacts: { type: 'string' },
    'handoff-timeout': { type: 'string', default: '10m' },
  });
  if (v.help) return help('follow');
  const artifacts = String(v.artifacts ?? process.env.UPGRADER_ARTIFACTS ?? '').split(',').filter(Boolean);
  if (artifacts.length === 0) throw new UpgraderError('E_USAGE', '--artifacts <url-prefix | dir,...> (or UPGRADER_ARTIFACTS) is required: where this host accepts release artifacts from (see --help).');
  for (const a of artifacts) if (!/^https?:\/\/[^/@]+\/?/.test(a) && !a.startsWith('/')) throw new UpgraderError('E_USAGE', `--artifacts: ${JSON.stringify(a)} is neither an http(s):// prefix nor an absolute directory.`);
  const layout = Layout.open(requireRoot(v.root));
  refuseForeignRootForRun(layout.root);
  const host = name(v, 'host', hostname().split('.')[0]);
  const group = name(v, 'group');
  const leaseSeconds = Math.max(2, Math.ceil(parseDuration(v.lease as string, '--lease') / 1000));
  const log = createLogger();
  const settings = etcdSettings(v);
  const store = await openStore(v, settings);
  const local = new RootUpgrader(layout.root, {
    maxBytes: count(v, 'max-download', 1024 ** 3),
    timeoutMs: parseDuration(v['download-timeout'] as string, '--download-timeout'),
    attempts: Math.max(1, count(v, 'attempts', 5)),
  }, artifacts);
  const fleetName = v.fleet as string;
  const facts = (etcd: 'connecting' | 'reachable' | 'unreachable', error: string | null) => ({ fleet: fleetName, host, group, etcd, since: new Date().toISOString(), error });
  await claimFollower(layout.stateDir, facts('connecting', null));
  const onEtcd = (state: 'reachable' | 'unreachable', error: unknown) => {
    try {
      updateFollower(layout.stateDir, facts(state, error === null ? null : describeEtcdError(error, settings.endpoints)));
    } catch (e) {
      log.warn({ err: String(e) }, 'could not record the follower state in the root');
    }
  };
  const handoffTimeoutMs = parseDuration(v['handoff-timeout'] as string, '--handoff-timeout');
  const follower = new Follower({ store, host, group, local, log, leaseSeconds, handoffTimeoutMs, retryMs: { min: 250, max: 10_000 }, unreachable: etcdUnreachable, onEtcd });
  const stop = () => void follower.stop();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  log.info({ root: layout.root, host, group, fleet: store.prefix }, 'follower starting');
  try {
    await follower.run();
  } finally {
    releaseFollower(layout.stateDir);
    await closeEtcd(store.client);
  }
  log.info({ host }, 'follower stopped');
  return EXIT.ok;
}

// ---------------------------------------------------------------- fleet ...

async function fleet(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'publish':
      return publish(rest);
    case 'rollout':
      return rollout(rest);
    case 'rollback':
      return rollback(rest);
    case 'pause':
    case 'resume':
    case 'abort':
      return steer(sub, rest);
    case 'status':
      return status(rest);
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      return help('fleet');
    default:
      throw new UpgraderError('E_USAGE', `Unknown fleet command ${JSON.stringify(sub)}; the commands are publish, rollout, pause, resume, abort, rollback and status (see upgrader fleet --help).`);
  }
}

async function withStore<T>(v: Values, fn: (store: FleetStore) => Promise<T>): Promise<T> {
  const store = await openStore(v);
  try {
    return await fn(store);
  } finally {
    await closeEtcd(store.client);
  }
}

async function publish(args: string[]): Promise<number> {
  const v = parse(args, { ...COMMON, version: { type: 'string' }, artifact: { type: 'string' }, sha256: { type: 'string' }, barrier: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } });
  if (v.help) return help('fleet');
  const version = name(v, 'version');
  const artifact = need(v, 'artifact');
  const sha256 = need(v, 'sha256').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new UpgraderError('E_USAGE', `--sha256 takes 64 hex digits, not ${JSON.stringify(sha256)}.`);
  // The publisher proves the digest first: a typo here would otherwise fail on every host at once.
  const { fetchArtifact, readReleaseManifest } = await import('./artifact.js');
  const dir = mkdtempSync(join(tmpdir(), 'upgrader-publish-'));
  let release: Release;
  try {
    const fetched = await fetchArtifact({ source: artifact, sha256, dir, maxBytes: 1024 ** 3, timeoutMs: 60_000, attempts: 3 });
    const manifest = await readReleaseManifest(fetched.file);
    release = { schema: SCHEMA, version, artifact, sha256, size: fetched.bytes, upgradeFrom: manifest.upgradeFrom, sequential: manifest.sequential, barrier: v.barrier === true, publishedAt: new Date().toISOString() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return withStore(v, async (store) => {
    const key = KEYS.release(version);
    const result = await store.ns.if(key, 'Create', '==', 0).then(store.ns.put(key).value(serialize(release))).else(store.ns.get(key)).commit();
    if (!result.succeeded) {
      const existing = parseRecord(Release, result.responses[0]?.response_range?.kvs[0]?.value.toString()).value;
      if (existing?.sha256 !== sha256) throw new FleetError('release-exists', `Release ${version} is already published with another digest (${existing?.sha256 ?? 'unreadable'}); a release never changes: publish a new version.`);
      process.stdout.write(v.json ? `${JSON.stringify({ published: false, release: existing })}\n` : `release ${version} is already published with this digest\n`);
      return EXIT.ok;
    }
    process.stdout.write(v.json ? `${JSON.stringify({ published: true, release })}\n` : `published ${version} (${release.size} bytes, sha256 ${sha256.slice(0, 12)}...)${release.upgradeFrom ? `, upgrades from ${release.upgradeFrom}` : ''}\n`);
    return EXIT.ok;
  });
}

const WAIT_OPTIONS = { 'no-wait': { type: 'boolean', default: false }, json: { type: 'boolean', default: false } } as const;
const WAVE_OPTIONS = { canaries: { type: 'string' }, batch: { type: 'string' }, 'max-failures': { type: 'string' }, pause: { type: 'string' } } as const;

function batchOption(v: Values, fallback: string): string {
  const raw = (v.batch as string | undefined) ?? fallback;
  if (!/^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$/.test(raw)) throw new UpgraderError('E_USAGE', `--batch takes a count (5) or a share of each group (25%), not ${JSON.stringify(raw)}.`);
  return raw;
}

const BARRIER_OPTIONS = {
  barrier: { type: 'boolean', default: false },
  migrate: { type: 'string' },
  exclude: { type: 'string' },
  resume: { type: 'boolean', default: false },
  'rerun-migration': { type: 'boolean', default: false },
} as const;

async function rollout(args: string[]): Promise<number> {
  const v = parse(args, { ...COMMON, ...WAIT_OPTIONS, ...WAVE_OPTIONS, ...BARRIER_OPTIONS, to: { type: 'string' }, groups: { type: 'string' } });
  if (v.help) return help('fleet');
  const exclude = typeof v.exclude === 'string' ? v.exclude.split(',').filter(Boolean) : [];
  for (const h of exclude) if (versionNameProblem(h)) throw new UpgraderError('E_USAGE', `--exclude: ${JSON.stringify(h)} is not a host name.`);
  if (v.resume) return resumeBarrier(v, exclude);
  if (v['rerun-migration']) throw new UpgraderError('E_USAGE', '--rerun-migration goes with --resume (see --help).');
  if (!v.barrier && (v.migrate !== undefined || exclude.length)) throw new UpgraderError('E_USAGE', '--migrate and --exclude go with --barrier (see --help).');
  const to = name(v, 'to');
  const groups = typeof v.groups === 'string' ? v.groups.split(',').filter(Boolean) : [];
  for (const g of groups) if (versionNameProblem(g)) throw new UpgraderError('E_USAGE', `--groups: ${JSON.stringify(g)} is not a group name.`);
  const options = {
    to,
    groups,
    canaries: count(v, 'canaries', 1),
    batch: batchOption(v, '1'),
    maxFailures: count(v, 'max-failures', 0),
    pauseMs: v.pause === undefined ? 0 : parseDuration(v.pause as string, '--pause'),
    ...(v.barrier && { barrier: { command: typeof v.migrate === 'string' && v.migrate !== '' ? v.migrate : null, exclude } }),
  };
  return withStore(v, async (store) => {
    const { rollout: started, plan } = await beginRollout(store, options);
    const excluded = started.barrier?.excluded.length ? `; excluded: ${started.barrier.excluded.join(', ')}` : '';
    say(v, { type: 'started', id: started.id, to, barrier: started.barrier, plan: plan.groups }, `${started.barrier ? 'barrier rollout' : 'rollout'} ${started.id}: ${to} to ${planSummary(plan)}${excluded}`);
    if (started.barrier) return followBarrier(store, started.id, v, false);
    return v['no-wait'] ? EXIT.ok : watchRollout(store, started.id, v);
  });
}

/** `fleet rollout --resume`: carries the fleet's barrier rollout on from its recorded phase. */
async function resumeBarrier(v: Values, exclude: string[]): Promise<number> {
  return withStore(v, async (store) => {
    const { rollout: read } = await store.control();
    const current = read.value;
    if (!current?.barrier) throw new FleetError('no-rollout', current ? `Rollout ${current.id} is not a barrier rollout: --resume carries on a barrier rollout (a rolling one goes on by itself).` : 'This fleet has no rollout to resume.');
    const m = current.barrier.migration;
    // Only a migration that failed or whose end is missing runs again; never one that succeeded or has not run.
    if (v['rerun-migration'] && (m === null || m.exitCode === 0)) {
      throw new UpgraderError('E_USAGE', `--rerun-migration: the migration of rollout ${current.id} ${m === null ? 'has not run yet' : 'succeeded'}; there is nothing to run again.`);
    }
    await excludeHosts(store, current.id, exclude);
    say(v, { type: 'resumed', id: current.id, phase: current.barrier.phase, state: current.state, migration: m }, `barrier rollout ${current.id} to ${current.to}: resuming at ${current.barrier.phase} (${current.state})${m ? `; migration ${describeMigration(m)}` : ''}`);
    return followBarrier(store, current.id, v, v['rerun-migration'] === true);
  });
}

/** Drives a barrier rollout's phases (barrier.ts), then waits for its switch like any rollout. */
async function followBarrier(store: FleetStore, id: string, v: Values, rerunMigration: boolean): Promise<number> {
  const events: BarrierEvents = {
    phase: (phase) => say(v, { type: 'phase', id, phase }, `phase ${phase}: ${PHASE_TEXT[phase]}`),
    waiting: (phase, hosts) => {
      const offline = hosts.filter((h) => !h.online);
      const text = `${phase}: waiting on ${plural(hosts.length, 'host')}${offline.length ? `; offline, holding the barrier: ${offline.map((h) => `${h.host} (last seen ${h.lastSeen ? ago(h.lastSeen) : 'never'})`).join(', ')} (bring them back, or fleet rollout --resume --exclude <host,...>)` : ''}`;
      say(v, { type: 'waiting', id, phase, hosts }, text);
    },
    migration: (m) => say(v, { type: 'migration', id, migration: m }, `migration ${describeMigration(m)}`),
  };
  const rollout = await driveBarrier(store, id, { rerunMigration, events });
  if (rollout.state === 'halted' || rollout.state === 'aborted') {
    say(v, { type: 'ended', id, state: rollout.state, reason: rollout.reason }, `rollout ${id} ${rollout.state}${rollout.reason ? `: ${printable(rollout.reason)}` : ''}${rollout.barrier && pastNoReturn(rollout.barrier) ? '; hosts stay halted' : ''}`);
    return EXIT.refused;
  }
  return v['no-wait'] ? EXIT.ok : watchRollout(store, id, v);
}

const PHASE_TEXT: Record<BarrierPhase, string> = {
  stage: 'every host downloads and installs the release',
  barrier: 'only offline hosts are left to stage; the barrier waits for them',
  halt: 'every host halts its agent',
  migrate: 'the migration runs here, once',
  switch: 'hosts start the new version from halted, wave by wave',
};

function describeMigration(m: Migration): string {
  if (m.endedAt === null) return `started ${m.startedAt} on ${m.by}${m.runs > 1 ? ` (run ${m.runs})` : ''}, not ended`;
  return `exited with status ${m.exitCode} at ${m.endedAt}${m.runs > 1 ? ` (run ${m.runs})` : ''}`;
}

async function rollback(args: string[]): Promise<number> {
  const v = parse(args, { ...COMMON, ...WAIT_OPTIONS, ...WAVE_OPTIONS });
  if (v.help) return help('fleet');
  const overrides = {
    ...(v.canaries !== undefined && { canaries: count(v, 'canaries', 1) }),
    ...(v.batch !== undefined && { batch: batchOption(v, '1') }),
    ...(v['max-failures'] !== undefined && { maxFailures: count(v, 'max-failures', 0) }),
    ...(v.pause !== undefined && { pauseMs: parseDuration(v.pause as string, '--pause') }),
  };
  return withStore(v, async (store) => {
    const { rollout: started, plan } = await beginRollback(store, overrides);
    say(v, { type: 'started', id: started.id, undoes: started.undoes, plan: plan.groups }, `rollback ${started.id} of ${started.undoes}: ${planSummary(plan)} back to their previous versions`);
    return v['no-wait'] ? EXIT.ok : watchRollout(store, started.id, v);
  });
}

function planSummary(r: Plan): string {
  const groups = r.groups.map((g) => `${g.name} (${plural(g.waves.flat().length, 'host')}, ${plural(g.waves.length, 'wave')})`);
  return `${groups.join(', ')}${r.offline.length ? `; offline, not included: ${r.offline.join(', ')}` : ''}`;
}

async function steer(action: 'pause' | 'resume' | 'abort', args: string[]): Promise<number> {
  const v = parse(args, { ...COMMON, json: { type: 'boolean', default: false }, reason: { type: 'string' } });
  if (v.help) return help('fleet');
  return withStore(v, async (store) => {
    const changed = await changeRollout(store, action, typeof v.reason === 'string' ? v.reason : null);
    if (action === 'resume') await advanceIfWaveEnded(store);
    const b = changed.barrier;
    const after = action !== 'abort' || !b ? '' : pastNoReturn(b) ? `; its hosts stay halted: ${b.migration ? `the migration ${describeMigration(b.migration)}` : 'new versions may already run'}, so the old version may not run any more (roll forward with a new barrier rollout)` : '; its halted hosts resume their old version';
    say(v, { type: action, id: changed.id, state: changed.state }, `rollout ${changed.id} is ${changed.state}${after}`);
    return EXIT.ok;
  });
}

async function status(args: string[]): Promise<number> {
  const v = parse(args, { ...COMMON, json: { type: 'boolean', default: false } });
  if (v.help) return help('fleet');
  return withStore(v, async (store) => {
    const view = await readFleetView(store);
    process.stdout.write(v.json ? `${JSON.stringify(view, null, 2)}\n` : `${formatFleet(view)}\n`);
    return fleetExitCode(view);
  });
}

// ---------------------------------------------------------------- waiting for a rollout

/**
 * Shows a rollout's progress until it ends. Watch-driven: any change to the control keys or the
 * rollout's runs redraws; the command also moves the rollout on if the host that ended a wave died
 * before doing so (any participant may).
 */
async function watchRollout(store: FleetStore, id: string, v: Values): Promise<number> {
  // One listener per event for the whole wait; each change wakes whoever waits now. A watch that fails
  // (a compacted history on reconnect) is replaced on the next turn, after a fresh read.
  let wake: (() => void) | null = null;
  let changed = false;
  let broken = false;
  const onChange = () => {
    changed = true;
    wake?.();
  };
  let watchers: Watcher[] = [];
  const openWatchers = async () => {
    for (const w of watchers) await w.cancel().catch(() => undefined);
    watchers = [await store.ns.watch().prefix(KEYS.ctlPrefix).create(), await store.ns.watch().prefix(KEYS.runPrefix(id)).create()];
    for (const w of watchers) {
      w.on('put', onChange);
      w.on('delete', onChange);
      w.on('connected', onChange);
      w.on('error', () => ((broken = true), onChange()));
    }
  };
  await openWatchers();
  const tty = Boolean(process.stdout.isTTY) && !v.json;
  let drawn = 0;
  let last = '';
  try {
    for (;;) {
      changed = false;
      if (broken) {
        broken = false;
        await openWatchers();
      }
      await advanceIfWaveEnded(store).catch(() => undefined);
      const view = await readFleetView(store);
      const r = view.rollout;
      if (!r || r.id !== id) {
        say(v, { type: 'replaced', id }, `rollout ${id} was replaced by another`);
        return EXIT.refused;
      }
      const text = tty ? progressBars(view) : progressLine(view);
      if (text !== last) {
        if (tty && drawn) process.stdout.write(`\x1b[${drawn}A\x1b[J`);
        if (v.json) process.stdout.write(`${JSON.stringify({ type: 'progress', state: r.state, group: r.group, wave: r.wave, groups: r.groups, failed: r.failed })}\n`);
        else process.stdout.write(`${text}\n`);
        drawn = tty ? text.split('\n').length : 0;
        last = text;
      }
      if (ENDED.includes(r.state)) {
        say(v, { type: 'ended', id, state: r.state, reason: r.reason }, `rollout ${id} ${r.state}${r.reason ? `: ${printable(r.reason)}` : ''}`);
        return r.state === 'succeeded' ? EXIT.ok : EXIT.refused;
      }
      if (!changed) await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
  } finally {
    for (const w of watchers) await w.cancel().catch(() => undefined);
  }
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** On a terminal: a bar per group, redrawn in place. */
function progressBars(view: FleetView): string {
  const r = view.rollout!;
  const width = 24;
  return r.groups
    .map((g) => {
      const filled = g.hosts ? Math.round((width * (g.done + g.failed)) / g.hosts) : width;
      return `${printable(g.name).padEnd(12)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${g.done}/${g.hosts} done, ${g.inFlight} in flight, ${g.failed} failed, ${g.pending} pending`;
    })
    .concat(`${r.state}: group ${printable(r.group ?? '-')}, wave ${r.wave + 1}`)
    .join('\n');
}

/** Elsewhere (a log, a pipe): one line per change. */
function progressLine(view: FleetView): string {
  const r = view.rollout!;
  const groups = r.groups.map((g) => `${printable(g.name)} ${g.done}/${g.hosts} done${g.inFlight ? `, ${g.inFlight} in flight` : ''}${g.failed ? `, ${g.failed} failed` : ''}`);
  return `${r.state}${r.barrier ? ` (${r.barrier.phase})` : ''}: group ${printable(r.group ?? '-')} wave ${r.wave + 1}; ${groups.join('; ')}`;
}

function say(v: Values, json: object, text: string): void {
  process.stdout.write(v.json ? `${JSON.stringify(json)}\n` : `${text}\n`);
}

/**
 * Text from etcd in one line of a table: control characters (newlines and tabs included) and the Unicode
 * controls that reorder or hide text escaped, so that a record can neither draw fake rows nor drive the terminal.
 */
function cell(text: string): string {
  return printable(text).replace(/[\n\t\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function ago(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

export function formatFleet(view: FleetView, now = Date.now()): string {
  const out: string[] = [`desired version: ${view.desired ?? '(none)'}`];
  const r = view.rollout;
  if (r) {
    out.push(`${r.kind} ${r.id}${r.to ? ` to ${r.to}` : ''}: ${r.state}${r.reason ? ` (${cell(r.reason)})` : ''}, ${r.failures} failed, updated ${ago(r.updatedAt, now)}`);
    if (r.barrier) {
      const m = r.barrier.migration;
      const excluded = r.barrier.excluded.length ? `; excluded: ${r.barrier.excluded.join(', ')}` : '';
      out.push(`  barrier phase ${r.barrier.phase}; migration ${m ? cell(describeMigration(m)) : r.barrier.command === null ? 'none' : 'not started'}${excluded}`);
    }
    for (const g of r.groups) out.push(`  ${g.name}: ${g.done} done, ${g.inFlight} in flight, ${g.failed} failed, ${g.pending} pending of ${g.hosts}`);
    const stalled = stalledOn(view);
    if (stalled.length) out.push(`  waiting on offline ${stalled.map((h) => `${h.host} (last seen ${ago(h.reportedAt, now)})`).join(', ')}: the wave cannot end without them; bring them back or abort`);
  }
  const rows = view.hosts.map((h) => [
    h.host,
    h.group,
    h.online ? 'online' : `OFFLINE since ${ago(h.reportedAt, now)}`,
    h.running ?? '-',
    h.phase,
    h.run ?? '-',
    h.lastUpgrade ? `${h.lastUpgrade.from} -> ${h.lastUpgrade.to} ${h.lastUpgrade.result}` : '-',
    h.error ? `${h.error.code ? `[${h.error.code}] ` : ''}${h.error.message} (${ago(h.error.at, now)})` : '-',
  ]);
  // RUN: the host's part in the current rollout (pending, staged, upgrading, done, failed; - when not in it).
  const header = ['HOST', 'GROUP', 'SEEN', 'VERSION', 'PHASE', 'RUN', 'LAST UPGRADE', 'ERROR'];
  for (const row of rows) row.forEach((c, i) => (row[i] = cell(c)));
  const widths = header.map((head, i) => Math.max(head.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  out.push('', line(header), ...rows.map(line));
  if (view.problems.length) out.push('', ...view.problems.map((p) => `unreadable record: ${cell(p)}`));
  return out.join('\n');
}

function help(topic: keyof typeof HELP): number {
  process.stdout.write(`${HELP[topic]}\n`);
  return EXIT.ok;
}

export const FLEET_HELP = HELP;

