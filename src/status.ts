/**
 * `upgrader status`: what runs on a root, read from its files alone. It takes no lock and sends
 * nothing to the upgrader, so it answers at once even when the upgrader is stopped or hung.
 */
import { AgentStatusFile, type AgentStatus } from './agent-status.js';
import { formatDuration } from './duration.js';
import { lstatSync, readdirSync, statSync } from 'node:fs';
import { printable } from './printable.js';
import { join } from 'node:path';
import { describeError, EXIT, UpgraderError } from './errors.js';
import { Layout } from './layout.js';
import { readFollower } from './follower-record.js';
import { readOwnerRecord } from './ownership.js';
import { isSameProcessAlive } from './proc.js';
import { StateFile, type Halt, type PublicState, type RecordedAgent, type Repair, type UpgradeRecord } from './state.js';
import { Quarantine, type QuarantineEntry } from './quarantine.js';

export type AgentView = { pid: number; version: string; role: string; ready: boolean; since: string; uptimeMs: number };

/**
 * `broken`: the root is malformed, or no upgrader runs and `current` is unusable;
 * `unreadable`: this user may not read the root or its files, so what runs there is unknown.
 */
export type RootState = PublicState | 'broken' | 'unreadable';

export type StatusReport = {
  root: string;
  running: boolean;
  upgraderPid: number | null;
  state: RootState;
  /** Why the root is broken or unreadable; null otherwise. */
  problem: string | null;
  current: string | null;
  currentProblem: string | null;
  previous: string | null;
  agent: AgentView | null;
  candidate: AgentView | null;
  handoff: { from: string; to: string; mode: string; phase: string; startedAt: string } | null;
  probation: { version: string; from: string } | null;
  /** An operator's halt on record (`upgrader halt`): no agent runs, and a restarted upgrader starts none. */
  halt: Halt | null;
  agentStatus: AgentStatus | null;
  quarantined: QuarantineEntry[];
  lastUpgrade: UpgradeRecord | null;
  history: UpgradeRecord[];
  stateProblem: string | null;
  /** The last time start-up found `current` unable to run and ran another version instead. */
  repair: Repair | null;
  ownerProblem: string | null;
  /** The fleet follower of this root (state/follower.json), if one ever ran. */
  follower: FollowerView | null;
};

export type FollowerView = { fleet: string; host: string; group: string; pid: number; running: boolean; etcd: string; since: string; error: string | null };

const ASK_OWNER = "run status as the root's owner or as root";

export function readStatus(layout: Layout, now = Date.now()): StatusReport {
  const linked = linkedDirectory(layout.root);
  if (linked) return unopenedReport(layout.root, 'broken', linked);
  const ownerRead = readOwnerRecord(layout.stateDir);
  const recorded = 'unreadable' in ownerRead ? null : ownerRead.record;
  const owner = recorded && isSameProcessAlive(recorded) ? recorded : null;
  const read = new StateFile(layout.stateDir).read();
  const saved = read.ok ? read.state : null;
  const current = layout.readCurrent();
  const view = (agent: RecordedAgent | undefined): AgentView | null =>
    owner && agent && isSameProcessAlive(agent)
      ? { pid: agent.pid, version: agent.version, role: agent.role, ready: agent.ready, since: agent.since, uptimeMs: Math.max(0, now - Date.parse(agent.since)) }
      : null;
  const history = saved?.history ?? [];
  const unreadable = 'unreadable' in ownerRead ? ownerRead.unreadable : !read.ok && read.unreadable ? read.problem : null;
  const currentProblem = 'problem' in current ? current.problem : null;
  const problem = unreadable ? `${unreadable}; ${ASK_OWNER}` : !owner ? currentProblem : null;
  return {
    root: layout.root,
    running: owner !== null,
    upgraderPid: owner?.pid ?? null,
    state: unreadable ? 'unreadable' : owner ? (saved?.state ?? 'starting') : currentProblem ? 'broken' : 'stopped',
    problem,
    current: 'version' in current ? current.version : null,
    currentProblem,
    previous: saved?.previous ?? null,
    agent: view(saved?.agents.find((a) => a.role === 'active')),
    candidate: view(saved?.agents.find((a) => a.role === 'candidate')),
    handoff: owner ? (saved?.handoff ?? null) : null,
    probation: owner && saved?.probation ? { version: saved.probation.version, from: saved.probation.from } : null,
    halt: saved?.halt ?? null,
    agentStatus: new AgentStatusFile(layout.stateDir).read(),
    quarantined: new Quarantine(layout.stateDir).list(),
    lastUpgrade: history[0] ?? null,
    history,
    stateProblem: read.ok || read.missing ? null : read.problem,
    repair: saved?.repair ?? null,
    ownerProblem: 'unreadable' in ownerRead ? ownerRead.unreadable : ownerRead.problem,
    follower: followerView(layout.stateDir),
  };
}

function followerView(stateDir: string): FollowerView | null {
  const f = readFollower(stateDir);
  return f ? { fleet: f.fleet, host: f.host, group: f.group, pid: f.pid, running: f.running, etcd: f.etcd, since: f.since, error: f.error } : null;
}

function describeFollower(f: FollowerView, now: number): string {
  const who = `fleet ${f.fleet} as ${f.host} (group ${f.group})`;
  if (!f.running) return `${who}: follower not running (last PID ${f.pid})`;
  if (f.etcd === 'unreachable') return `${who}, PID ${f.pid}: etcd unreachable since ${ago(f.since, now)}${f.error ? `: ${f.error}` : ''}`;
  return `${who}, PID ${f.pid}: etcd ${f.etcd} since ${ago(f.since, now)}`;
}

/**
 * A root's own directories are never read through a link: its owner could point them at another user's
 * root, and `status` run by root would show that root's records as this one's.
 */
function linkedDirectory(root: string): string | null {
  for (const name of ['versions', 'state']) {
    try {
      if (lstatSync(join(root, name)).isSymbolicLink()) return `${join(root, name)} is a symbolic link, which the upgrader never follows`;
    } catch {
      // missing: said elsewhere
    }
  }
  return null;
}

/** What a root that could not even be opened looks like in a report. */
function unopenedReport(root: string, state: 'broken' | 'unreadable', problem: string): StatusReport {
  return {
    root,
    running: false,
    upgraderPid: null,
    state,
    problem,
    current: null,
    currentProblem: null,
    previous: null,
    agent: null,
    candidate: null,
    handoff: null,
    probation: null,
    halt: null,
    agentStatus: null,
    quarantined: [],
    lastUpgrade: null,
    history: [],
    stateProblem: null,
    repair: null,
    ownerProblem: null,
    follower: null,
  };
}

const isTroubled = (report: StatusReport) => report.state === 'broken' || report.state === 'unreadable';

export function statusExitCode(report: StatusReport): number {
  if (isTroubled(report)) return EXIT.broken;
  if (!report.running) return EXIT.notRunning;
  return report.agent?.ready ? EXIT.ok : EXIT.notReady;
}

const ago = (iso: string, now: number) => `${formatDuration(Math.max(0, now - Date.parse(iso)))} ago`;

function describeUpgrade(u: UpgradeRecord, now: number): string {
  const reason = u.reason ? `: ${u.reason}` : '';
  return `${u.from} -> ${u.to} (${u.mode}) ${u.result} ${ago(u.at, now)}, took ${formatDuration(u.durationMs)}${reason}`;
}

function describeAgent(a: AgentView): string {
  return `PID ${a.pid}, ${a.version}, ${a.role}, ${a.ready ? 'ready' : 'not ready'}, up ${formatDuration(a.uptimeMs)}`;
}

function describeHalt(h: Halt, now: number): string {
  const still = h.reason ? `; still halted after: ${h.reason}` : '';
  return `since ${ago(h.since, now)}, asked by ${h.by} (current ${h.version})${still}; nothing runs until upgrader resume or upgrade`;
}

function describeState(r: StatusReport): string {
  if (r.running) return `${r.state} (upgrader PID ${r.upgraderPid})`;
  if (r.state === 'unreadable') return `unreadable: ${r.problem}`;
  return r.state === 'broken' ? 'broken (no upgrader runs on this root, and current is unusable)' : 'stopped (no upgrader runs on this root)';
}

export function formatStatus(r: StatusReport, now = Date.now()): string {
  const rows: [string, string][] = [
    ['root', r.root],
    ['state', describeState(r)],
    ['current', r.current ?? `unusable: ${r.currentProblem}`],
    ['previous', r.previous ?? '-'],
    ['agent', r.agent ? describeAgent(r.agent) : '-'],
  ];
  if (r.candidate) rows.push(['candidate', describeAgent(r.candidate)]);
  if (r.handoff) rows.push(['handoff', `${r.handoff.from} -> ${r.handoff.to} (${r.handoff.mode}), ${r.handoff.phase} since ${ago(r.handoff.startedAt, now)}`]);
  if (r.halt) rows.push(['halted', describeHalt(r.halt, now)]);
  if (r.probation) rows.push(['probation', `${r.probation.version} rolls back to ${r.probation.from} if it exits`]);
  if (r.agentStatus) rows.push(['message', `${JSON.stringify(r.agentStatus.message)} (${r.agentStatus.version}, ${ago(r.agentStatus.at, now)})`]);
  rows.push(['last upgrade', r.lastUpgrade ? describeUpgrade(r.lastUpgrade, now) : 'none']);
  for (const q of r.quarantined) rows.push(['quarantined', `${q.version} since ${ago(q.at, now)}: ${q.reason}`]);
  if (r.stateProblem) rows.push(['warning', r.stateProblem]);
  if (r.repair) rows.push(['repaired', `${ago(r.repair.at, now)}: ${r.repair.problem}; ran ${r.repair.version} instead and pointed current at it`]);
  if (r.ownerProblem && r.state !== 'unreadable') rows.push(['warning', r.ownerProblem]);
  if (r.follower) rows.push(['fleet', describeFollower(r.follower, now)]);
  const width = Math.max(...rows.map(([k]) => k.length));
  // Every value comes from files the root's owner writes: escaped, so that none can drive the terminal.
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${printable(v)}`).join('\n');
}

export type HostReport = StatusReport & { name: string };

/**
 * Every root under a base directory: each subdirectory holding versions/, in name order. A root that
 * cannot be read or opened is listed as such, never left out and never in the way of the others.
 */
export function readHost(base: string, now = Date.now()): HostReport[] {
  let names: string[];
  try {
    names = readdirSync(base).sort();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UpgraderError('E_ROOT', `The base directory ${base} does not exist (set --base or UPGRADER_BASE).`);
    throw new UpgraderError('E_ROOT', `The base directory ${base} cannot be listed (${code ?? describeError(error)}).`);
  }
  return names.flatMap((name) => {
    const report = hostEntry(join(base, name), now);
    return report ? [{ name, ...report }] : [];
  });
}

/** The report of one subdirectory of the base, or null when it is no root (it has no versions/). */
function hostEntry(path: string, now: number): StatusReport | null {
  const versions = join(path, 'versions');
  try {
    statSync(versions);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    // We cannot look inside: it may well be a root, so it is shown rather than silently left out.
    const problem = `${versions} cannot be examined (${code ?? describeError(error)})`;
    if (code === 'EACCES' || code === 'EPERM') return unopenedReport(path, 'unreadable', `${problem}; ${ASK_OWNER}`);
    return unopenedReport(path, 'broken', problem);
  }
  try {
    return readStatus(Layout.open(path), now);
  } catch (error) {
    return unopenedReport(path, 'broken', describeError(error));
  }
}

/**
 * The host-wide view: 5 when some root is broken or unreadable; else 3 when some root has no upgrader, or
 * there is no root at all; else 0 when every root runs a ready agent; else 4.
 */
export function hostExitCode(reports: StatusReport[]): number {
  if (reports.some(isTroubled)) return EXIT.broken;
  if (reports.length === 0 || reports.some((r) => !r.running)) return EXIT.notRunning;
  return reports.every((r) => r.agent?.ready) ? EXIT.ok : EXIT.notReady;
}

export function formatHost(reports: HostReport[], base: string, colour: boolean, now = Date.now()): string {
  if (reports.length === 0) return `no roots under ${base} (no subdirectory holds a versions/ directory)`;
  const paint = (state: string) => {
    if (!colour) return state;
    const code = state === 'running' ? 32 : state === 'upgrading' || state === 'starting' ? 33 : 31;
    return `\x1b[${code}m${state}\x1b[0m`;
  };
  const rows = reports.map((r) => [
    r.name,
    r.state,
    r.agent?.version ?? r.current ?? '-',
    r.agent ? String(r.agent.pid) : '-',
    r.agent ? formatDuration(r.agent.uptimeMs) : '-',
    r.lastUpgrade ? `${r.lastUpgrade.from} -> ${r.lastUpgrade.to} ${r.lastUpgrade.result} ${ago(r.lastUpgrade.at, now)}` : '-',
  ].map(printable));
  const header = ['NAME', 'STATE', 'VERSION', 'PID', 'UPTIME', 'LAST UPGRADE'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[], paintState: boolean) =>
    cells.map((cell, i) => (i === 1 && paintState ? paint(cell) + ' '.repeat(widths[i]! - cell.length) : cell.padEnd(widths[i]!))).join('  ').trimEnd();
  const table = [line(header, false), ...rows.map((row) => line(row, true))];
  const problems = reports.filter((r) => r.problem).map((r) => printable(`${r.name}: ${r.state}: ${r.problem}`));
  return [...table, ...(problems.length ? ['', ...problems] : [])].join('\n');
}
