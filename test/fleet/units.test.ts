/**
 * The follower's init jobs. Debian has no upstart: its job's script is run as written (paths substituted)
 * with sh -e, as upstart runs it, against a real etcd; the systemd unit's settings are checked against the
 * follower's documented exits (its run under a real systemd needs etcd inside the container: not here).
 */
import { spawn } from 'node:child_process';
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startEtcd } from '../etcd.js';
import { FLEET, waitForFleet } from '../fleet-hosts.js';
import { CLI, cleanUpAfterEach, makeRoot, missing, REPO, scratchDir, startUpgrader, titled, Upgrader } from '../helpers.js';
import { runArgs } from '../timing.js';

cleanUpAfterEach();
const skip = missing('etcd');
const job = readFileSync(join(REPO, 'upstart/upgrader-follow.conf'), 'utf8');
const unit = readFileSync(join(REPO, 'systemd/upgrader-follow@.service'), 'utf8');

describe('the follower under init', () => {
  it('systemd unit: restarts on failure but not on 64 and 78, stops with SIGTERM, never requires the agent unit', () => {
    expect(unit).toMatch(/^Restart=always$/m);
    expect(unit).toMatch(/^RestartPreventExitStatus=64 78$/m);
    expect(unit).toMatch(/^KillSignal=SIGTERM$/m);
    expect(unit).not.toMatch(/^(Requires|BindsTo|PartOf)=/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/upgrader follow --root \$\{UPGRADER_ROOT\} --fleet \$\{UPGRADER_FLEET\} \$UPGRADER_FOLLOW_ARGS$/m);
    expect(job).toMatch(/^normal exit 0 64 78$/m);
    expect(job).toMatch(/^respawn$/m);
  });

  it.skipIf(skip)(titled('upstart job: its script starts a follower from the env file that registers the host, and SIGTERM takes it offline at once', skip), async () => {
    const etcd = await startEtcd({ members: 1 });
    const root = makeRoot({ '1.0.0': { config: { workEveryMs: 50 } } }, '1.0.0');
    const up = startUpgrader(root, runArgs());
    await up.waitForTransition('ready', 'running');
    const base = scratchDir('follow-base-');
    const etc = scratchDir('follow-etc-');
    symlinkSync(root, join(base, 'myagent'));
    writeFileSync(join(etc, 'myagent-follow.env'), `UPGRADER_FLEET=${FLEET}\nUPGRADER_ETCD=${etcd.endpoints[0]}\nUPGRADER_FOLLOW_ARGS="--host jobhost --lease 5s --artifacts /"\n`);
    const script = /^script\n([\s\S]*?)^end script$/m.exec(job)![1]!
      .replaceAll('/usr/local/bin/upgrader', `${process.execPath} ${CLI}`)
      .replaceAll('/var/lib/upgrader', base)
      .replaceAll('/etc/upgrader', etc);
    const follower = new Upgrader(root, spawn('sh', ['-e', '-c', script], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AGENT: 'myagent' } }));
    await waitForFleet(etcd.endpoints, (v) => v.hosts.some((h: { host: string; online: boolean }) => h.host === 'jobhost' && h.online), 'jobhost online');
    follower.kill('SIGTERM');
    expect((await follower.waitForExit()).code).toBe(0);
    // The presence lease is revoked on the way out, not left to expire.
    await waitForFleet(etcd.endpoints, (v) => v.hosts.some((h: { host: string; online: boolean }) => h.host === 'jobhost' && !h.online), 'jobhost offline', 1500);
  });
});
