/**
 * Set-up of every test file: its own temporary directory (inside the run's, see run-tmpdir.ts) as
 * os.tmpdir() and TMPDIR, and the check that every test cleans up after itself: what a test adds there
 * and leaves after its own afterEach fails that test; what is there when the file ends fails the file.
 * Leftovers are named, then removed, so that one leak does not fail the tests after it.
 */
import { chmodSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { afterAll, afterEach, beforeEach, expect } from 'vitest';

const run = process.env.UPGRADER_TEST_RUN_DIR;

if (run) {
  const file = expect.getState().testPath!;
  // Short (a socket path in a root must fit in 107 bytes): the folder's initial and the file's name.
  const dir = join(run, `${basename(dirname(file))[0]}.${basename(file).replace(/\.test\.ts$/, '')}`);
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  process.env.TMPDIR = dir;

  const remove = (names: string[]) => {
    for (const name of names) rmSync(join(dir, name), { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
  };
  const left = (what: string, names: string[]) =>
    new Error(`${what} left ${names.length} temporary ${names.length === 1 ? 'entry' : 'entries'} behind (removed now): ${names.join(', ')}`);

  // Registered before the file's own hooks: this beforeEach runs first, this afterEach after the file's.
  let before = new Set<string>();
  beforeEach(() => {
    before = new Set(readdirSync(dir));
  });
  afterEach(() => {
    const added = readdirSync(dir).filter((name) => !before.has(name));
    remove(added);
    if (added.length > 0) throw left('this test', added);
  });
  afterAll(() => {
    const names = readdirSync(dir);
    remove(names);
    if (names.length > 0) throw left(`${basename(file)} (outside its tests, or in its afterAll)`, names);
  });
}
