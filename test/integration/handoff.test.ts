import { describe, expect, it } from 'vitest';
import { askUpgrade, cleanUpAfterEach, currentTarget, isAlive, logged, makeRoot, readLines, startReady, startUpgrader, statusJson, waitUntil, workSpans } from '../helpers.js';
import { FAST, runArgs } from '../timing.js';

cleanUpAfterEach();

describe('live handoff', () => {
  it('hands the work from the old agent to the new one with no overlap, and moves current', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { readyDelayMs: 300 } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, FAST);
    askUpgrade(root, oldPid, '2.0.0');
    const newPid = await up.agentPid('2.0.0', 'candidate');
    await up.waitForSent('go', '2.0.0');
    await waitUntil(() => !isAlive(oldPid), 'the old agent is gone');

    expect(currentTarget(root)).toBe('versions/2.0.0');
    const spans = workSpans(root);
    const old = spans.find((s) => s.pid === oldPid)!;
    await waitUntil(() => workSpans(root).some((s) => s.pid === newPid), 'the new agent works');
    const fresh = workSpans(root).find((s) => s.pid === newPid)!;
    expect(old.version).toBe('1.0.0');
    expect(fresh.version).toBe('2.0.0');
    // The old agent kept working while the candidate verified (300 ms), and stopped before the new one began.
    expect(old.last - old.first).toBeGreaterThan(250);
    expect(fresh.first).toBeGreaterThan(old.last);

    const { code, report } = await statusJson(root);
    expect(code).toBe(0);
    expect(report).toMatchObject({
      running: true,
      state: 'running',
      current: '2.0.0',
      previous: '1.0.0',
      agent: { pid: newPid, version: '2.0.0', ready: true },
      candidate: null,
      lastUpgrade: { from: '1.0.0', to: '2.0.0', result: 'succeeded', reason: null },
    });
    expect(report.history).toHaveLength(1);
  });

  it('fails a candidate that exits before ready; the old agent never stops', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitBeforeReady: 3 } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, FAST);
    askUpgrade(root, oldPid, '2.0.0');
    const failed = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((failed.message as { reason: string }).reason).toMatch(/candidate 2\.0\.0 exited with code 3 before reporting ready/);
    expect(currentTarget(root)).toBe('versions/1.0.0');
    expect(isAlive(oldPid)).toBe(true);
    expect(readLines(root, 'events.log').filter((l) => l.startsWith(`${oldPid} `) && l.includes('"stop"'))).toEqual([]);
    const { report } = await statusJson(root);
    expect(report.agent.pid).toBe(oldPid);
    expect(report.lastUpgrade).toMatchObject({ from: '1.0.0', to: '2.0.0', result: 'failed' });
  });

  it('kills a candidate that hangs past the ready timeout, with its children', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { neverReady: true, children: 2, setsidChild: true } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, runArgs({ ready: '2s' }));
    askUpgrade(root, oldPid, '2.0.0');
    const candidatePid = await up.agentPid('2.0.0', 'candidate');
    await waitUntil(() => readLines(root, 'children.log').length > 0, 'the candidate started its children');
    const children = readLines(root, 'children.log')[0]!.split(' ').slice(1).map(Number);
    expect(children).toHaveLength(3);
    const failed = await up.waitForSent('upgrade-failed', '1.0.0');
    expect((failed.message as { reason: string }).reason).toMatch(/did not report ready within 2\.0s/);
    await waitUntil(() => ![candidatePid, ...children].some(isAlive), 'the candidate and all its descendants are gone');
    expect(isAlive(oldPid)).toBe(true);
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('ignores garbage before a valid ready and completes the handoff', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { garbageBeforeReady: true } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, FAST);
    askUpgrade(root, oldPid, '2.0.0');
    await up.waitForSent('go', '2.0.0');
    expect(up.logs.some((l) => logged.agentLine('garbage')(l) && l.line === 'this is not json')).toBe(true);
    expect(up.logs.some((l) => logged.agentLine('unknown')(l) && l.type === 'no-such-type')).toBe(true);
    expect(currentTarget(root)).toBe('versions/2.0.0');
  });

  it('gives an old agent that ignores stop and SIGTERM its timeouts, then kills its tree, then says go', async () => {
    const root = makeRoot({ '1.0.0': { config: { ignoreStop: true, ignoreSigterm: true, children: 1 } }, '2.0.0': {} }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, runArgs({ stop: '500ms', kill: '500ms' }));
    await waitUntil(() => readLines(root, 'children.log').length > 0, 'the old agent started its children');
    const children = readLines(root, 'children.log')[0]!.split(' ').slice(1).map(Number);
    askUpgrade(root, oldPid, '2.0.0');
    await up.waitForSent('stop', '1.0.0');
    await up.waitForLog((l) => l.event === 'timeout' && l.from === 'draining', 5000, 'the stop timeout');
    await up.waitForSent('go', '2.0.0');
    expect(readLines(root, 'events.log').some((l) => l.startsWith(`${oldPid} 1.0.0 ignored SIGTERM`))).toBe(true);
    await waitUntil(() => ![oldPid, ...children].some(isAlive), 'the old agent and its children are gone');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    // The new agent began only after the old one was dead.
    const goAt = Date.parse((await up.waitForSent('go', '2.0.0')).time as string);
    const killedAt = Date.parse((await up.waitForLog(logged.exited('1.0.0'))).time as string);
    expect(goAt).toBeGreaterThanOrEqual(killedAt);
  });

  it('rolls back a new version that exits during its probation', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitAfterGoMs: 200, exitCode: 9 } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, runArgs({ probation: '5s' }));
    askUpgrade(root, oldPid, '2.0.0');
    await up.waitForSent('go', '2.0.0');
    await up.waitForLog((l) => l.event === 'exited' && (l.active as { version: string } | null)?.version === '1.0.0', 10_000, 'the rollback');
    const restarted = (await up.waitForLog((l) => logged.spawned('active', '1.0.0')(l) && l.agentPid !== oldPid)).agentPid as number;
    expect(currentTarget(root)).toBe('versions/1.0.0');
    await up.waitForLog((l) => l.event === 'ready' && (l.active as { agentPid: number } | null)?.agentPid === restarted);
    const { code, report } = await statusJson(root);
    expect(code).toBe(0);
    expect(report.agent).toMatchObject({ pid: restarted, version: '1.0.0' });
    expect(report.lastUpgrade).toMatchObject({ from: '1.0.0', to: '2.0.0', result: 'rolled-back' });
    expect(report.lastUpgrade.reason).toMatch(/2\.0\.0 exited with code 9 during its probation/);
    expect(report.history).toHaveLength(1);
  });

  /** Start and exit times per agent process, from the fixture's lifecycle.log. */
  const lifetimes = (root: string) => {
    const spans = new Map<number, { pid: number; version: string; start: number; exit: number }>();
    for (const [at, pid, version, what] of readLines(root, 'lifecycle.log').map((l) => l.split(' '))) {
      const span = spans.get(Number(pid)) ?? { pid: Number(pid), version: version!, start: NaN, exit: Infinity };
      if (what === 'start') span.start = Number(at);
      else span.exit = Number(at);
      spans.set(span.pid, span);
    }
    return [...spans.values()].sort((a, b) => a.start - b.start);
  };

  it('a probation rollback starts the old version again only once its previous instance, which said stopped, has exited', async () => {
    // The old agent says stopped at once but takes 1.5 s more to exit; the new one dies 100 ms after go.
    const root = makeRoot({ '1.0.0': { config: { lingerAfterStoppedMs: 1500 } }, '2.0.0': { config: { exitAfterGoMs: 100, exitCode: 9 } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, runArgs({ probation: '5s', stop: '5s' }));
    askUpgrade(root, oldPid, '2.0.0');
    const restarted = (await up.waitForLog((l) => logged.spawned('active', '1.0.0')(l) && l.agentPid !== oldPid, 10_000, 'the restart of 1.0.0')).agentPid as number;
    await waitUntil(() => lifetimes(root).some((s) => s.pid === restarted), 'the restarted agent recorded its start');
    const [old, , again] = lifetimes(root);
    expect(old).toMatchObject({ pid: oldPid, version: '1.0.0' });
    expect(again).toMatchObject({ pid: restarted, version: '1.0.0' });
    // Never two copies of 1.0.0 at once: the old instance was gone before the new one started.
    expect(again!.start).toBeGreaterThan(old!.exit);
    expect(currentTarget(root)).toBe('versions/1.0.0');
  });

  it('a new handoff while the previous old agent is still exiting starts its candidate only once that agent is gone', async () => {
    const root = makeRoot({ '1.0.0': { config: { lingerAfterStoppedMs: 1500 } }, '2.0.0': {}, '3.0.0': {} }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, FAST);
    askUpgrade(root, oldPid, '2.0.0');
    const secondPid = (await up.waitForSent('go', '2.0.0')).agentPid as number;
    askUpgrade(root, secondPid, '3.0.0');
    await up.waitForSent('go', '3.0.0', 10_000);
    const spans = lifetimes(root);
    const first = spans.find((s) => s.pid === oldPid)!;
    const third = spans.find((s) => s.version === '3.0.0')!;
    expect(third.start).toBeGreaterThan(first.exit);
    // The work never stopped meanwhile: 2.0.0 worked until it handed over to 3.0.0, with no overlap.
    const work = workSpans(root);
    for (let i = 1; i < work.length; i++) expect(work[i]!.first).toBeGreaterThan(work[i - 1]!.last);
  });
});

describe('sequential handoff', () => {
  it('stops the old agent before starting the candidate', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, FAST);
    askUpgrade(root, oldPid, '2.0.0', 'sequential');
    const newPid = await up.agentPid('2.0.0', 'candidate');
    // The candidate was spawned only after the old agent had exited.
    const oldExit = up.logs.findIndex(logged.exited('1.0.0'));
    const spawn = up.logs.findIndex(logged.spawned('candidate', '2.0.0'));
    expect(oldExit).toBeGreaterThanOrEqual(0);
    expect(spawn).toBeGreaterThan(oldExit);
    await up.waitForSent('go', '2.0.0');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    const { report } = await statusJson(root);
    expect(report.agent.pid).toBe(newPid);
    expect(report.lastUpgrade).toMatchObject({ mode: 'sequential', result: 'succeeded' });
  });

  it('starts the old version again when the candidate fails', async () => {
    const root = makeRoot({ '1.0.0': {}, '2.0.0': { config: { exitBeforeReady: 1 } } }, '1.0.0');
    const { up, pid: oldPid } = await startReady(root, FAST);
    askUpgrade(root, oldPid, '2.0.0', 'sequential');
    await up.waitForLog((l) => logged.spawned('active', '1.0.0')(l) && l.agentPid !== oldPid, 10_000, 'the old version restarted');
    expect(currentTarget(root)).toBe('versions/1.0.0');
    await waitUntil(() => !isAlive(oldPid), 'the first old agent is gone');
    const { report } = await statusJson(root);
    expect(report.agent.version).toBe('1.0.0');
    expect(report.lastUpgrade).toMatchObject({ mode: 'sequential', result: 'failed' });
  });
});

describe('language-neutral protocol', () => {
  it('hands off between two agents written in plain sh', async () => {
    const root = makeRoot(
      { '1.0.0': { fixture: 'sh-agent.sh', files: { 'upgrade-to': '2.0.0' } }, '2.0.0': { fixture: 'sh-agent.sh' } },
      '1.0.0',
    );
    const up = startUpgrader(root, FAST);
    const oldPid = await up.agentPid('1.0.0');
    await up.waitForSent('go', '2.0.0');
    await waitUntil(() => !isAlive(oldPid), 'the old sh agent is gone');
    expect(currentTarget(root)).toBe('versions/2.0.0');
    const log = () => readLines(root, 'sh.log').map((l) => l.split(' ').slice(1).join(' '));
    await waitUntil(() => log().length >= 4, 'the new sh agent logged go');
    expect(log()).toEqual(['1.0.0 start role=active', '2.0.0 start role=candidate', '1.0.0 stop', '2.0.0 go']);
  });
});
