/**
 * A first deployment in one command: `upgrader install` into a root that does not exist yet (or has no
 * `current`) lays it out and points `current` at the version, so that `upgrader run` starts it.
 */
import { execa } from 'execa';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { addVersion, CLI, cleanupRoots, currentTarget, runCli, startUpgrader, statusJson, stopAllUpgraders, Upgrader } from '../helpers.js';

const FAST = ['--ready-timeout', '3s', '--probation', '0s'];
const isRoot = process.getuid?.() === 0;
const scratch: string[] = [];

afterEach(async () => {
  await stopAllUpgraders();
  cleanupRoots();
  for (const dir of scratch.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A directory to create roots in (mode 0755, so that another user may pass through it). */
function parentDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'upgrader-new-root-'));
  chmodSync(dir, 0o755);
  scratch.push(dir);
  return dir;
}

/** A version's source directory: the fixture agent as bin/agent. */
function source(): string {
  const holder = parentDir();
  mkdirSync(join(holder, 'versions'));
  addVersion(holder, 'src', {});
  return join(holder, 'versions/src');
}

/** The CLI under a given umask, which decides the modes of what it creates. */
async function installWithUmask(umask: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await execa('sh', ['-c', `umask ${umask} && exec "$@"`, 'sh', process.execPath, CLI, 'install', ...args], { reject: false, timeout: 10_000 });
  return { code: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

const modeOf = (path: string) => (statSync(path).mode & 0o7777).toString(8);

describe('install into a new root', () => {
  it('lays out a root that does not exist, points current at the version, and upgrader run starts it', async () => {
    const root = join(parentDir(), 'myagent');
    const result = await installWithUmask('022', ['--root', root, '--version', '1.0.0', source()]);
    expect(result).toMatchObject({ code: 0, stderr: '' });
    expect(result.stdout.trim().split('\n')).toEqual([
      `laid out the new root ${root} (versions/, state/)`,
      `installed 1.0.0 at ${root}/versions/1.0.0; current now points at 1.0.0: upgrader run starts it.`,
    ]);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect([modeOf(root), modeOf(join(root, 'versions')), modeOf(join(root, 'state'))]).toEqual(['755', '755', '755']);
    expect(statSync(root).uid).toBe(process.getuid!());

    const up = startUpgrader(root, FAST);
    await up.agentPid('1.0.0');
    await up.waitForTransition('ready', 'running');
    const { code, report } = await statusJson(root);
    expect(code).toBe(0);
    expect(report).toMatchObject({ state: 'running', current: '1.0.0', agent: { version: '1.0.0', ready: true } });
  });

  it('--json says so; a root that has current afterwards only stages, as before', async () => {
    const root = join(parentDir(), 'myagent');
    const first = await runCli(['install', '--root', root, '--version', '1.0.0', '--json', source()]);
    expect(first.code).toBe(0);
    expect(JSON.parse(first.stdout)).toEqual({ version: '1.0.0', path: join(root, 'versions/1.0.0'), identical: false, liftedQuarantine: false, createdRoot: true, madeCurrent: true });
    const second = await runCli(['install', '--root', root, '--version', '2.0.0', '--json', source()]);
    expect(JSON.parse(second.stdout)).toMatchObject({ version: '2.0.0', createdRoot: false, madeCurrent: false });
    expect((await runCli(['install', '--root', root, '--version', '3.0.0', source()])).stdout.trim()).toBe(`installed 3.0.0 at ${root}/versions/3.0.0`);
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('what it creates has mode 0755 narrowed by the umask, never more', async () => {
    const root = join(parentDir(), 'private');
    expect((await installWithUmask('077', ['--root', root, '--version', '1.0.0', source()])).code).toBe(0);
    expect([modeOf(root), modeOf(join(root, 'versions')), modeOf(join(root, 'state'))]).toEqual(['700', '700', '700']);
    const open = join(parentDir(), 'open');
    expect((await installWithUmask('000', ['--root', open, '--version', '1.0.0', source()])).code).toBe(0);
    expect([modeOf(open), modeOf(join(open, 'versions')), modeOf(join(open, 'state'))]).toEqual(['755', '755', '755']);
  });

  it('lays out an existing empty directory', async () => {
    const root = join(parentDir(), 'empty');
    mkdirSync(root);
    const result = await runCli(['install', '--root', root, '--version', '1.0.0', '--json', source()]);
    expect(JSON.parse(result.stdout)).toMatchObject({ createdRoot: true, madeCurrent: true });
    expect(readdirSync(root).sort()).toEqual(['current', 'state', 'versions']);
  });

  it('refuses (78) a root whose parent is missing, and a non-empty directory without versions/; creates nothing', async () => {
    const parent = parentDir();
    const missing = await runCli(['install', '--root', join(parent, 'a/b'), '--version', '1.0.0', source()]);
    expect(missing.code).toBe(78);
    expect(missing.stderr.trim()).toBe(`upgrader: The root ${parent}/a/b does not exist, nor does its parent ${parent}/a; create the parent first (mkdir -p ${parent}/a): install creates the root, not the directories above it.`);
    expect(readdirSync(parent)).toEqual([]);

    const busy = join(parent, 'home');
    mkdirSync(busy);
    writeFileSync(join(busy, 'notes.txt'), 'mine');
    const refused = await runCli(['install', '--root', busy, '--version', '1.0.0', source()]);
    expect(refused.code).toBe(78);
    expect(refused.stderr).toMatch(/has no versions\/ directory and is not empty, so it is not taken for an upgrader root/);
    expect(readdirSync(busy)).toEqual(['notes.txt']);
  });

  it('a bad source or entry creates nothing', async () => {
    const parent = parentDir();
    expect((await runCli(['install', '--root', join(parent, 'r'), '--version', '1.0.0', join(parent, 'nope')])).code).toBe(64);
    expect((await runCli(['install', '--root', join(parent, 'r'), '--version', '1.0.0', '--entry', '../x', source()])).code).toBe(64);
    expect(readdirSync(parent)).toEqual([]);
  });
});

describe('install into a root without a usable current', () => {
  it('a root with versions/ but no current and nothing run yet: current points at the version', async () => {
    const root = join(parentDir(), 'r');
    mkdirSync(join(root, 'versions'), { recursive: true });
    const result = await runCli(['install', '--root', root, '--version', '1.0.0', '--json', source()]);
    expect(JSON.parse(result.stdout)).toMatchObject({ createdRoot: false, madeCurrent: true });
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('a dangling current is left alone for upgrader run to repair', async () => {
    const root = join(parentDir(), 'r');
    mkdirSync(join(root, 'versions'), { recursive: true });
    symlinkSync('versions/0.9.0', join(root, 'current'));
    const result = await runCli(['install', '--root', root, '--version', '1.0.0', '--json', source()]);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ madeCurrent: false });
    expect(currentTarget(root)).toBe('versions/0.9.0');
  });

  it('a current removed from a root that has run is left for upgrader run, which repairs it from its state file', async () => {
    const root = join(parentDir(), 'r');
    expect((await runCli(['install', '--root', root, '--version', '1.0.0', source()])).code).toBe(0);
    const first = startUpgrader(root, FAST);
    await first.waitForTransition('ready', 'running');
    first.kill('SIGTERM');
    expect((await first.waitForExit()).code).toBe(0);
    rmSync(join(root, 'current'));
    const result = await runCli(['install', '--root', root, '--version', '2.0.0', '--json', source()]);
    expect(JSON.parse(result.stdout)).toMatchObject({ madeCurrent: false });
    expect(existsSync(join(root, 'current'))).toBe(false);
    const up: Upgrader = startUpgrader(root, FAST);
    await up.agentPid('1.0.0');
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });
});

const TEST_USER = 'upgrader-owner-test';

function ensureUser(): { uid: number; gid: number } {
  spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', TEST_USER]);
  const id = (flag: string) => Number(spawnSync('id', [flag, TEST_USER], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

describe.skipIf(!isRoot)('a new root, as root', () => {
  it("refuses (77) to create a root in a directory another user owns, and creates nothing", async () => {
    const owner = ensureUser();
    const parent = parentDir();
    chownSync(parent, owner.uid, owner.gid);
    const result = await runCli(['install', '--root', join(parent, 'r'), '--version', '1.0.0', source()]);
    expect(result.code).toBe(77);
    expect(result.stderr).toMatch(new RegExp(`Refusing to create the root ${parent}/r as root: ${parent} is owned by uid ${owner.uid}, not root`));
    expect(readdirSync(parent)).toEqual([]);
  });

  it("lays out an empty directory a user owns as that user", async () => {
    const owner = ensureUser();
    const root = join(parentDir(), 'r');
    mkdirSync(root);
    chownSync(root, owner.uid, owner.gid);
    // The user installs from an archive: a directory of root's would be copied, but as root only from root's.
    const src = source();
    const archive = join(parentDir(), 'agent.tgz');
    await execa('tar', ['-czf', archive, '-C', src, '.']);
    chmodSync(archive, 0o644);
    const result = await runCli(['install', '--root', root, '--version', '1.0.0', '--json', archive]);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ createdRoot: true, madeCurrent: true });
    for (const name of ['versions', 'state', 'current', 'versions/1.0.0']) expect(lstatSync(join(root, name)).uid).toBe(owner.uid);
  });
});
