/**
 * Debian 12 has no upstart, so the job cannot run under upstart here. What can be tested is tested:
 * the job's script, run as written (paths substituted) with sh -e as upstart runs it, starts a working
 * upgrader in the shell's own PID (so no `expect` stanza is right), and the upgrader's exits match
 * what `respawn` and `normal exit` expect.
 */
import { spawn } from 'node:child_process';
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../src/config.js';
import { parseDuration } from '../../src/duration.js';
import { cleanUpAfterEach, logged, makeRoot, REPO, scratchDir, statusJson, Upgrader } from '../helpers.js';

const job = readFileSync(join(REPO, 'upstart/upgrader.conf'), 'utf8');
const script = /^script\n([\s\S]*?)^end script$/m.exec(job)![1]!;
const stanza = (name: string) => new RegExp(`^${name} (.+)$`, 'm').exec(job)?.[1];

function startJob(agent: string, base: string, etc: string): Upgrader {
  const text = script
    .replaceAll('/usr/local/lib/upgrader/upgrader.cjs', join(REPO, 'dist/upgrader.cjs'))
    .replaceAll('/var/lib/upgrader', base)
    .replaceAll('/etc/upgrader', etc);
  const child = spawn('sh', ['-e', '-c', text], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AGENT: agent } });
  return new Upgrader(join(base, agent), child);
}

function baseWith(agent: string, config: Record<string, unknown> = {}): { base: string; etc: string } {
  const root = makeRoot({ '1.0.0': { config } }, '1.0.0');
  const base = scratchDir('upstart-base-');
  const etc = scratchDir('upstart-etc-');
  // the job derives the root from $AGENT: put a link to the test root where it will look
  symlinkSync(root, join(base, agent));
  return { base, etc };
}

cleanUpAfterEach();

describe('upstart job', () => {
  it('has respawn, a respawn limit, no expect stanza, and a kill timeout longer than the stop timeout', () => {
    expect(job).toMatch(/^respawn$/m);
    expect(stanza('respawn limit')).toMatch(/^\d+ \d+$/);
    expect(job).not.toMatch(/^expect /m);
    const killTimeout = Number(stanza('kill timeout'));
    expect(killTimeout * 1000).toBeGreaterThan(parseDuration(DEFAULTS.stopTimeout, 'stop') + 5000);
    expect(stanza('instance')).toBe('$AGENT');
  });

  it('its script, run as written, starts a working upgrader in the job PID; TERM stops it with status 0', async () => {
    const { base, etc } = baseWith('demo');
    const up = startJob('demo', base, etc);
    await up.waitForTransition('ready', 'running');
    const { code, report } = await statusJson(join(base, 'demo'));
    expect(code).toBe(0);
    expect(report.upgraderPid).toBe(up.pid);
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);
  });

  it('reads /etc/upgrader/$AGENT.env like the systemd unit', async () => {
    const { base, etc } = baseWith('envd');
    writeFileSync(join(etc, 'envd.env'), 'UPGRADER_ARGS="--probation 0s --ready-timeout 7s"\n');
    const up = startJob('envd', base, etc);
    const line = await up.waitForLog(logged.starting());
    expect(line.config).toMatchObject({ probationMs: 0, readyMs: 7000 });
  });

  it('exits with the agent status when the agent exits on its own (respawn restarts it)', async () => {
    const { base, etc } = baseWith('crash', { exitAfterGoMs: 100, exitCode: 5 });
    const up = startJob('crash', base, etc);
    const { code } = await up.waitForExit();
    expect(code).toBe(5);
    expect(stanza('normal exit')!.split(' ')).not.toContain('5');
  });

  it('exits 78 on a broken root, which `normal exit` keeps from respawning', async () => {
    const base = scratchDir('upstart-base-');
    const etc = scratchDir('upstart-etc-');
    const up = startJob('missing', base, etc);
    const { code } = await up.waitForExit();
    expect(code).toBe(78);
    expect(stanza('normal exit')!.split(' ')).toEqual(expect.arrayContaining(['64', '78']));
  });
});
