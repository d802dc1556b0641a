import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startEtcd } from '../etcd.js';
import { FLEET, fleetCli, fleetStatus, openStore, releaseArchive, runsOfRollout, startFollower, startHosts, waitForFleet, fleetLogged, type Host } from '../fleet-hosts.js';
import { CLI, cleanUpAfterEach, missing, onCleanup, titled, workSpans } from '../helpers.js';

cleanUpAfterEach();
const skip = missing('etcd');

const onVersion = (version: string) => (v: any) => v.rollout?.state === 'succeeded' && v.hosts.every((h: { running: string }) => h.running === version);

async function publish(etcd: string[], version: string, slowly = false) {
  const release = await releaseArchive(version, {}, undefined, slowly ? 60_000 : 0);
  const artifact = slowly ? await slowServer(release.archive, 2048) : release.archive;
  const out = await fleetCli(etcd, ['publish', '--version', version, '--artifact', artifact, '--sha256', release.sha256]);
  expect(out.code, out.stderr).toBe(0);
  return release;
}

/** An HTTP server that sends `file` slowly (`bytesPerTick` every 20 ms), so a download is caught in the middle. */
async function slowServer(file: string, bytesPerTick: number): Promise<string> {
  const server: Server = createServer((_req, res) => {
    const body = readFileSync(file);
    res.writeHead(200, { 'content-length': body.length });
    let sent = 0;
    const timer = setInterval(() => {
      if (res.destroyed) return clearInterval(timer);
      res.write(body.subarray(sent, sent + bytesPerTick));
      sent += bytesPerTick;
      if (sent >= body.length) {
        clearInterval(timer);
        res.end();
      }
    }, 20);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onCleanup(() => server.close());
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/agent.tar.gz`;
}

/** The largest pause between two records of work on a host, handoffs included (ms). */
function longestSilence(host: Host): number {
  const spans = workSpans(host.root);
  const lines = readFileSync(`${host.root}/work.log`, 'utf8').trim().split('\n').map((l) => Number(l.split(' ')[0]));
  lines.sort((a, b) => a - b);
  let most = 0;
  for (let i = 1; i < lines.length; i++) most = Math.max(most, lines[i]! - lines[i - 1]!);
  return spans.length ? most : Number.POSITIVE_INFINITY;
}

describe.skipIf(skip)(titled('a fleet rollout survives the death of any of its parts', skip), () => {
  it('finishes when the rollout command is killed with SIGKILL in the middle', async () => {
    const etcd = await startEtcd({ members: 1 });
    await startHosts(etcd.endpoints, { default: 4 });
    await publish(etcd.endpoints, '2.0.0');
    const command = spawn(process.execPath, [CLI, 'fleet', 'rollout', '--to', '2.0.0', '--batch', '1', '--fleet', FLEET, '--etcd', etcd.endpoints.join(',')], { stdio: 'ignore' });
    onCleanup(() => command.kill('SIGKILL'));
    await waitForFleet(etcd.endpoints, (v) => v.rollout?.groups[0]?.done >= 1, 'the first host done', 60_000);
    command.kill('SIGKILL');
    const view = await waitForFleet(etcd.endpoints, onVersion('2.0.0'), 'the rollout finished without its command', 120_000);
    expect(view.rollout.groups[0]).toMatchObject({ hosts: 4, done: 4, failed: 0 });
  });

  it('finishes with the right counts when followers are killed mid-download and mid-handoff', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { default: 3 });
    await publish(etcd.endpoints, '2.0.0', true);
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '1', '--no-wait'])).code).toBe(0);

    const [first, second] = hosts as [Host, Host];
    await first.follower.waitForLog(fleetLogged.phase('downloading'), 60_000, 'the first host downloading');
    first.follower.kill('SIGKILL');
    first.follower = startFollower(first);
    await second.follower.waitForLog(fleetLogged.phase('upgrading'), 120_000, 'the second host upgrading');
    second.follower.kill('SIGKILL');
    second.follower = startFollower(second);

    const view = await waitForFleet(etcd.endpoints, onVersion('2.0.0'), 'every host on 2.0.0', 180_000);
    expect(view.rollout.groups[0]).toMatchObject({ hosts: 3, done: 3, failed: 0, inFlight: 0 });
    const store = await openStore(etcd.endpoints);
    const runs = await runsOfRollout(store, view.rollout.id);
    expect(runs.map((r) => [r.host, r.state])).toEqual(hosts.map((h) => [h.name, 'done']));
  });

  it('keeps every agent working while etcd is frozen, then killed and restarted on its data, and completes the rollout after', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { default: 4 });
    await publish(etcd.endpoints, '2.0.0');
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '1', '--no-wait'])).code).toBe(0);
    await waitForFleet(etcd.endpoints, (v) => v.rollout?.groups[0]?.done >= 1, 'the first host done', 60_000);

    etcd.pause(0);
    await new Promise((r) => setTimeout(r, 4000));
    etcd.resume(0);
    await etcd.kill(0, 'SIGKILL');
    await etcd.restart(0);

    const view = await waitForFleet(etcd.endpoints, onVersion('2.0.0'), 'the rollout completed after etcd came back', 180_000);
    expect(view.rollout.groups[0]).toMatchObject({ done: 4, failed: 0 });
    // Work never stopped for longer than a handoff takes on a loaded machine, etcd or no etcd.
    for (const host of hosts) expect(longestSilence(host), host.name).toBeLessThan(1500);
  });

  it('a follower frozen through a whole rollout and a compaction of the history it watched converges to the desired version when it thaws', async () => {
    const etcd = await startEtcd({ members: 1 });
    const hosts = await startHosts(etcd.endpoints, { default: 3 });
    const frozen = hosts[2]!;
    process.kill(frozen.follower.pid, 'SIGSTOP');
    onCleanup(() => process.kill(frozen.follower.pid, 'SIGCONT'));
    await waitForFleet(etcd.endpoints, (v) => v.hosts.some((h: { host: string; online: boolean }) => h.host === frozen.name && !h.online), 'the frozen host offline', 30_000);
    await publish(etcd.endpoints, '2.0.0');
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '2'])).code).toBe(0);
    await etcd.compact();
    process.kill(frozen.follower.pid, 'SIGCONT');
    await waitForFleet(etcd.endpoints, (v) => v.hosts.every((h: { online: boolean; running: string }) => h.online && h.running === '2.0.0'), 'every host on 2.0.0', 60_000);
    expect((await fleetStatus(etcd.endpoints)).code).toBe(0);
  });

  it('completes on a three-member etcd with one member killed in the middle', async () => {
    const etcd = await startEtcd({ members: 3 });
    await startHosts(etcd.endpoints, { default: 4 });
    await publish(etcd.endpoints, '2.0.0');
    expect((await fleetCli(etcd.endpoints, ['rollout', '--to', '2.0.0', '--batch', '1', '--no-wait'])).code).toBe(0);
    await waitForFleet(etcd.endpoints, (v) => v.rollout?.groups[0]?.done >= 1, 'the first host done', 60_000);
    await etcd.kill(0, 'SIGKILL');
    const alive = etcd.endpoints.slice(1);
    const view = await waitForFleet(alive, onVersion('2.0.0'), 'the rollout completed on two members', 180_000);
    expect(view.rollout.groups[0]).toMatchObject({ done: 4, failed: 0 });
    expect((await fleetStatus(alive)).code).toBe(0);
  });
});

