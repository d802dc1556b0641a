#!/usr/bin/env node
/**
 * The command line: `upgrader run` (the supervisor, started by the init system) and `upgrader status`.
 * Errors become one sentence on stderr and a documented exit status (see errors.ts and the README).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { AgentStatusFile } from './agent-status.js';
import { DEFAULTS, runConfig } from './config.js';
import { describeError, EXIT, UpgraderError } from './errors.js';
import { DEFAULT_ENTRY, Layout } from './layout.js';
import { createLogger } from './log.js';
import { Ownership } from './ownership.js';
import { formatStatus, readStatus, statusExitCode } from './status.js';
import { StateFile } from './state.js';
import { startSupervisor } from './supervisor.js';
import { SystemdNotifier } from './notify.js';
import { closeInheritedDescriptors } from './proc.js';
import { UPGRADER_VERSION } from './version.js';


const HELP: Record<string, string> = {
  main: `upgrader ${UPGRADER_VERSION}: run an agent from a versioned layout and upgrade it in place with no downtime.

Usage:
  upgrader run --root <dir> [options]     supervise the agent in <dir> (what the init system starts)
  upgrader status --root <dir> [--json]   show what runs on <dir>
  upgrader --version | --help

Run "upgrader <command> --help" for a command's options.`,
  run: `Usage: upgrader run --root <dir> [options]

Starts the version that <dir>/current points at, supervises it, and performs the upgrades it asks for.
Exits when the agent exits on its own (with the agent's status) or on SIGTERM/SIGINT (status 0).

Options:
  --root <dir>             the root: holds versions/<version>/, current and state/ (required)
  --entry <path>           the agent's executable inside a version directory (default ${DEFAULT_ENTRY})
  --ready-timeout <time>   how long a candidate may take to report ready (default ${DEFAULTS.readyTimeout})
  --stop-timeout <time>    how long an agent told to stop may take to exit before SIGTERM;
                           also the grace after SIGTERM when the upgrader stops (default ${DEFAULTS.stopTimeout})
  --kill-timeout <time>    how long after SIGTERM a stopping old agent gets SIGKILL (default ${DEFAULTS.killTimeout})
  --probation <time>       a new version that exits this soon after go is rolled back (default ${DEFAULTS.probation};
                           0s turns probation off)
  --ready-on-spawn         the active agent does not send ready: count it ready once spawned
                           (candidates must still send ready)
Under systemd (Type=notify) it sends READY=1 once the agent is ready, STATUS= on every change,
STOPPING=1 when it stops, and WATCHDOG=1 when WatchdogSec= is set.
Times take a unit: 500ms, 30s, 5m, 1h.

Example:
  upgrader run --root /var/lib/upgrader/myagent --ready-timeout 1m`,
  status: `Usage: upgrader status --root <dir> [--json]

Shows the state, versions, agent, any handoff and the last upgrades of a root. Reads files only:
it takes no lock and answers even when the upgrader is stopped or hung.

Exit status: 0 an upgrader runs with a ready agent; 3 no upgrader runs on this root;
4 an upgrader runs but no agent is ready (starting, or its agent has not reported ready).

Example:
  upgrader status --root /var/lib/upgrader/myagent --json`,
};

type Values = Record<string, string | boolean | undefined>;

function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>): Values {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: false, strict: true }).values as Values;
  } catch (error) {
    throw new UpgraderError('E_USAGE', `${describeError(error).replace(/^ERR_PARSE_ARGS_\w+: /, '')} (see --help).`);
  }
}

function requireRoot(root: unknown): string {
  if (typeof root !== 'string' || root === '') throw new UpgraderError('E_USAGE', '--root <dir> is required (see --help).');
  return root;
}

async function run(args: string[]): Promise<number> {
  const v = parse(args, {
    root: { type: 'string' },
    entry: { type: 'string', default: DEFAULT_ENTRY },
    'ready-timeout': { type: 'string', default: DEFAULTS.readyTimeout },
    'stop-timeout': { type: 'string', default: DEFAULTS.stopTimeout },
    'kill-timeout': { type: 'string', default: DEFAULTS.killTimeout },
    probation: { type: 'string', default: DEFAULTS.probation },
    'ready-on-spawn': { type: 'boolean', default: false },
  });
  if (v.help) return help('run');
  const config = runConfig({
    readyTimeout: v['ready-timeout'] as string,
    stopTimeout: v['stop-timeout'] as string,
    killTimeout: v['kill-timeout'] as string,
    probation: v.probation as string,
  });
  const inherited = closeInheritedDescriptors();
  const layout = Layout.open(requireRoot(v.root), v.entry as string);
  const log = createLogger();
  if (inherited.length > 0) log.info({ fds: inherited }, 'closed descriptors inherited from the parent, so that agents do not get them');
  const ownership = await Ownership.acquire(layout.stateDir);
  const notifier = new SystemdNotifier(log);
  log.info({ root: layout.root, config, upgrader: UPGRADER_VERSION, systemd: notifier.enabled }, 'upgrader starting');
  let supervisor;
  try {
    supervisor = await startSupervisor({
      layout,
      stateFile: new StateFile(layout.stateDir),
      agentStatus: new AgentStatusFile(layout.stateDir),
      ownership,
      config,
      log,
      notifier,
      readyOnSpawn: v['ready-on-spawn'] === true,
    });
  } catch (error) {
    ownership.release();
    throw error;
  }
  notifier.startWatchdog();
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => supervisor.dispatch({ type: 'shutdown', signal }));
  }
  return supervisor.exited;
}

function status(args: string[]): number {
  const v = parse(args, { root: { type: 'string' }, json: { type: 'boolean', default: false } });
  if (v.help) return help('status');
  const report = readStatus(Layout.open(requireRoot(v.root)));
  process.stdout.write(v.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatStatus(report)}\n`);
  return statusExitCode(report);
}

function help(topic: keyof typeof HELP): number {
  process.stdout.write(`${HELP[topic]}\n`);
  return EXIT.ok;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'run':
      return run(rest);
    case 'status':
      return status(rest);
    case '--version':
    case '-v':
      process.stdout.write(`${UPGRADER_VERSION}\n`);
      return EXIT.ok;
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      return help('main');
    default:
      throw new UpgraderError('E_USAGE', `Unknown command ${JSON.stringify(command)}; the commands are run and status (see --help).`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    const known = error instanceof UpgraderError;
    process.stderr.write(`upgrader: ${known ? error.message : `unexpected error: ${describeError(error)}`}\n`);
    if (!known && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    process.exit(known ? error.exitCode : EXIT.internal);
  },
);
