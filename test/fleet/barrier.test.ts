/**
 * Barrier rollouts (src/fleet/barrier.ts) on real etcd, upgraders, followers and agents, 10 hosts each:
 * no old-version agent works once the migration started and no new-version agent before it ended; the
 * migration runs once; offline hosts hold the barrier until excluded; the rollout command killed in each
 * phase is carried on by --resume; an abort before the migration gives every host its old version back.
 */
import { execa, type ResultPromise } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startEtcd } from '../etcd.js';
import { CLI, cleanUpAfterEach, makeRoot, missing, onCleanup, scratchDir, startUpgrader, titled, workSpans } from '../helpers.js';
import { runArgs } from '../timing.js';
import { FLEET, fleetCli, fleetStatus, releaseArchive, startFollower, startHosts, waitForFleet, type Host } from '../fleet-hosts.js';

cleanUpAfterEach();
const skip = missing('etcd');

/** Publishes `version` as needing a barrier. */
async function publishBarrierRelease(etcd: string[], version: string): Promise<void> {
  const release = await releaseArchive(version, { workEveryMs: 50 });
  const out = await fleetCli(etcd, ['publish', '--version', version, '--artifact', release.archive, '--sha256', release.sha256, '--barrier']);
  expect(out.code, out.stderr).toBe(0);
}

/** A migration that records its start and end (ms since the epoch) in `marker`, taking `ms`, then exits with `code`. */
function migration(marker: string, ms = 500, code = 0): string {
  const stamp = `$(date +%s%N | cut -c1-13)`;
  return `echo "start ${stamp} $UPGRADER_FROM_VERSION $UPGRADER_TO_VERSION" >> ${marker}; sleep ${ms / 1000}; echo "end ${stamp}" >> ${marker}; exit ${code}`;
}

const markerLines = (marker: string) => (existsSync(marker) ? readFileSync(marker, 'utf8').trim().split('\n') : []);

/** A rollout command left running in the background, to be killed in a chosen phase. */
function rolloutInBackground(etcd: string[], args: string[]): ResultPromise {
  const child = execa(process.execPath, [CLI, 'fleet', 'rollout', ...args, '--fleet', FLEET, '--etcd', etcd.join(',')], { reject: false });
  onCleanup(() => void child.kill('SIGKILL'));
  return child;
}

/** Kills the command with SIGKILL; what it had printed. */
async function killCommand(child: ResultPromise): Promise<string> {
  child.kill('SIGKILL');
  return String((await child).stdout);
}

const phaseIs = (phase: string) => (view: any) => view.rollout?.barrier?.phase === phase;

/** From outside: the old version did no work after the migration began, the new one none before it ended. */
function expectNoOverlapWithMigration(hosts: Host[], marker: string): void {
  const [start, end] = markerLines(marker).map((l) => Number(l.split(' ')[1]));
  for (const host of hosts) {
    for (const span of workSpans(host.root)) {
      if (span.version === '1.0.0') expect(span.last, `${host.name}: 1.0.0 worked after the migration began`).toBeLessThan(start!);
      if (span.version === '2.0.0') expect(span.first, `${host.name}: 2.0.0 worked before the migration ended`).toBeGreaterThan(end!);
    }
  }
}

/** A host whose 1.0.0 agent takes 6 s to answer stop (and whose upgrader waits for it): its halt is slow. */
async function slowHaltingHost(etcd: string[], name: string): Promise<Host> {
  const root = makeRoot({ '1.0.0': { config: { workEveryMs: 50, stopDelayMs: 6000 } } }, '1.0.0');
  const up = startUpgrader(root, runArgs({ probation: '1s', ready: '20s', stop: '15s' }));
  const host = { name, group: 'prod', root, etcd, up, follower: startFollower({ name, group: 'prod', root, etcd }) };
  await up.waitForTransition('ready', 'running', 60_000);
  return host;
}

describe.skipIf(skip)(titled('a barrier rollout through a real etcd', skip), () => {
  it('stops at a failed stage with nothing changed; then halts all 10 hosts, runs the migration once between the old version\'s last work and the new one\'s first, then switches in waves', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { canary: 2, prod: 8 });
    await publishBarrierRelease(etcd.endpoints, '2.0.0');
    const refused = await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/published as needing a barrier .* --barrier/);

    const marker = join(scratchDir('migration-'), 'marker');
    // A stage that fails on one host stops the rollout there: nobody halted, no migration, 1.0.0 everywhere.
    const swapped = await releaseArchive('1.5.0');
    expect((await fleetCli(etcd.endpoints, ['publish', '--version', '1.5.0', '--artifact', swapped.archive, '--sha256', swapped.sha256, '--barrier'])).code).toBe(0);
    writeFileSync(swapped.archive, 'not the published archive');
    const stopped = await fleetCli(etcd.endpoints, ['rollout', '--to', '1.5.0', '--barrier', '--migrate', migration(marker)], 120_000);
    expect(stopped.code, stopped.stdout).toBe(1);
    expect(stopped.stdout).toMatch(/rollout \S+ halted: \S+ failed: The artifact .* has SHA-256 \w+, not the expected/);
    let { view } = await fleetStatus(etcd.endpoints);
    expect(view.rollout.barrier).toMatchObject({ phase: 'stage', migration: null });
    expect(view.hosts.every((h: { running: string }) => h.running === '1.0.0')).toBe(true);
    expect(markerLines(marker)).toEqual([]);

    const out = await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--barrier', '--migrate', migration(marker), '--batch', '4'], 200_000);
    expect(out.code, `${out.stdout}\n${out.stderr}`).toBe(0);
    for (const phase of ['halt', 'migrate', 'switch']) expect(out.stdout).toContain(`phase ${phase}:`);
    expect(out.stdout).toMatch(/rollout \S+ succeeded/);
    const lines = markerLines(marker);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^start \d+ 1\.0\.0 2\.0\.0$/);
    expectNoOverlapWithMigration(hosts, marker);
    ({ view } = await fleetStatus(etcd.endpoints));
    expect(view.desired).toBe('2.0.0');
    expect(view.hosts.map((h: { running: string }) => h.running)).toEqual(hosts.map(() => '2.0.0'));
    expect(view.rollout.barrier).toMatchObject({ phase: 'switch', migration: { exitCode: 0, runs: 1 } });
  });

  it('an offline host holds the barrier; the command killed in the barrier, halt and switch phases is carried on by --resume (--exclude lets it go on); the excluded host is kept off 1.0.0, then upgraded', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = [...(await startHosts(etcd.endpoints, { canary: 1, prod: 7 })), await slowHaltingHost(etcd.endpoints, 'prod-slow')];
    const away = hosts[3]!;
    away.follower.kill('SIGTERM');
    await away.follower.waitForExit();
    await waitForFleet(etcd.endpoints, (v) => v.hosts.some((h: { host: string; online: boolean }) => h.host === away.name && !h.online), `${away.name} offline`, 20_000);
    await publishBarrierRelease(etcd.endpoints, '2.0.0');
    const marker = join(scratchDir('migration-'), 'marker');

    let command = rolloutInBackground(etcd.endpoints, ['--to', '2.0.0', '--barrier', '--migrate', migration(marker), '--batch', '3']);
    await waitForFleet(etcd.endpoints, phaseIs('barrier'), 'the barrier waiting for the offline host', 60_000);
    expect(await killCommand(command)).toMatch(new RegExp(`offline, holding the barrier: ${away.name} \\(last seen`));

    command = rolloutInBackground(etcd.endpoints, ['--resume', '--exclude', away.name]);
    await waitForFleet(etcd.endpoints, (v) => phaseIs('halt')(v) && v.hosts.some((h: { host: string; run: string }) => h.host === 'prod-slow' && h.run === 'staged'), 'the halt waiting on the slow host', 60_000);
    await killCommand(command);
    expect(markerLines(marker)).toEqual([]);

    command = rolloutInBackground(etcd.endpoints, ['--resume']);
    await waitForFleet(etcd.endpoints, (v) => phaseIs('switch')(v) && v.rollout.groups.some((g: { done: number }) => g.done > 0), 'the first wave of the switch done', 60_000);
    await killCommand(command);

    const last = await fleetCli(etcd.endpoints, ['rollout', '--resume'], 200_000);
    expect(last.code, `${last.stdout}\n${last.stderr}`).toBe(0);
    expect(last.stdout).toMatch(/rollout \S+ succeeded/);
    expect(markerLines(marker)).toHaveLength(2);
    const present = hosts.filter((h) => h !== away);
    expectNoOverlapWithMigration(present, marker);

    // Back, the excluded host may not run 1.0.0 beside 2.0.0: halted, then taken to 2.0.0.
    away.follower = startFollower(away);
    await waitForFleet(etcd.endpoints, (v) => v.hosts.some((h: { host: string; online: boolean; running: string }) => h.host === away.name && h.online && h.running === '2.0.0'), `${away.name} on 2.0.0`, 60_000);
    const spans = workSpans(away.root);
    expect(spans.map((s) => s.version)).toEqual(['1.0.0', '2.0.0']);
  });

  it('an abort before the migration resumes every host it halted on 1.0.0 (not one an operator halted); a migration killed mid-way is not run again without --rerun-migration; a failed one leaves every host halted, and abort then keeps them halted', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = [...(await startHosts(etcd.endpoints, { prod: 9 })), await slowHaltingHost(etcd.endpoints, 'prod-slow')];
    await publishBarrierRelease(etcd.endpoints, '2.0.0');
    // Halted by an operator for reasons of their own: no abort of the fleet's may start it again.
    const byHand = hosts[0]!;
    expect((await execa(process.execPath, [CLI, 'halt', '--root', byHand.root, '--by', 'ops'], { reject: false })).exitCode).toBe(0);

    let command = rolloutInBackground(etcd.endpoints, ['--to', '2.0.0', '--barrier', '--migrate', 'true']);
    await waitForFleet(etcd.endpoints, (v) => phaseIs('halt')(v) && v.hosts.filter((h: { run: string }) => h.run === 'halted').length === 9, 'nine hosts halted, the slow one not yet', 60_000);
    await killCommand(command);
    const aborted = await fleetCli(etcd.endpoints, ['abort']);
    expect(aborted.stdout).toMatch(/is aborted; its halted hosts resume their old version/);
    const others = (v: any) => v.hosts.filter((h: { host: string }) => h.host !== byHand.name);
    await waitForFleet(etcd.endpoints, (v) => others(v).every((h: { running: string; online: boolean }) => h.online && h.running === '1.0.0'), 'every other host back on 1.0.0', 60_000);
    expect((await fleetStatus(etcd.endpoints)).view.hosts.find((h: { host: string }) => h.host === byHand.name).running).toBeNull();

    const marker = join(scratchDir('migration-'), 'marker');
    command = rolloutInBackground(etcd.endpoints, ['--to', '2.0.0', '--barrier', '--migrate', migration(marker, 3000, 3)]);
    const deadline = Date.now() + 90_000;
    while (markerLines(marker).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await killCommand(command);
    const resumed = await fleetCli(etcd.endpoints, ['rollout', '--resume']);
    expect(resumed.code).toBe(1);
    expect(resumed.stderr).toMatch(/The migration started at .* and its end was never recorded: the rollout command was killed while it ran/);

    const rerun = await fleetCli(etcd.endpoints, ['rollout', '--resume', '--rerun-migration'], 60_000);
    expect(rerun.code).toBe(1);
    expect(rerun.stdout).toMatch(/migration exited with status 3/);
    expect(rerun.stdout).toMatch(/halted: the migration exited with status 3; every host stays halted/);
    const { view } = await fleetStatus(etcd.endpoints);
    expect(view.hosts.map((h: { running: string | null }) => h.running)).toEqual(hosts.map(() => null));
    expect(view.rollout.barrier.migration).toMatchObject({ runs: 2, exitCode: 3 });

    const kept = await fleetCli(etcd.endpoints, ['abort']);
    expect(kept.stdout).toMatch(/its hosts stay halted: the migration exited with status 3/);
    expect((await fleetStatus(etcd.endpoints)).view.hosts.every((h: { running: string | null }) => h.running === null)).toBe(true);
  });
});
