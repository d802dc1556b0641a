/**
 * `npm run bench`: the handoff gap of the upgrader, side by side with pm2 (fork and cluster mode) and
 * with the floor (the bare handshake), on the same reference agent, in one invocation, alternating the
 * systems round by round so that a noisy machine affects them alike. Also: handoff latency, start-up
 * and idle footprint of the compiled package (the npm bin) and of the single-file bundle, and the RSS
 * of an idle upgrader after 10 and after 1,000 handoffs. The upgrader is started as deployed: its file
 * executed, so that the node options of its first line apply.
 *
 *   npm run bench              full run (200 handoffs per system, 30 s idle window, 1,000 handoffs for
 *                              the memory figure); writes docs/bench/
 *   npm run bench -- --smoke   a few handoffs of each (25 for the memory figure), for CI; writes bench/out/
 *   npx tsx bench/run.ts --redraw   redraws docs/bench/gaps.svg from the saved results.json
 *   npm run bench -- --fleet   the fleet layer at 1,000 simulated hosts on one etcd instead (bench/fleet.ts)
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, fstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// Some machines set NODE_EXTRA_CA_CERTS, which makes every Node process load a CA bundle at start
// (40-80 ms here); hosts running the upgrader under systemd do not. Measure without it, for every system.
delete process.env.NODE_EXTRA_CA_CERTS;
const SMOKE = process.argv.includes('--smoke');
const ROUNDS = SMOKE ? 1 : 10;
const PER_ROUND = SMOKE ? 5 : 20;
const IDLE_SECONDS = SMOKE ? 3 : 30;
const STARTUP_RUNS = SMOKE ? 3 : 15;
// RSS at idle after the first and after the last of these handoffs (a smoke run has no time for 1,000).
const MEMORY_HANDOFFS = SMOKE ? [5, 25] : [10, 1000];
const MEMORY_IDLE_SECONDS = SMOKE ? 3 : 20;
const OUT = join(REPO, SMOKE ? 'bench/out' : 'docs/bench');
const AGENT = join(REPO, 'bench/agent.mjs');
const BUNDLE = join(REPO, 'dist/upgrader.cjs');
const COMPILED = join(REPO, 'dist/src/cli.js');
const PM2 = join(REPO, 'node_modules/pm2/bin/pm2');
const VERIFY_MS = 50;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const scratch: string[] = [];
function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

// ---------------------------------------------------------------- the work log

type Mark = { what: 'first' | 'last' | 'req'; at: bigint; pid: number; version: string };

/**
 * The marks so far. A log is only ever appended to: each read continues where the last one stopped, so
 * that polling stays cheap over a long log.
 */
const seenLogs = new Map<string, { bytes: number; marks: Mark[] }>();
function readMarks(log: string): Mark[] {
  if (!existsSync(log)) return [];
  let seen = seenLogs.get(log);
  if (!seen) seenLogs.set(log, (seen = { bytes: 0, marks: [] }));
  const fd = openSync(log, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > seen.bytes) {
      const chunk = Buffer.alloc(size - seen.bytes);
      readSync(fd, chunk, 0, chunk.length, seen.bytes);
      const complete = chunk.lastIndexOf(0x0a) + 1; // a line being written is read next time
      seen.bytes += complete;
      for (const line of chunk.subarray(0, complete).toString('utf8').split('\n').filter(Boolean)) {
        const [what, at, pid, version] = line.split(' ');
        seen.marks.push({ what: what as Mark['what'], at: BigInt(at!), pid: Number(pid), version: version! });
      }
    }
  } finally {
    closeSync(fd);
  }
  return seen.marks;
}

async function waitFor<T>(what: string, probe: () => T | undefined, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(2);
  }
}

type Handoff = { gapMs: number; latencyMs: number | null };

/**
 * The agent that works now: the newest "first" with no "last" of the same process after it. Over a long
 * log, PIDs come round again: a mark counts only for the process that wrote it after its own "first".
 */
function activeAgent(marks: Mark[]): Mark | undefined {
  const working = new Map<number, Mark>();
  for (const m of marks) {
    if (m.what === 'req') continue;
    working.delete(m.pid);
    if (m.what === 'first') working.set(m.pid, m);
  }
  return [...working.values()].at(-1);
}

/** Drives `count` handoffs and measures each from the work log. */
async function driveHandoffs(log: string, count: number, trigger: (activePid: number) => Promise<void> | void): Promise<Handoff[]> {
  const results: Handoff[] = [];
  for (let i = 0; i < count; i++) {
    const old = await waitFor('an active agent', () => activeAgent(readMarks(log)));
    await sleep(20); // let it work a little
    await trigger(old.pid);
    const { first, last } = await waitFor(`handoff ${i + 1} from pid ${old.pid}`, () => {
      const marks = readMarks(log);
      const last = marks.find((m) => m.what === 'last' && m.pid === old.pid && m.at > old.at);
      const first = marks.find((m) => m.what === 'first' && m.pid !== old.pid && m.at > old.at);
      return last && first ? { first, last } : undefined;
    });
    const req = readMarks(log).find((m) => m.what === 'req' && m.pid === old.pid && m.at > old.at);
    results.push({
      gapMs: Number(first.at - last.at) / 1e6,
      latencyMs: req ? Number(first.at - req.at) / 1e6 : null,
    });
  }
  return results;
}

// ---------------------------------------------------------------- the systems

type Running = { trigger: (pid: number) => Promise<void> | void; stop: () => Promise<void> };
type System = { name: string; note: string; start: (log: string) => Promise<Running> };

function makeRoot(): string {
  const root = tempDir('bench-root-');
  for (const version of ['a', 'b']) {
    mkdirSync(join(root, 'versions', version, 'bin'), { recursive: true });
    writeFileSync(join(root, 'versions', version, 'bin/agent'), `#!/bin/sh\nexec ${process.execPath} ${AGENT}\n`);
    chmodSync(join(root, 'versions', version, 'bin/agent'), 0o755);
  }
  symlinkSync('versions/a', join(root, 'current'));
  return root;
}

/**
 * Starts `upgrader run` the way the init system and the npm bin do: the file itself is executed, so the
 * node options of its first line apply (see src/cli.ts). The bench's own node comes first on the PATH.
 */
function launch(entry: string, root: string, env: NodeJS.ProcessEnv, stdio: 'ignore' | 'pipe' = 'ignore'): ChildProcess {
  return spawn(entry, ['run', '--root', root], {
    stdio: ['ignore', 'ignore', stdio],
    env: { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`, ...env },
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolvePromise) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolvePromise();
    child.once('exit', () => resolvePromise());
    child.kill('SIGTERM');
  });
}

const upgrader: System = {
  name: 'upgrader',
  note: 'live handoff, bundle (dist/upgrader.cjs)',
  async start(log) {
    const child = launch(BUNDLE, makeRoot(), { BENCH_LOG: log, BENCH_VERIFY_MS: String(VERIFY_MS) });
    return { trigger: (pid) => void process.kill(pid, 'SIGUSR1'), stop: () => stopChild(child) };
  },
};

const floor: System = {
  name: 'floor',
  note: 'bare handshake, no upgrader logic (bench/floor.mjs)',
  async start(log) {
    const root = makeRoot();
    const child = spawn(process.execPath, [join(REPO, 'bench/floor.mjs'), join(root, 'versions/a/bin/agent'), join(root, 'versions/b/bin/agent')], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, BENCH_LOG: log, BENCH_VERIFY_MS: String(VERIFY_MS) },
    });
    return { trigger: (pid) => void process.kill(pid, 'SIGUSR1'), stop: () => stopChild(child) };
  },
};

function pm2(mode: 'fork' | 'cluster'): System {
  return {
    name: `pm2 ${mode}`,
    note: `pm2 reload, ${mode} mode, wait_ready`,
    async start(log) {
      const home = tempDir('bench-pm2-');
      const env = { ...process.env, PM2_HOME: home };
      const run = (...args: string[]) => {
        const result = spawnSync(process.execPath, [PM2, ...args], { env, encoding: 'utf8' });
        if (result.status !== 0) throw new Error(`pm2 ${args.join(' ')} failed: ${result.stderr}${result.stdout}`);
      };
      const ecosystem = join(home, 'ecosystem.json');
      writeFileSync(
        ecosystem,
        JSON.stringify({
          apps: [
            {
              name: 'bench-agent',
              script: join(REPO, 'bench/agent-pm2.cjs'),
              exec_mode: mode,
              instances: 1,
              wait_ready: true,
              listen_timeout: 10_000,
              kill_timeout: 5000,
              autorestart: true,
              env: { BENCH_LOG: log, BENCH_VERIFY_MS: String(VERIFY_MS), BENCH_VERSION: 'pm2' },
            },
          ],
        }),
      );
      run('start', ecosystem);
      return {
        trigger: () => run('reload', 'bench-agent'),
        stop: async () => run('kill'),
      };
    },
  };
}

// ---------------------------------------------------------------- statistics

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[index]!;
}

type Summary = { name: string; note: string; handoffs: number; p50: number; p99: number; max: number; min: number; overlaps: number; latencyP50: number | null; gaps: number[] };

function summarize(system: System, handoffs: Handoff[]): Summary {
  const gaps = handoffs.map((h) => h.gapMs).sort((a, b) => a - b);
  const latencies = handoffs.flatMap((h) => (h.latencyMs === null ? [] : [h.latencyMs])).sort((a, b) => a - b);
  return {
    name: system.name,
    note: system.note,
    handoffs: gaps.length,
    p50: quantile(gaps, 0.5),
    p99: quantile(gaps, 0.99),
    max: gaps.at(-1) ?? NaN,
    min: gaps[0] ?? NaN,
    overlaps: gaps.filter((g) => g < 0).length,
    latencyP50: latencies.length ? quantile(latencies, 0.5) : null,
    gaps,
  };
}

// ---------------------------------------------------------------- start-up and footprint

function logTime(stderr: string, match: (entry: { msg: string; event?: string }) => boolean): number | null {
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { msg: string; event?: string; time: string };
    if (match(entry)) return Date.parse(entry.time);
  }
  return null;
}

async function measureStartup(entry: string): Promise<{ spawnedMs: number; readyMs: number }> {
  const spawned: number[] = [];
  const ready: number[] = [];
  for (let i = 0; i < STARTUP_RUNS; i++) {
    const root = tempDir('bench-start-');
    mkdirSync(join(root, 'versions/a/bin'), { recursive: true });
    writeFileSync(join(root, 'versions/a/bin/agent'), '#!/bin/sh\necho \'{"type":"ready"}\'\nexec cat >/dev/null\n');
    chmodSync(join(root, 'versions/a/bin/agent'), 0o755);
    symlinkSync('versions/a', join(root, 'current'));
    const started = Date.now();
    const child = launch(entry, root, {}, 'pipe');
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    await waitFor('the agent ready', () => (logTime(stderr, (e) => e.event === 'ready') === null ? undefined : true));
    spawned.push(logTime(stderr, (e) => e.msg.startsWith('spawned active'))! - started);
    ready.push(logTime(stderr, (e) => e.event === 'ready')! - started);
    await stopChild(child);
  }
  const median = (values: number[]) => quantile([...values].sort((a, b) => a - b), 0.5);
  return { spawnedMs: median(spawned), readyMs: median(ready) };
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

function contextSwitches(pid: number): number {
  let total = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const status = readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8');
    for (const key of ['voluntary_ctxt_switches', 'nonvoluntary_ctxt_switches']) {
      total += Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
    }
  }
  return total;
}

function rssMb(pid: number): number {
  return Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
}

type Idle = { rssMb: number; cpuMs: number; wakeups: number; seconds: number };

async function measureIdle(entry: string): Promise<Idle> {
  const log = join(tempDir('bench-idle-'), 'work.log');
  const child = launch(entry, makeRoot(), { BENCH_LOG: log });
  await waitFor('the idle agent', () => activeAgent(readMarks(log)));
  // V8's memory reducer runs a few GCs in the first seconds after start; idle means after that.
  await sleep(SMOKE ? 2000 : 15_000);
  const pid = child.pid!;
  const ticksPerSecond = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  const cpuBefore = cpuTicks(pid);
  const switchesBefore = contextSwitches(pid);
  await sleep(IDLE_SECONDS * 1000);
  const cpuMs = ((cpuTicks(pid) - cpuBefore) * 1000) / ticksPerSecond;
  const wakeups = contextSwitches(pid) - switchesBefore;
  const rss = rssMb(pid);
  await stopChild(child);
  return { rssMb: rss, cpuMs, wakeups, seconds: IDLE_SECONDS };
}

type Memory = { handoffs: number[]; rssMb: number[]; idleSeconds: number };

/**
 * What the upgrader keeps once its work is done: one upgrader (the bundle, as deployed), the RSS after
 * a few handoffs and then after many, each read once it has been idle for a while. Work that leaves
 * memory behind (a young generation grown to its maximum, fragmented allocator arenas) shows as the
 * difference; a leak would too.
 */
async function measureMemory(): Promise<Memory> {
  const log = join(tempDir('bench-memory-'), 'work.log');
  const child = launch(BUNDLE, makeRoot(), { BENCH_LOG: log, BENCH_VERIFY_MS: String(VERIFY_MS) });
  const rss: number[] = [];
  try {
    let done = 0;
    for (const handoffs of MEMORY_HANDOFFS) {
      await driveHandoffs(log, handoffs - done, (pid) => void process.kill(pid, 'SIGUSR1'));
      done = handoffs;
      await sleep(MEMORY_IDLE_SECONDS * 1000);
      rss.push(rssMb(child.pid!));
    }
  } finally {
    await stopChild(child);
  }
  return { handoffs: MEMORY_HANDOFFS, rssMb: rss, idleSeconds: MEMORY_IDLE_SECONDS };
}

// ---------------------------------------------------------------- the picture

const COLOURS: Record<string, string> = { upgrader: '#1b7837', floor: '#555555', 'pm2 fork': '#c51b7d', 'pm2 cluster': '#e08214' };

/** One CDF chart of `summaries`, drawn at vertical offset `top`. */
function cdfChart(summaries: Summary[], title: string, top: number): string {
  const width = 720;
  const height = 330;
  const pad = { left: 60, right: 230, top: 30, bottom: 45 };
  const all = summaries.flatMap((s) => s.gaps);
  const lo = Math.min(0, ...all);
  const hi = Math.max(...all);
  const x = (v: number) => pad.left + ((v - lo) / (hi - lo || 1)) * (width - pad.left - pad.right);
  const y = (f: number) => top + height - pad.bottom - f * (height - pad.top - pad.bottom);
  const lines = summaries.map((s, i) => {
    const colour = COLOURS[s.name] ?? 'black';
    const points = s.gaps.map((g, j) => `${x(g).toFixed(1)},${y((j + 1) / s.gaps.length).toFixed(1)}`).join(' ');
    return `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${points}"/>` +
      `<text x="${width - pad.right + 15}" y="${top + pad.top + 18 * i + 10}" fill="${colour}" font-size="13">${s.name}: p50 ${s.p50.toFixed(2)} ms</text>`;
  });
  const ticks = Array.from({ length: 6 }, (_, i) => lo + ((hi - lo) * i) / 5);
  return `<text x="${pad.left}" y="${top + 18}" font-size="14">${title}</text>
<line x1="${x(0)}" y1="${y(1)}" x2="${x(0)}" y2="${y(0)}" stroke="#bbb" stroke-dasharray="4"/>
<line x1="${pad.left}" y1="${y(0)}" x2="${width - pad.right}" y2="${y(0)}" stroke="black"/>
<line x1="${pad.left}" y1="${y(1)}" x2="${pad.left}" y2="${y(0)}" stroke="black"/>
${ticks.map((t) => `<text x="${x(t)}" y="${y(0) + 18}" font-size="11" text-anchor="middle">${t.toFixed(1)}</text>`).join('\n')}
<text x="${(pad.left + width - pad.right) / 2}" y="${y(0) + 36}" font-size="11" text-anchor="middle">gap, ms</text>
${[0, 0.5, 1].map((f) => `<text x="${pad.left - 8}" y="${y(f) + 4}" font-size="11" text-anchor="end">${f}</text>`).join('\n')}
${lines.join('\n')}`;
}

/** Two CDFs: every system at full scale, then the upgrader against the floor, close up. */
function cdfSvg(summaries: Summary[]): string {
  const close = summaries.filter((s) => s.name === 'upgrader' || s.name === 'floor');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="720" height="660" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${cdfChart(summaries, 'Handoff gap, CDF, all systems (negative: both agents working at once)', 0)}
${cdfChart(close, 'Close up: the upgrader against the floor (the bare handshake)', 330)}
</svg>
`;
}

/** A full run puts its table into the README's Performance section, between the bench markers. */
function updateReadme(report: string): void {
  const path = join(REPO, 'README.md');
  const text = readFileSync(path, 'utf8');
  const start = text.indexOf('<!-- bench:start');
  const end = text.indexOf('<!-- bench:end -->');
  if (start === -1 || end === -1) return;
  const open = text.indexOf('\n', start) + 1;
  writeFileSync(path, `${text.slice(0, open)}${report}\n${text.slice(end)}`);
}

// ---------------------------------------------------------------- main

const fmt = (v: number | null, digits = 2) => (v === null || Number.isNaN(v) ? 'n/a' : v.toFixed(digits));

async function main(): Promise<void> {
  if (process.argv.includes('--fleet')) {
    // The fleet layer at scale: its own bench (bench/fleet.ts), etcd and simulated hosts, no agents.
    const { fleetBench } = await import('./fleet.js');
    return fleetBench(process.argv.slice(2));
  }
  if (process.argv.includes('--redraw')) {
    // Redraw the picture from the last full run's raw figures, without measuring again.
    const saved = JSON.parse(readFileSync(join(OUT, 'results.json'), 'utf8')) as { summaries: Summary[] };
    writeFileSync(join(OUT, 'gaps.svg'), cdfSvg(saved.summaries));
    return;
  }
  if (!existsSync(BUNDLE) || !existsSync(COMPILED)) throw new Error('bench: run `npm run build` first');
  if (process.argv.includes('--memory')) {
    // Only the memory figure (a few minutes), for working on it; writes nothing.
    const { handoffs, rssMb } = await measureMemory();
    process.stdout.write(`${handoffs.map((h, i) => `after ${h} handoffs: ${fmt(rssMb[i]!, 1)} MB`).join('; ')}\n`);
    return;
  }
  const systems = [upgrader, floor, pm2('fork'), pm2('cluster')];
  const results = new Map<string, Handoff[]>(systems.map((s) => [s.name, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const system of systems) {
      const log = join(tempDir('bench-log-'), 'work.log');
      const running = await system.start(log);
      try {
        results.get(system.name)!.push(...(await driveHandoffs(log, PER_ROUND, running.trigger)));
      } finally {
        await running.stop();
      }
    }
    process.stderr.write(`round ${round}/${ROUNDS} done\n`);
  }
  const summaries = systems.map((s) => summarize(s, results.get(s.name)!));
  const [up, fl] = summaries as [Summary, Summary];
  const startup = { compiled: await measureStartup(COMPILED), bundle: await measureStartup(BUNDLE) };
  const idle = { compiled: await measureIdle(COMPILED), bundle: await measureIdle(BUNDLE) };
  const memory = await measureMemory();
  const [fewHandoffs, manyHandoffs] = memory.handoffs as [number, number];
  const [fewRss, manyRss] = memory.rssMb as [number, number];

  const rows = summaries.map((s) =>
    `| ${s.name} | ${s.handoffs} | ${fmt(s.p50)} | ${fmt(s.p99)} | ${fmt(s.max)} | ${s.overlaps}${s.overlaps ? ' (not exclusive!)' : ''} | ${fmt(s.latencyP50, 1)} |`,
  );
  const report = [
    `Handoff gap (ms) between the old agent's last work and the new agent's first work; ${ROUNDS} rounds x ${PER_ROUND}, systems alternating.`,
    '',
    '| system | handoffs | gap p50 | gap p99 | gap max | overlaps | upgrade->go p50 |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    `upgrader / floor: p50 ${fmt(up.p50 / fl.p50)}x, p99 ${fmt(up.p99 / fl.p99)}x; latency the upgrader adds (upgrade->go, p50): ${fmt((up.latencyP50 ?? 0) - (fl.latencyP50 ?? 0), 1)} ms (candidate start-up and ${VERIFY_MS} ms verification are in both)`,
    '',
    '| start-up (median) | to agent spawned | to agent ready |',
    '| --- | ---: | ---: |',
    `| compiled, the npm bin (dist/src/cli.js) | ${startup.compiled.spawnedMs} ms | ${startup.compiled.readyMs} ms |`,
    `| bundle (dist/upgrader.cjs) | ${startup.bundle.spawnedMs} ms | ${startup.bundle.readyMs} ms |`,
    '',
    `| idle with one agent, over ${idle.bundle.seconds} s | RSS | CPU | context switches (all threads) |`,
    '| --- | ---: | ---: | ---: |',
    ...(['compiled', 'bundle'] as const).map((k) => `| ${k === 'compiled' ? 'compiled (dist/src/cli.js)' : 'bundle (dist/upgrader.cjs)'} | ${fmt(idle[k].rssMb, 1)} MB | ${fmt(idle[k].cpuMs, 0)} ms | ${idle[k].wakeups} |`),
    '',
    `RSS of the bundle idle ${memory.idleSeconds} s after ${fewHandoffs} handoffs: ${fmt(fewRss, 1)} MB; after ${manyHandoffs}: ${fmt(manyRss, 1)} MB (${manyRss >= fewRss ? '+' : ''}${fmt(manyRss - fewRss, 1)} MB)${SMOKE ? ' (smoke: the full run does 10 and 1,000 handoffs, 20 s idle)' : ''}.`,
  ].join('\n');
  process.stdout.write(`${report}\n`);

  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'results.json'), `${JSON.stringify({ date: new Date().toISOString(), smoke: SMOKE, node: process.version, summaries, startup, idle, memory }, null, 2)}\n`);
  writeFileSync(join(OUT, 'gaps.svg'), cdfSvg(summaries));
  writeFileSync(join(OUT, 'report.md'), `${report}\n`);
  process.stderr.write(`wrote ${join(OUT, 'results.json')}, gaps.svg and report.md\n`);
  if (!SMOKE) updateReadme(report);
  if (summaries.find((s) => s.name === 'upgrader')!.overlaps > 0) throw new Error('bench: the upgrader let two agents work at once');
}

main()
  .catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
  });
