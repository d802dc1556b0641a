/**
 * A fleet on one machine for the tests: a real etcd (test/etcd.ts), and per host a real root, a real
 * `upgrader run` with the fixture agent and a real `upgrader follow`. Everything is stopped after the
 * test (cleanUp).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import * as tar from 'tar';
import { connectEtcd, closeEtcd } from '../src/fleet/etcd.js';
import { fleetPrefix, KEYS, Run as RunSchema, type Run } from '../src/fleet/schema.js';
import { FleetStore, parsed } from '../src/fleet/store.js';
import { CLI, FIXTURES, makeRoot, onCleanup, scratchDir, startUpgrader, Upgrader, type LogLine } from './helpers.js';
import { runArgs } from './timing.js';

export const FLEET = 'test';
/** Short enough that an offline host shows within a test, long enough for a loaded machine's keepalives. */
export const LEASE = '3s';

/** Where the test hosts accept artifacts from: the test file's own temporary directory, and servers on loopback. */
export const ARTIFACTS = [tmpdir(), 'http://127.0.0.1:'];

export type Release = { version: string; archive: string; sha256: string };

/** A .tar.gz of a fixture-agent version, as `fleet publish` takes it. */
export async function releaseArchive(version: string, config: Record<string, unknown> = {}, manifest?: Record<string, unknown>, padBytes = 0): Promise<Release> {
  const dir = scratchDir(`release-${version}-`);
  const tree = join(dir, 'tree');
  mkdirSync(join(tree, 'bin'), { recursive: true });
  writeFileSync(join(tree, 'bin/agent'), `#!/bin/sh\nexec node ${join(FIXTURES, 'agent.mjs')}\n`);
  chmodSync(join(tree, 'bin/agent'), 0o755);
  writeFileSync(join(tree, 'fixture.json'), JSON.stringify({ workEveryMs: 50, ...config }));
  if (manifest) writeFileSync(join(tree, 'upgrader.json'), JSON.stringify(manifest));
  // Incompressible, so that the archive is as large as asked (a slow download can be caught in the middle).
  if (padBytes) writeFileSync(join(tree, 'pad.bin'), randomBytes(padBytes));
  const archive = join(dir, `agent-${version}.tar.gz`);
  await tar.c({ gzip: true, file: archive, cwd: tree }, ['.']);
  return { version, archive, sha256: createHash('sha256').update(readFileSync(archive)).digest('hex') };
}

export type Host = { name: string; group: string; root: string; up: Upgrader; follower: Upgrader; etcd: string[] };

/** A follower process; its JSON log is read like an upgrader's. */
export function startFollower(host: Pick<Host, 'name' | 'group' | 'root' | 'etcd'>, extra: string[] = []): Upgrader {
  const args = ['follow', '--root', host.root, '--fleet', FLEET, '--host', host.name, '--group', host.group, '--lease', LEASE, '--etcd', host.etcd.join(','), '--artifacts', ARTIFACTS.join(',')];
  const child = spawn(process.execPath, [CLI, ...args, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, UPGRADER_LOG_LEVEL: 'info' },
  });
  return new Upgrader(host.root, child);
}

/** A host running version 1.0.0 of the fixture agent under a real upgrader, and its follower. */
export async function startHost(etcd: string[], name: string, group: string, config: Record<string, unknown> = {}): Promise<Host> {
  const root = makeRoot({ '1.0.0': { config: { workEveryMs: 50, ...config } } }, '1.0.0');
  const up = startUpgrader(root, runArgs({ probation: '1s', ready: '20s' }));
  const follower = startFollower({ name, group, root, etcd });
  return { name, group, root, up, follower, etcd };
}

export async function startHosts(etcd: string[], groups: Record<string, number>): Promise<Host[]> {
  const hosts: Host[] = [];
  for (const [group, n] of Object.entries(groups)) for (let i = 0; i < n; i++) hosts.push(await startHost(etcd, `${group}-${String(i).padStart(2, '0')}`, group));
  // Every follower has registered its host once its session is up and its first record written.
  await Promise.all(hosts.map((h) => h.up.waitForTransition('ready', 'running', 60_000)));
  await waitForFleet(etcd, (view) => view.hosts.filter((x: { online: boolean; running: string | null }) => x.online && x.running === '1.0.0').length === hosts.length, `${hosts.length} hosts online on 1.0.0`, 60_000);
  return hosts;
}

/** Builds a release and publishes it with `upgrader fleet publish`, which must succeed. */
export async function publishRelease(etcd: string[], version: string, config: Record<string, unknown> = {}, manifest?: Record<string, unknown>): Promise<Release> {
  const release = await releaseArchive(version, config, manifest);
  const out = await fleetCli(etcd, ['publish', '--version', version, '--artifact', release.archive, '--sha256', release.sha256]);
  if (out.code !== 0) throw new Error(`fleet publish ${version} exited ${out.code}: ${out.stderr}`);
  return release;
}

/** `upgrader fleet <args>` against this fleet, with its output. */
export async function fleetCli(etcd: string[], args: string[], timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await execa(process.execPath, [CLI, 'fleet', ...args, '--fleet', FLEET, '--etcd', etcd.join(',')], { reject: false, timeout: timeoutMs });
  return { code: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
}

export async function fleetStatus(etcd: string[]): Promise<{ code: number; view: any }> {
  const { code, stdout, stderr } = await fleetCli(etcd, ['status', '--json'], 30_000);
  try {
    return { code, view: JSON.parse(stdout) };
  } catch {
    throw new Error(`fleet status --json printed no JSON (exit ${code}): ${stderr}`);
  }
}

/** Waits until `fact` holds of `fleet status --json`, re-reading on a short interval, with a deadline. */
export async function waitForFleet(etcd: string[], fact: (view: any) => boolean, what: string, ms = 60_000): Promise<any> {
  const deadline = Date.now() + ms;
  let last: any = null;
  while (Date.now() < deadline) {
    last = (await fleetStatus(etcd)).view;
    if (fact(last)) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting until ${what}; last fleet status:\n${JSON.stringify(last, null, 1).slice(0, 4000)}`);
}

/** A direct reader of the fleet's records, for checks that `fleet status` does not show (run intervals). */
export async function openStore(etcd: string[]): Promise<FleetStore> {
  const store = new FleetStore(await connectEtcd({ endpoints: etcd, callTimeoutMs: 5_000 }), fleetPrefix('/upgrader/', FLEET));
  onCleanup(() => void closeEtcd(store.client));
  return store;
}

export async function runsOfRollout(store: FleetStore, rolloutId: string): Promise<Run[]> {
  const { entries } = await store.range(KEYS.runPrefix(rolloutId));
  return entries.map((e) => parsed(RunSchema, e).value).filter((r): r is Run => r !== null);
}

/** The most runs ever upgrading at the same instant, from their recorded start and end. */
export function maxInFlight(runs: Run[]): number {
  const edges = runs.filter((r) => r.startedAt).flatMap((r) => [
    { at: Date.parse(r.startedAt!), d: 1 },
    { at: r.endedAt ? Date.parse(r.endedAt) : Number.POSITIVE_INFINITY, d: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.d - b.d);
  let now = 0;
  let most = 0;
  for (const e of edges) most = Math.max(most, (now += e.d));
  return most;
}

export const fleetLogged = {
  phase: (phase: string) => (l: LogLine) => l.msg === 'fleet phase' && l.phase === phase,
};
