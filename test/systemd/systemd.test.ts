/**
 * The shipped unit under a real systemd, booted in systemd-nspawn (see run.sh and scenarios.sh).
 * Needs root and systemd-nspawn with mmdebstrap (.ci/run installs them); elsewhere it is skipped,
 * and says why.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { missing, REPO, titled } from '../helpers.js';

const why = missing('root', 'systemd-nspawn', 'mmdebstrap');
const scenarios = [...readFileSync(join(REPO, 'test/systemd/scenarios.sh'), 'utf8').matchAll(/^scenario "([^"]+)"/gm)].map((m) => m[1]!);

describe.skipIf(why)(titled('under a real systemd', why), () => {
  let tap = '';
  beforeAll(async () => {
    // Asynchronously: a worker blocked for a minute loses touch with vitest.
    const run = spawn('bash', [join(REPO, 'test/systemd/run.sh')], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
    run.stdout.setEncoding('utf8').on('data', (chunk: string) => (tap += chunk));
    run.stderr.setEncoding('utf8').on('data', (chunk: string) => (tap += chunk));
    await new Promise((resolve) => run.on('close', resolve));
  }, 620_000);

  it('ran every scenario', () => {
    expect(tap).toMatch(new RegExp(`^1\\.\\.${scenarios.length}$`, 'm'));
  });

  for (const [index, name] of scenarios.entries()) {
    it(name, () => {
      const line = tap.split('\n').find((l) => l.endsWith(` ${index + 1} - ${name}`));
      const details = tap.split('\n').filter((l) => l.startsWith('#')).join('\n');
      expect(line, details).toBe(`ok ${index + 1} - ${name}`);
    });
  }
});
