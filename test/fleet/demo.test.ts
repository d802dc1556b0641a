/** `npm run demo -- --fleet` end to end: a real etcd and five real hosts, a rollout, a rollback, a halted bad release, a barrier rollout. */
import { execa } from 'execa';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { missing, REPO, titled } from '../helpers.js';

const skip = missing('etcd');

it.skipIf(skip)(titled('the fleet demo rolls out 1.1.0 with a canary, rolls it back, halts 1.2.0 at its canary, takes 2.0.0 through a barrier with one migration, and leaves nothing behind', skip), async () => {
  const began = Date.now();
  const demo = await execa(process.execPath, [join(REPO, 'dist/examples/demo.js'), '--fleet'], { reject: false, timeout: 180_000, all: true });
  const out = demo.all ?? '';
  expect(demo.exitCode, out).toBe(0);

  // Five hosts registered, on 1.0.0, before anything is published.
  expect(out).toMatch(/desired version: \(none\)/);
  for (const host of ['canary-1', 'prod-1', 'prod-2', 'prod-3', 'prod-4']) expect(out).toMatch(new RegExp(`^ +${host} +(canary|prod) +online +1\\.0\\.0 +idle`, 'm'));

  // 1. The good release: canary first, then prod in waves of at most 2; every host on 1.1.0.
  expect(out).toMatch(/1\.1\.0 to canary \(1 host, 1 wave\), prod \(4 hosts, 3 waves\)/);
  expect(out).toMatch(/^ +succeeded: group prod wave 3; canary 1\/1 done; prod 4\/4 done$/m);
  expect(out).toMatch(/desired version: 1\.1\.0/);
  expect(out.match(/1\.0\.0 -> 1\.1\.0 succeeded/g)?.length).toBeGreaterThanOrEqual(5);

  // 2. The rollback: every host back on 1.0.0, no desired version.
  const afterRollback = out.slice(out.indexOf('2. '), out.indexOf('3. '));
  expect(afterRollback).toMatch(/rollback \S+ of \S+: canary \(1 host, 1 wave\), prod \(4 hosts, 3 waves\) back to their previous versions/);
  expect(afterRollback).toMatch(/desired version: \(none\)/);
  for (const host of ['canary-1', 'prod-1', 'prod-2', 'prod-3', 'prod-4']) expect(afterRollback).toMatch(new RegExp(`^ +${host} +\\S+ +online +1\\.0\\.0 .*1\\.1\\.0 -> 1\\.0\\.0 succeeded`, 'm'));

  // 3. The bad release halts at its canary, which stays on 1.0.0; prod is not touched.
  expect(out).toMatch(/rollout \S+ halted: canary-1 failed: the candidate 1\.2\.0 exited/);
  expect(out).toMatch(/^ +canary-1 +canary +online +1\.0\.0 +failed +failed .*\[candidate-failed\]/m);
  expect(out).toMatch(/prod: 0 done, 0 in flight, 0 failed, 4 pending of 4/);

  // 4. The barrier: a plain rollout would be refused; every phase in order, the migration once, every host on 2.0.0.
  const barrier = out.slice(out.indexOf('4. '));
  const phases = [...barrier.matchAll(/^ +phase (\w+):/gm)].map((m) => m[1]);
  expect(phases).toEqual(['halt', 'migrate', 'switch']);
  expect(barrier).toMatch(/The migration ran 1 time\(s\)/);
  expect(barrier).toMatch(/migrated the state schema of fleet \S+ from 1\.0\.0 to 2\.0\.0/);
  expect(barrier).toMatch(/barrier phase switch; migration exited with status 0/);
  for (const host of ['canary-1', 'prod-1', 'prod-2', 'prod-3', 'prod-4']) expect(barrier).toMatch(new RegExp(`^ +${host} +\\S+ +online +2\\.0\\.0 `, 'm'));
  expect(out).toMatch(/^Demo complete in \d+ s/m);

  // Nothing scary when all goes well: no stack trace, no warning, no error line of the demo's own.
  expect(out).not.toMatch(/^\s+at |Warning|fleet demo failed/m);
  // Its temporary directory is gone (the test file's set-up also fails the test if anything is left in TMPDIR).
  const base = /^Fleet demo in (\S+)$/m.exec(out)?.[1];
  expect(base).toBeTruthy();
  await expect(execa('test', ['-e', base!])).rejects.toThrow();
  console.log(`fleet demo: ${Math.round((Date.now() - began) / 1000)} s`);
});
