/** Operator commands on real files: install, versions, prune, and the host-wide status. */
import { execa } from 'execa';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, CLI, currentTarget, logged, makeRoot, missing, REPO, runCli, scratchDir, startReady, titled, waitForSavedState, workSpans } from '../helpers.js';
import { FAST, runArgs } from '../timing.js';

cleanUpAfterEach();

const scratch = () => scratchDir('operator-');
const staging = (root: string) => readdirSync(join(root, 'versions')).filter((n) => n.startsWith('.'));

/** A version's source tree: bin/agent as the fixture agent, plus a data file. */
function sourceTree(marker = 'one'): string {
  const dir = scratch();
  mkdirSync(join(dir, 'bin'));
  const root = makeRoot({ template: {} });
  cpSync(join(root, 'versions/template/bin/agent'), join(dir, 'bin/agent'));
  chmodSync(join(dir, 'bin/agent'), 0o755);
  writeFileSync(join(dir, 'data.txt'), marker);
  return dir;
}

async function archiveOf(dir: string): Promise<string> {
  const file = join(scratch(), 'agent.tar.gz');
  await execa('tar', ['-czf', file, '-C', dir, '.']);
  return file;
}

/** An archive with hostile entries, written with Python's tarfile (tar itself refuses to make some). */
async function hostileArchive(kind: 'dotdot' | 'absolute' | 'symlink-out'): Promise<string> {
  const file = join(scratch(), 'evil.tgz');
  const script = `
import tarfile, io, sys
kind, path = sys.argv[1], sys.argv[2]
with tarfile.open(path, 'w:gz') as t:
    def add(name, data=b'x', mode=0o755):
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = mode
        t.addfile(info, io.BytesIO(data))
    add('bin/agent', b'#!/bin/sh\\nexit 0\\n')
    if kind == 'dotdot': add('../evil')
    if kind == 'absolute': add('/tmp/upgrader-evil-absolute')
    if kind == 'symlink-out':
        info = tarfile.TarInfo('bin/link'); info.type = tarfile.SYMTYPE; info.linkname = '../../../../etc/passwd'; t.addfile(info)
`;
  await execa('python3', ['-c', script, kind, file]);
  return file;
}

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

describe('upgrader install', () => {
  it('installs from a directory, and says so when the same content is installed again', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const source = sourceTree();
    const first = await runCli(['install', '--root', root, '--version', '2.0.0', source]);
    expect(first).toMatchObject({ code: 0 });
    expect(first.stdout).toMatch(/installed 2\.0\.0/);
    expect(readFileSync(join(root, 'versions/2.0.0/data.txt'), 'utf8')).toBe('one');
    const again = await runCli(['install', '--root', root, '--version', '2.0.0', source]);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/already installed with identical content/);
    const other = await runCli(['install', '--root', root, '--version', '2.0.0', sourceTree('two')]);
    expect(other.code).toBe(73);
    expect(other.stderr).toMatch(/Version 2\.0\.0 is already installed with different content/);
    expect(readFileSync(join(root, 'versions/2.0.0/data.txt'), 'utf8')).toBe('one');
    expect(staging(root)).toEqual([]);
  });

  it('installs from an archive with a matching checksum, and refuses a mismatch showing both digests', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const archive = await archiveOf(sourceTree());
    const wrong = '0'.repeat(64);
    const refused = await runCli(['install', '--root', root, '--version', '2.0.0', '--sha256', wrong, archive]);
    expect(refused.code).toBe(65);
    expect(refused.stderr).toContain(sha256(archive));
    expect(refused.stderr).toContain(wrong);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    const ok = await runCli(['install', '--root', root, '--version', '2.0.0', '--sha256', sha256(archive), archive]);
    expect(ok.code).toBe(0);
    expect(readFileSync(join(root, 'versions/2.0.0/data.txt'), 'utf8')).toBe('one');
    expect(staging(root)).toEqual([]);
  });

  it.each([
    ['dotdot', /\.\.\/evil leads outside the version directory/],
    ['absolute', /\/tmp\/upgrader-evil-absolute is an absolute path/],
    ['symlink-out', /bin\/link is a link to .*outside the version directory/],
  ] as const)('refuses an archive entry that would escape (%s) and leaves nothing behind', async (kind, message) => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const result = await runCli(['install', '--root', root, '--version', '2.0.0', await hostileArchive(kind)]);
    expect(result.code).toBe(65);
    expect(result.stderr).toMatch(message);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    expect(existsSync(join(root, 'versions/evil'))).toBe(false);
    expect(existsSync(join(root, 'evil'))).toBe(false);
    expect(existsSync('/tmp/upgrader-evil-absolute')).toBe(false);
    expect(staging(root)).toEqual([]);
  });

  it('refuses a version whose entry point is missing or not executable', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const source = sourceTree();
    chmodSync(join(source, 'bin/agent'), 0o644);
    const result = await runCli(['install', '--root', root, '--version', '2.0.0', source]);
    expect(result.code).toBe(78);
    expect(result.stderr).toMatch(/Refusing to install 2\.0\.0: the entry point .* is not executable/);
    rmSync(join(source, 'bin/agent'));
    expect((await runCli(['install', '--root', root, '--version', '2.0.0', source])).stderr).toMatch(/has no entry point/);
    expect(staging(root)).toEqual([]);
  });

  it('refuses bad names before touching anything', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const result = await runCli(['install', '--root', root, '--version', '../x', sourceTree()]);
    expect(result.code).toBe(64);
    expect(result.stderr).toMatch(/"..\/x" is not a valid version name/);
  });

  it('an install killed halfway leaves a staging directory that the next install and the next run remove', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    // What a killed install leaves: a temporary directory named after its (now dead) process.
    mkdirSync(join(root, 'versions/.2.0.0.tmp-999999-dead/bin'), { recursive: true });
    expect((await runCli(['install', '--root', root, '--version', '3.0.0', sourceTree()])).code).toBe(0);
    expect(staging(root)).toEqual([]);
    mkdirSync(join(root, 'versions/.4.0.0.tmp-999998-dead'));
    const { up } = await startReady(root, FAST);
    expect(staging(root)).toEqual([]);
    expect(up.logs.some(logged.removedLeftover(join(root, 'versions/.4.0.0.tmp-999998-dead')))).toBe(true);
  });
});

describe('upgrader versions and prune', () => {
  it('lists versions newest first with their markers, and prunes only what is not needed', async () => {
    const root = makeRoot({ '1.0.0': {}, '1.1.0': {}, '1.2.0': {}, '2.0.0': {}, '0.9.0': {} }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '1.1.0');
    await up.waitForSent('go', '1.1.0');
    await waitForSavedState(root, (s) => s.agents.length === 1, 'the old agent gone');
    const listed = await runCli(['versions', '--root', root, '--json']);
    const list = JSON.parse(listed.stdout) as { version: string; markers: string[]; sizeBytes: number; installedAt: string }[];
    expect(list.map((v) => v.version)).toEqual(['2.0.0', '1.2.0', '1.1.0', '1.0.0', '0.9.0']);
    expect(list.find((v) => v.version === '1.1.0')!.markers).toEqual(['current', 'running']);
    expect(list.find((v) => v.version === '1.0.0')!.markers).toEqual(['previous']);
    expect(list[0]!.sizeBytes).toBeGreaterThan(0);
    expect((await runCli(['versions', '--root', root])).stdout).toMatch(/1\.1\.0\s+\S+\s+.*\[current, running\]/);

    const dry = JSON.parse((await runCli(['prune', '--root', root, '--keep', '1', '--dry-run', '--json'])).stdout);
    expect(dry).toMatchObject({ dryRun: true, removed: ['1.2.0', '0.9.0'] });
    expect(existsSync(join(root, 'versions/1.2.0'))).toBe(true);
    const done = await runCli(['prune', '--root', root, '--keep', '1']);
    expect(done.stdout).toMatch(/removed 1\.2\.0, 0\.9\.0/);
    expect(readdirSync(join(root, 'versions')).sort()).toEqual(['1.0.0', '1.1.0', '2.0.0']);
    expect(currentTarget(root)).toBe('versions/1.1.0');
  });

  it('one name that is not a semantic version orders them all by the ctime of versions/<v>, which chmod moves', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {}, latest: {} }, '1.0.0');
    const order = async () => (JSON.parse((await runCli(['versions', '--root', root, '--json'])).stdout) as { version: string }[]).map((v) => v.version);
    // Changing a directory's inode sets its ctime: each of these becomes the newest in turn.
    for (const name of ['latest', '2.0.0', '1.0.0']) {
      await new Promise((r) => setTimeout(r, 20));
      chmodSync(join(root, 'versions', name), 0o755);
    }
    expect(await order()).toEqual(['1.0.0', '2.0.0', 'latest']);
    await new Promise((r) => setTimeout(r, 20));
    chmodSync(join(root, 'versions/latest'), 0o755);
    expect(await order()).toEqual(['latest', '1.0.0', '2.0.0']);
    const dry = JSON.parse((await runCli(['prune', '--root', root, '--keep', '1', '--dry-run', '--json'])).stdout);
    expect(dry.removed).toEqual(['2.0.0']);
  });

  it('--keep n keeps n good versions: quarantined ones take no slot, and go unless in use', async () => {
    const root = makeRoot({ '1.0.0': {}, '1.1.0': {}, '1.2.0': {}, '2.0.0': {}, '2.1.0': {} }, '1.0.0');
    // What the upgrader writes when a candidate fails (see the "quarantine" tests), written directly here.
    mkdirSync(join(root, 'state/quarantine'), { recursive: true });
    for (const version of ['2.0.0', '2.1.0']) {
      writeFileSync(join(root, `state/quarantine/${version}.json`), JSON.stringify({ version, reason: 'the candidate exited', at: new Date().toISOString() }));
    }
    const dry = JSON.parse((await runCli(['prune', '--root', root, '--keep', '2', '--dry-run', '--json'])).stdout);
    expect(dry.removed).toEqual(['2.1.0', '2.0.0']);
    expect(dry.kept.map((k: { version: string }) => k.version)).toEqual(['1.2.0', '1.1.0', '1.0.0']);
    const done = await runCli(['prune', '--root', root, '--keep', '2']);
    expect(done.code).toBe(0);
    expect(done.stdout).toMatch(/removed 2\.1\.0, 2\.0\.0/);
    expect(done.stdout).toMatch(/kept 1\.2\.0 \(among the newest 2 not quarantined\)/);
    expect(readdirSync(join(root, 'versions')).sort()).toEqual(['1.0.0', '1.1.0', '1.2.0']);
  });

  it('prune racing installs: both finish, and no install is half-removed', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const source = sourceTree();
    for (let i = 1; i <= 5; i++) {
      const [installed, pruned] = await Promise.all([
        runCli(['install', '--root', root, '--version', `1.0.${i}`, source]),
        runCli(['prune', '--root', root, '--keep', '1']),
      ]);
      expect(installed.code).toBe(0);
      expect(pruned.code).toBe(0);
      for (const name of readdirSync(join(root, 'versions')).filter((n) => !n.startsWith('.'))) {
        expect(readFileSync(join(root, 'versions', name, 'bin/agent'), 'utf8').length).toBeGreaterThan(0);
      }
    }
    expect(existsSync(join(root, 'versions/1.0.5'))).toBe(true);
    expect(staging(root)).toEqual([]);
  });
});

describe('host-wide status', () => {
  it('shows every root under the base, one of them without an upgrader', async () => {
    const base = scratch();
    const roots = ['alpha', 'beta', 'gamma'].map((name) => {
      const root = makeRoot({ '1.0.0': {} }, '1.0.0');
      symlinkSync(root, join(base, name));
      return root;
    });
    mkdirSync(join(base, 'not-a-root'));
    await startReady(roots[0]!, FAST);
    await startReady(roots[1]!, FAST);
    const table = await runCli(['status', '--base', base]);
    expect(table.code).toBe(3);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+STATE\s+VERSION\s+PID\s+UPTIME\s+LAST UPGRADE$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 3).join(' '))).toEqual(['alpha running 1.0.0', 'beta running 1.0.0', 'gamma stopped 1.0.0']);
    expect(table.stdout).not.toMatch(/\x1b\[/);
    const json = JSON.parse((await execa(process.execPath, [CLI, 'status', '--json'], { env: { UPGRADER_BASE: base }, reject: false })).stdout);
    expect(json.map((r: { name: string }) => r.name)).toEqual(['alpha', 'beta', 'gamma']);
    expect(json.map((r: { running: boolean }) => r.running)).toEqual([true, true, false]);
  });
});

describe('host-wide status: every root is shown, and the exit status counts the troubled ones', () => {
  it('a base with no root at all does not pass for healthy: exit 3, and says so', async () => {
    const base = scratch();
    mkdirSync(join(base, 'not-a-root'));
    const table = await runCli(['status', '--base', base]);
    expect(table.code).toBe(3);
    expect(table.stdout).toBe(`no roots under ${base} (no subdirectory holds a versions/ directory)`);
    const json = await runCli(['status', '--base', base, '--json']);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stdout)).toEqual([]);
    expect(json.stderr).toBe(`upgrader: no roots under ${base}.`);
  });

  const user = 'upgrader-read-test';
  const noUser = missing('root', 'useradd');
  /** The uid and gid of the test user, created (a system user with no home) if it does not exist yet. */
  function testUser(): { uid: number; gid: number } {
    if (spawnSync('id', ['-u', user]).status !== 0) execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user]);
    const id = (flag: string) => Number(execFileSync('id', [flag, user], { encoding: 'utf8' }).trim());
    return { uid: id('-u'), gid: id('-g') };
  }

  it.skipIf(noUser)(titled('as another user: a healthy, two malformed and two unreadable roots are all listed; exit 5', noUser), async () => {
    const { uid, gid } = testUser();
    const base = scratch();
    chmodSync(base, 0o755);
    const healthy = makeRoot({ '1.0.0': {} }, '1.0.0');
    chmodSync(healthy, 0o755);
    symlinkSync(healthy, join(base, 'a-healthy'));
    await startReady(healthy, FAST);
    mkdirSync(join(base, 'b-malformed'));
    writeFileSync(join(base, 'b-malformed/versions'), 'a file where the versions directory should be');
    const brokenCurrent = makeRoot({ '1.0.0': {} });
    chmodSync(brokenCurrent, 0o755);
    symlinkSync('versions/9.9.9', join(brokenCurrent, 'current'));
    symlinkSync(brokenCurrent, join(base, 'c-broken-current'));
    // makeRoot's directory is root's, mode 0700: the other user cannot even look inside.
    symlinkSync(makeRoot({ '1.0.0': {} }, '1.0.0'), join(base, 'd-unreadable'));
    // Open to all but its state directory: the other user cannot tell whether an upgrader runs there.
    const privateState = makeRoot({ '1.0.0': {} }, '1.0.0');
    chmodSync(privateState, 0o755);
    mkdirSync(join(privateState, 'state'), { mode: 0o700 });
    symlinkSync(privateState, join(base, 'e-state-unreadable'));
    mkdirSync(join(base, 'f-not-a-root'));
    // The bundle runs alone, so it can live where the other user can read it.
    const dir = scratch();
    chmodSync(dir, 0o755);
    cpSync(join(REPO, 'dist/upgrader.cjs'), join(dir, 'upgrader.cjs'));
    const asUser = (args: string[]) =>
      execa('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', process.execPath, join(dir, 'upgrader.cjs'), 'status', '--base', base, ...args], { reject: false, timeout: 10_000 });

    const table = await asUser([]);
    expect(table.exitCode).toBe(5);
    const [header, ...rest] = table.stdout.split('\n');
    expect(header).toMatch(/^NAME\s+STATE\s+VERSION/);
    expect(rest.slice(0, 5).map((l) => l.split(/\s+/).slice(0, 2).join(' '))).toEqual([
      'a-healthy running',
      'b-malformed broken',
      'c-broken-current broken',
      'd-unreadable unreadable',
      'e-state-unreadable unreadable',
    ]);
    expect(table.stdout).toMatch(/^b-malformed: broken: The root .* has no versions\/ directory/m);
    expect(table.stdout).toMatch(/^c-broken-current: broken: current points at 9\.9\.9, but version 9\.9\.9 is not installed/m);
    expect(table.stdout).toMatch(/^d-unreadable: unreadable: .*versions cannot be examined \(EACCES\); run status as the root's owner or as root$/m);
    expect(table.stdout).toMatch(/^e-state-unreadable: unreadable: .*state\/owner\.json cannot be read \(EACCES\); run status as the root's owner or as root$/m);

    const json = await asUser(['--json']);
    expect(json.exitCode).toBe(5);
    const reports = JSON.parse(json.stdout) as { name: string; state: string; running: boolean; problem: string | null }[];
    expect(reports.map((r) => [r.name, r.state, r.running, r.problem === null])).toEqual([
      ['a-healthy', 'running', true, true],
      ['b-malformed', 'broken', false, false],
      ['c-broken-current', 'broken', false, false],
      ['d-unreadable', 'unreadable', false, false],
      ['e-state-unreadable', 'unreadable', false, false],
    ]);
  });
});

describe('manifests: which jumps are allowed', () => {
  const manifest = (root: string, version: string, content: unknown) => writeFileSync(join(root, 'versions', version, 'upgrader.json'), JSON.stringify(content));

  it('refuses a jump outside upgradeFrom, naming the range, and allows one inside', async () => {
    const root = makeRoot({ '1.0.0': {}, '3.0.0': {}, '2.0.0': {} }, '1.0.0');
    manifest(root, '3.0.0', { upgradeFrom: '>=2.0.0 <3.0.0' });
    manifest(root, '2.0.0', { upgradeFrom: '^1.0.0' });
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '3.0.0');
    const refused = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((refused.message as { reason: string }).reason).toBe('3.0.0 may only take over from versions in ">=2.0.0 <3.0.0" (its upgrader.json), and 1.0.0 is not one');
    askUpgrade(root, pid, '2.0.0');
    await up.waitForSent('go', '2.0.0');
    expect(currentTarget(root)).toBe('versions/2.0.0');
  });

  it('a manifest can require a sequential handoff and name the entry point', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const dir = join(root, 'versions/2.0.0');
    cpSync(join(dir, 'bin/agent'), join(dir, 'start.sh'));
    rmSync(join(dir, 'bin/agent'));
    manifest(root, '2.0.0', { sequential: true, entry: 'start.sh' });
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    const outcome = await up.waitForLog(logged.outcome({ from: '1.0.0', to: '2.0.0', result: 'succeeded' }));
    expect(outcome.mode).toBe('sequential');
  });

  it('an invalid manifest makes the version unusable, with the reason', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    manifest(root, '2.0.0', { upgradeFrom: 'not a range', colour: 'blue' });
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    const refused = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((refused.message as { reason: string }).reason).toMatch(/version 2\.0\.0: its upgrader\.json is invalid/);
  });
});

describe('quarantine', () => {
  it('a failed candidate is quarantined: asked again, it is refused; re-installing it lifts that', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitBeforeReady: 4 } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    askUpgrade(root, pid, '2.0.0');
    await up.waitForSent('upgrade-failed', '1.0.0');
    askUpgrade(root, pid, '2.0.0');
    const refused = await up.waitForLog((l) => logged.sent('upgrade-failed')(l) && /is quarantined/.test((l.message as { reason: string }).reason));
    expect((refused.message as { reason: string }).reason).toMatch(/2\.0\.0 is quarantined since .* \(the candidate 2\.0\.0 exited with code 4 before reporting ready\); re-install it/);
    expect(up.logs.filter(logged.spawned('candidate', '2.0.0'))).toHaveLength(1);
    const report = JSON.parse((await runCli(['status', '--root', root, '--json'])).stdout);
    expect(report.quarantined.map((q: { version: string }) => q.version)).toEqual(['2.0.0']);
    const listed = JSON.parse((await runCli(['versions', '--root', root, '--json'])).stdout);
    expect(listed.find((v: { version: string }) => v.version === '2.0.0').markers).toContain('quarantined');

    const reinstall = await runCli(['install', '--root', root, '--version', '2.0.0', '--json', join(root, 'versions/2.0.0')]);
    expect(JSON.parse(reinstall.stdout)).toMatchObject({ identical: true, liftedQuarantine: true });
    askUpgrade(root, pid, '2.0.0');
    await up.waitForLog(() => up.logs.filter(logged.spawned('candidate', '2.0.0')).length === 2);
  });

  it('a re-install that lifts a quarantine says so, identical or not', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const quarantine = (version: string) => {
      mkdirSync(join(root, 'state/quarantine'), { recursive: true });
      writeFileSync(join(root, `state/quarantine/${version}.json`), JSON.stringify({ version, reason: 'the candidate exited', at: new Date().toISOString() }));
    };
    const source = sourceTree();
    expect((await runCli(['install', '--root', root, '--version', '2.0.0', source])).code).toBe(0);
    quarantine('2.0.0');
    const again = await runCli(['install', '--root', root, '--version', '2.0.0', source]);
    expect(again.code).toBe(0);
    expect(again.stdout).not.toMatch(/nothing to do/);
    expect(again.stdout.trim()).toBe('2.0.0 is already installed with identical content; its quarantine is lifted: it may be upgraded to again.');
    expect(existsSync(join(root, 'state/quarantine/2.0.0.json'))).toBe(false);
    // A quarantined version that was pruned since, installed anew.
    quarantine('3.0.0');
    const fresh = await runCli(['install', '--root', root, '--version', '3.0.0', source]);
    expect(fresh.stdout.trim()).toBe(`installed 3.0.0 at ${join(root, 'versions/3.0.0')}; its quarantine is lifted: it may be upgraded to again.`);
    expect((await runCli(['install', '--root', root, '--version', '3.0.0', source])).stdout.trim()).toBe('3.0.0 is already installed with identical content; nothing to do.');
  });

  it('a version rolled back in probation is quarantined', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitAfterGoMs: 100 } } }, '1.0.0');
    const { up, pid } = await startReady(root, runArgs({ probation: '5s' }));
    askUpgrade(root, pid, '2.0.0');
    await up.waitForLog(logged.quarantined('2.0.0'));
    const status = JSON.parse((await runCli(['status', '--root', root, '--json'])).stdout);
    expect(status.quarantined[0]).toMatchObject({ version: '2.0.0', reason: expect.stringMatching(/during its probation/) });
  });
});

describe('upgrade and rollback from the shell', () => {
  it('upgrade prints each step and exits 0 once the new version was told go; rollback is a handoff back', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { readyDelayMs: 200 } } }, '1.0.0');
    const { up, pid } = await startReady(root, FAST);
    const upgraded = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(upgraded.code).toBe(0);
    expect(upgraded.stdout).toMatch(/accepted: handoff to 2\.0\.0/);
    expect(upgraded.stdout).toMatch(/running -> verifying/);
    expect(upgraded.stdout).toMatch(/sent stop to 1\.0\.0/);
    expect(upgraded.stdout).toMatch(/sent go to 2\.0\.0/);
    expect(upgraded.stdout.trim().split('\n').at(-1)).toBe('done: 2.0.0 is running');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    // The old agent did not ask, so it is told nothing but stop.
    expect(readFileSync(join(root, 'events.log'), 'utf8')).not.toMatch(new RegExp(`${pid} 1\\.0\\.0 got .*upgrade-failed`));

    const rolled = await runCli(['rollback', '--root', root, '--json']);
    expect(rolled.code).toBe(0);
    const replies = rolled.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(replies.at(-1)).toEqual({ type: 'succeeded', version: '1.0.0', probation: expect.any(Boolean) });
    expect(currentTarget(root)).toBe('versions/1.0.0');
    const spans = workSpans(root);
    for (let i = 1; i < spans.length; i++) expect(spans[i]!.first).toBeGreaterThan(spans[i - 1]!.last);
    expect(up.logs.filter(logged.outcome({ result: 'succeeded' }))).toHaveLength(2);
  });

  it('a failed candidate: exit 1 with the reason; --no-wait returns once accepted', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitBeforeReady: 6 } }, '3.0.0': { config: { readyDelayMs: 300 } } }, '1.0.0');
    const { up } = await startReady(root, FAST);
    const failed = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/failed \(2\.0\.0\): the candidate 2\.0\.0 exited with code 6 before reporting ready/);
    const quick = await runCli(['upgrade', '--root', root, '--to', '3.0.0', '--no-wait']);
    expect(quick.code).toBe(0);
    expect(quick.stdout.trim().split('\n').at(-1)).toBe('accepted: handoff to 3.0.0');
    await up.waitForSent('go', '3.0.0');
  });

  it('--force overrides a quarantine and lifts it', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitBeforeReady: 6 } } }, '1.0.0');
    const { up } = await startReady(root, FAST);
    expect((await runCli(['upgrade', '--root', root, '--to', '2.0.0'])).code).toBe(1);
    const refused = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(refused.stdout).toMatch(/2\.0\.0 is quarantined/);
    writeFileSync(join(root, 'versions/2.0.0/fixture.json'), '{}');
    const forced = await runCli(['upgrade', '--root', root, '--to', '2.0.0', '--force']);
    expect(forced.code).toBe(0);
    expect(up.logs.some(logged.quarantineLifted('2.0.0'))).toBe(true);
    expect(JSON.parse((await runCli(['status', '--root', root, '--json'])).stdout).quarantined).toEqual([]);
  });

  it('--force overrides a manifest\'s upgradeFrom; without it the range is named', async () => {
    const root = makeRoot({ '1.0.0': {}, '3.0.0': {} }, '1.0.0');
    writeFileSync(join(root, 'versions/3.0.0/upgrader.json'), JSON.stringify({ upgradeFrom: '^2.0.0' }));
    await startReady(root, FAST);
    const refused = await runCli(['upgrade', '--root', root, '--to', '3.0.0']);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toMatch(/3\.0\.0 may only take over from versions in "\^2\.0\.0"/);
    expect((await runCli(['upgrade', '--root', root, '--to', '3.0.0', '--force'])).code).toBe(0);
    expect(currentTarget(root)).toBe('versions/3.0.0');
  });

  it('every command has --help with an example', async () => {
    for (const command of ['run', 'status', 'install', 'versions', 'prune', 'upgrade', 'rollback', 'check', 'halt', 'resume']) {
      const { code, stdout } = await runCli([command, '--help']);
      expect(code).toBe(0);
      expect(stdout).toMatch(new RegExp(`^Usage: upgrader ${command}`));
      expect(stdout).toMatch(/Examples?:\n {2}upgrader /);
    }
  });

  it('says so when no upgrader runs on the root', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const result = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(result.code).toBe(3);
    expect(result.stderr).toMatch(/No upgrader runs on .* \(its operator channel answers ENOENT\)/);
  });

  it.skipIf(missing('root'))(titled('refuses another user at the channel', missing('root')), async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    chmodSync(root, 0o755);
    await startReady(root, FAST);
    // The bundle runs alone, so it can live where the other user can read it.
    const dir = scratch();
    chmodSync(dir, 0o755);
    cpSync(join(REPO, 'dist/upgrader.cjs'), join(dir, 'upgrader.cjs'));
    chmodSync(join(dir, 'upgrader.cjs'), 0o755);
    const result = await execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, join(dir, 'upgrader.cjs'), 'upgrade', '--root', root, '--to', '2.0.0'], { reject: false });
    expect(result.exitCode).toBe(77);
    expect(result.stderr).toMatch(/Not allowed to reach the upgrader of .*: its operator channel is for the root's owner and root only/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });
});
