#!/usr/bin/env -S node --max-semi-space-size=1 --no-turbofan --no-sparkplug
/**
 * The command line: `upgrader run` (the supervisor, started by the init system) and the operator's commands
 * (status, install, versions, prune, upgrade, rollback).
 * Errors become one sentence on stderr and a documented exit status (see errors.ts and the README).
 *
 * The node options of the first line keep a long-running upgrader's memory flat (issue 10; the figures are
 * in the README's benchmark section). They apply wherever this file or the bundle built from it is run as a
 * program: the npm bin, the systemd and upstart units. --max-semi-space-size=1 caps V8's young generation,
 * which otherwise grows to 32 MB over a few hundred handoffs and is never given back; --no-turbofan and
 * --no-sparkplug leave functions to the interpreter, whose speed an upgrader that mostly waits does not miss
 * (same CPU per handoff), while the compilers page in 4 MB of their code and keep more than that in
 * allocator arenas. A flag cannot be set from here instead: v8.setFlagsFromString comes after the heap is
 * sized, and has no effect on it (measured). env -S needs GNU coreutils 8.30 or a BSD env; where env has no
 * -S (busybox), run `node --max-semi-space-size=1 --no-turbofan --no-sparkplug <this file>`.
 */
import { userInfo } from 'node:os';
import { resolve } from 'node:path';
import { parse, requireRoot } from './args.js';
import { DEFAULTS, runConfig } from './config.js';
import { parseDuration } from './duration.js';
import { describeError, EXIT, UpgraderError } from './errors.js';
import { assertVersionName, DEFAULT_ENTRY, Layout } from './layout.js';
import { sendControlRequest, type ControlReply, type ControlRequest, type WaitUntil } from './control.js';
import { createLogger } from './log.js';
import { flushStderr, writeStderr } from './stderr.js';
import { Ownership } from './ownership.js';
import { formatHost, formatStatus, hostExitCode, readHost, readStatus, statusExitCode } from './status.js';
import { StateFile } from './state.js';
import { startSupervisor } from './recovery.js';
import type { Supervisor } from './supervisor.js';
import { actorFor, actorForNewRoot, refuseForeignRootForRun, runAsOwner } from './privilege.js';
import { planRoot } from './new-root.js';
import { SystemdNotifier } from './notify.js';
import { closeInheritedDescriptors } from './proc.js';
import { UPGRADER_VERSION } from './upgrader-version.js';


const HELP: Record<string, string> = {
  main: `upgrader ${UPGRADER_VERSION}: run an agent from a versioned layout and upgrade it in place with no downtime.

Usage:
  upgrader run --root <dir> [options]       supervise the agent in <dir> (what the init system starts)
  upgrader status [--root <dir>] [--json]   show what runs on <dir>, or on every root of this host
  upgrader install --root <dir> --version <v> <source>   stage a version from a directory or .tar.gz
                                            (into a new root: lay it out, point current at it)
  upgrader versions --root <dir> [--json]   list the installed versions
  upgrader prune --root <dir> --keep <n>    remove old versions
  upgrader upgrade --root <dir> --to <v>    ask the running upgrader for a handoff to <v>
  upgrader rollback --root <dir>            ask it for a handoff back to the previous version
  upgrader check <dir | .tar.gz>            prove an agent against protocol v1 in a scratch root
  upgrader halt --root <dir>                stop the agent and keep it stopped (upgrader run stays up)
  upgrader resume --root <dir>              start current again on a halted root
  upgrader follow --root <dir> --fleet <name>   follow a fleet's rollouts through etcd (beside run)
  upgrader fleet <command> --fleet <name>   publish, rollout, pause, resume, abort, rollback, status
  upgrader --version | -v | --help | -h

Run "upgrader <command> --help" (or -h) for a command's options.`,
  run: `Usage: upgrader run --root <dir> [options]

Starts the version that <dir>/current points at, supervises it, and performs the upgrades it asks for.
Exits when the agent exits on its own (with the agent's status; one from 64 to 78, which the upgrader
keeps for itself, becomes 79) or on SIGTERM, SIGINT or SIGHUP (status 0), after stopping the agents
gracefully: the active agent is told stop, as in a handoff, then SIGTERM after --stop-timeout, then
SIGKILL of its tree after --kill-timeout. SIGHUP is not a reload: it stops everything as SIGTERM does (under the shipped unit,
Restart=always then starts it again, with a restart's downtime). As root it runs only a root that root
alone can change (a root owned by another user: run it as that user; exit 78).

Options:
  --root <dir>             the root: holds versions/<version>/, current and state/ (required)
  --entry <path>           the agent's executable inside a version directory (default ${DEFAULT_ENTRY})
  --ready-timeout <time>   how long a candidate may take to report ready (default ${DEFAULTS.readyTimeout})
  --stop-timeout <time>    how long an agent told to stop (in a handoff, or when the upgrader itself
                           stops) may take to exit before SIGTERM (default ${DEFAULTS.stopTimeout})
  --kill-timeout <time>    how long after SIGTERM an agent's tree gets SIGKILL (default ${DEFAULTS.killTimeout})
  --probation <time>       a new version that exits this soon after go is rolled back (default ${DEFAULTS.probation};
                           0s turns probation off)
  --ready-on-spawn         the active agent does not send ready: count it ready once spawned
                           (candidates must still send ready)
Under systemd (Type=notify) it sends READY=1 once the agent is ready, STATUS= on every change,
STOPPING=1 when it stops, and WATCHDOG=1 when WatchdogSec= is set.
Times take a unit: 500ms, 30s, 5m, 1h.

Example:
  upgrader run --root /var/lib/upgrader/myagent --ready-timeout 1m`,
  status: `Usage: upgrader status [--root <dir> | --base <dir>] [--json]

With --root: the state, versions, agent, any handoff and the last upgrades of that root.
Without: one line per root under the base directory (--base, else $UPGRADER_BASE, else
/var/lib/upgrader): name, state, version, agent PID, uptime, last upgrade; --json prints a list.
A root this user may not read is shown as unreadable, one that cannot start as it is (malformed,
or current unusable with no upgrader running) as broken, each with the reason.
Reads files only: it takes no lock and answers even when an upgrader is stopped or hung, and it
never follows a link or opens anything but a regular file in a root.

Exit status: 0 an upgrader runs with a ready agent (on every root); 3 no upgrader runs on the root
(on some root), or there is no root under the base; 4 an upgrader runs but no agent is ready;
5 the root (some root) is broken or unreadable, which takes precedence; 64 bad arguments; 77 not
allowed to reach --root at all; 78 --root does not exist or has no versions/.

Examples:
  upgrader status --root /var/lib/upgrader/myagent --json
  upgrader status`,
  install: `Usage: upgrader install --root <dir> --version <v> [--sha256 <hex>] [--entry <path>] [--check] [--json] <source>

Puts a version in place: <source> is a directory or a .tar.gz/.tgz archive. It is assembled under a
temporary name in versions/, checked (nothing may lead outside it; the entry point must be executable),
fsynced, then renamed to versions/<v> in one step. Installing a name that exists is refused unless the
content is identical. --sha256 checks the archive before anything is unpacked. Installing a quarantined
version (identical content is enough) lifts its quarantine, and says so. --json prints the outcome as
one object (version, path, identical, liftedQuarantine, createdRoot, madeCurrent).

A first install makes the root: a --root that does not exist (its parent must) or is an empty directory
gets versions/ and state/ (mode 0755 less the umask), and a root with no current at all, where nothing
has run yet, gets current pointed at the version, so that "upgrader run" starts it. A current that
exists, even broken, is left for "upgrader run" to repair; a root with current is only staged into.

--check first runs upgrader check on the version (in a scratch root, with the default timeouts, its lines
on stderr): a version that fails a check is refused, and nothing is staged in the root.

Exit status: 0 installed (or already identical); 1 it failed upgrader check (--check); 64 bad arguments; 65 checksum mismatch, an archive
that cannot be unpacked, or an entry or link that would escape; 73 the version exists with other
content; 74 a full disk or I/O error; 75 another command holds the layout; 77 not allowed (as root:
also a new root whose parent another user could change); 78 no entry point, a new root whose parent is
missing, or a non-empty directory without versions/. As root on a root another user owns (an empty one
included), it runs as that user.

Examples:
  upgrader install --root /var/lib/upgrader/myagent --version 1.4.0 --sha256 9f86d0... agent-1.4.0.tgz
  upgrader install --root /var/lib/upgrader/newagent --version 1.0.0 ./build   # a first deployment`,
  versions: `Usage: upgrader versions --root <dir> [--json]

Lists the installed versions, newest first, with their markers (current, previous, running, candidate,
retiring, quarantined), install time and size. Newest means by semantic version when every name is one;
otherwise by install time: the ctime of versions/<v>, set when install renamed it into place (ties by
name), which a later chmod, chown or rename of that directory changes.

Example:
  upgrader versions --root /var/lib/upgrader/myagent --json`,
  upgrade: `Usage: upgrader upgrade --root <dir> --to <v> [--force] [--wait done|probation | --no-wait] [--json]

Asks the upgrader running on <dir> for the same handoff an agent would ask for (live, or sequential
if the version's manifest says so), over its operator channel (state/control/sock, reachable only by
the root's owner and root). Prints each step as it happens.
--wait done (the default) returns once <v> has been told go and that is recorded; --wait probation
once <v> has also passed its probation (1 if it was rolled back); --no-wait once the handoff is accepted.
--force overrides the version's quarantine and its manifest's upgradeFrom (never a missing or broken
version). A refusal prints its reason and its code (docs/protocol.md, "Refusal codes").

Exit status: 0 done (as far as asked to wait); 1 refused, failed or rolled back, with the reason;
3 no upgrader runs on <dir>; 64 bad arguments; 77 not allowed to reach its channel.

Example:
  upgrader upgrade --root /var/lib/upgrader/myagent --to 1.4.0`,
  rollback: `Usage: upgrader rollback --root <dir> [--force] [--wait done|probation | --no-wait] [--json]

A handoff back to the previous version (the one before current), performed like any other: live
unless that version's manifest says sequential, and subject to its upgradeFrom (--force waives it).
Options and exit status as for upgrade.

Example:
  upgrader rollback --root /var/lib/upgrader/myagent`,
  check: `Usage: upgrader check [--entry <path>] [--ready-timeout 30s] [--stop-timeout 30s] [--json] <dir | .tar.gz>

Proves an agent against protocol v1 before it meets a live root: installs the version into a scratch
root of its own (removed after) and runs it in the roles the upgrader gives it, one line per check:
as active (starts; says ready, optionally; exits within 5 s once its stdin is closed, with no process
left behind), as candidate (ready within --ready-timeout; nothing but ready and status before go; keeps
running after go), told stop (stopped, then exit within --stop-timeout; nothing but status after it),
a live handoff from the agent to itself, upgrade-failed (it must not exit), SIGTERM (it must exit), and
its stdout (every line a protocol v1 message; its upgrade requests well-formed). It takes about as long
as the agent's start-up and stop, a few times over.

Exit status: 0 every check passed (warnings allowed); 1 a check failed; 64 bad arguments; 65 an archive
that cannot be unpacked; 78 no entry point.

Example:
  upgrader check ./build --ready-timeout 10s      # in the agent's own CI, on every build`,
  halt: `Usage: upgrader halt --root <dir> [--by <who>] [--json]

Stops the active agent through the protocol (stop, then SIGTERM after the run's stop timeout, then SIGKILL
of its tree after its kill timeout) and keeps it stopped: upgrader run stays up with no agent, in state halted,
and a restart of it (kill -9, reboot, systemctl restart) comes back halted and starts nothing. Returns
once the agent has exited. Halting a halted root succeeds at once. The way out: upgrader resume (start
current again) or upgrader upgrade to a version (started directly; if it fails, the root stays halted).
--by names who asks (default: the user), shown by status.

Exit status: 0 halted; 1 refused (a handoff is in progress, or nothing runs), with the reason;
3 no upgrader runs on <dir>; 64 bad arguments; 77 not allowed to reach its channel.

Example:
  upgrader halt --root /var/lib/upgrader/myagent --by "schema migration 42"`,
  resume: `Usage: upgrader resume --root <dir> [--json]

Lifts a halt: the version current names starts again as the active agent (no candidate, no go: it
simply runs, as after a restart). Refused unless the root is halted.

Exit status: 0 resumed; 1 refused (not halted, or still halting); 3 no upgrader runs on <dir>;
64 bad arguments; 77 not allowed to reach its channel.

Example:
  upgrader resume --root /var/lib/upgrader/myagent`,
  prune: `Usage: upgrader prune --root <dir> --keep <n> [--dry-run] [--json]

Keeps the newest <n> versions that are not quarantined and removes the others (a quarantined version
takes no slot), never one in use: what current's link, the state file (current, previous, an open
handoff, probation, recorded agents) and the root's live agents name. Holds the layout
(state/layout.holder) while it works, so it cannot race an install; a version that a handoff takes up
while prune runs is kept. As root on a root another user owns, it runs as that user.

Exit status: 0 done; 64 bad arguments; 75 another command holds the layout (waited 15 s); 77 not
allowed, or root refuses to remove what another user could change; 78 the state file cannot be read.

Example:
  upgrader prune --root /var/lib/upgrader/myagent --keep 3 --dry-run`,
};

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
  // From here on a signal never kills the upgrader outright: it stops what has started, then exits 0.
  let stopSignal: NodeJS.Signals | null = null;
  let supervisor: Supervisor | undefined;
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      stopSignal ??= signal;
      supervisor?.dispatch({ type: 'shutdown', signal });
    });
  }
  const layout = Layout.open(requireRoot(v.root), v.entry as string);
  refuseForeignRootForRun(layout.root);
  if (stopSignal) return EXIT.ok;
  const log = createLogger();
  if (inherited.length > 0) log.info({ fds: inherited }, 'closed descriptors inherited from the parent, so that agents do not get them');
  const ownership = await Ownership.acquire(layout.stateDir, (message, fields) => log.warn(fields, message));
  const notifier = new SystemdNotifier(log);
  log.info({ root: layout.root, config, upgrader: UPGRADER_VERSION, systemd: notifier.enabled }, 'upgrader starting');
  // A bug must not leave agents running unsupervised, nor exit with a status an agent could have chosen.
  const die = (error: unknown) => {
    log.fatal({ err: describeError(error), stack: error instanceof Error ? error.stack : undefined }, 'internal error: killing the agents and exiting 70');
    supervisor?.killAllNow();
    ownership.release();
    exit(EXIT.internal);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
  if (stopSignal) {
    ownership.release();
    return EXIT.ok;
  }
  try {
    supervisor = await startSupervisor({
      layout,
      stateFile: new StateFile(layout.stateDir),
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
  if (stopSignal) supervisor.dispatch({ type: 'shutdown', signal: stopSignal });
  return supervisor.exited;
}

const useColour = () => Boolean(process.stdout.isTTY) && process.env.NO_COLOR === undefined;
const printJson = (value: unknown) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);

function status(args: string[]): number {
  const v = parse(args, { root: { type: 'string' }, base: { type: 'string' }, json: { type: 'boolean', default: false } });
  if (v.help) return help('status');
  if (v.root === undefined) {
    const base = (v.base as string | undefined) ?? process.env.UPGRADER_BASE ?? '/var/lib/upgrader';
    const reports = readHost(base);
    if (v.json) printJson(reports);
    else process.stdout.write(`${formatHost(reports, base, useColour())}\n`);
    if (v.json && reports.length === 0) process.stderr.write(`upgrader: no roots under ${base}.\n`);
    return hostExitCode(reports);
  }
  const report = readStatus(Layout.open(requireRoot(v.root)));
  if (v.json) printJson(report);
  else process.stdout.write(`${formatStatus(report)}\n`);
  return statusExitCode(report);
}

async function install(args: string[]): Promise<number> {
  const v = parse(args, { root: { type: 'string' }, version: { type: 'string' }, sha256: { type: 'string' }, entry: { type: 'string' }, check: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } }, ['source']);
  if (v.help) return help('install');
  if (typeof v.version !== 'string') throw new UpgraderError('E_USAGE', '--version <v> is required (see --help).');
  if (typeof v.source !== 'string') throw new UpgraderError('E_USAGE', 'The source (a directory or a .tar.gz archive) is required (see --help).');
  const progress = process.stderr.isTTY
    ? (done: number, total: number) => process.stderr.write(`\runpacking ${Math.floor((done / total) * 100)}%`)
    : undefined;
  // The root is resolved once: what was checked is what is worked on (a link flipped meanwhile changes nothing).
  // A root that is missing or empty is laid out by the install, as whoever may create it there.
  const plan = planRoot(requireRoot(v.root));
  const root = plan.root;
  const source = resolve(v.source);
  const actor = plan.create === 'root' ? actorForNewRoot(root) : actorFor(root);
  if (actor.kind === 'owner') {
    const options = Object.entries({ '--sha256': v.sha256, '--entry': v.entry }).flatMap(([flag, value]) => (typeof value === 'string' ? [flag, value] : []));
    return runAsOwner(actor, ['install', '--root', root, '--version', v.version, ...options, ...(v.check ? ['--check'] : []), ...(v.json ? ['--json'] : []), source]);
  }
  if (v.check) await refuseUnlessChecked(source, (v.entry as string | undefined) ?? DEFAULT_ENTRY, v.sha256 as string | undefined);
  const { describeInstall, installVersion } = await import('./install.js');
  const result = await installVersion({
    root,
    version: v.version,
    source,
    sha256: v.sha256 as string | undefined,
    entry: (v.entry as string | undefined) ?? DEFAULT_ENTRY,
    onProgress: progress,
  });
  if (progress) process.stderr.write('\n');
  if (v.json) printJson(result);
  else process.stdout.write(`${describeInstall(result)}\n`);
  return EXIT.ok;
}

async function versions(args: string[]): Promise<number> {
  const v = parse(args, { root: { type: 'string' }, json: { type: 'boolean', default: false } });
  if (v.help) return help('versions');
  const layout = Layout.open(requireRoot(v.root));
  const actor = actorFor(layout.root);
  if (actor.kind === 'owner') return runAsOwner(actor, ['versions', ...args, '--root', layout.root]);
  const { listVersions } = await import('./versions.js');
  const list = listVersions(layout);
  if (v.json) printJson(list);
  else {
    for (const info of list) {
      const markers = info.markers.length ? ` [${info.markers.join(', ')}]` : '';
      const broken = info.problem ? `  (incomplete: ${info.problem})` : '';
      process.stdout.write(`${info.version.padEnd(20)} ${info.installedAt}  ${formatBytes(info.sizeBytes).padStart(9)}${markers}${broken}\n`);
    }
  }
  return EXIT.ok;
}

async function prune(args: string[]): Promise<number> {
  const v = parse(args, { root: { type: 'string' }, keep: { type: 'string' }, 'dry-run': { type: 'boolean', default: false }, json: { type: 'boolean', default: false } });
  if (v.help) return help('prune');
  const keep = Number(v.keep);
  if (typeof v.keep !== 'string' || !Number.isInteger(keep) || keep < 0) throw new UpgraderError('E_USAGE', `--keep must be a whole number of versions, not ${JSON.stringify(v.keep ?? '')}.`);
  const layout = Layout.open(requireRoot(v.root));
  const actor = actorFor(layout.root);
  if (actor.kind === 'owner') return runAsOwner(actor, ['prune', ...args, '--root', layout.root]);
  const { pruneVersions } = await import('./versions.js');
  const result = await pruneVersions(layout, keep, v['dry-run'] === true);
  if (v.json) printJson(result);
  else {
    const verb = result.dryRun ? 'would remove' : 'removed';
    process.stdout.write(result.removed.length ? `${verb} ${result.removed.join(', ')}\n` : 'nothing to remove\n');
    for (const kept of result.kept) process.stdout.write(`kept ${kept.version} (${kept.why})\n`);
  }
  return EXIT.ok;
}

async function operatorHandoff(command: 'upgrade' | 'rollback', args: string[]): Promise<number> {
  const options = {
    root: { type: 'string' },
    force: { type: 'boolean', default: false },
    wait: { type: 'string' },
    'no-wait': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  } as const;
  const v = parse(args, command === 'upgrade' ? { ...options, to: { type: 'string' } } : options);
  if (v.help) return help(command);
  const layout = Layout.open(requireRoot(v.root));
  // As root on another user's root, the socket is reached as that user: root never connects to a path the
  // owner could have replaced with a link to another socket.
  const actor = actorFor(layout.root);
  if (actor.kind === 'owner') return runAsOwner(actor, [command, ...args, '--root', layout.root]);
  const until = waitUntil(v.wait as string | undefined, v['no-wait'] === true);
  // `wait` for an upgrader of the first version, which knows no `until`.
  const common = { force: v.force === true, wait: until !== 'accepted', until };
  let request: ControlRequest;
  if (command === 'upgrade') {
    if (typeof v.to !== 'string') throw new UpgraderError('E_USAGE', '--to <version> is required (see --help).');
    assertVersionName(v.to);
    request = { type: 'upgrade', version: v.to, ...common };
  } else {
    request = { type: 'rollback', ...common };
  }
  const last = await talkToUpgrader(layout, request, v.json === true, (reply) => {
    if (reply.type === 'succeeded') return `done: ${reply.version} is running${until === 'probation' && reply.probation ? '; waiting for its probation to end' : ''}`;
    if (reply.type === 'passed') return `passed: ${reply.version} has passed its probation`;
    return null;
  });
  if (typeof last === 'number') return last;
  return reachedGoal(last, until) ? EXIT.ok : EXIT.refused;
}

/** `install --check`: the agent proved against the protocol in a scratch root before anything is staged in the real one. */
async function refuseUnlessChecked(source: string, entry: string, sha256: string | undefined): Promise<void> {
  const { checkAgent, formatChecks } = await import('./check.js');
  // The digest is checked before the scratch install unpacks anything, as it is for the real one.
  const results = await checkAgent({ source, entry, sha256, readyMs: parseDuration(DEFAULTS.readyTimeout, 'ready'), stopMs: parseDuration(DEFAULTS.stopTimeout, 'stop') });
  process.stderr.write(`${formatChecks(results)}\n`);
  const failed = results.find((r) => r.status === 'failed');
  if (failed) throw new UpgraderError('E_REFUSED', `The version fails upgrader check (${failed.check}: ${failed.detail}); nothing was installed.`);
}

async function check(args: string[]): Promise<number> {
  const v = parse(args, { entry: { type: 'string' }, 'ready-timeout': { type: 'string', default: '30s' }, 'stop-timeout': { type: 'string', default: '30s' }, json: { type: 'boolean', default: false } }, ['source']);
  if (v.help) return help('check');
  if (typeof v.source !== 'string') throw new UpgraderError('E_USAGE', 'The agent to check (a version directory or a .tar.gz archive) is required (see --help).');
  const readyMs = parseDuration(v['ready-timeout'] as string, '--ready-timeout');
  const stopMs = parseDuration(v['stop-timeout'] as string, '--stop-timeout');
  const { checkAgent, formatChecks } = await import('./check.js');
  const results = await checkAgent({ source: resolve(v.source), entry: (v.entry as string | undefined) ?? DEFAULT_ENTRY, readyMs, stopMs });
  const failed = results.some((r) => r.status === 'failed');
  if (v.json) printJson({ passed: !failed, checks: results });
  else process.stdout.write(`${formatChecks(results)}\n${failed ? 'FAILED: the agent breaks protocol v1 (see the FAIL lines)' : 'passed: the agent keeps protocol v1'}\n`);
  return failed ? EXIT.refused : EXIT.ok;
}

/** `upgrader halt` and `upgrader resume`: one request, one answer. */
async function haltOrResume(command: 'halt' | 'resume', args: string[]): Promise<number> {
  const v = parse(args, command === 'halt' ? { root: { type: 'string' }, by: { type: 'string' }, json: { type: 'boolean', default: false } } : { root: { type: 'string' }, json: { type: 'boolean', default: false } });
  if (v.help) return help(command);
  const layout = Layout.open(requireRoot(v.root));
  const actor = actorFor(layout.root);
  if (actor.kind === 'owner') return runAsOwner(actor, [command, ...args, '--root', layout.root]);
  let request: ControlRequest = { type: 'resume' };
  if (command === 'halt') {
    const by = typeof v.by === 'string' ? v.by : (process.env.SUDO_USER ?? userInfo().username);
    if (by.length === 0 || by.length > 256) throw new UpgraderError('E_USAGE', `--by must be 1 to 256 characters, not ${by.length}.`);
    request = { type: 'halt', by };
  }
  const last = await talkToUpgrader(layout, request, v.json === true, (reply) => {
    if (reply.type === 'halted') return `halted: ${reply.version} is stopped, since ${reply.since}; upgrader resume or upgrade starts an agent again`;
    if (reply.type === 'resumed') return `resumed: ${reply.version} is running again`;
    return null;
  });
  if (typeof last === 'number') return last;
  return last.type === (command === 'halt' ? 'halted' : 'resumed') ? EXIT.ok : EXIT.refused;
}

/**
 * Sends one request over the operator channel and prints each reply (as JSON lines with --json): the
 * last reply, or the exit status when nothing answered. `describe` words the replies particular to the command.
 */
async function talkToUpgrader(layout: Layout, request: ControlRequest, json: boolean, describe: (reply: ControlReply) => string | null): Promise<ControlReply | number> {
  const outcome = await sendControlRequest(layout.stateDir, request, (reply) => {
    if (json) return void process.stdout.write(`${JSON.stringify(reply)}\n`);
    const text = describe(reply);
    if (text !== null) process.stdout.write(`${text}\n`);
    else if (reply.type === 'step') process.stdout.write(`  ${reply.text}\n`);
    else if (reply.type === 'accepted') process.stdout.write(`accepted: handoff to ${reply.version}\n`);
    else if (reply.type === 'failed') process.stdout.write(`failed${reply.version ? ` (${reply.version})` : ''}: ${reply.reason}${reply.code ? ` [${reply.code}]` : ''}\n`);
  });
  if (outcome.kind === 'reply') return outcome.reply;
  if (outcome.code === 'EACCES' || outcome.code === 'EPERM') {
    throw new UpgraderError('E_PERMISSION', `Not allowed to reach the upgrader of ${layout.root}: its operator channel is for the root's owner and root only.`);
  }
  process.stderr.write(`upgrader: No upgrader runs on ${layout.root} (its operator channel answers ${outcome.code}).\n`);
  return EXIT.notRunning;
}

/** --wait done (the default) | probation; --no-wait is --wait accepted. */
function waitUntil(wait: string | undefined, noWait: boolean): WaitUntil {
  if (noWait && wait !== undefined) throw new UpgraderError('E_USAGE', '--wait and --no-wait cannot be used together.');
  if (noWait) return 'accepted';
  if (wait === undefined || wait === 'done') return 'succeeded';
  if (wait === 'probation') return 'probation';
  throw new UpgraderError('E_USAGE', `--wait takes "done" or "probation", not ${JSON.stringify(wait)}.`);
}

/** Whether the conversation ended where the operator asked to wait. */
function reachedGoal(last: ControlReply, until: WaitUntil): boolean {
  if (until === 'accepted') return last.type === 'accepted';
  if (until === 'probation') return last.type === 'passed';
  return last.type === 'succeeded';
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
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
    case 'install':
      return install(rest);
    case 'versions':
      return versions(rest);
    case 'prune':
      return prune(rest);
    case 'check':
      return check(rest);
    case 'halt':
    case 'resume':
      return haltOrResume(command, rest);
    case 'upgrade':
    case 'rollback':
      return operatorHandoff(command, rest);
    case 'follow':
    case 'fleet': {
      // On demand: the fleet brings the etcd client, which `run` must never load.
      const { fleetMain } = await import('./fleet/cli.js');
      return fleetMain(command, rest);
    }
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
      throw new UpgraderError('E_USAGE', `Unknown command ${JSON.stringify(command)}; the commands are run, status, install, versions, prune, upgrade, rollback, check, halt, resume, follow and fleet (see --help).`);
  }
}

/** How long an exiting upgrader waits for a stalled stderr to take its last lines. */
const EXIT_FLUSH_MS = 500;

function exit(code: number): void {
  void flushStderr(EXIT_FLUSH_MS).then(() => process.exit(code));
}

main(process.argv.slice(2)).then(exit, (error: unknown) => {
  const known = UpgraderError.from(error);
  writeStderr(Buffer.from(`upgrader: ${known ? known.message : `unexpected error: ${describeError(error)}`}\n`));
  if (!known && error instanceof Error && error.stack) writeStderr(Buffer.from(`${error.stack}\n`));
  exit(known ? known.exitCode : EXIT.internal);
});
