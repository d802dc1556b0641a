/**
 * The Python agent library (sdk/python) under a real `upgrader run`: a live handoff, a failed candidate,
 * a probation rollback; its own unit tests; and `upgrader check` on its example agent.
 */
import { execa } from 'execa';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanUpAfterEach, currentTarget, makeRoot, missing, REPO, runCli, scratchDir, startReady, titled, workSpans } from '../helpers.js';
import { FAST, runArgs } from '../timing.js';

cleanUpAfterEach();
const skip = missing('python3');
const EXAMPLE = join(REPO, 'sdk/python/examples/example_agent.py');

/** A version of the Python example agent, with its example.json. */
function pythonVersion(root: string, version: string, behaviour: Record<string, unknown> = {}): void {
  const dir = join(root, 'versions', version);
  mkdirSync(join(dir, 'bin'), { recursive: true });
  writeFileSync(join(dir, 'bin/agent'), `#!/bin/sh\nexec python3 ${JSON.stringify(EXAMPLE)}\n`);
  chmodSync(join(dir, 'bin/agent'), 0o755);
  writeFileSync(join(dir, 'example.json'), JSON.stringify(behaviour));
}

function pythonRoot(versions: Record<string, Record<string, unknown>>): string {
  const root = makeRoot({}, undefined);
  for (const [version, behaviour] of Object.entries(versions)) pythonVersion(root, version, behaviour);
  return root;
}

describe.skipIf(skip)(titled('the Python agent library', skip), () => {
  it('passes its own unit tests', async () => {
    const out = await execa('python3', ['-m', 'unittest', 'discover', '-s', 'tests'], { cwd: join(REPO, 'sdk/python'), reject: false, all: true });
    expect(out.exitCode, out.all).toBe(0);
    expect(out.all).toMatch(/^OK$/m);
  });

  it('hands off live to a new version: the old one\'s last work comes before the new one\'s first', async () => {
    const root = pythonRoot({ '1.0.0': {}, '2.0.0': {} });
    await execa('ln', ['-s', 'versions/1.0.0', join(root, 'current')]);
    await startReady(root, FAST);
    const out = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(out.code, out.stdout).toBe(0);
    expect(currentTarget(root)).toBe('versions/2.0.0');
    const [old, next] = workSpans(root);
    expect([old?.version, next?.version]).toEqual(['1.0.0', '2.0.0']);
    expect(next!.first).toBeGreaterThan(old!.last);
  });

  it('a candidate that fails its verification leaves the old version working; one that dies in probation is rolled back', async () => {
    const root = pythonRoot({ '1.0.0': {}, '2.0.0': { verify: 'fail', reason: 'schema too new' }, '3.0.0': { crashAfterGoMs: 300 } });
    await execa('ln', ['-s', 'versions/1.0.0', join(root, 'current')]);
    await startReady(root, runArgs({ probation: '3s' }));
    const failed = await runCli(['upgrade', '--root', root, '--to', '2.0.0']);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/failed \(2\.0\.0\): the candidate 2\.0\.0 exited with code 1 before reporting ready/);
    const rolled = await runCli(['upgrade', '--root', root, '--to', '3.0.0', '--wait', 'probation']);
    expect(rolled.code).toBe(1);
    expect(rolled.stdout).toMatch(/failed \(3\.0\.0\): 3\.0\.0 exited with code 3 during its probation \[rolled-back\]/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('upgrader check passes its example agent', async () => {
    const dir = scratchDir('python-');
    mkdirSync(join(dir, 'bin'));
    writeFileSync(join(dir, 'bin/agent'), `#!/bin/sh\nexec python3 ${JSON.stringify(EXAMPLE)}\n`);
    chmodSync(join(dir, 'bin/agent'), 0o755);
    const out = await runCli(['check', '--ready-timeout', '5s', '--stop-timeout', '5s', dir], 60_000);
    expect(out.code, out.stdout + out.stderr).toBe(0);
    expect(out.stdout.trim().split('\n').at(-1)).toBe('passed: the agent keeps protocol v1');
  });
});
