/**
 * The one invariant every reliability scenario ends in, checked from the outside:
 * exactly one agent runs; `current` points at its version, which is complete and has proved itself;
 * `status --json` and the state file agree with what runs; no process of another version survives;
 * an upgrade reported as succeeded stays.
 */
import { accessSync, constants, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { rootProcesses, savedState, statusJson, type RootProcess } from '../helpers.js';

export { rootProcesses };

/** How long after a (re)start the invariant must hold. */
export const INVARIANT_BOUND_MS = 10_000;

export type Expectation = {
  /** Versions that may legitimately run: the one before, or one whose upgrade was reported succeeded. */
  allowed: string[];
  /** Set when an upgrade had been reported succeeded before the fault: it must still be running. */
  mustRun?: string;
};

async function settle(root: string, upgraderPid: number): Promise<RootProcess> {
  const deadline = Date.now() + INVARIANT_BOUND_MS;
  let last: RootProcess[] = [];
  for (;;) {
    last = rootProcesses(root);
    const agents = new Set(last.map((p) => p.agentId));
    const main = last.find((p) => p.ppid === upgraderPid);
    const ready = savedState(root)?.agents?.some((a: { role: string; ready: boolean; pid: number }) => a.role === 'active' && a.ready && a.pid === main?.pid);
    if (agents.size === 1 && main && ready) return main;
    if (Date.now() > deadline) {
      throw new Error(`within ${INVARIANT_BOUND_MS} ms, expected exactly one ready agent of upgrader ${upgraderPid}; found ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function checkInvariant(root: string, upgraderPid: number, expectation: Expectation): Promise<string> {
  const agent = await settle(root, upgraderPid);
  const version = agent.version;
  expect(expectation.allowed).toContain(version);
  if (expectation.mustRun) expect(version).toBe(expectation.mustRun);
  expect(rootProcesses(root).every((p) => p.version === version)).toBe(true);
  expect(readlinkSync(join(root, 'current'))).toBe(`versions/${version}`);
  accessSync(join(root, 'versions', version, 'bin/agent'), constants.X_OK);

  const { code, report } = await statusJson(root);
  expect(code).toBe(0);
  expect(report).toMatchObject({ running: true, upgraderPid, current: version, agent: { pid: agent.pid, version, ready: true } });
  const saved = savedState(root);
  expect(saved.current).toBe(version);
  expect(saved.handoff).toBeNull();
  expect(saved.agents.filter((a: { role: string }) => a.role === 'active').map((a: { pid: number }) => a.pid)).toEqual([agent.pid]);
  return version;
}

/** The invariant of a halted root: no agent at all, the halt on record and shown by status, `current` on the version halted. */
export async function checkHalted(root: string, upgraderPid: number, version: string): Promise<void> {
  const deadline = Date.now() + INVARIANT_BOUND_MS;
  // Until the restarted upgrader owns the root and has written its own state, the file is the killed one's.
  const halted = async () => savedState(root)?.state === 'halted' && rootProcesses(root).length === 0 && (await statusJson(root)).report.upgraderPid === upgraderPid;
  while (!(await halted())) {
    if (Date.now() > deadline) throw new Error(`within ${INVARIANT_BOUND_MS} ms, expected a halted root with no agent under upgrader ${upgraderPid}; found ${JSON.stringify(rootProcesses(root))}, state ${savedState(root)?.state}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  expect(readlinkSync(join(root, 'current'))).toBe(`versions/${version}`);
  const { code, report } = await statusJson(root);
  expect(code).toBe(4);
  expect(report).toMatchObject({ running: true, upgraderPid, state: 'halted', agent: null, candidate: null, halt: { version } });
  expect(savedState(root).handoff).toBeNull();
}
