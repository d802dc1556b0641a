/**
 * A rollout's plan, and where a host stands in it. Pure: no etcd, no clock.
 *
 * The plan is fixed when the rollout begins: groups in the operator's order, each cut into waves. Wave 0
 * of a group is its canaries, alone; the others hold at most `batch` hosts. A host upgrades only while the
 * rollout's position is its wave, and the position moves on only once every host of the wave has ended
 * (done or failed): so at most `batch` hosts (or `canaries`) are ever in flight, with no counter to race on.
 */
import { isActive, type Plan, type PlanGroup, type Rollout } from './schema.js';

export type Position = { group: number; wave: number };
export type HostGroup = { host: string; group: string };

/** `--batch`: a count (`5`) or a share of the group (`25%`, rounded up, at least 1). */
export function batchSize(batch: string, groupSize: number): number {
  if (batch.endsWith('%')) return Math.max(1, Math.ceil((groupSize * Number(batch.slice(0, -1))) / 100));
  return Number(batch);
}

/**
 * The groups in `order` first, then any other group that has hosts, in name order; hosts by name within
 * a group, so that the plan (and which hosts are canaries) does not depend on the order etcd lists them.
 */
export function buildPlan(hosts: HostGroup[], order: string[], canaries: number, batch: string): PlanGroup[] {
  const byGroup = new Map<string, string[]>();
  for (const { host, group } of hosts) byGroup.set(group, [...(byGroup.get(group) ?? []), host]);
  const rest = [...byGroup.keys()].filter((g) => !order.includes(g)).sort();
  return [...order, ...rest].map((name) => {
    const members = (byGroup.get(name) ?? []).sort();
    const first = members.slice(0, Math.min(canaries, members.length));
    const others = members.slice(first.length);
    const size = batchSize(batch, members.length);
    const waves = first.length ? [first] : [];
    for (let i = 0; i < others.length; i += size) waves.push(others.slice(i, i + size));
    return { name, waves };
  });
}

/** The first wave of the plan, or null when the plan holds no host. */
export function firstPosition(plan: PlanGroup[]): Position | null {
  return following(plan, { group: 0, wave: -1 });
}

/** The wave after `at`, across groups; null after the last. */
export function nextPosition(plan: PlanGroup[], at: Position): Position | null {
  return following(plan, at);
}

function following(plan: PlanGroup[], at: Position): Position | null {
  for (let g = at.group; g < plan.length; g++) {
    const start = g === at.group ? at.wave + 1 : 0;
    if (start < plan[g]!.waves.length) return { group: g, wave: start };
  }
  return null;
}

/** Where `host` is in the plan, or null when it is not in it. */
export function positionOf(plan: PlanGroup[], host: string): Position | null {
  for (let g = 0; g < plan.length; g++) {
    const w = plan[g]!.waves.findIndex((wave) => wave.includes(host));
    if (w >= 0) return { group: g, wave: w };
  }
  return null;
}

export function waveHosts(plan: PlanGroup[], at: Position): string[] {
  return plan[at.group]?.waves[at.wave] ?? [];
}

/** The version the rollout takes `host` to. */
export function targetOf(rollout: Pick<Rollout, 'to'>, plan: Pick<Plan, 'targets'>, host: string): string | null {
  if (rollout.to !== null) return rollout.to;
  // Own properties only: a host named "constructor" must not find Object's.
  return plan.targets && Object.hasOwn(plan.targets, host) ? plan.targets[host]! : null;
}

/** How many waves ahead of the rollout a host stages: enough that its wave never waits for a download, few enough that a group does not download all at once. */
export const STAGE_AHEAD = 2;

/**
 * Whether a host should download and install ahead of its wave. Canaries stage when their group begins;
 * the rest of the group once its canaries have passed (so a bad release is stopped by the canaries before
 * the group's other hosts spend a download on it), each at most STAGE_AHEAD waves before its own (so
 * that a group of thousands does not download at the moment its first wave must start).
 */
export function stagesNow(rollout: Pick<Rollout, 'state' | 'group' | 'wave' | 'canaries'>, at: Position): boolean {
  if (!isActive(rollout.state)) return false;
  if (rollout.group !== at.group) return rollout.group > at.group;
  const canariesPassed = rollout.canaries === 0 || rollout.wave >= 1;
  return at.wave === 0 || (canariesPassed && at.wave <= rollout.wave + STAGE_AHEAD);
}

/** The largest front a rollout record carries (bytes of host names); past it the record names none and every host reads the plan. */
export const FRONT_MAX_BYTES = 4096;

/**
 * The hosts with something new to do at the rollout's position: its wave (they start now), and the waves
 * that may stage now but could not at the position before (they download now). The rollout record
 * carries them, so that a new rollout or a wave move wakes these hosts and no other; the waves staged
 * already wait quietly for their turn, and the rest need not read the plan yet. Null when the front is
 * too large to carry (every host then reads the plan).
 */
export function frontOf(plan: PlanGroup[], rollout: Pick<Rollout, 'group' | 'wave' | 'canaries'>): string[] | null {
  const waves = plan[rollout.group]?.waves ?? [];
  const now = { ...rollout, state: 'running' as const };
  const before = { ...now, wave: rollout.wave - 1 };
  const front: string[] = [];
  let bytes = 0;
  for (let w = rollout.wave; w < waves.length; w++) {
    const at = { group: rollout.group, wave: w };
    if (!stagesNow(now, at)) break;
    if (w !== rollout.wave && rollout.wave > 0 && stagesNow(before, at)) continue;
    for (const host of waves[w]!) {
      bytes += host.length + 3;
      if (bytes > FRONT_MAX_BYTES) return null;
      front.push(host);
    }
  }
  return front;
}
