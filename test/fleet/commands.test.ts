import { describe, expect, it } from 'vitest';
import { startEtcd } from '../etcd.js';
import { fleetCli, publishRelease, fleetStatus, openStore, releaseArchive, runsOfRollout, startFollower, startHost, startHosts, waitForFleet } from '../fleet-hosts.js';
import { cleanUpAfterEach, CLI, makeRoot, missing, titled } from '../helpers.js';
import { execa } from 'execa';

cleanUpAfterEach();
const skip = missing('etcd');

describe.skipIf(skip)(titled('the fleet commands', skip), () => {
  it('publish: a release never changes (another digest: 73), the same one again is fine, a wrong digest is refused (65)', async () => {
    const etcd = await startEtcd({ members: 1 });
    const release = await publishRelease(etcd.endpoints, '2.0.0');
    const again = await fleetCli(etcd.endpoints, ['publish', '--version', '2.0.0', '--artifact', release.archive, '--sha256', release.sha256]);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/already published with this digest/);
    const other = await releaseArchive('2.0.0', { readyDelayMs: 1 });
    const changed = await fleetCli(etcd.endpoints, ['publish', '--version', '2.0.0', '--artifact', other.archive, '--sha256', other.sha256]);
    expect(changed.code).toBe(73);
    expect(changed.stderr).toMatch(/already published with another digest/);
    const wrong = await fleetCli(etcd.endpoints, ['publish', '--version', '3.0.0', '--artifact', release.archive, '--sha256', 'f'.repeat(64)]);
    expect(wrong.code).toBe(65);
    const usage = await fleetCli(etcd.endpoints, ['publish', '--version', '../x', '--artifact', release.archive, '--sha256', release.sha256]);
    expect(usage.code).toBe(64);
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '9.9.9'])).stderr).toMatch(/No release 9\.9\.9 is published/);
  });

  it('pause stops new starts, resume goes on, a second rollout is refused with the first one\'s state, abort ends it', async () => {
    const etcd = await startEtcd({ members: 1 });
    await startHosts(etcd.endpoints, { default: 3 });
    await publishRelease(etcd.endpoints, '2.0.0');
    await publishRelease(etcd.endpoints, '3.0.0');
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '1', '--no-wait'])).code).toBe(0);
    expect((await fleetCli(etcd.endpoints, ['pause'])).stdout).toMatch(/is paused/);
    const refused = await fleetCli(etcd.endpoints, ['rollout', '--to', '3.0.0']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/\(to 2\.0\.0\) is paused at group default, wave \d/);
    // Paused: whatever was in flight ends, and nothing more starts.
    const paused = await waitForFleet(etcd.endpoints, (v) => v.rollout.groups[0].inFlight === 0, 'nothing in flight');
    const store = await openStore(etcd.endpoints);
    const before = (await runsOfRollout(store, paused.rollout.id)).filter((r) => r.startedAt).length;
    expect(before).toBeLessThan(3);
    expect((await fleetStatus(etcd.endpoints)).code).toBe(3);
    expect((await fleetCli(etcd.endpoints, ['resume'])).code).toBe(0);
    expect((await fleetCli(etcd.endpoints, ['resume'])).stderr).toMatch(/is running: resume applies to a rollout that is paused/);
    await waitForFleet(etcd.endpoints, (v) => v.rollout.state === 'succeeded', 'the rollout succeeded after resume', 90_000);

    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '3.0.0', '--batch', '1', '--no-wait'])).code).toBe(0);
    const aborted = await fleetCli(etcd.endpoints, ['abort', '--reason', 'change freeze']);
    expect(aborted.stdout).toMatch(/is aborted/);
    const view = await waitForFleet(etcd.endpoints, (v) => v.rollout.groups[0].inFlight === 0, 'nothing in flight after abort');
    expect(view.rollout.state).toBe('aborted');
    expect(view.rollout.reason).toBe('change freeze');
    expect(view.desired).toBe('2.0.0');
    expect(view.rollout.groups[0].done).toBeLessThan(3);
  });

  it('a second follower under a host name that is taken waits, and does not act for that host', async () => {
    const etcd = await startEtcd({ members: 1 });
    const [first] = await startHosts(etcd.endpoints, { default: 1 });
    const twinRoot = makeRoot({ '1.0.0': { config: { workEveryMs: 50 } } }, '1.0.0');
    const twin = startFollower({ name: first!.name, group: 'default', root: twinRoot, etcd: etcd.endpoints });
    await twin.waitForLog((l) => l.msg === 'fleet session ended; opening a new one' && /another follower holds the presence of host default-00/.test(String(l.why)), 20_000, 'the twin refused');
    const view = await fleetStatus(etcd.endpoints);
    expect(view.view.hosts).toEqual([expect.objectContaining({ host: 'default-00', online: true })]);
    expect(twin.logs.some((l) => l.msg === 'fleet phase')).toBe(false);
  });

  it('a follower that cannot reach etcd keeps the agent running and says so in upgrader status; a second follower on the root is refused', async () => {
    const host = await startHost(['http://127.0.0.1:9'], 'lonely', 'default');
    await host.up.waitForTransition('ready', 'running');
    await host.follower.waitForLog((l) => l.msg === 'etcd is unreachable; the agent keeps running, retrying', 30_000, 'the unreachable warning');
    const status = await execa(process.execPath, [CLI, 'status', '--root', host.root], { reject: false });
    expect(status.exitCode).toBe(0);
    expect(status.stdout).toMatch(/fleet\s+fleet test as lonely \(group default\), PID \d+: etcd unreachable since \S+ ago: etcd at http:\/\/127\.0\.0\.1:9 cannot be reached/);
    const json = JSON.parse((await execa(process.execPath, [CLI, 'status', '--root', host.root, '--json'])).stdout);
    expect(json.follower).toMatchObject({ fleet: 'test', host: 'lonely', etcd: 'unreachable', running: true });
    const second = startFollower({ ...host, name: 'other' });
    expect((await second.waitForExit(20_000)).code).toBe(75);
    expect(second.stderrText.join('\n')).toMatch(/Another follower \(PID \d+, fleet test, host lonely\) already follows this root/);
  });
});
