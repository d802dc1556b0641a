/**
 * FIFOs and symbolic links planted at every file the upgrader reads in a root: state, owner, agent status,
 * quarantine records and manifests. A FIFO must never block `status` or `run` (a blocked open in the one
 * thread leaves the process deaf to SIGTERM), and a link must never be followed (what it points at is
 * never used).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { identify } from '../../src/proc.js';
import { emptyState, encodeState } from '../../src/state.js';
import { askUpgrade, cleanUpAfterEach, CLI, logged, makeRoot, missing, scratchDir, startReady, startUpgrader, titled, Upgrader } from '../helpers.js';
import { FAST } from '../timing.js';

cleanUpAfterEach();

const noMkfifo = missing('mkfifo');
const STATUS_DEADLINE_MS = 5000;

/** A root running nothing yet: 1.0.0 current, 2.0.0 installed, and the state directories in place. */
function root(): string {
  const dir = makeRoot({ '1.0.0': {}, '2.0.0': {} }, '1.0.0');
  mkdirSync(join(dir, 'state/quarantine'), { recursive: true });
  return dir;
}

const plantFifo = (path: string) => execFileSync('mkfifo', [path]);

/** `upgrader status --root <root> --json`, which must answer before the deadline. */
async function statusWithin(dir: string): Promise<{ code: number | undefined; report: any }> {
  const result = await execa(process.execPath, [CLI, 'status', '--root', dir, '--json'], { reject: false, timeout: STATUS_DEADLINE_MS });
  expect(result.timedOut, `status did not answer within ${STATUS_DEADLINE_MS} ms`).toBe(false);
  return { code: result.exitCode, report: JSON.parse(result.stdout) };
}

async function stopsOnSigterm(up: Upgrader): Promise<void> {
  up.kill('SIGTERM');
  expect((await up.waitForExit(10_000)).code).toBe(0);
}

describe.skipIf(noMkfifo)(titled('a FIFO planted before the upgrader starts', noMkfifo), () => {
  it.each([
    ['state/state.json', { stateProblem: 'the state file is a FIFO, not a regular file' }],
    ['state/owner.json', { running: false, ownerProblem: expect.stringMatching(/state\/owner\.json is a FIFO, not a regular file$/) }],
    ['state/agent-status.json', { agentStatus: null }],
    ['state/quarantine/2.0.0.json', { quarantined: [] }],
  ])('at %s: status answers, run starts its agent and stops on SIGTERM', async (path, expected) => {
    const dir = root();
    plantFifo(join(dir, path));
    const { code, report } = await statusWithin(dir);
    expect(code).toBe(3);
    expect(report).toMatchObject({ state: 'stopped', current: '1.0.0', ...expected });
    const { up } = await startReady(dir, FAST);
    await stopsOnSigterm(up);
  });

  it('at the current version\'s upgrader.json: status calls the root broken, run refuses with the reason', async () => {
    const dir = root();
    plantFifo(join(dir, 'versions/1.0.0/upgrader.json'));
    const { code, report } = await statusWithin(dir);
    expect(code).toBe(5);
    expect(report).toMatchObject({ state: 'broken', current: null, currentProblem: expect.stringMatching(/upgrader\.json is a FIFO, not a regular file$/) });
    const up = startUpgrader(dir, FAST);
    expect((await up.waitForExit(10_000)).code).toBe(78);
    expect(up.stderrText.join('\n')).toMatch(/upgrader\.json is a FIFO, not a regular file/);
  });
});

describe.skipIf(noMkfifo)(titled('a FIFO planted while the upgrader runs, then an upgrade that reads it', noMkfifo), () => {
  it('at state/owner.json: the record no longer names the upgrader, which lets the root go (75)', async () => {
    const dir = root();
    const { up, pid } = await startReady(dir, FAST);
    unlinkSync(join(dir, 'state/owner.json'));
    plantFifo(join(dir, 'state/owner.json'));
    askUpgrade(dir, pid, '2.0.0');
    await up.waitForLog(logged.ownershipLost(), 10_000, 'the root given up');
    expect((await up.waitForExit(10_000)).code).toBe(75);
  });

  it('at state/quarantine/2.0.0.json: no record, so the upgrade goes ahead; SIGTERM still stops it', async () => {
    const dir = root();
    const { up, pid } = await startReady(dir, FAST);
    plantFifo(join(dir, 'state/quarantine/2.0.0.json'));
    askUpgrade(dir, pid, '2.0.0');
    await up.waitForSent('go', '2.0.0', 10_000);
    await stopsOnSigterm(up);
  });

  it('at versions/2.0.0/upgrader.json: the upgrade is refused with the reason; SIGTERM still stops it', async () => {
    const dir = root();
    const { up, pid } = await startReady(dir, FAST);
    plantFifo(join(dir, 'versions/2.0.0/upgrader.json'));
    askUpgrade(dir, pid, '2.0.0');
    const refused = await up.waitForSent('upgrade-failed', '1.0.0', 10_000);
    expect((refused.message as { reason: string }).reason).toMatch(/upgrader\.json is a FIFO, not a regular file/);
    await stopsOnSigterm(up);
  });
});

describe.skipIf(noMkfifo)(titled('a FIFO planted in an installed version', noMkfifo), () => {
  it('install of the same name compares without opening it: other content (73), at once', async () => {
    const dir = root();
    const source = scratchDir('planted-source-');
    cpSync(join(dir, 'versions/1.0.0'), source, { recursive: true });
    plantFifo(join(dir, 'versions/1.0.0/data'));
    const result = await execa(process.execPath, [CLI, 'install', '--root', dir, '--version', '1.0.0', source], { reject: false, timeout: STATUS_DEADLINE_MS });
    expect(result.timedOut, 'install did not answer in time').toBe(false);
    expect(result.exitCode).toBe(73);
  });
});

describe('symbolic links planted at the files the upgrader reads are never followed', () => {
  /** A valid-looking file outside the root, and a link to it at `path` inside the root. */
  function plantLink(dir: string, path: string, content: string): void {
    const outside = scratchDir('planted-');
    writeFileSync(join(outside, 'file'), content);
    symlinkSync(join(outside, 'file'), join(dir, path));
  }
  const LINK = 'is a symbolic link, which the upgrader never follows';

  it('state.json: the linked state is not shown, and run starts from current', async () => {
    const dir = root();
    plantLink(dir, 'state/state.json', encodeState({ ...emptyState(), previous: '2.0.0', current: '2.0.0' }));
    const { report } = await statusWithin(dir);
    expect(report).toMatchObject({ previous: null, stateProblem: `the state file ${LINK}` });
    const { up } = await startReady(dir, FAST);
    expect(up.logs.some((l) => logged.ignoredStateFile()(l) && l.problem === `the state file ${LINK}`)).toBe(true);
  });

  it('owner.json: a linked record naming a live process does not make the root owned', async () => {
    const dir = root();
    plantLink(dir, 'state/owner.json', JSON.stringify({ ...identify(process.pid)!, startedAt: new Date().toISOString() }));
    const { code, report } = await statusWithin(dir);
    expect(code).toBe(3);
    expect(report).toMatchObject({ running: false, upgraderPid: null, ownerProblem: expect.stringContaining(LINK) });
    await startReady(dir, FAST);
  });

  it('agent-status.json: the linked message is not shown', async () => {
    const dir = root();
    plantLink(dir, 'state/agent-status.json', JSON.stringify({ version: '1.0.0', pid: 1, message: 'planted', at: new Date().toISOString() }));
    expect((await statusWithin(dir)).report.agentStatus).toBeNull();
  });

  it('quarantine/2.0.0.json: the linked record quarantines nothing, and an upgrade to 2.0.0 goes ahead', async () => {
    const dir = root();
    plantLink(dir, 'state/quarantine/2.0.0.json', JSON.stringify({ version: '2.0.0', reason: 'planted', at: new Date().toISOString() }));
    expect((await statusWithin(dir)).report.quarantined).toEqual([]);
    const { up, pid } = await startReady(dir, FAST);
    askUpgrade(dir, pid, '2.0.0');
    await up.waitForSent('go', '2.0.0', 10_000);
  });

  it('upgrader.json: a linked manifest is not used; the version is unusable, with the reason', async () => {
    const dir = root();
    plantLink(dir, 'versions/1.0.0/upgrader.json', JSON.stringify({ sequential: true }));
    const { code, report } = await statusWithin(dir);
    expect(code).toBe(5);
    expect(report).toMatchObject({ state: 'broken', currentProblem: expect.stringContaining(`upgrader.json ${LINK}`) });
  });
});
