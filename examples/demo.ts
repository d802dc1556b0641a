/**
 * `npm run demo`: a live demonstration on a temporary root, with the real upgrader and the example agent.
 *   1. 1.0.0 starts and works.
 *   2. It asks for 1.1.0: a live handoff with no downtime.
 *   3. It asks for 1.2.0, whose verification fails: the upgrade fails and 1.1.0 never stops.
 *   4. It asks for 1.3.0, which crashes right after taking over: it is rolled back to 1.1.0.
 * `upgrader status` is printed after each step. Exits non-zero if any step does not happen.
 * `npm run demo -- --fleet` hands over to the fleet demo instead (examples/fleet-demo.ts).
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

if (process.argv.includes('--fleet')) {
  const { fleetDemo } = await import('./fleet-demo.js');
  process.exit(await fleetDemo());
}

const here = dirname(fileURLToPath(import.meta.url));
const cli = resolve(here, '../src/cli.js');
const agentScript = resolve(here, 'example-agent.js');
const keep = process.argv.includes('--keep');
const bold = (s: string) => (process.stdout.isTTY && !process.env.NO_COLOR ? `\x1b[1m${s}\x1b[0m` : s);

const root = mkdtempSync(join(tmpdir(), 'upgrader-demo-'));
mkdirSync(join(root, 'versions'));
const versions: Record<string, object | null> = {
  '1.0.0': null,
  '1.1.0': null,
  '1.2.0': { verify: 'fail', reason: 'state schema 7 is newer than this build understands' },
  '1.3.0': { crashAfterGoMs: 400 },
};
for (const [version, behaviour] of Object.entries(versions)) {
  const dir = join(root, 'versions', version);
  mkdirSync(join(dir, 'bin'), { recursive: true });
  writeFileSync(join(dir, 'bin/agent'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(agentScript)}\n`);
  chmodSync(join(dir, 'bin/agent'), 0o755);
  if (behaviour) writeFileSync(join(dir, 'example.json'), JSON.stringify(behaviour));
}
symlinkSync('versions/1.0.0', join(root, 'current'));

function status(): { code: number; report: any } {
  const result = spawnSync(process.execPath, [cli, 'status', '--root', root, '--json'], { encoding: 'utf8' });
  return { code: result.status ?? -1, report: JSON.parse(result.stdout) };
}

async function showStatus(): Promise<void> {
  // Let the upgrader's pending log lines print first, so that the narration reads in order.
  await new Promise((r) => setTimeout(r, 150));
  const result = spawnSync(process.execPath, [cli, 'status', '--root', root], { encoding: 'utf8' });
  console.log(`\n$ upgrader status --root ${root}\n${result.stdout.replace(/^/gm, '  ')}`);
}

async function until(what: string, fact: (report: any, code: number) => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const { code, report } = status();
    if (fact(report, code)) return;
    if (Date.now() > deadline) throw new Error(`the demo waited ${ms} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function narrate(line: string): void {
  if (!line.startsWith('{')) return console.log(`    ${line}`);
  const entry = JSON.parse(line) as { msg: string; level: string; detail?: { reason?: string } };
  if (entry.msg.startsWith('transition') || entry.msg.startsWith('sent') || entry.msg.startsWith('current ->') || entry.level !== 'info') {
    console.log(`    upgrader: ${entry.msg}`);
  }
}

async function main(): Promise<void> {
  console.log(bold(`Root: ${root}`));
  console.log(bold('\n1. Start 1.0.0 under the upgrader'));
  const upgrader = spawn(process.execPath, [cli, 'run', '--root', root, '--probation', '2s', '--ready-timeout', '5s', '--stop-timeout', '5s'], {
    stdio: ['ignore', 'inherit', 'pipe'],
    env: { ...process.env, EXAMPLE_TICK_MS: '200' },
  });
  let partial = '';
  upgrader.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    lines.filter(Boolean).forEach(narrate);
  });
  const exited = new Promise<number | null>((r) => upgrader.on('exit', (code) => r(code)));
  await until('the agent to be ready', (_, code) => code === 0);
  await showStatus();

  const ask = (version: string) => writeFileSync(join(root, 'desired-version'), `${version}\n`);

  console.log(bold('2. The agent asks for 1.1.0: live handoff'));
  ask('1.1.0');
  await until('1.1.0 to take over', (r) => r.lastUpgrade?.to === '1.1.0' && r.agent?.version === '1.1.0' && r.agent.ready);
  await showStatus();

  console.log(bold('3. The agent asks for 1.2.0, which fails its own verification'));
  ask('1.2.0');
  await until('the 1.2.0 upgrade to fail', (r) => r.lastUpgrade?.to === '1.2.0' && r.lastUpgrade.result === 'failed');
  await showStatus();

  console.log(bold('4. The agent asks for 1.3.0, which crashes after taking over: rollback'));
  ask('1.3.0');
  await until('the rollback from 1.3.0', (r) => r.lastUpgrade?.to === '1.3.0' && r.lastUpgrade.result === 'rolled-back' && r.agent?.ready);
  await showStatus();

  console.log(bold('5. Stop the upgrader (SIGTERM), as the init system would'));
  upgrader.kill('SIGTERM');
  const code = await exited;
  await showStatus();
  if (code !== 0) throw new Error(`the upgrader exited with status ${code}`);
  console.log(bold('Demo complete: one live handoff, one failed candidate, one probation rollback, nothing lost.'));
}

main()
  .catch((error: unknown) => {
    console.error(`demo failed: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  })
  .finally(() => {
    if (keep) console.log(`Root kept at ${root}`);
    else rmSync(root, { recursive: true, force: true });
  });
