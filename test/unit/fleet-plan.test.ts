import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { batchSize, buildPlan, firstPosition, FRONT_MAX_BYTES, frontOf, nextPosition, positionOf, stagesNow, STAGE_AHEAD, targetOf, type Position } from '../../src/fleet/plan.js';
import { formatFleet } from '../../src/fleet/cli.js';
import type { FleetView } from '../../src/fleet/view.js';
import { fleetPrefix, parseRecord, Rollout as RolloutSchema, type Rollout } from '../../src/fleet/schema.js';

const hostsArb = fc.uniqueArray(fc.record({ host: fc.stringMatching(/^h[0-9]{1,3}$/), group: fc.constantFrom('canary', 'prod', 'edge') }), { selector: (h) => h.host, maxLength: 60 });
const batchArb = fc.oneof(fc.integer({ min: 1, max: 10 }).map(String), fc.integer({ min: 1, max: 100 }).map((p) => `${p}%`));

function walk(plan: ReturnType<typeof buildPlan>): Position[] {
  const seen: Position[] = [];
  for (let at = firstPosition(plan); at; at = nextPosition(plan, at)) seen.push(at);
  return seen;
}

describe('the rollout plan', () => {
  it('puts every host in exactly one wave; canary waves hold at most --canaries, the others at most --batch', () => {
    fc.assert(
      fc.property(hostsArb, fc.integer({ min: 0, max: 4 }), batchArb, (hosts, canaries, batch) => {
        const plan = buildPlan(hosts, ['canary'], canaries, batch);
        const all = plan.flatMap((g) => g.waves.flat());
        expect(all.sort()).toEqual(hosts.map((h) => h.host).sort());
        for (const g of plan) {
          const size = batchSize(batch, g.waves.flat().length);
          g.waves.forEach((wave, i) => {
            expect(wave.length).toBeGreaterThan(0);
            expect(wave.length).toBeLessThanOrEqual(i === 0 && canaries > 0 ? canaries : size);
          });
        }
      }),
    );
  });

  it('visits every wave once, in order, group by group', () => {
    fc.assert(
      fc.property(hostsArb, fc.integer({ min: 0, max: 3 }), batchArb, (hosts, canaries, batch) => {
        const plan = buildPlan(hosts, ['prod'], canaries, batch);
        const visited = walk(plan);
        expect(visited.length).toBe(plan.reduce((n, g) => n + g.waves.length, 0));
        for (const h of hosts) {
          const at = positionOf(plan, h.host)!;
          expect(visited.filter((p) => p.group === at.group && p.wave === at.wave)).toHaveLength(1);
        }
        for (let i = 1; i < visited.length; i++) {
          const [a, b] = [visited[i - 1]!, visited[i]!];
          expect(b.group > a.group || (b.group === a.group && b.wave === a.wave + 1)).toBe(true);
        }
      }),
    );
  });

  it('orders the named groups first, the rest by name, hosts by name (the plan does not depend on listing order)', () => {
    const hosts = [
      { host: 'b', group: 'prod' },
      { host: 'a', group: 'prod' },
      { host: 'z', group: 'canary' },
      { host: 'm', group: 'edge' },
    ];
    expect(buildPlan(hosts, ['canary'], 1, '1')).toEqual([
      { name: 'canary', waves: [['z']] },
      { name: 'edge', waves: [['m']] },
      { name: 'prod', waves: [['a'], ['b']] },
    ]);
    expect(buildPlan([...hosts].reverse(), ['canary'], 1, '1')).toEqual(buildPlan(hosts, ['canary'], 1, '1'));
    expect(batchSize('25%', 10)).toBe(3);
    expect(batchSize('1%', 10)).toBe(1);
  });

  it('stages a group\'s canaries when the group begins, the rest once the canaries have passed, a few waves ahead', () => {
    const rollout = { state: 'running', group: 0, wave: 0, canaries: 1 } as Rollout;
    expect(stagesNow(rollout, { group: 0, wave: 0 })).toBe(true);
    expect(stagesNow(rollout, { group: 0, wave: 2 })).toBe(false);
    expect(stagesNow({ ...rollout, wave: 1 }, { group: 0, wave: 2 })).toBe(true);
    expect(stagesNow(rollout, { group: 1, wave: 0 })).toBe(false);
    expect(stagesNow({ ...rollout, state: 'halted', wave: 1 }, { group: 0, wave: 2 })).toBe(false);
    expect(stagesNow({ ...rollout, canaries: 0 }, { group: 0, wave: 2 })).toBe(true);
    // At most STAGE_AHEAD waves ahead: a large group does not download all at once.
    expect(stagesNow({ ...rollout, wave: 1 }, { group: 0, wave: 1 + STAGE_AHEAD })).toBe(true);
    expect(stagesNow({ ...rollout, wave: 1 }, { group: 0, wave: 2 + STAGE_AHEAD })).toBe(false);
  });
});

describe("the rollout record's front", () => {
  it('names the wave that starts and every host that may stage now but could not before, and nobody else', () => {
    fc.assert(
      fc.property(hostsArb, fc.integer({ min: 0, max: 3 }), batchArb, (hosts, canaries, batch) => {
        const plan = buildPlan(hosts, ['canary'], canaries, batch);
        const woken = new Set<string>();
        for (const at of walk(plan)) {
          const rollout = { state: 'running' as const, ...at, canaries };
          const before = at.wave > 0 ? { ...rollout, wave: at.wave - 1 } : null;
          const front = frontOf(plan, rollout)!;
          for (const h of hosts) {
            const mine = positionOf(plan, h.host)!;
            const starts = mine.group === at.group && mine.wave === at.wave;
            const stagesAhead = mine.group === at.group && mine.wave > at.wave && stagesNow(rollout, mine);
            const newly = stagesAhead && !(before && stagesNow(before, mine));
            expect(front.includes(h.host), `${h.host} at ${JSON.stringify(mine)}, rollout at ${JSON.stringify(at)}`).toBe(starts || newly);
            if (front.includes(h.host)) woken.add(h.host);
            // A host staging ahead now was woken at this position or an earlier one: none is left unwoken.
            if (stagesAhead) expect(woken.has(h.host)).toBe(true);
          }
        }
        expect(woken.size).toBe(hosts.length);
      }),
    );
  });

  it('names nobody past its size limit (every host then reads the plan)', () => {
    const hosts = Array.from({ length: 600 }, (_, i) => ({ host: `web-${String(i).padStart(4, '0')}`, group: 'prod' }));
    const plan = buildPlan(hosts, [], 0, '200');
    expect(frontOf(plan, { group: 0, wave: 0, canaries: 0 })).toBeNull();
    // Past the first wave only two waves are new: the one that starts and the one that may stage now.
    expect(frontOf(plan, { group: 0, wave: 1, canaries: 0 })).toHaveLength(200);
    expect(200 * 11).toBeLessThan(FRONT_MAX_BYTES);
  });
});

describe('fleet records read back from etcd', () => {
  it('refuses names that would leave the fleet prefix or a root', () => {
    expect(() => fleetPrefix('/upgrader/', '../other')).toThrow();
    expect(() => fleetPrefix('upgrader/', 'prod')).toThrow();
    expect(fleetPrefix('/upgrader/', 'prod')).toBe('/upgrader/prod/');
    const tampered = { schema: 1, id: 'r1', kind: 'rollout', to: '../../etc', undoes: null, groupNames: [], canaries: 1, batch: '1', maxFailures: 0, pauseMs: 0, state: 'running', group: 0, wave: 0, failures: 0, failed: [], reason: null, previousDesired: null, desiredAfter: null, startedAt: new Date().toISOString(), updatedAt: new Date().toISOString() };
    const read = parseRecord(RolloutSchema, JSON.stringify(tampered));
    expect(read.value).toBeNull();
    expect(read.problem).toMatch(/^record is malformed at to:/);
    expect(parseRecord(RolloutSchema, JSON.stringify({ ...tampered, to: '2.0.0' })).value?.to).toBe('2.0.0');
  });

  it('never throws on arbitrary bytes', () => {
    fc.assert(fc.property(fc.string(), (raw) => void parseRecord(RolloutSchema, raw)));
    fc.assert(fc.property(fc.json(), (raw) => parseRecord(RolloutSchema, raw).value === null));
  });
});

describe('names from etcd used as keys', () => {
  it('a host named like an Object property finds no target it was not given', () => {
    const rollback = { to: null };
    const plan = { targets: Object.assign(Object.create(null), { web1: '1.0.0' }) as Record<string, string> };
    expect(targetOf(rollback, plan, 'web1')).toBe('1.0.0');
    for (const name of ['constructor', 'toString', '__proto__', 'valueOf']) expect(targetOf(rollback, plan, name)).toBeNull();
    expect(targetOf(rollback, { targets: { web1: '1.0.0' } }, 'constructor')).toBeNull();
  });
});

describe('fleet status output', () => {
  it('keeps every host on one line and escapes what could drive the terminal', () => {
    const now = Date.parse('2026-11-26T12:00:00Z');
    const at = '2026-11-26T11:59:00Z';
    const view: FleetView = {
      desired: '2.0.0',
      rollout: null,
      problems: [],
      hosts: [
        { host: 'h1', group: 'default', online: true, running: '2.0.0', phase: 'failed', run: null, groupIndex: null, wave: null, lastUpgrade: null, reportedAt: at, error: { message: 'bad\nh2  default  online  9.9.9  fake row\u202e\u001b[2J', code: 'x', at } },
      ],
    };
    const text = formatFleet(view, now);
    expect(text.split('\n')).toHaveLength(4);
    expect(text).not.toMatch(/\u001b|\u202e/);
    expect(text).toContain('bad\\u000ah2');
  });
});
