import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startEtcd } from '../etcd.js';
import { fleetCli, publishRelease, fleetStatus, maxInFlight, openStore, releaseArchive, runsOfRollout, startFollower, startHosts, waitForFleet, type Host } from '../fleet-hosts.js';
import { cleanUpAfterEach, missing, onCleanup, titled, workSpans } from '../helpers.js';

cleanUpAfterEach();
const skip = missing('etcd');

/** No two agents of one host ever worked at once: each handoff was live and exclusive. */
function expectExclusiveWork(host: Host): void {
  const spans = workSpans(host.root);
  for (let i = 1; i < spans.length; i++) expect(spans[i]!.first, `${host.name}: ${spans[i]!.version} began before ${spans[i - 1]!.version} ended`).toBeGreaterThan(spans[i - 1]!.last);
}

describe.skipIf(skip)(titled('a fleet rollout through a real etcd', skip), () => {
  it('takes 20 hosts in two groups to a good release, canaries first, never more than --batch in flight, every handoff live', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { canary: 4, prod: 16 });
    await publishRelease(etcd.endpoints, '2.0.0');

    const out = await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--groups', 'canary,prod', '--canaries', '1', '--batch', '3'], 200_000);
    expect(out.code, `${out.stdout}\n${out.stderr}`).toBe(0);
    expect(out.stdout).toMatch(/rollout \S+ succeeded/);

    const status = await fleetStatus(etcd.endpoints);
    expect(status.code).toBe(0);
    expect(status.view.desired).toBe('2.0.0');
    expect(status.view.rollout.state).toBe('succeeded');
    expect(status.view.hosts.map((h: { running: string }) => h.running)).toEqual(hosts.map(() => '2.0.0'));
    expect(status.view.rollout.groups.map((g: { name: string; done: number }) => [g.name, g.done])).toEqual([['canary', 4], ['prod', 16]]);

    const store = await openStore(etcd.endpoints);
    const runs = await runsOfRollout(store, status.view.rollout.id);
    expect(runs).toHaveLength(20);
    expect(runs.every((r) => r.state === 'done' && r.from === '1.0.0')).toBe(true);
    expect(maxInFlight(runs)).toBeLessThanOrEqual(3);
    // Canaries alone: each group's first host ended before any other host of its group started.
    for (const group of ['canary', 'prod']) {
      const mine = runs.filter((r) => r.host.startsWith(`${group}-`)).sort((a, b) => a.startedAt!.localeCompare(b.startedAt!));
      for (const later of mine.slice(1)) expect(Date.parse(later.startedAt!)).toBeGreaterThanOrEqual(Date.parse(mine[0]!.endedAt!));
    }
    // The canary group ended before prod began.
    const canaryEnd = Math.max(...runs.filter((r) => r.host.startsWith('canary-')).map((r) => Date.parse(r.endedAt!)));
    const prodStart = Math.min(...runs.filter((r) => r.host.startsWith('prod-')).map((r) => Date.parse(r.startedAt!)));
    expect(prodStart).toBeGreaterThanOrEqual(canaryEnd);
    for (const host of hosts) expectExclusiveWork(host);
  });

  it('halts on a canary whose candidate fails: no other host is touched, the canary stays on its version, status names it', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { canary: 2, prod: 3 });
    await publishRelease(etcd.endpoints, '2.0.0', { exitBeforeReady: 3 });

    const out = await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--groups', 'canary,prod', '--batch', '2']);
    expect(out.code, out.stdout).toBe(1);
    expect(out.stdout).toMatch(/halted: canary-00 failed/);

    const status = await fleetStatus(etcd.endpoints);
    expect(status.code).toBe(4);
    expect(status.view.rollout.state).toBe('halted');
    expect(status.view.rollout.failed).toEqual([expect.objectContaining({ host: 'canary-00', code: 'candidate-failed' })]);
    const byName = Object.fromEntries(status.view.hosts.map((h: { host: string }) => [h.host, h]));
    expect(byName['canary-00'].running).toBe('1.0.0');
    expect(byName['canary-00'].phase).toBe('failed');
    expect(byName['canary-00'].error.code).toBe('candidate-failed');
    for (const h of hosts.slice(1)) {
      expect(byName[h.name].running).toBe('1.0.0');
      expect(byName[h.name].run).toBe('pending');
    }
    const store = await openStore(etcd.endpoints);
    expect((await runsOfRollout(store, status.view.rollout.id)).map((r) => r.host)).toEqual(['canary-00']);
    expect((await fleetCli(etcd.endpoints, ['status'])).stdout).toMatch(/canary-00 .*\[candidate-failed\]/);
  });

  it('halts on a digest mismatch at the canary, on a release outside the running version\'s upgradeFrom, and on an artifact outside the host\'s --artifacts', async () => {
    const etcd = await startEtcd({ members: 1 });
    await startHosts(etcd.endpoints, { default: 3 });
    const swapped = await publishRelease(etcd.endpoints, '2.0.0');
    // The artifact changes after it was published: every host must refuse it before unpacking anything.
    writeFileSync(swapped.archive, 'not the published archive');
    let out = await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0']);
    expect(out.code, out.stdout).toBe(1);
    let status = await fleetStatus(etcd.endpoints);
    expect(status.view.rollout.failed).toEqual([expect.objectContaining({ host: 'default-00', code: 'digest-mismatch' })]);
    expect(status.view.hosts.every((h: { running: string }) => h.running === '1.0.0')).toBe(true);

    await publishRelease(etcd.endpoints, '3.0.0', {}, { upgradeFrom: '>=2.0.0' });
    out = await fleetCli(etcd.endpoints, ['rollout', '--to', '3.0.0']);
    expect(out.code, out.stdout).toBe(1);
    status = await fleetStatus(etcd.endpoints);
    expect(status.view.rollout.failed).toEqual([expect.objectContaining({ host: 'default-00', code: 'jump-refused' })]);
    expect(status.view.hosts.every((h: { running: string }) => h.running === '1.0.0')).toBe(true);

    // Whoever writes etcd picks the artifact and its digest together: a host takes artifacts only from its
    // own --artifacts, and refuses one from anywhere else without fetching it.
    const elsewhere = mkdtempSync('/var/tmp/upgrader-elsewhere-');
    onCleanup(() => rmSync(elsewhere, { recursive: true, force: true }));
    const outside = await releaseArchive('4.0.0');
    copyFileSync(outside.archive, join(elsewhere, 'agent.tgz'));
    expect((await fleetCli(etcd.endpoints, ['publish', '--version', '4.0.0', '--artifact', join(elsewhere, 'agent.tgz'), '--sha256', outside.sha256])).code).toBe(0);
    out = await fleetCli(etcd.endpoints, ['rollout', '--to', '4.0.0']);
    expect(out.code, out.stdout).toBe(1);
    status = await fleetStatus(etcd.endpoints);
    expect(status.view.rollout.failed).toEqual([expect.objectContaining({ host: 'default-00', code: 'bad-source', reason: expect.stringMatching(/not under this host's --artifacts/) })]);
    expect(status.view.hosts.find((h: { host: string }) => h.host === 'default-00')).toMatchObject({ phase: 'failed', running: '1.0.0', error: expect.objectContaining({ code: 'bad-source' }) });
  });

  it('rolls a succeeded rollout back: the hosts it moved return to their previous version', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { default: 3 });
    await publishRelease(etcd.endpoints, '2.0.0');
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '2'])).code).toBe(0);
    const out = await fleetCli(etcd.endpoints, ['rollback']);
    expect(out.code, out.stdout).toBe(0);
    const status = await fleetStatus(etcd.endpoints);
    expect(status.view.rollout.kind).toBe('rollback');
    expect(status.view.desired).toBe(null);
    expect(status.view.hosts.map((h: { running: string }) => h.running)).toEqual(['1.0.0', '1.0.0', '1.0.0']);
    for (const host of hosts) expectExclusiveWork(host);
  });

  it('shows a host whose follower is gone as offline, leaves it out of the rollout, and brings it to the desired version when it returns', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { default: 3 });
    const away = hosts[2]!;
    away.follower.kill('SIGKILL');
    await waitForFleet(etcd.endpoints, (v) => v.hosts.some((h: { host: string; online: boolean }) => h.host === away.name && !h.online), `${away.name} offline`, 20_000);
    expect((await fleetCli(etcd.endpoints, ['status'])).stdout).toMatch(new RegExp(`${away.name} .*OFFLINE since`));

    await publishRelease(etcd.endpoints, '2.0.0');
    const out = await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '2']);
    expect(out.code, out.stdout).toBe(0);
    expect(out.stdout).toContain(`offline, not included: ${away.name}`);
    expect((await fleetStatus(etcd.endpoints)).code).toBe(4);

    away.follower = startFollower(away);
    await waitForFleet(etcd.endpoints, (v) => v.hosts.every((h: { running: string; online: boolean }) => h.online && h.running === '2.0.0'), 'every host on 2.0.0', 60_000);
    expect((await fleetStatus(etcd.endpoints)).code).toBe(0);
    expectExclusiveWork(away);
  });
});
