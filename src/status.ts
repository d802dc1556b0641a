/**
 * `upgrader status`: what runs on a root, read from its files alone. It takes no lock and sends
 * nothing to the upgrader, so it answers at once even when the upgrader is stopped or hung.
 */
import { AgentStatusFile, type AgentStatus } from './agent-status.js';
import { formatDuration } from './duration.js';
import { EXIT } from './errors.js';
import type { Layout } from './layout.js';
import { liveOwner } from './ownership.js';
import { isSameProcessAlive } from './proc.js';
import { StateFile, type RecordedAgent, type UpgradeRecord } from './state.js';

export type AgentView = { pid: number; version: string; role: string; ready: boolean; since: string; uptimeMs: number };

export type StatusReport = {
  root: string;
  running: boolean;
  upgraderPid: number | null;
  state: 'starting' | 'running' | 'upgrading' | 'stopping' | 'stopped';
  current: string | null;
  currentProblem: string | null;
  previous: string | null;
  agent: AgentView | null;
  candidate: AgentView | null;
  handoff: { from: string; to: string; mode: string; phase: string; startedAt: string } | null;
  probation: { version: string; from: string } | null;
  agentStatus: AgentStatus | null;
  lastUpgrade: UpgradeRecord | null;
  history: UpgradeRecord[];
  stateProblem: string | null;
};

export function readStatus(layout: Layout, now = Date.now()): StatusReport {
  const owner = liveOwner(layout.stateDir);
  const read = new StateFile(layout.stateDir).read();
  const saved = read.ok ? read.state : null;
  const current = layout.readCurrent();
  const view = (agent: RecordedAgent | undefined): AgentView | null =>
    owner && agent && isSameProcessAlive(agent)
      ? { pid: agent.pid, version: agent.version, role: agent.role, ready: agent.ready, since: agent.since, uptimeMs: Math.max(0, now - Date.parse(agent.since)) }
      : null;
  const history = saved?.history ?? [];
  return {
    root: layout.root,
    running: owner !== null,
    upgraderPid: owner?.pid ?? null,
    state: owner ? (saved?.state ?? 'starting') : 'stopped',
    current: 'version' in current ? current.version : null,
    currentProblem: 'problem' in current ? current.problem : null,
    previous: saved?.previous ?? null,
    agent: view(saved?.agents.find((a) => a.role === 'active')),
    candidate: view(saved?.agents.find((a) => a.role === 'candidate')),
    handoff: owner ? (saved?.handoff ?? null) : null,
    probation: owner && saved?.probation ? { version: saved.probation.version, from: saved.probation.from } : null,
    agentStatus: new AgentStatusFile(layout.stateDir).read(),
    lastUpgrade: history[0] ?? null,
    history,
    stateProblem: read.ok || read.missing ? null : read.problem,
  };
}

export function statusExitCode(report: StatusReport): number {
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

export function formatStatus(r: StatusReport, now = Date.now()): string {
  const rows: [string, string][] = [
    ['root', r.root],
    ['state', r.running ? `${r.state} (upgrader PID ${r.upgraderPid})` : 'stopped (no upgrader runs on this root)'],
    ['current', r.current ?? `unusable: ${r.currentProblem}`],
    ['previous', r.previous ?? '-'],
    ['agent', r.agent ? describeAgent(r.agent) : '-'],
  ];
  if (r.candidate) rows.push(['candidate', describeAgent(r.candidate)]);
  if (r.handoff) rows.push(['handoff', `${r.handoff.from} -> ${r.handoff.to} (${r.handoff.mode}), ${r.handoff.phase} since ${ago(r.handoff.startedAt, now)}`]);
  if (r.probation) rows.push(['probation', `${r.probation.version} rolls back to ${r.probation.from} if it exits`]);
  if (r.agentStatus) rows.push(['message', `${JSON.stringify(r.agentStatus.message)} (${r.agentStatus.version}, ${ago(r.agentStatus.at, now)})`]);
  rows.push(['last upgrade', r.lastUpgrade ? describeUpgrade(r.lastUpgrade, now) : 'none']);
  if (r.stateProblem) rows.push(['warning', r.stateProblem]);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}
