/**
 * What `fleet status` and a waiting `fleet rollout` show: the rollout with per-group counts, and one line
 * per known host. Hosts whose presence lapsed stay in the view as offline with the time they last
 * reported: an old version in a forgotten corner is what an operator most needs to find.
 */
import { positionOf } from './plan.js';
import { knownHosts, readPlan, runsOf } from './rollout.js';
import { isActive, type HostPhase, type HostRecord, type Plan, type Rollout, type RunState } from './schema.js';
import type { FleetStore } from './store.js';

export type GroupCounts = { name: string; hosts: number; done: number; inFlight: number; failed: number; pending: number };

export type HostLine = {
  host: string;
  group: string;
  online: boolean;
  running: string | null;
  phase: HostPhase;
  /** Its run in the current rollout, if it is in the plan, and its place there. */
  run: RunState | 'pending' | null;
  groupIndex: number | null;
  wave: number | null;
  lastUpgrade: HostRecord['lastUpgrade'];
  error: HostRecord['error'];
  reportedAt: string;
};

export type FleetView = {
  desired: string | null;
  rollout: (Pick<Rollout, 'id' | 'kind' | 'to' | 'state' | 'reason' | 'failures' | 'failed' | 'startedAt' | 'updatedAt' | 'barrier'> & { offline: string[]; group: string | null; groupIndex: number; wave: number; groups: GroupCounts[] }) | null;
  hosts: HostLine[];
  problems: string[];
};

export async function readFleetView(store: FleetStore): Promise<FleetView> {
  const control = await store.control();
  const rollout = control.rollout.value;
  const [known, runs] = await Promise.all([knownHosts(store), rollout ? runsOf(store, rollout.id) : Promise.resolve(new Map())]);
  const planProblems: string[] = [];
  const plan = rollout ? await readPlan(store, rollout.id).catch((error: Error) => (planProblems.push(error.message), null)) : null;
  const inPlan = new Set(plan?.groups.flatMap((g) => g.waves.flat()) ?? []);
  const line = (h: HostRecord, online: boolean): HostLine => ({
    host: h.host,
    group: h.group,
    online,
    running: h.running,
    phase: h.phase,
    run: inPlan.has(h.host) ? (runs.get(h.host)?.state ?? 'pending') : null,
    ...placeOf(plan, h.host),
    lastUpgrade: h.lastUpgrade,
    error: h.error,
    reportedAt: h.reportedAt,
  });
  const hosts = [...known.online.map((h) => line(h, true)), ...known.offline.map((h) => line(h, false))].sort((a, b) => a.host.localeCompare(b.host));
  const problems = [...known.problems, ...planProblems, ...[control.rollout.problem, control.desired.problem].filter((p): p is string => p !== null)];
  return {
    desired: control.desired.value?.version ?? null,
    rollout: rollout
      ? {
          id: rollout.id,
          kind: rollout.kind,
          to: rollout.to,
          state: rollout.state,
          reason: rollout.reason,
          failures: rollout.failures,
          failed: rollout.failed,
          barrier: rollout.barrier,
          offline: plan?.offline ?? [],
          startedAt: rollout.startedAt,
          updatedAt: rollout.updatedAt,
          group: rollout.groupNames[rollout.group] ?? null,
          groupIndex: rollout.group,
          wave: rollout.wave,
          groups: (plan?.groups ?? []).map((g) => counts(g.name, g.waves.flat(), runs)),
        }
      : null,
    hosts,
    problems,
  };
}

function placeOf(plan: Plan | null, host: string): { groupIndex: number | null; wave: number | null } {
  const at = plan ? positionOf(plan.groups, host) : null;
  return { groupIndex: at?.group ?? null, wave: at?.wave ?? null };
}

function counts(name: string, members: string[], runs: Map<string, { state: RunState }>): GroupCounts {
  const c: GroupCounts = { name, hosts: members.length, done: 0, inFlight: 0, failed: 0, pending: 0 };
  for (const host of members) {
    const state = runs.get(host)?.state;
    if (state === 'done') c.done++;
    else if (state === 'failed') c.failed++;
    else if (state === 'upgrading') c.inFlight++;
    else c.pending++;
  }
  return c;
}

/**
 * `fleet status`'s exit status (documented in the README): 3 while a rollout is running or paused and not
 * waiting on an offline host; else 4 when a host is offline or off the desired version (with no desired
 * version: when hosts run different versions), a rollout is halted or stalled on an offline host, or a
 * record is unreadable; else 0.
 */
export const FLEET_EXIT = { converged: 0, moving: 3, attention: 4 } as const;

export function fleetExitCode(view: FleetView): number {
  const active = view.rollout !== null && isActive(view.rollout.state);
  if (active && stalledOn(view).length === 0) return FLEET_EXIT.moving;
  const versions = new Set(view.hosts.map((h) => h.running));
  const behind = view.hosts.some((h) => !h.online || (view.desired !== null && h.running !== view.desired)) || (view.desired === null && versions.size > 1);
  // An active rollout here is stalled on an offline host.
  if (active || behind || view.rollout?.state === 'halted' || view.problems.length > 0) return FLEET_EXIT.attention;
  return FLEET_EXIT.converged;
}

/** Hosts of the rollout's current wave that are offline and have not ended: the rollout waits on them. */
export function stalledOn(view: FleetView): HostLine[] {
  return view.hosts.filter((h) => !h.online && (h.run === 'pending' || h.run === 'staged' || h.run === 'upgrading') && h.wave === view.rollout?.wave && h.groupIndex === view.rollout?.groupIndex);
}

