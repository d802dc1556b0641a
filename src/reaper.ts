/**
 * Killing agent process trees, and confirming they are gone: a kill is never assumed. Used for the
 * agents of this upgrader (supervisor.ts) and for the orphans a previous upgrader left (recovery.ts).
 */
import { performance } from 'node:perf_hooks';
import treeKill from 'tree-kill';
import { agentMarker, signalQuietly, type AgentHandle } from './agent-process.js';
import { UpgraderError } from './errors.js';
import type { Logger } from './log.js';
import { findLiveProcesses, isSameProcessAlive, type ProcessIdentity } from './proc.js';

/** How long a killed process tree may take to disappear before the upgrader reports it. */
export const KILL_CONFIRM_MS = 5000;
const POLL_MS = 20;

export async function killAndConfirm(agent: AgentHandle, log: Logger): Promise<boolean> {
  log.warn({ agentEvent: 'killing', agentPid: agent.pid, version: agent.spec.version }, `killing the process tree of ${agent.spec.version}`);
  await agent.killTree();
  return confirmGone(agent, log);
}

/** Waits until the agent, its group and its marked descendants are gone; false (and an error logged) if they outlive the deadline. */
export async function confirmGone(agent: AgentHandle, log: Logger): Promise<boolean> {
  const deadline = performance.now() + KILL_CONFIRM_MS;
  while (!agent.isGone()) {
    if (performance.now() > deadline) {
      log.error({ agentPid: agent.pid, version: agent.spec.version }, 'an agent process tree is still alive after SIGKILL');
      return false;
    }
    // Once the agent has exited its descendants have lost their parent link, so tree-kill (which runs
    // ps each time) finds nothing more: the group and the environment marker are what is left to hit.
    if (agent.hasExited) agent.killGroupAndMarked();
    await delay(POLL_MS);
  }
  return true;
}

/**
 * Kills every agent process of this root that a previous upgrader left behind: those recorded in the
 * state file (checked by PID and start time, so a reused PID is never hit) and any process that carries
 * the root's agent marker in its environment. Returns once all of them are confirmed gone.
 */
export async function reapOrphans(root: string, recorded: ProcessIdentity[], log: Logger): Promise<void> {
  const marker = [agentMarker(root, 0)[0]!, 'UPGRADER_AGENT_ID='];
  const find = () => [...recorded.filter((agent) => isSameProcessAlive(agent)).map((agent) => agent.pid), ...findLiveProcesses({ environment: marker })];
  let pids = find();
  if (pids.length === 0) return;
  log.warn({ agentPids: pids }, 'killing agent processes left by a previous upgrader');
  const deadline = performance.now() + KILL_CONFIRM_MS;
  while (pids.length > 0) {
    for (const pid of pids) {
      signalQuietly(-pid, 'SIGKILL');
      signalQuietly(pid, 'SIGKILL');
      treeKill(pid, 'SIGKILL');
    }
    if (performance.now() > deadline) {
      throw new UpgraderError('E_INTERNAL', `Agent processes left by a previous upgrader survive SIGKILL (PIDs ${pids.join(', ')}); not starting another agent beside them.`);
    }
    await delay(POLL_MS);
    pids = find();
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
