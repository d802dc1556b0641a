/**
 * `upgrader check` on real agents: it passes the agents of this repository (the Node example, the fixture
 * agent, the sh agent) and fails each purpose-built broken agent in test/fixtures/check/ with a clear line.
 */
import { chmodSync, copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanUpAfterEach, makeRoot, REPO, runCli, scratchDir } from '../helpers.js';

cleanUpAfterEach();

const QUICK = ['--ready-timeout', '3s', '--stop-timeout', '3s'];

/** A version directory whose entry point is `script`. */
function versionWith(script: string): string {
  const dir = scratchDir('check-');
  mkdirSync(join(dir, 'bin'));
  copyFileSync(script, join(dir, 'bin/agent'));
  chmodSync(join(dir, 'bin/agent'), 0o755);
  return dir;
}

function exampleAgent(): string {
  const dir = scratchDir('check-');
  mkdirSync(join(dir, 'bin'));
  writeFileSync(join(dir, 'bin/agent'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(join(REPO, 'dist/examples/example-agent.js'))}\n`);
  chmodSync(join(dir, 'bin/agent'), 0o755);
  return dir;
}

const check = (dir: string, extra: string[] = []) => runCli(['check', ...QUICK, ...extra, dir], 60_000);

describe('upgrader check', () => {
  it('passes the agents of this repository: the Node example, the fixture agent and the sh agent', async () => {
    const fixture = join(makeRoot({ '1.0.0': {} }), 'versions/1.0.0');
    const sh = join(makeRoot({ '1.0.0': { fixture: 'sh-agent.sh' } }), 'versions/1.0.0');
    const results = await Promise.all([exampleAgent(), fixture, sh].map((dir) => check(dir)));
    for (const out of results) {
      expect(out.code, out.stdout + out.stderr).toBe(0);
      expect(out.stdout).not.toMatch(/^FAIL/m);
      expect(out.stdout).toMatch(/^ok {4}as candidate: says ready within 3 s/m);
      expect(out.stdout).toMatch(/^ok {4}a live handoff to itself/m);
      expect(out.stdout.trim().split('\n').at(-1)).toBe('passed: the agent keeps protocol v1');
    }
  });

  const broken: [string, RegExp][] = [
    ['never-ready.sh', /^FAIL {2}as candidate: says ready within 3 s: no ready within 3 s$/m],
    ['exits-on-upgrade-failed.sh', /^FAIL {2}upgrade-failed does not make it exit: it exited with status 3 /m],
    ['ignores-eof.sh', /^FAIL {2}as active: exits within 5 s once its stdin is closed, leaving no process behind: still running 5 s after stdin was closed/m],
    ['leaves-child.sh', /^FAIL {2}as active: exits within 5 s once its stdin is closed, leaving no process behind: .* but left PID \d+ \(sleep 600\) running$/m],
    ['writes-garbage.sh', /^FAIL {2}every stdout line is protocol v1: \d+ line\(s\) that are not protocol v1 messages .*; the first is garbage: "starting up\.\.\."$/m],
    ['stopped-keeps-running.sh', /^FAIL {2}stop: says stopped, then exits within 3 s: it said stopped after [\d.]+ s but is still running 3 s after stop$/m],
    ['upgrade-before-go.sh', /^FAIL {2}as candidate: sends nothing but ready and status before go: it sent upgrade [\d.]+ s after start, before go$/m],
    ['talks-after-stopped.sh', /^FAIL {2}stop: sends nothing but status after stopped: it sent ready after stopped$/m],
  ];

  it('fails each purpose-built broken agent with a clear line, and exits 1', async () => {
    const results = await Promise.all(broken.map(([script]) => check(versionWith(join(REPO, 'test/fixtures/check', script)))));
    results.forEach((out, i) => {
      const [script, line] = broken[i]!;
      expect(out.code, `${script}: ${out.stdout}${out.stderr}`).toBe(1);
      expect(out.stdout, script).toMatch(line);
      expect(out.stdout.trim().split('\n').at(-1)).toBe('FAILED: the agent breaks protocol v1 (see the FAIL lines)');
    });
  }, 90_000);

  it('install --check refuses a version that fails a check, staging nothing; it installs one that passes', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const broken = await runCli(['install', '--root', root, '--version', '2.0.0', '--check', versionWith(join(REPO, 'test/fixtures/check/exits-on-upgrade-failed.sh'))], 120_000);
    expect(broken.code, broken.stderr).toBe(1);
    expect(broken.stderr).toMatch(/The version fails upgrader check \(upgrade-failed does not make it exit: it exited with status 3 .*\); nothing was installed/);
    expect(readdirSync(join(root, 'versions'))).toEqual(['1.0.0']);
    const good = await runCli(['install', '--root', root, '--version', '2.0.0', '--check', join(root, 'versions/1.0.0')], 120_000);
    expect(good.code, good.stderr).toBe(0);
    expect(good.stderr).toMatch(/^ok {4}a live handoff to itself/m);
    expect(readdirSync(join(root, 'versions')).sort()).toEqual(['1.0.0', '2.0.0']);
  }, 150_000);

  it('--json prints every check; a version without an entry point is refused (78)', async () => {
    const out = await check(versionWith(join(REPO, 'test/fixtures/check/never-ready.sh')), ['--json']);
    const report = JSON.parse(out.stdout);
    expect(report.passed).toBe(false);
    expect(report.checks).toContainEqual({ check: 'as candidate: says ready within 3 s', status: 'failed', detail: 'no ready within 3 s' });
    const empty = scratchDir('check-');
    expect((await check(empty)).code).toBe(78);
  });
});
