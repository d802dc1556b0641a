/**
 * The follower's only ways into its host's upgrader: what `upgrader status` reads, `installVersion`, and
 * the operator channel. Nothing here needs `upgrader run` to know about the fleet, and the agent needs no
 * change. `LocalUpgrader` is the seam the fleet benchmark replaces with a stand-in.
 */
import { isAbsolute, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sendControlRequest, type ControlReply } from '../control.js';
import { FleetError } from './errors.js';
import { Layout } from '../layout.js';
import { readStatus } from '../status.js';
import type { Release } from './schema.js';

export type LocalView = {
  /** status.ts' state, or `not-running` when no upgrader owns the root. */
  upgrader: string;
  running: string | null;
  current: string | null;
  previous: string | null;
  /** A handoff or a probation is under way. */
  busy: boolean;
  /** Who halted the root (`upgrader halt --by`), while a halt is on record; null otherwise. */
  haltedBy: string | null;
  lastUpgrade: { from: string; to: string; result: string; reason: string | null; code: string | null; at: string } | null;
};

export type UpgradePhase = 'upgrading' | 'watching';
export type UpgradeOutcome = { ok: true } | { ok: false; reason: string; code: string | null; transient: boolean };
export type Progress = { bytes: number; total: number | null };

export interface LocalUpgrader {
  readonly root: string;
  view(): LocalView;
  /** Whether `version` is installed and could be launched (a rollback's target usually is: no download). */
  installed(version: string): boolean;
  /** Downloads, verifies and installs the release (no switch); nothing when it is installed already. */
  stage(release: Release, onProgress: (p: Progress) => void, signal: AbortSignal): Promise<void>;
  /** Asks for a handoff to `version` and waits until its probation has passed or the handoff failed. */
  upgrade(version: string, onPhase: (phase: UpgradePhase) => void, signal: AbortSignal): Promise<UpgradeOutcome>;
  /** Resolves once no handoff or probation is under way (after a follower restart in the middle of one). */
  settle(signal: AbortSignal): Promise<void>;
  /** `upgrader halt`: the agent stopped, and kept stopped; ok once it has exited (or was halted already). */
  halt(by: string, signal: AbortSignal): Promise<UpgradeOutcome>;
  /** `upgrader resume`: `current` started again on a halted root. */
  resume(signal: AbortSignal): Promise<UpgradeOutcome>;
}

/** Refusals that say "not now" rather than "no": the follower waits and asks again. */
const TRANSIENT = new Set(['busy', 'in-progress', 'not-running', 'interrupted']);

export type StageLimits = { maxBytes: number; timeoutMs: number; attempts: number };

/**
 * Whether a release's artifact comes from where this host accepts them (`--artifacts`): a URL under one of
 * the URL prefixes, or a file inside one of the directories. Whoever can write etcd chooses the artifact
 * and its digest together, so the digest alone proves nothing about who built it: this list is the
 * host's own word on that.
 */
export function artifactAllowed(source: string, allowed: string[]): boolean {
  const asPath = source.startsWith('file://') ? safeFileUrlPath(source) : source.startsWith('/') ? source : null;
  for (const prefix of allowed) {
    if (/^https?:\/\//.test(prefix)) {
      if (asPath === null && source.startsWith(prefix)) return true;
    } else if (asPath !== null) {
      const inside = relative(resolve(prefix), resolve(asPath));
      if (inside !== '' && !inside.startsWith('..') && !isAbsolute(inside)) return true;
    }
  }
  return false;
}

function safeFileUrlPath(url: string): string | null {
  try {
    return fileURLToPath(url);
  } catch {
    return null;
  }
}

export class RootUpgrader implements LocalUpgrader {
  private readonly layout: Layout;
  constructor(
    readonly root: string,
    private readonly limits: StageLimits,
    private readonly artifacts: string[],
    private readonly settlePollMs = 500,
  ) {
    this.layout = Layout.open(root);
  }

  view(): LocalView {
    const s = readStatus(this.layout);
    const last = s.lastUpgrade;
    return {
      upgrader: s.running ? s.state : s.state === 'broken' || s.state === 'unreadable' ? s.state : 'not-running',
      running: s.agent?.version ?? null,
      current: s.current,
      previous: s.previous,
      busy: s.handoff !== null || s.probation !== null,
      haltedBy: s.halt?.by ?? null,
      lastUpgrade: last ? { from: last.from, to: last.to, result: last.result, reason: last.reason, code: last.code, at: last.at } : null,
    };
  }

  installed(version: string): boolean {
    return this.layout.launchProblem(version) === null;
  }

  async stage(release: Release, onProgress: (p: Progress) => void, signal: AbortSignal): Promise<void> {
    if (!artifactAllowed(release.artifact, this.artifacts)) {
      throw new FleetError('bad-source', `The artifact of release ${release.version} is not under this host's --artifacts (${this.artifacts.join(', ')}); refused without fetching it.`);
    }
    const { stageRelease } = await import('./artifact.js');
    await stageRelease({ root: this.root, version: release.version, source: release.artifact, sha256: release.sha256, ...this.limits, onProgress, signal });
  }

  async upgrade(version: string, onPhase: (phase: UpgradePhase) => void, signal: AbortSignal): Promise<UpgradeOutcome> {
    let last: ControlReply | null = null;
    const request = { type: 'upgrade' as const, version, force: false, wait: true, until: 'probation' as const };
    const outcome = await sendControlRequest(this.layout.stateDir, request, (reply) => {
      last = reply;
      if (reply.type === 'accepted') onPhase('upgrading');
      if (reply.type === 'succeeded') onPhase('watching');
    }, signal);
    if (outcome.kind === 'unreachable') {
      const why = outcome.code === 'ETIMEDOUT' ? 'did not finish the handoff in time (or this follower is stopping)' : `does not answer (${outcome.code})`;
      return { ok: false, reason: `the upgrader of ${this.root} ${why}`, code: 'not-running', transient: true };
    }
    const reply = outcome.reply;
    if (reply.type === 'passed') return { ok: true };
    if (reply.type === 'failed') return { ok: false, reason: reply.reason, code: reply.code ?? null, transient: TRANSIENT.has(reply.code ?? '') };
    // The channel closed before the end (the upgrader stopped): the outcome is read back on the next pass.
    return { ok: false, reason: `the upgrader of ${this.root} stopped answering after "${(last as ControlReply | null)?.type ?? 'nothing'}"`, code: 'interrupted', transient: true };
  }

  halt(by: string, signal: AbortSignal): Promise<UpgradeOutcome> {
    return this.ask({ type: 'halt', by }, 'halted', signal);
  }

  resume(signal: AbortSignal): Promise<UpgradeOutcome> {
    return this.ask({ type: 'resume' }, 'resumed', signal);
  }

  /** One halt or resume request; `not-halted` to a resume means someone resumed it already, which is what was asked. */
  private async ask(request: { type: 'halt'; by: string } | { type: 'resume' }, goal: 'halted' | 'resumed', signal: AbortSignal): Promise<UpgradeOutcome> {
    const outcome = await sendControlRequest(this.layout.stateDir, request, () => undefined, signal);
    if (outcome.kind === 'unreachable') return { ok: false, reason: `the upgrader of ${this.root} does not answer (${outcome.code})`, code: 'not-running', transient: true };
    const reply = outcome.reply;
    if (reply.type === goal) return { ok: true };
    if (reply.type === 'failed' && goal === 'resumed' && reply.code === 'not-halted' && this.view().running !== null) return { ok: true };
    const reason = reply.type === 'failed' ? reply.reason : `unexpected reply ${reply.type}`;
    const code = reply.type === 'failed' ? (reply.code ?? null) : null;
    return { ok: false, reason, code, transient: TRANSIENT.has(code ?? '') };
  }

  async settle(signal: AbortSignal): Promise<void> {
    // The status files are the only record of a handoff this process did not ask for; a local read, cheap.
    while (!signal.aborted && this.view().busy) await new Promise((r) => setTimeout(r, this.settlePollMs));
  }
}
