/** The single-file bundle is a complete install: copied alone, with no node_modules, it runs and supervises. */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, currentTarget, makeRoot, REPO, scratchDir, statusJson, Upgrader } from '../helpers.js';
import { FAST } from '../timing.js';

cleanUpAfterEach();

it('dist/upgrader.cjs copied alone into an empty directory runs a handoff', async () => {
  const dir = scratchDir('lonely-');
  const bundle = join(dir, 'upgrader.cjs');
  copyFileSync(join(REPO, 'dist/upgrader.cjs'), bundle);
  // Executable by its shebang, the way the units start it; cwd and NODE_PATH give it nothing to find.
  const version = await execa(bundle, ['--version'], { cwd: dir, env: { NODE_PATH: '' } });
  expect(version.stdout).toMatch(/^\d+\.\d+\.\d+$/);

  const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
  const child = spawn(bundle, ['run', '--root', root, ...FAST], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const up = new Upgrader(root, child);
  const pid = await up.agentPid('1.0.0');
  await up.waitForTransition('ready', 'running');
  askUpgrade(root, pid, '2.0.0');
  await up.waitForSent('go', '2.0.0');
  expect(currentTarget(root)).toBe('versions/2.0.0');
  expect((await statusJson(root)).report.agent.version).toBe('2.0.0');
  up.kill('SIGTERM');
  expect((await up.waitForExit()).code).toBe(0);
});
