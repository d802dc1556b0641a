/**
 * `npm run demo -- --fleet`: a live fleet on one machine, with the real commands a user would run.
 * A real etcd on loopback (free ports, temporary data), and five hosts in a temporary directory, each a
 * root made by `upgrader install` with 1.0.0 of the example agent, a real `upgrader run` and a real
 * `upgrader follow` (group canary: 1 host; prod: 4). Then:
 *   1. 1.1.0 is published and rolled out, canary first: every host ends on 1.1.0.
 *   2. 1.2.0, whose candidate fails its own verification, is rolled out: the canary fails, the rollout
 *      halts, no other host is touched.
 *   3. The halted rollout moved no host, so it is aborted and the 1.1.0 rollout is rolled back: every host
 *      returns to 1.0.0.
 *   4. 2.0.0, which cannot run beside 1.0.0, is published with --barrier and rolled out through the barrier:
 *      every host stages it, halts, a migration runs once, and every host starts 2.0.0 from halted.
 * `upgrader fleet status` is printed after each step. Everything is stopped and the directory removed at
 * the end and on Ctrl-C. Exits non-zero if a step does not happen; exits 0 with one sentence when etcd is
 * not installed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { freePort } from './free-port.js';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tar from 'tar';
import { closeEtcd, connectEtcd } from '../src/fleet/etcd.js';
import { fleetPrefix } from '../src/fleet/schema.js';
import { FleetStore } from '../src/fleet/store.js';
import { readFleetView, type FleetView } from '../src/fleet/view.js';

const here = dirname(fileURLToPath(import.meta.url));
const cli = resolve(here, '../src/cli.js');
const agentScript = resolve(here, 'example-agent.js');
const FLEET = 'demo';
const bold = (s: string) => (process.stdout.isTTY && !process.env.NO_COLOR ? `\x1b[1m${s}\x1b[0m` : s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The etcd binary: Debian's etcd-server puts it in /usr/bin; otherwise whatever the PATH has. */
function findEtcd(): string | null {
  if (existsSync('/usr/bin/etcd')) return '/usr/bin/etcd';
  const found = spawnSync('sh', ['-c', 'command -v etcd'], { encoding: 'utf8' });
  return found.status === 0 && found.stdout.trim() ? found.stdout.trim() : null;
}

type Proc = { name: string; child: ChildProcess; exited: Promise<void> };
const procs: Proc[] = [];

function start(name: string, command: string, args: string[], log: string, env: NodeJS.ProcessEnv = {}): Proc {
  const out = createWriteStream(log);
  // Its own process group: a Ctrl-C on the terminal reaches the demo, which stops everything in order.
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env }, detached: true });
  child.stdout!.pipe(out, { end: false });
  child.stderr!.pipe(out, { end: false });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const proc = { name, child, exited };
  procs.push(proc);
  return proc;
}

const alive = (p: Proc) => p.child.exitCode === null && p.child.signalCode === null;

async function stop(which: Proc[], signal: NodeJS.Signals, ms: number): Promise<void> {
  for (const p of which) if (alive(p)) p.child.kill(signal);
  await Promise.race([Promise.all(which.map((p) => p.exited)), sleep(ms)]);
  for (const p of which) if (alive(p)) p.child.kill('SIGKILL');
  await Promise.race([Promise.all(which.map((p) => p.exited)), sleep(2_000)]);
}

/** Followers first (nothing asks the upgraders for anything after that), then the upgraders, then etcd. */
async function stopAll(): Promise<void> {
  for (const child of commands) child.kill('SIGKILL');
  await stop(procs.filter((p) => p.name.startsWith('follow')), 'SIGTERM', 5_000);
  await stop(procs.filter((p) => p.name.startsWith('run')), 'SIGTERM', 10_000);
  await stop(procs.filter((p) => p.name === 'etcd'), 'SIGTERM', 5_000);
}

/** A real single-member etcd on loopback; retried on new ports if another process took one meanwhile. */
async function startEtcd(etcd: string, base: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    const [client, peer] = [await freePort(), await freePort()];
    const dir = join(base, `etcd-${attempt}`);
    const log = join(base, `etcd-${attempt}.log`);
    const proc = start('etcd', etcd, [
      '--name', 'demo', '--data-dir', dir,
      '--listen-client-urls', `http://127.0.0.1:${client}`, '--advertise-client-urls', `http://127.0.0.1:${client}`,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `demo=http://127.0.0.1:${peer}`, '--initial-cluster-state', 'new',
      '--logger', 'zap', '--log-outputs', log,
    ], join(base, `etcd-${attempt}.out`));
    const url = `http://127.0.0.1:${client}`;
    const deadline = Date.now() + 20_000;
    while (alive(proc) && Date.now() < deadline) {
      try {
        const health = (await (await fetch(`${url}/health`, { signal: AbortSignal.timeout(1_000) })).json()) as { health?: string };
        if (health.health === 'true') return url;
      } catch {
        // not up yet
      }
      await sleep(100);
    }
    await stop([proc], 'SIGKILL', 1_000);
    const tail = existsSync(log) ? readFileSync(log, 'utf8') : '';
    if (attempt < 3 && /address already in use/.test(tail)) continue;
    throw new Error(`etcd did not become healthy within 20 s (its log: ${log})`);
  }
}

type Output = { code: number; stdout: string; stderr: string };

/** The commands running now (a Ctrl-C in the middle of a rollout stops the waiting command too). */
const commands = new Set<ChildProcess>();
/** Set on Ctrl-C: the steps still unwinding print nothing more. */
let interrupted = false;

/** `upgrader <args>`, as a user would run it, with its output. */
function upgrader(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Output> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    commands.add(child);
    child.on('exit', () => commands.delete(child));
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('close', (code) => done({ code: code ?? -1, stdout, stderr }));
  });
}

const indent = (text: string) => text.trimEnd().replace(/^(?=.)/gm, '    ');

async function main(): Promise<number> {
  const etcd = findEtcd();
  if (!etcd) {
    console.log('The fleet demo needs etcd: install it (Debian, Ubuntu: apt-get install etcd-server) and run `npm run demo -- --fleet` again.');
    return 0;
  }
  const began = Date.now();
  const base = mkdtempSync(join(tmpdir(), 'upgrader-fleet-demo-'));
  let cleaned: Promise<void> | null = null;
  let store: FleetStore | null = null;
  const cleanUp = () =>
    (cleaned ??= Promise.resolve(store && closeEtcd(store.client)).catch(() => undefined).then(stopAll).finally(() => {
      if (process.argv.includes('--keep')) console.log(`Kept ${base}`);
      else rmSync(base, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    }));
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      interrupted = true;
      console.log(`\n${signal}: stopping the hosts and etcd, removing ${base}`);
      void cleanUp().finally(() => process.exit(130));
    });
  }

  try {
    console.log(bold(`Fleet demo in ${base}`));
    const url = await startEtcd(etcd, base);
    console.log(`etcd ${url} (single member, data in ${join(base, 'etcd-1')})`);
    // What is printed is the real commands' output; the demo's own checks and waits read the same view
    // in this process (a command per poll would cost a Node.js start-up each time).
    store = new FleetStore(await connectEtcd({ endpoints: [url], callTimeoutMs: 5_000 }), fleetPrefix('/upgrader/', FLEET));
    const view = () => readFleetView(store!);
    // The waiting rollout command adds event listeners per redraw, and Node.js warns past 10 (see the report).
    const quiet = { NODE_NO_WARNINGS: '1' };
    const fleet = (args: string[]) => upgrader(['fleet', ...args, '--fleet', FLEET, '--etcd', url], quiet);
    const showStatus = async (why: string) => {
      console.log(`\n${why}\n  $ upgrader fleet status --fleet ${FLEET}`);
      console.log(indent((await fleet(['status'])).stdout));
    };
    const waitFor = async (what: string, fact: (v: FleetView) => boolean, ms = 30_000) => {
      const deadline = Date.now() + ms;
      while (!fact(await view())) {
        if (Date.now() > deadline) throw new Error(`the demo waited ${ms / 1000} s for ${what}`);
        await sleep(100);
      }
    };
    /** Runs a fleet command as a user would and shows what it prints; returns its exit status. */
    const run = async (args: string[]) => {
      console.log(`  $ upgrader fleet ${args.join(' ')} --fleet ${FLEET}`);
      const out = await fleet(args);
      if (interrupted) return out.code;
      if (out.stdout.trim()) console.log(indent(out.stdout));
      if (out.stderr.trim()) console.log(indent(out.stderr));
      return out.code;
    };

    // Releases: the example agent, as a build would produce it (bin/agent and the agent's own files).
    const releases: Record<string, { tree: string; archive: string; sha256: string }> = {};
    const behaviours: Record<string, object | null> = {
      '1.0.0': null,
      '1.1.0': null,
      '1.2.0': { verify: 'fail', reason: 'state schema 7 is newer than this build understands' },
      '2.0.0': null,
    };
    for (const [version, behaviour] of Object.entries(behaviours)) {
      const tree = join(base, 'builds', version);
      mkdirSync(join(tree, 'bin'), { recursive: true });
      writeFileSync(join(tree, 'bin/agent'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(agentScript)}\n`);
      chmodSync(join(tree, 'bin/agent'), 0o755);
      if (behaviour) writeFileSync(join(tree, 'example.json'), JSON.stringify(behaviour));
      const archive = join(base, 'builds', `example-agent-${version}.tar.gz`);
      await tar.c({ gzip: true, file: archive, cwd: tree, portable: true }, ['.']);
      releases[version] = { tree, archive, sha256: createHash('sha256').update(readFileSync(archive)).digest('hex') };
    }

    const hosts = [
      { name: 'canary-1', group: 'canary' },
      ...[1, 2, 3, 4].map((i) => ({ name: `prod-${i}`, group: 'prod' })),
    ];
    console.log(bold('\n0. Five hosts: each a root with 1.0.0 installed, `upgrader run` and `upgrader follow`'));
    mkdirSync(join(base, 'hosts'));
    await Promise.all(hosts.map(async (host) => {
      const installed = await upgrader(['install', '--root', join(base, 'hosts', host.name), '--version', '1.0.0', releases['1.0.0']!.tree]);
      if (installed.code !== 0) throw new Error(`upgrader install on ${host.name} exited ${installed.code}: ${installed.stderr.trim()}`);
    }));
    for (const host of hosts) {
      const root = join(base, 'hosts', host.name);
      start(`run ${host.name}`, process.execPath, [cli, 'run', '--root', root, '--probation', '500ms', '--ready-timeout', '5s', '--stop-timeout', '5s'], `${root}.run.log`);
      start(`follow ${host.name}`, process.execPath, [cli, 'follow', '--root', root, '--fleet', FLEET, '--host', host.name, '--group', host.group, '--lease', '3s', '--etcd', url, '--artifacts', join(base, 'builds')], `${root}.follow.log`);
      console.log(`  ${host.name.padEnd(9)} group ${host.group.padEnd(7)} upgrader install --root ${root} --version 1.0.0 ...; upgrader run; upgrader follow`);
    }
    await waitFor('five hosts online on 1.0.0', (v) => v.hosts.filter((h) => h.online && h.running === '1.0.0').length === hosts.length);
    await showStatus('Every follower has registered its host; no release is published yet, so no version is desired:');

    console.log(bold('\n1. Publish 1.1.0 and roll it out: the canary group first, then prod, at most 2 hosts at once'));
    if (await run(['publish', '--version', '1.1.0', '--artifact', releases['1.1.0']!.archive, '--sha256', releases['1.1.0']!.sha256]) !== 0) throw new Error('publish 1.1.0 failed');
    console.log('  Progress, one block per change (each group starts with one canary host alone):');
    if (await run(['rollout', '--to', '1.1.0', '--groups', 'canary,prod', '--canaries', '1', '--batch', '2']) !== 0) throw new Error('the 1.1.0 rollout did not succeed');
    await showStatus('The rollout succeeded: 1.1.0 is the desired version and every host runs it:');
    if (!(await view()).hosts.every((h) => h.running === '1.1.0')) throw new Error('not every host runs 1.1.0');

    console.log(bold('\n2. 1.1.0 turns out to misbehave in a way its probation could not see: roll the fleet back'));
    if (await run(['rollback']) !== 0) throw new Error('fleet rollback did not succeed');
    await showStatus('Every host the 1.1.0 rollout moved is back on 1.0.0, in the same waves, canary first; no version is desired any more:');
    if (!(await view()).hosts.every((h) => h.running === '1.0.0')) throw new Error('not every host is back on 1.0.0');

    console.log(bold('\n3. Publish 1.2.0, whose candidate fails its own verification, and roll it out'));
    if (await run(['publish', '--version', '1.2.0', '--artifact', releases['1.2.0']!.archive, '--sha256', releases['1.2.0']!.sha256]) !== 0) throw new Error('publish 1.2.0 failed');
    const halted = await run(['rollout', '--to', '1.2.0', '--groups', 'canary,prod', '--canaries', '1', '--batch', '2']);
    if (halted !== 1) throw new Error(`the 1.2.0 rollout exited ${halted}, not 1 (halted)`);
    await showStatus("The canary's upgrader kept 1.0.0 running; the rollout halted before any prod host started (status exits 4: needs attention):");
    const afterHalt = await view();
    if (afterHalt.rollout?.state !== 'halted' || !afterHalt.hosts.every((h) => h.running === '1.0.0')) throw new Error('the 1.2.0 rollout did not halt with every host on 1.0.0');
    if (await run(['abort', '--reason', 'the 1.2.0 build is bad']) !== 0) throw new Error('fleet abort failed');

    console.log(bold('\n4. 2.0.0 changes the state schema: 1.0.0 cannot run beside it. Publish it as needing a barrier and roll it out through one'));
    const migrationLog = join(base, 'migration.log');
    if (await run(['publish', '--version', '2.0.0', '--artifact', releases['2.0.0']!.archive, '--sha256', releases['2.0.0']!.sha256, '--barrier']) !== 0) throw new Error('publish 2.0.0 failed');
    console.log('  Phases: stage (every host installs 2.0.0), halt (every agent stops), migrate (once, here), switch (waves):');
    const migrate = `echo "$(date +%T) migrated the state schema of fleet $UPGRADER_FLEET from $UPGRADER_FROM_VERSION to $UPGRADER_TO_VERSION" >> ${migrationLog}; sleep 1`;
    if (await run(['rollout', '--to', '2.0.0', '--barrier', '--migrate', migrate, '--batch', '2']) !== 0) throw new Error('the 2.0.0 barrier rollout did not succeed');
    const migrated = existsSync(migrationLog) ? readFileSync(migrationLog, 'utf8').trim().split('\n') : [];
    console.log(`  The migration ran ${migrated.length} time(s), after every host halted and before any started 2.0.0:\n${indent(migrated.join('\n'))}`);
    await showStatus('Every host runs 2.0.0; the rollout shows its barrier phases and the migration:');
    if (migrated.length !== 1 || !(await view()).hosts.every((h) => h.running === '2.0.0')) throw new Error('the barrier rollout did not end with one migration and every host on 2.0.0');

    console.log(bold(`\nDemo complete in ${Math.round((Date.now() - began) / 1000)} s: a canaried rollout, a rollback, a bad release halted at its canary, a barrier rollout with a migration. Stopping the hosts and etcd.`));
    return 0;
  } catch (error) {
    if (interrupted) return 130;
    console.error(`fleet demo failed: ${error instanceof Error ? error.message : String(error)} (logs: run it with --keep and look in ${base})`);
    return 1;
  } finally {
    await cleanUp();
  }
}

export async function fleetDemo(): Promise<number> {
  return main();
}
