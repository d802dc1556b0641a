/**
 * Root acting on a root that another user owns, and prune or install racing a handoff: held at a chosen
 * step by a preloaded module (test/fixtures/hold-rename.mjs), so that every interleaving is reproduced on
 * purpose, not hoped for.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, lchownSync, mkdirSync, symlinkSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { describe, expect, it } from 'vitest';
import { startTraced } from './strace.js';
import { CLI, cleanUpAfterEach, currentTarget, FIXTURES, makeRoot, REPO, missing, rootProcesses, runCli, scratchDir as tempDir, startReady, startUpgrader, statusJson, titled, waitUntil } from '../helpers.js';
import { FAST } from '../timing.js';

const noRoot = missing('root');
const noStrace = missing('strace');

cleanUpAfterEach();

/** A directory every user may write to. */
function scratchDir(): string {
  const dir = tempDir('upgrader-race-');
  chmodSync(dir, 0o777);
  return dir;
}

/** A command of the CLI that stops just before it renames versions/<version>, until released. */
function heldCommand(args: string[], version: string, env: Record<string, string> = {}): { run: ResultPromise; held: () => Promise<{ uid: number; pid: number }>; release: () => void } {
  const dir = scratchDir();
  const fifo = join(dir, 'hold');
  spawnSync('mkfifo', ['-m', '0666', fifo]);
  const run = execa(process.execPath, ['--import', join(FIXTURES, 'hold-rename.mjs'), CLI, ...args], {
    reject: false,
    timeout: 60_000,
    env: { ...env, UPGRADER_TEST_HOLD_VERSION: version, UPGRADER_TEST_HOLD_FIFO: fifo },
  });
  return {
    run,
    held: async () => {
      await waitUntil(() => existsSync(`${fifo}.held`), `the command held before renaming ${version}`, 15_000);
      const [uid, pid] = readFileSync(`${fifo}.held`, 'utf8').split(' ').map(Number);
      return { uid: uid!, pid: pid! };
    },
    release: () => writeFileSync(fifo, 'go'),
  };
}

describe('prune and install racing a handoff', () => {
  it('prune held after it chose its victims, a handoff to one of them meanwhile: that version is kept, current and the agent keep their files', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {}, '3.0.0': {} }, '1.0.0');
    const { up } = await startReady(root, FAST);
    const prune = heldCommand(['prune', '--root', root, '--keep', '0', '--json'], '3.0.0');
    await prune.held();
    // Prune has decided 3.0.0 and 2.0.0 are unused; now a handoff takes 3.0.0 up.
    expect((await runCli(['upgrade', '--root', root, '--to', '3.0.0'])).code).toBe(0);
    prune.release();
    const result = await prune.run;
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(String(result.stdout))).toMatchObject({ removed: ['2.0.0'], kept: expect.arrayContaining([expect.objectContaining({ version: '3.0.0' })]) });
    expect(existsSync(join(root, 'versions/3.0.0/bin/agent'))).toBe(true);
    expect(currentTarget(root)).toBe('versions/3.0.0');
    expect((await statusJson(root)).code).toBe(0);
    // And the next start runs it: nothing was left dangling.
    up.kill('SIGKILL');
    await up.exit;
    await startUpgrader(root, FAST).agentPid('3.0.0');
  });

  it('the layout lock stays held for as long as prune works: an install meanwhile waits, then gives up with 75, and installs nothing', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    // Root installs only from a directory nobody else can change.
    const source = tempDir('upgrader-src-');
    mkdirSync(join(source, 'bin'));
    writeFileSync(join(source, 'bin/agent'), '#!/bin/sh\nexec cat\n', { mode: 0o755 });
    const prune = heldCommand(['prune', '--root', root, '--keep', '0'], '2.0.0');
    await prune.held();
    // Longer than the old lock's 10 s staleness: the holder is alive, so the lock is still its own.
    const install = await execa(process.execPath, [CLI, 'install', '--root', root, '--version', '4.0.0', source], { reject: false, timeout: 40_000 });
    expect(install.exitCode).toBe(75);
    expect(install.stderr).toMatch(/being changed by another command \(prune, PID \d+/);
    expect(existsSync(join(root, 'versions/4.0.0'))).toBe(false);
    prune.release();
    expect((await prune.run).exitCode).toBe(0);
    expect(readdirSync(join(root, 'versions')).sort()).toEqual(['1.0.0']);
  }, 60_000);
});

describe('a state file that cannot be read', () => {
  it('stops prune (78: it cannot tell what is in use), while versions still lists what is installed', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    mkdirSync(join(root, 'state'));
    writeFileSync(join(root, 'state/state.json'), '{"format":"upgrader-state","schema":1,"sha256":"00","body":{}}');
    const pruned = await runCli(['prune', '--root', root, '--keep', '0']);
    expect(pruned.code).toBe(78);
    expect(pruned.stderr).toMatch(/Cannot tell which versions are in use: the state file fails its checksum/);
    expect(readdirSync(join(root, 'versions')).sort()).toEqual(['1.0.0', '2.0.0']);
    const listed = await runCli(['versions', '--root', root, '--json']);
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout).map((v: { version: string; markers: string[] }) => [v.version, v.markers])).toEqual([['2.0.0', []], ['1.0.0', ['current']]]);
  });
});

const TEST_USER = 'upgrader-owner-test';
function ensureUser(): { uid: number; gid: number } {
  spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', TEST_USER]);
  const id = (flag: string) => Number(spawnSync('id', [flag, TEST_USER], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** A root under a directory that user can traverse, all owned by that user. */
function userRoot(owner: { uid: number; gid: number }, versions: string[], current: string): string {
  const parent = scratchDir();
  const root = join(parent, 'root');
  mkdirSync(join(root, 'versions'), { recursive: true });
  for (const version of versions) {
    mkdirSync(join(root, 'versions', version, 'bin'), { recursive: true });
    writeFileSync(join(root, 'versions', version, 'bin/agent'), '#!/bin/sh\nexec cat\n', { mode: 0o755 });
  }
  spawnSync('ln', ['-s', `versions/${current}`, join(root, 'current')]);
  spawnSync('chown', ['-R', '-h', `${owner.uid}:${owner.gid}`, root]);
  return root;
}

describe.skipIf(noRoot)(titled("root on a root that another user owns", noRoot), () => {
  it("prune run by root works with the owner's rights, never root's", async () => {
    const owner = ensureUser();
    const root = userRoot(owner, ['1.0.0', '2.0.0'], '1.0.0');
    const prune = heldCommand(['prune', '--root', root, '--keep', '0'], '2.0.0', { SECRET_TOKEN: 'hunter2', UPGRADER_LOG_LEVEL: 'info' });
    // The process that renames and removes the version is the owner's.
    const child = await prune.held();
    expect(child.uid).toBe(owner.uid);
    // The owner may read that process and write to its pipes: it holds none of root's environment, and has
    // no terminal (its own session, no controlling tty) to push keystrokes into.
    const environ = readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0');
    expect(environ).not.toContain('SECRET_TOKEN=hunter2');
    expect(environ).toContain('UPGRADER_LOG_LEVEL=info');
    const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
    const [, , , session, ttyNr] = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    expect(session).toBe(child.pid);
    expect(ttyNr).toBe(0);
    prune.release();
    expect((await prune.run).exitCode).toBe(0);
    expect(readdirSync(join(root, 'versions'))).toEqual(['1.0.0']);
  });

  it("what the owner's process prints reaches root's terminal with control characters escaped", async () => {
    const owner = ensureUser();
    const root = userRoot(owner, ['1.0.0', '2.0.0'], '1.0.0');
    // An entry point the owner named with an escape sequence (clear the screen), which versions reports as missing.
    writeFileSync(join(root, 'versions/2.0.0/upgrader.json'), JSON.stringify({ entry: 'bin/\u001b[2Jgone' }));
    const listed = await runCli(['versions', '--root', root]);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain('bin/\\x1b[2Jgone');
    expect(listed.stdout).not.toContain('\u001b');
  });

  it("status run by root never reads a user's root's state/ through a link (to another user's private root)", async () => {
    const owner = ensureUser();
    const root = userRoot(owner, ['1.0.0'], '1.0.0');
    const other = makeRoot({ '1.0.0': {} }, '1.0.0');
    mkdirSync(join(other, 'state'));
    writeFileSync(join(other, 'state/agent-status.json'), JSON.stringify({ version: '1.0.0', pid: 1, message: 'PRIVATE of another root', at: new Date().toISOString() }));
    spawnSync('ln', ['-s', join(other, 'state'), join(root, 'state')]);
    const { code, report } = await statusJson(root);
    expect(code).toBe(5);
    expect(report).toMatchObject({ state: 'broken', problem: expect.stringMatching(/state is a symbolic link/) });
    expect(JSON.stringify(report)).not.toContain('PRIVATE');
  });

  it("install run by root never reads, hashes or copies a source through what another user controls", async () => {
    const owner = ensureUser();
    const home = scratchDir();
    chownSync(home, owner.uid, owner.gid);
    // The owner points a link at a file only root may read, and hopes root will reveal its digest.
    symlinkSync('/etc/shadow', join(home, 'agent-2.0.tgz'));
    lchownSync(join(home, 'agent-2.0.tgz'), owner.uid, owner.gid);
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const result = await runCli(['install', '--root', root, '--version', '2.0.0', '--sha256', '0'.repeat(64), join(home, 'agent-2.0.tgz')]);
    expect(result.code).toBe(65);
    expect(result.stderr).toMatch(/Refusing the source .*agent-2\.0\.tgz: .* is owned by uid/);
    expect(result.stderr).not.toMatch(/has SHA-256/);
  });

  it("another user's processes carrying a root's agent marker neither block root's upgrader nor get killed by it", async () => {
    ensureUser();
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const impostor = execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', `UPGRADER_ROOT=${root}`, 'UPGRADER_AGENT_ID=1.1', 'UPGRADER_VERSION=9.9.9', 'sleep', '60'], { reject: false });
    try {
      await waitUntil(() => spawnSync('pgrep', ['-u', '65534', '-f', 'sleep 60']).status === 0, 'the impostor runs');
      const { up } = await startReady(root, FAST);
      expect(up.child.exitCode).toBeNull();
      // Not ours to kill: it still runs.
      expect(spawnSync('pgrep', ['-u', '65534', '-f', 'sleep 60']).status).toBe(0);
      const dry = JSON.parse((await runCli(['prune', '--root', root, '--keep', '0', '--dry-run', '--json'])).stdout);
      expect(dry.kept.map((k: { version: string }) => k.version)).not.toContain('9.9.9');
    } finally {
      impostor.kill('SIGKILL');
    }
  });

  it("root's prune keeps the current version of a user's root, and versions shows it as current", async () => {
    const owner = ensureUser();
    const root = userRoot(owner, ['1.0.0', '2.0.0', '3.0.0'], '1.0.0');
    const listed = JSON.parse((await runCli(['versions', '--root', root, '--json'])).stdout) as { version: string; markers: string[]; complete: boolean }[];
    expect(listed.find((v) => v.version === '1.0.0')).toMatchObject({ markers: ['current'], complete: true });
    const pruned = await runCli(['prune', '--root', root, '--keep', '0']);
    expect(pruned.code).toBe(0);
    expect(readdirSync(join(root, 'versions')).sort()).toEqual(['1.0.0']);
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('run as root on it is refused with 78, naming the user to run as', async () => {
    const owner = ensureUser();
    const root = userRoot(owner, ['1.0.0'], '1.0.0');
    const up = startUpgrader(root, FAST);
    expect((await up.waitForExit()).code).toBe(78);
    expect(up.stderrText.join('\n')).toMatch(new RegExp(`belongs to uid ${owner.uid}; run the upgrader as that user`));
    expect(rootProcesses(root)).toEqual([]);
  });

  it("root's prune on a root-owned root refuses to remove a version holding a directory another user can write, and keeps it", async () => {
    const owner = ensureUser();
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    mkdirSync(join(root, 'versions/2.0.0/data'));
    chownSync(join(root, 'versions/2.0.0/data'), owner.uid, owner.gid);
    const pruned = await runCli(['prune', '--root', root, '--keep', '0']);
    expect(pruned.code).toBe(77);
    expect(pruned.stderr).toMatch(/Refusing to remove .*versions\/2\.0\.0 as root: .*data belongs to uid/);
    expect(existsSync(join(root, 'versions/2.0.0/bin/agent'))).toBe(true);
  });
});

describe.skipIf(noRoot)(titled('exit statuses that say what happened', noRoot), () => {
  /** The bundle where another user can run it. */
  function bundleForOthers(): string {
    const dir = scratchDir();
    cpSync(join(REPO, 'dist/upgrader.cjs'), join(dir, 'upgrader.cjs'));
    chmodSync(join(dir, 'upgrader.cjs'), 0o755);
    return join(dir, 'upgrader.cjs');
  }
  const asNobody = (args: string[]) => execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, bundleForOthers(), ...args], { reject: false, timeout: 20_000 });

  it('prune by a user who may not change the root: 77, not 75', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    chmodSync(root, 0o755);
    mkdirSync(join(root, 'state'), { mode: 0o755 });
    const result = await asNobody(['prune', '--root', root, '--keep', '0']);
    expect(result.exitCode).toBe(77);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(true);
  });

  it('upgrade by another user on a root of mode 0700: 77, not 78', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    chmodSync(root, 0o700);
    const result = await asNobody(['upgrade', '--root', root, '--to', '1.0.0']);
    expect(result.exitCode).toBe(77);
    expect(result.stderr).toMatch(/Not allowed to read the root/);
  });
});

describe('run: signals and bugs during its life', () => {
  it.skipIf(noStrace)(titled('SIGTERM while it takes ownership of the root, before any agent runs: exit 0, no agent left', noStrace), async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    // strace delivers SIGTERM at the first mkdir: the state directory, as ownership is claimed.
    const up = startTraced(root, join(scratchDir(), 'mkdir.trace'), 'mkdir', FAST, 'signal=SIGTERM:when=1');
    expect((await up.waitForExit()).code).toBe(0);
    expect(rootProcesses(root)).toEqual([]);
  });

  it('an uncaught exception kills the agents and exits 70', async () => {
    const root = makeRoot({ '1.0.0': { config: { children: 1 } } }, '1.0.0');
    const up = startUpgrader(root, FAST, { NODE_OPTIONS: `--import ${join(FIXTURES, 'crash-on-usr2.mjs')}` });
    await up.waitForTransition('ready', 'running');
    await waitUntil(() => rootProcesses(root).length >= 2, 'the agent started its child');
    up.kill('SIGUSR2');
    expect((await up.waitForExit()).code).toBe(70);
    expect(up.logs.some((l) => l.level === 'fatal' && /injected/.test(String(l.err)))).toBe(true);
    await waitUntil(() => rootProcesses(root).length === 0, 'no process of the agent is left');
  });
});
