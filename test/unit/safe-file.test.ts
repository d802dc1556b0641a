/** readSmallFile on real files: what it reads, and everything it refuses without blocking or following. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readSmallFile } from '../../src/safe-file.js';

const dir = mkdtempSync(join(tmpdir(), 'safe-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => join(dir, name);

describe('readSmallFile', () => {
  it('reads a regular file, empty or not', () => {
    writeFileSync(at('plain'), '{"a":1}\n');
    writeFileSync(at('empty'), '');
    expect(readSmallFile(at('plain'))).toEqual({ ok: true, text: '{"a":1}\n' });
    expect(readSmallFile(at('empty'))).toEqual({ ok: true, text: '' });
  });

  it('reports a missing file as missing', () => {
    expect(readSmallFile(at('nothing-here'))).toMatchObject({ ok: false, kind: 'missing', code: 'ENOENT' });
  });

  it('never follows a symbolic link, to a file or to a FIFO', () => {
    writeFileSync(at('elsewhere'), 'secret');
    symlinkSync(at('elsewhere'), at('link'));
    execFileSync('mkfifo', [at('fifo-target')]);
    symlinkSync(at('fifo-target'), at('link-to-fifo'));
    for (const name of ['link', 'link-to-fifo']) {
      expect(readSmallFile(at(name))).toEqual({ ok: false, kind: 'refused', code: null, problem: 'is a symbolic link, which the upgrader never follows' });
    }
  });

  it('refuses a FIFO at once, with no writer and without blocking', () => {
    execFileSync('mkfifo', [at('fifo')]);
    const started = performance.now();
    expect(readSmallFile(at('fifo'))).toMatchObject({ ok: false, kind: 'refused', problem: 'is a FIFO, not a regular file' });
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it('refuses a directory, a socket and a device', async () => {
    mkdirSync(at('dir'));
    expect(readSmallFile(at('dir'))).toMatchObject({ kind: 'refused', problem: 'is a directory, not a regular file' });
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(at('sock'), resolve));
    try {
      expect(readSmallFile(at('sock'))).toMatchObject({ kind: 'refused', problem: 'is a socket, not a regular file' });
    } finally {
      server.close();
    }
    expect(readSmallFile('/dev/zero')).toMatchObject({ kind: 'refused', problem: 'is a device, not a regular file' });
  });

  it('refuses a file over the limit, and reads one at the limit', () => {
    writeFileSync(at('big'), 'x'.repeat(1024 * 1024 + 1));
    writeFileSync(at('at-limit'), 'y'.repeat(1024 * 1024));
    expect(readSmallFile(at('big'))).toMatchObject({ kind: 'refused', problem: 'is larger than 1 MiB (1048577 bytes)' });
    const read = readSmallFile(at('at-limit'));
    expect(read.ok && read.text.length).toBe(1024 * 1024);
    expect(readSmallFile(at('plain'), 3)).toMatchObject({ kind: 'refused', problem: 'is larger than 3 bytes (8 bytes)' });
  });

  it('a file that grows past the limit while it is read is refused (/proc files claim size 0)', () => {
    // /proc/self/environ has st_size 0 but content, the case of a file that grew after its fstat.
    expect(readSmallFile('/proc/self/environ', 4)).toMatchObject({ kind: 'refused', problem: 'is larger than 4 bytes' });
    const read = readSmallFile('/proc/self/stat');
    expect(read.ok && read.text).toMatch(new RegExp(`^${process.pid} `));
  });

  it('reports what the system refuses as failed, with the code (EACCES is in operator.test.ts, as another user)', () => {
    writeFileSync(at('a-file'), 'x');
    expect(readSmallFile(join(at('a-file'), 'below'))).toEqual({ ok: false, kind: 'failed', code: 'ENOTDIR', problem: 'cannot be read (ENOTDIR)' });
  });
});
