/**
 * `upgrader install` as an attacker's target: setuid files, trees another user can change, an archive
 * replaced after its digest was checked, links whose text hides where they lead, and the errors a full
 * disk, a forbidden file or an over-long name produce. Real archives, real users, real file systems.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { stagedTreeProblem } from '../../src/install.js';
import { linkEscape } from '../../src/containment.js';
import { asUpgraderError } from '../../src/errors.js';
import { CLI, cleanUpAfterEach, FIXTURES, makeRoot, missing, REPO, runCli, scratchDir, titled } from '../helpers.js';

cleanUpAfterEach();

const noRoot = missing('root');
const scratch = () => scratchDir('install-attack-');
const leftovers = (root: string) => readdirSync(join(root, 'versions')).filter((name) => name.startsWith('.'));
const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
const AGENT = '#!/bin/sh\nexit 0\n';

type Entry =
  | { name: string; type: 'file'; data?: string; mode?: number; from?: string }
  | { name: string; type: 'dir'; mode?: number }
  | { name: string; type: 'symlink' | 'hardlink'; target: string };

/** A .tar.gz with exactly these entries (Python's tarfile: it writes what tar itself refuses to). */
async function archive(entries: Entry[]): Promise<string> {
  const file = join(scratch(), 'agent.tgz');
  const script = `
import io, json, sys, tarfile
entries, path = json.loads(sys.argv[1]), sys.argv[2]
with tarfile.open(path, 'w:gz', format=tarfile.PAX_FORMAT) as t:
    for e in entries:
        info = tarfile.TarInfo(e['name'])
        if e['type'] == 'dir':
            info.type, info.mode = tarfile.DIRTYPE, e.get('mode', 0o755)
            t.addfile(info)
        elif e['type'] in ('symlink', 'hardlink'):
            info.type = tarfile.SYMTYPE if e['type'] == 'symlink' else tarfile.LNKTYPE
            info.linkname = e['target']
            t.addfile(info)
        else:
            data = open(e['from'], 'rb').read() if 'from' in e else e.get('data', 'x').encode()
            info.size, info.mode = len(data), e.get('mode', 0o644)
            t.addfile(info, io.BytesIO(data))
`;
  await execa('python3', ['-c', script, JSON.stringify(entries), file]);
  return file;
}

const agentEntry: Entry = { name: 'bin/agent', type: 'file', data: AGENT, mode: 0o755 };

/** `d/up -> ..` and, n times over, `d/up` followed by 2n-1 `..`: reads as `d`, climbs 2n-1 levels. */
const UP = { name: 'd/up', type: 'symlink', target: '..' } as const;
const climb = (levels: number) => `${'d/up/'.repeat(levels)}${'../'.repeat(2 * levels - 1)}`;

async function install(root: string, source: string, extra: string[] = []) {
  return runCli(['install', '--root', root, '--version', '2.0.0', ...extra, source]);
}

/** A system user for the attacker's side of a test, created once. */
async function attacker(): Promise<{ uid: number; gid: number }> {
  const name = 'upgrader-attacker';
  const id = async (flag: string) => Number((await execa('id', [flag, name])).stdout);
  if ((await execa('id', [name], { reject: false })).exitCode !== 0) {
    // Another test file may create it at the same moment: "already exists" (9) is as good.
    const made = await execa('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name], { reject: false });
    if (made.exitCode !== 0 && made.exitCode !== 9) throw new Error(`useradd failed: ${made.stderr}`);
  }
  return { uid: await id('-u'), gid: await id('-g') };
}

/** The bundle, copied where another user can run it. */
function bundleForAll(): string {
  const dir = scratch();
  chmodSync(dir, 0o755);
  copyFileSync(join(REPO, 'dist/upgrader.cjs'), join(dir, 'upgrader.cjs'));
  chmodSync(join(dir, 'upgrader.cjs'), 0o755);
  return join(dir, 'upgrader.cjs');
}

const asUser = (user: { uid: number; gid: number }, command: string[]) =>
  execa('setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', ...command], { reject: false, timeout: 10_000 });

const modeOf = (path: string) => lstatSync(path).mode & 0o7777;

describe.skipIf(noRoot)(titled('setuid and writable files, installed by root', noRoot), () => {
  let user: { uid: number; gid: number };
  beforeAll(async () => {
    user = await attacker();
  });

  /** Runs the installed copy of `id` as the attacker: a setuid-root copy would show euid=0. */
  async function idAsAttacker(root: string): Promise<string> {
    chmodSync(root, 0o755);
    const result = await asUser(user, [join(root, 'versions/2.0.0/bin/id')]);
    expect(result.exitCode).toBe(0);
    return result.stdout;
  }

  it('an archive entry with setuid, setgid or sticky bits, or writable by group or others, loses those bits', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const source = await archive([
      agentEntry,
      { name: 'bin/id', type: 'file', from: '/usr/bin/id', mode: 0o4755 },
      { name: 'lib/shared', type: 'file', mode: 0o2775 },
      { name: 'data', type: 'dir', mode: 0o1777 },
      { name: 'data/notes', type: 'file', mode: 0o666 },
    ]);
    expect(await install(root, source)).toMatchObject({ code: 0 });
    const v = join(root, 'versions/2.0.0');
    expect([modeOf(join(v, 'bin/id')), modeOf(join(v, 'lib/shared')), modeOf(join(v, 'data')), modeOf(join(v, 'data/notes'))]).toEqual([0o755, 0o755, 0o755, 0o644]);
    expect(lstatSync(join(v, 'bin/id')).uid).toBe(0);
    expect(await idAsAttacker(root)).not.toMatch(/euid=0/);
  });

  /** A source directory of root's: an agent, and a setuid copy of id(1). */
  function setuidSource(): string {
    const source = scratch();
    mkdirSync(join(source, 'bin'));
    writeFileSync(join(source, 'bin/agent'), AGENT, { mode: 0o755 });
    copyFileSync('/usr/bin/id', join(source, 'bin/id'));
    chmodSync(join(source, 'bin/id'), 0o4755);
    return source;
  }

  it('a directory of root\'s with a setuid file is installed without the bit', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const source = setuidSource();
    expect(await install(root, source)).toMatchObject({ code: 0 });
    expect(modeOf(join(root, 'versions/2.0.0/bin/id'))).toBe(0o755);
    expect(await idAsAttacker(root)).not.toMatch(/euid=0/);
  });

  it.each([
    ['a user\'s own directory', (dir: string, u: { uid: number; gid: number }) => chownSync(dir, u.uid, u.gid), /install-attack-\w+ is owned by uid \d+, not root/],
    ['a directory of root\'s holding a user\'s setuid file', (dir: string, u: { uid: number; gid: number }) => chownSync(join(dir, 'bin/id'), u.uid, u.gid), /bin\/id is owned by uid \d+, not root/],
    ['a directory with a subdirectory anyone can write to', (dir: string) => chmodSync(join(dir, 'bin'), 0o777), /bin is writable by its group and others \(mode 0777\)/],
  ])('refuses %s: another user could change it while root copies it', async (_, weaken, reason) => {
    const root = makeRoot({ '1.0.0': {} });
    const source = setuidSource();
    weaken(source, user);
    const result = await install(root, source);
    expect(result.code).toBe(65);
    expect(result.stderr).toMatch(reason);
    expect(result.stderr).toMatch(/pack it as a \.tar\.gz archive, or make it and its parents root's|copy it somewhere only root can write first/);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    expect(leftovers(root)).toEqual([]);
  });

  it('refuses to install into versions/ that others can write to', async () => {
    const root = makeRoot({ '1.0.0': {} });
    chmodSync(join(root, 'versions'), 0o777);
    const result = await install(root, await archive([agentEntry]));
    expect(result.code).toBe(77);
    expect(result.stderr).toMatch(/Refusing to act as root on .*versions is writable by its group and others \(mode 0777\)/);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
  });
});

describe('the archive replaced behind the checksum', () => {
  /** install with the attacker's preload module; ends within 10 s, whatever happens. */
  function installSwapped(root: string, source: string, env: Record<string, string>, extra: string[] = []) {
    return execa(process.execPath, ['--import', pathToFileURL(join(FIXTURES, 'swap-archive.mjs')).href, CLI, 'install', '--root', root, '--version', '2.0.0', ...extra, source], {
      reject: false,
      timeout: 10_000,
      env: { SWAP_TARGET: source, ...env },
    });
  }

  it('the bytes whose SHA-256 was checked are the bytes installed, even if the file is replaced right after', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const good = await archive([agentEntry, { name: 'data.txt', type: 'file', data: 'good' }]);
    const evil = await archive([agentEntry, { name: 'data.txt', type: 'file', data: 'evil' }]);
    const marker = join(scratch(), 'swapped');
    const result = await installSwapped(root, good, { SWAP_WHEN: 'after-read', SWAP_REPLACEMENT: evil, SWAP_MARKER: marker }, ['--sha256', sha256(good)]);
    expect(result.stderr).toBe('');
    expect(result.exitCode).toBe(0);
    expect(readFileSync(marker, 'utf8')).toBe('swapped');
    expect(readFileSync(join(root, 'versions/2.0.0/data.txt'), 'utf8')).toBe('good');
    expect(leftovers(root)).toEqual([]);
  });

  it('a FIFO put in the archive\'s place after it was looked at is refused, not waited on', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const source = await archive([agentEntry]);
    const marker = join(scratch(), 'swapped');
    const result = await installSwapped(root, source, { SWAP_WHEN: 'after-stat', SWAP_MARKER: marker });
    expect(result.timedOut).toBe(false);
    expect(existsSync(marker)).toBe(true);
    expect(result.exitCode).toBe(64);
    expect(result.stderr).toMatch(/The archive .*agent\.tgz is not a regular file/);
    expect(leftovers(root)).toEqual([]);
  });
});

describe('links, judged by where they really lead', () => {
  it.each<[string, Entry[], RegExp]>([
    ['a chain of relative links that ends at /', [{ name: 'd', type: 'dir' }, UP, { name: 'top', type: 'symlink', target: climb(20) }], /top leads outside the version directory/],
    ['the manifest through such a chain', [{ name: 'd', type: 'dir' }, UP, { name: 'upgrader.json', type: 'symlink', target: `${climb(20)}etc/hostname` }], /upgrader\.json leads outside the version directory/],
    ['a link to a link that leads outside', [{ name: 'd', type: 'dir' }, UP, { name: 'x/a', type: 'symlink', target: '../y/b' }, { name: 'y/b', type: 'symlink', target: '../d/up/..' }], /(x\/a|y\/b) leads outside the version directory/],
    ['a hard link through a link that leads outside', [{ name: 'd', type: 'dir' }, UP, { name: 'top', type: 'symlink', target: climb(20) }, { name: 'passwd', type: 'hardlink', target: 'top/etc/passwd' }], /unpacked through the symbolic link top \(entry passwd\)/],
    ['a hard link to a file outside', [{ name: 'passwd', type: 'hardlink', target: '../../../../../../../../etc/passwd' }], /passwd leads outside the version directory/],
    ['an entry written through a link of its own', [{ name: 'real', type: 'dir' }, { name: 'alias', type: 'symlink', target: 'real' }, { name: 'alias/file', type: 'file' }], /unpacked through the symbolic link alias \(entry alias\/file\)/],
  ])('refuses an archive with %s (65), installing nothing', async (_, entries, reason) => {
    const root = makeRoot({ '1.0.0': {} });
    const result = await install(root, await archive([agentEntry, ...entries]));
    expect(result.stderr).toMatch(reason);
    expect(result.code).toBe(65);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    expect(leftovers(root)).toEqual([]);
  });

  it.each([
    ['links that climb out through a chain', (dir: string) => {
      mkdirSync(join(dir, 'd'));
      symlinkSync('..', join(dir, 'd/up'));
      symlinkSync(climb(20), join(dir, 'top'));
    }, /top leads outside the version directory/],
    ['a loop of links', (dir: string) => {
      symlinkSync('q', join(dir, 'p'));
      symlinkSync('p', join(dir, 'q'));
    }, /(p|q) goes through more than 40 links \(a loop\)/],
  ])('refuses a directory with %s (65)', async (_, plant, reason) => {
    const root = makeRoot({ '1.0.0': {} });
    const source = scratch();
    mkdirSync(join(source, 'bin'));
    writeFileSync(join(source, 'bin/agent'), AGENT, { mode: 0o755 });
    plant(source);
    const result = await install(root, source);
    expect(result.stderr).toMatch(/Refusing the directory /);
    expect(result.stderr).toMatch(reason);
    expect(result.code).toBe(65);
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    expect(leftovers(root)).toEqual([]);
  });

  it('installs a link to a name that does not exist, as long as it would stay inside', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const source = await archive([agentEntry, { name: 'bin/later', type: 'symlink', target: '../cache/not-yet/file' }, { name: 'bin/self', type: 'symlink', target: '../d/up/bin/agent' }, { name: 'd', type: 'dir' }, UP]);
    expect(await install(root, source)).toMatchObject({ code: 0 });
    expect(readlinkSync(join(root, 'versions/2.0.0/bin/later'))).toBe('../cache/not-yet/file');
  });

  it('the staged tree refuses a file hard-linked to one outside it', () => {
    const dir = scratch();
    const staging = join(dir, 'staging');
    mkdirSync(staging);
    writeFileSync(join(dir, 'outside'), 'x');
    linkSync(join(dir, 'outside'), join(staging, 'inside'));
    expect(stagedTreeProblem(staging)).toBe('inside is a hard link to a file outside the version directory');
    linkSync(join(staging, 'inside'), join(staging, 'twin'));
    expect(stagedTreeProblem(staging)).toMatch(/is a hard link to a file outside the version directory/);
    const clean = join(dir, 'clean');
    mkdirSync(clean);
    writeFileSync(join(clean, 'a'), 'x');
    linkSync(join(clean, 'a'), join(clean, 'b'));
    expect(stagedTreeProblem(clean)).toBeNull();
  });

  it.each([
    ['a/l', '../b', null],
    ['l', 'missing/../../x', 'l leads outside the version directory'],
    ['l', '/etc', 'l leads to the absolute path /etc'],
    ['l', 'd/up/..', 'l leads outside the version directory'],
    ['l', 'd/up/d/up/bin', null],
    ['l', 'd/absolute/x', 'l leads to the absolute path /tmp (through the link d/absolute)'],
  ])('linkEscape: %s -> %s', (link, target, expected) => {
    const dir = scratch();
    mkdirSync(join(dir, 'a'));
    mkdirSync(join(dir, 'd'));
    symlinkSync('..', join(dir, 'd/up'));
    symlinkSync('/tmp', join(dir, 'd/absolute'));
    symlinkSync(target, join(dir, link));
    const problem = linkEscape(dir, link);
    if (expected === null) expect(problem).toBeNull();
    else expect(problem).toContain(expected);
  });
});

describe('errors of the file system reach the operator with their documented status', () => {
  it.skipIf(noRoot).each([
    ['while the archive is read', randomBytes(1 << 20)],
    ['while it is unpacked', Buffer.alloc(4 << 20)],
  ])(titled('a full disk %s: 74, naming the file', noRoot), async (_, content) => {
    const big = join(scratch(), 'big');
    writeFileSync(big, content);
    const source = await archive([agentEntry, { name: 'big', type: 'file', from: big }]);
    const mount = scratch();
    // A 512 KiB file system of its own, in a private mount namespace: the rest of the machine never sees it.
    const script = `mount -t tmpfs -o size=512k tmpfs "$M" && mkdir -p "$M/root/versions" && "$NODE" "$CLI" install --root "$M/root" --version 2.0.0 "$A"; echo "exit=$?"; ls -A "$M/root/versions"`;
    const result = await execa('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { reject: false, timeout: 20_000, env: { M: mount, NODE: process.execPath, CLI, A: source } });
    expect(result.stderr).toMatch(/Could not write or read .*\/root\/versions\/\.2\.0\.0.*: no space is left on its device \(ENOSPC\)/);
    expect(result.stdout.split('\n')).toEqual(['exit=74']);
  });

  describe.skipIf(noRoot)(titled('as another user', noRoot), () => {
    let user: { uid: number; gid: number };
    beforeAll(async () => {
      user = await attacker();
    });

    it.each([
      ['an archive', async () => archive([agentEntry]), /Not allowed to use .*agent\.tgz \(EACCES\)/],
      ['a directory', async () => {
        const dir = scratch();
        writeFileSync(join(dir, 'x'), '');
        return dir;
      }, /Not allowed to use .*install-attack-\w+ \(EACCES\)/],
    ])('a source the caller cannot read (%s): 77, naming it', async (_, make, reason) => {
      const root = makeRoot({ '1.0.0': {} });
      await execa('chown', ['-R', `${user.uid}:${user.gid}`, root]);
      const source = await make();
      // Root's either way: a directory of mode 0700, or an archive of mode 0600 in a directory the user may enter.
      if (source.endsWith('.tgz')) {
        chmodSync(dirname(source), 0o755);
        chmodSync(source, 0o600);
      }
      const result = await asUser(user, [process.execPath, bundleForAll(), 'install', '--root', root, '--version', '2.0.0', source]);
      expect(result.stderr).toMatch(reason);
      expect(result.exitCode).toBe(77);
      expect(leftovers(root)).toEqual([]);
    });
  });

  it('an archive entry with a name too long for the file system: 65, naming it', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const long = 'n'.repeat(300);
    const result = await install(root, await archive([agentEntry, { name: `data/${long}`, type: 'file' }]));
    expect(result.stderr).toMatch(new RegExp(`an entry whose name is too long for this file system: .*${long} \\(ENAMETOOLONG\\)`));
    expect(result.code).toBe(65);
    expect(leftovers(root)).toEqual([]);
  });

  it('a source path too long for the file system: 64, naming it', async () => {
    const root = makeRoot({ '1.0.0': {} });
    const source = join(scratch(), `${'n'.repeat(300)}.tgz`);
    const result = await install(root, source);
    expect(result.stderr).toMatch(/The path .*nnnn\.tgz is too long for the file system \(ENAMETOOLONG\)/);
    expect(result.code).toBe(64);
  });
});

describe('asUpgraderError: one place maps system and archive errors to documented statuses', () => {
  const errno = (code: string, extra: Record<string, unknown> = {}) => Object.assign(new Error(`${code}: failed`), { code, path: '/r/x', ...extra });
  it.each([
    ['ENOSPC', {}, 74, 'Could not write or read /r/x: no space is left on its device (ENOSPC).'],
    ['EDQUOT', {}, 74, 'Could not write or read /r/x: the disk quota is used up (EDQUOT).'],
    ['EIO', {}, 74, 'Could not write or read /r/x: the device reported an I/O error (EIO).'],
    ['EROFS', {}, 74, 'Could not write or read /r/x: its file system is read-only (EROFS).'],
    ['EACCES', {}, 77, 'Not allowed to use /r/x (EACCES): check its owner and mode, and which user runs this command.'],
    ['EPERM', {}, 77, 'Not allowed to use /r/x (EPERM): check its owner and mode, and which user runs this command.'],
    ['ENAMETOOLONG', {}, 64, 'The path /r/x is too long for the file system (ENAMETOOLONG).'],
    ['ENOSPC', { tarCode: 'TAR_ENTRY_ERROR', file: 'a.tgz' }, 74, 'Could not write or read /r/x: no space is left on its device (ENOSPC).'],
    ['TAR_SYMLINK_ERROR', { symlink: '/s/link', cwd: '/s', entry: { path: 'link/x' }, file: 'a.tgz' }, 65, 'The archive a.tgz would be unpacked through the symbolic link link (entry link/x); nothing was installed.'],
    ['TAR_BAD_ARCHIVE', { tarCode: 'TAR_BAD_ARCHIVE', file: 'a.tgz' }, 65, 'The archive a.tgz cannot be unpacked: failed; nothing was installed.'],
  ])('%s %j: exit %i', (code, extra, status, sentence) => {
    const mapped = asUpgraderError(errno(code, extra));
    expect([mapped?.exitCode, mapped?.message]).toEqual([status, sentence]);
  });
  it('leaves anything else to be reported as a bug (70)', () => {
    expect(asUpgraderError(errno('ENOENT'))).toBeNull();
    expect(asUpgraderError(new TypeError('x is undefined'))).toBeNull();
    expect(asUpgraderError('a string')).toBeNull();
  });
});
