/**
 * Consecutive handoffs, alternating versions, with a candidate that fails every tenth time. The upgrader's
 * RSS, heap, open file descriptors and children are read at the start and the end: none may grow.
 * Default: 60 handoffs. UPGRADER_SOAK=1: 1000 (the long mode; about ten minutes).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { addVersion, askUpgrade, cleanUpAfterEach, logged, makeRoot, startReady, Upgrader, waitUntil } from '../helpers.js';
import { runArgs } from '../timing.js';
import { checkInvariant, rootProcesses } from './invariant.js';

const HANDOFFS = process.env.UPGRADER_SOAK === '1' ? 1000 : 60;

cleanUpAfterEach();

type Sample = { rssMb: number; heapMb: number; fds: number; children: number };

function childrenOf(pid: number): number {
  return readdirSync('/proc').filter((name) => {
    if (!/^\d+$/.test(name)) return false;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid;
    } catch {
      return false;
    }
  }).length;
}

/** Read once the upgrader's only child is the active agent (tree-kill's short-lived `ps` gone). */
async function sample(up: Upgrader): Promise<Sample> {
  await waitUntil(() => childrenOf(up.pid) === 1, 'the active agent is the only child');
  const heap = [...up.logs].reverse().find((l) => typeof l.heapUsed === 'number')?.heapUsed as number;
  return {
    children: childrenOf(up.pid),
    rssMb: Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${up.pid}/status`, 'utf8'))![1]) / 1024,
    heapMb: heap / 1024 / 1024,
    fds: readdirSync(`/proc/${up.pid}/fd`).length,
  };
}

it(`${HANDOFFS} consecutive handoffs, every tenth candidate failing: nothing grows`, async () => {
  const root = makeRoot({ a: { config: { stopDelayMs: 0 } }, b: {} }, 'a');
  // Sixty handoffs in a row: a candidate slowed down by a busy machine must not fail where it should succeed.
  const { up } = await startReady(root, runArgs({ ready: '5s' }), 'a');
  let version = 'a';
  let first: Sample | null = null;
  const outcomes = { succeeded: 0, failed: 0 };
  for (let i = 1; i <= HANDOFFS; i++) {
    const active = rootProcesses(root).find((p) => p.ppid === up.pid && p.version === version)!;
    // Every tenth request is for a new broken release (a failed one is quarantined, so each is new).
    const target = i % 10 === 0 ? `broken-${i}` : version === 'a' ? 'b' : 'a';
    if (i % 10 === 0) addVersion(root, target, { config: { exitBeforeReady: 3 } });
    const before = up.logs.length;
    askUpgrade(root, active.pid, target);
    const outcome = await up.waitForLog((l) => up.logs.indexOf(l) >= before && logged.outcome({ to: target })(l), 15_000, `handoff ${i} to ${target}`);
    if (outcome.result === 'succeeded') {
      outcomes.succeeded += 1;
      version = target;
      await waitUntil(() => new Set(rootProcesses(root).map((p) => p.agentId)).size === 1, `the old agent of handoff ${i} gone`);
    } else {
      outcomes.failed += 1;
    }
    if (i === 10) first = await sample(up);
  }
  const last = await sample(up);
  process.stdout.write(`soak: ${HANDOFFS} handoffs (${outcomes.succeeded} succeeded, ${outcomes.failed} failed); start ${JSON.stringify(first)}, end ${JSON.stringify(last)}\n`);
  expect(outcomes.failed).toBe(Math.floor(HANDOFFS / 10));
  // An old agent's pipes close a moment after it is reaped: a leak would never come back down.
  await waitUntil(() => readdirSync(`/proc/${up.pid}/fd`).length <= first!.fds, `the descriptors back to ${first!.fds}`, 5000);
  expect(last.children).toBe(1);
  expect(last.heapMb).toBeLessThan(first!.heapMb * 2 + 5);
  expect(last.rssMb).toBeLessThan(first!.rssMb + 40);
  await checkInvariant(root, up.pid, { allowed: [version], mustRun: version });
}, 1_800_000);
