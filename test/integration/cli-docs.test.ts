/**
 * What the README and each command's --help promise about the command line, checked against the program:
 * every option a command's --help names is in the README's synopsis of that command, every field
 * `status --json` prints is in the README's list, and the behaviours only the docs describe (the aliases,
 * SIGHUP, --ready-on-spawn) do what they say.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanupRoots, isAlive, makeRoot, REPO, runCli, startUpgrader, statusJson, stopAllUpgraders, waitUntil } from '../helpers.js';

afterEach(async () => {
  await stopAllUpgraders();
  cleanupRoots();
});

const README = readFileSync(join(REPO, 'README.md'), 'utf8');
const COMMANDS = ['run', 'status', 'install', 'versions', 'prune', 'upgrade', 'rollback', 'check', 'halt', 'resume', 'follow', 'fleet'] as const;
/** The etcd options are listed once, after the fleet commands, for follow and fleet alike. */
const ETCD_OPTIONS = /etcd options \(follow and fleet\):[^\n]*\n[^\n]*/;

/** The README's synopsis block: `upgrader <command> ...` lines, continuation lines joined to their command. */
function synopsis(): Map<string, string> {
  const block = /## Command line\n\n```\n([\s\S]*?)```/.exec(README)![1]!;
  const lines = new Map<string, string>();
  let last = '';
  for (const line of block.split('\n')) {
    const command = /^upgrader (\S+)/.exec(line)?.[1];
    // Several lines of one command (fleet publish, fleet rollout, ...) are one synopsis.
    if (command) lines.set((last = command), lines.has(command) ? `${lines.get(command)} ${line}` : line);
    else if (last && line.trim()) lines.set(last, `${lines.get(last)} ${line.trim()}`);
  }
  return lines;
}

const optionsIn = (text: string) => [...new Set(text.match(/--[a-z][a-z-]+/g) ?? [])];

describe('the README matches the program', () => {
  it.each(COMMANDS)('every option of "%s --help" is in the README synopsis', async (command) => {
    const { stdout } = await runCli([command, '--help']);
    const found = synopsis().get(command);
    expect(found, `no synopsis line for ${command}`).toBeDefined();
    const line = command === 'follow' || command === 'fleet' ? `${found} ${ETCD_OPTIONS.exec(README)![0]}` : found;
    const missing = optionsIn(stdout).filter((option) => option !== '--help' && !line!.includes(option));
    expect(missing, `options of ${command} --help missing from the README synopsis`).toEqual([]);
  });

  it('every run option is in the options table', async () => {
    const { stdout } = await runCli(['run', '--help']);
    const table = /\| option \| default \| meaning \|([\s\S]*?)\n\n/.exec(README)![1]!;
    const missing = optionsIn(stdout.slice(stdout.indexOf('Options:'))).filter((option) => option !== '--root' && !table.includes(`\`${option}\``));
    expect(missing).toEqual([]);
  });

  it('every field of status --json is in the README list', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const { report } = await statusJson(root);
    const paragraph = README.slice(README.indexOf('`--json` prints one\nobject:'), README.indexOf('Exit 0 when an upgrader runs'));
    const missing = Object.keys(report).filter((field) => !paragraph.includes(`\`${field}\``));
    expect(missing).toEqual([]);
  });

  it('install --json is in its --help, and prints the fields the README lists', async () => {
    expect((await runCli(['install', '--help'])).stdout).toMatch(/\[--json\]/);
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const { stdout } = await runCli(['install', '--root', root, '--version', '1.0.0', '--json', join(root, 'versions/1.0.0')]);
    const listed = /`--json` prints one object: ([^.]*)\./.exec(README)![1]!.match(/`(\w+)`/g)!.map((field) => field.slice(1, -1));
    expect(Object.keys(JSON.parse(stdout)).sort()).toEqual(listed.sort());
  });

  it('-h and -v are what the README says: --help and --version', async () => {
    expect(README).toMatch(/upgrader --help \| -h \| --version \| -v/);
    expect((await runCli(['-h'])).stdout).toBe((await runCli(['--help'])).stdout);
    expect((await runCli(['-v'])).stdout).toBe((await runCli(['--version'])).stdout);
    expect((await runCli(['prune', '-h'])).stdout).toBe((await runCli(['prune', '--help'])).stdout);
  });

  it('status --help lists every exit status status can give', async () => {
    const { stdout } = await runCli(['status', '--help']);
    const exits = stdout.slice(stdout.indexOf('Exit status:'));
    for (const code of ['0', '3', '4', '5', '64', '77', '78']) expect(exits).toMatch(new RegExp(`\\b${code} `));
    expect((await runCli(['status', '--root', '/nonexistent-root'])).code).toBe(78);
    expect((await runCli(['status', '--bogus'])).code).toBe(64);
  });
});

describe('run, as its --help describes it', () => {
  it('SIGHUP stops the agent and the upgrader with status 0, like SIGTERM: it is not a reload', async () => {
    const { stdout } = await runCli(['run', '--help']);
    expect(stdout).toMatch(/SIGHUP/);
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const up = startUpgrader(root, ['--probation', '0s']);
    const pid = await up.agentPid('1.0.0');
    await up.waitForTransition('ready', 'running');
    up.kill('SIGHUP');
    expect((await up.waitForExit()).code).toBe(0);
    await waitUntil(() => !isAlive(pid), 'the agent gone');
  });

  it('--ready-on-spawn counts an agent that never says ready as ready once spawned', async () => {
    const root = makeRoot({ '1.0.0': { config: { neverReady: true } } }, '1.0.0');
    const up = startUpgrader(root, ['--ready-on-spawn', '--probation', '0s']);
    await up.agentPid('1.0.0');
    await up.waitForTransition('ready', 'running');
    const { code, report } = await statusJson(root);
    expect(code).toBe(0);
    expect(report.agent).toMatchObject({ version: '1.0.0', ready: true });
  });
});
