import { mkdirSync, readlinkSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../src/duration.js';
import { Layout, versionNameProblem } from '../../src/layout.js';
import { decodeState, emptyState, encodeState, withUpgrade, HISTORY_LIMIT, type UpgradeRecord } from '../../src/state.js';
import { UPGRADER_VERSION } from '../../src/upgrader-version.js';
import { cleanUpAfterEach, REPO, scratchDir } from '../helpers.js';

cleanUpAfterEach();

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['1.5s', 1500],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['0s', 0],
  ])('%s is %i ms', (text, ms) => expect(parseDuration(text, '--x')).toBe(ms));
  it.each(['30', '', 's', '-1s', '1d', '1e3s', '30 s x'])('refuses %j', (text) => {
    expect(() => parseDuration(text, '--x')).toThrow(/--x must be a duration with a unit/);
  });
  it('refuses durations setTimeout cannot wait for', () => expect(() => parseDuration('1000h', '--x')).toThrow(/too long/));
});

describe('version names', () => {
  it.each(['1.0.0', 'v2', '2.0.0-rc.1+build.5', 'a', 'A_b', 'x'.repeat(128)])('accepts %s', (name) => expect(versionNameProblem(name)).toBeNull());
  it.each(['', '.', '..', '../x', 'a/b', '/abs', '-rf', '.hidden', 'a\0b', 'a\nb', 'ａ', 'x'.repeat(129), 'a b'])('refuses %j', (name) => {
    expect(versionNameProblem(name)).toMatch(/is not a valid version name/);
  });
});

describe('Layout', () => {
  function root(): string {
    const dir = scratchDir('layout-');
    mkdirSync(join(dir, 'versions/1.0/bin'), { recursive: true });
    writeFileSync(join(dir, 'versions/1.0/bin/agent'), '#!/bin/sh\n');
    chmodSync(join(dir, 'versions/1.0/bin/agent'), 0o755);
    return dir;
  }
  it('reads current and explains what is wrong with it', () => {
    const dir = root();
    const layout = Layout.open(dir);
    expect(layout.readCurrent()).toEqual({ problem: `${join(layout.root, 'current')} does not exist` });
    symlinkSync('versions/2.0', join(dir, 'current'));
    expect(layout.readCurrent()).toMatchObject({ problem: expect.stringMatching(/current points at 2\.0, but version 2\.0 is not installed/) });
    layout.commitCurrent('1.0');
    expect(readlinkSync(join(dir, 'current'))).toBe('versions/1.0');
    expect(layout.readCurrent()).toEqual({ version: '1.0' });
  });
  it('refuses to point current at an incomplete version', () => {
    const dir = root();
    mkdirSync(join(dir, 'versions/empty'));
    expect(() => Layout.open(dir).commitCurrent('empty')).toThrow(/has no entry point/);
  });
  it('refuses an entry point that leads outside its version', () => {
    const dir = root();
    mkdirSync(join(dir, 'versions/out/bin'), { recursive: true });
    symlinkSync('/bin/sh', join(dir, 'versions/out/bin/agent'));
    expect(Layout.open(dir).versionProblem('out')).toMatch(/leads outside its version directory/);
  });
  it('removes stale temporaries and nothing else', () => {
    const dir = root();
    symlinkSync('versions/1.0', join(dir, '.current.tmp-123-abcd'));
    writeFileSync(join(dir, 'notes.tmp-1'), 'keep me');
    const removed = Layout.open(dir).removeStaleTemporaries();
    expect(removed.map((p) => p.split('/').pop())).toEqual(['.current.tmp-123-abcd']);
  });
});

describe('state file', () => {
  const record = (i: number): UpgradeRecord => ({ from: 'a', to: `v${i}`, mode: 'live', result: 'succeeded', reason: null, code: null, startedAt: `2026-01-01T00:00:${String(i % 60).padStart(2, '0')}Z`, at: '2026-01-01T00:01:00Z', durationMs: 5 });
  it('round-trips', () => {
    const state = { ...emptyState(), current: '1.0', history: [record(1)] };
    expect(decodeState(encodeState(state))).toEqual({ ok: true, state });
  });
  it.each([
    ['', /empty/],
    ['{"format":"upgrader-st', /not valid JSON/],
    ['{"hello":1}', /not an upgrader state file/],
    ['{"format":"upgrader-state","schema":2,"sha256":"x","body":{}}', /schema 2/],
  ])('rejects %j', (text, problem) => {
    const read = decodeState(text);
    expect(read.ok).toBe(false);
    if (!read.ok) expect(read.problem).toMatch(problem);
  });
  it('detects any change to the body', () => {
    const text = encodeState({ ...emptyState(), current: '1.0' });
    const read = decodeState(text.replace('"current":"1.0"', '"current":"9.9"'));
    expect(read).toMatchObject({ ok: false, problem: expect.stringMatching(/checksum/) });
  });
  it('keeps the newest upgrades first, updates in place, and bounds the history', () => {
    let history: UpgradeRecord[] = [];
    for (let i = 0; i < HISTORY_LIMIT + 5; i++) history = withUpgrade(history, record(i));
    expect(history).toHaveLength(HISTORY_LIMIT);
    expect(history[0]!.to).toBe(`v${HISTORY_LIMIT + 4}`);
    history = withUpgrade(history, { ...history[0]!, result: 'rolled-back' });
    expect(history).toHaveLength(HISTORY_LIMIT);
    expect(history[0]!.result).toBe('rolled-back');
  });
});

it('the upgrader version matches package.json', () => {
  expect(UPGRADER_VERSION).toBe(JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).version);
});
