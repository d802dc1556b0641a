/**
 * The follower's only ways into its host's upgrader: what `upgrader status` reads, `installVersion`, and
 * the operator channel. Nothing here needs `upgrader run` to know about the fleet, and the agent needs no
 * change. `LocalUpgrader` is the seam the fleet benchmark replaces with a stand-in.
 */
import { sendControlRequest, type ControlReply } from '../control.js';
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
  upgrade(version: string, onPhase: (phase: UpgradePhase) => void): Promise<UpgradeOutcome>;
  /** Resolves once no handoff or probation is under way (after a follower restart in the middle of one). */
  settle(signal: AbortSignal): Promise<void>;
}

/** Refusals that say "not now" rather than "no": the follower waits and asks again. */
const TRANSIENT = new Set(['busy', 'in-progress', 'not-running', 'interrupted']);

export type StageLimits = { maxBytes: number; timeoutMs: number; attempts: number };

export class RootUpgrader implements LocalUpgrader {
  private readonly layout: Layout;
  constructor(
    readonly root: string,
    private readonly limits: StageLimits,
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
      lastUpgrade: last ? { from: last.from, to: last.to, result: last.result, reason: last.reason, code: last.code, at: last.at } : null,
    };
  }

  installed(version: string): boolean {
    return this.layout.launchProblem(version) === null;
  }

  async stage(release: Release, onProgress: (p: Progress) => void, signal: AbortSignal): Promise<void> {
    const { stageRelease } = await import('./artifact.js');
    await stageRelease({ root: this.root, version: release.version, source: release.artifact, sha256: release.sha256, ...this.limits, onProgress, signal });
  }

  async upgrade(version: string, onPhase: (phase: UpgradePhase) => void): Promise<UpgradeOutcome> {
    let last: ControlReply | null = null;
    const outcome = await sendControlRequest(this.layout.stateDir, { type: 'upgrade', version, force: false, wait: true, until: 'probation' }, (reply) => {
      last = reply;
      if (reply.type === 'accepted') onPhase('upgrading');
      if (reply.type === 'succeeded') onPhase('watching');
    });
    if (outcome.kind === 'unreachable') return { ok: false, reason: `the upgrader of ${this.root} does not answer (${outcome.code})`, code: 'not-running', transient: true };
    const reply = outcome.reply;
    if (reply.type === 'passed') return { ok: true };
    if (reply.type === 'failed') return { ok: false, reason: reply.reason, code: reply.code ?? null, transient: TRANSIENT.has(reply.code ?? '') };
    // The channel closed before the end (the upgrader stopped): the outcome is read back on the next pass.
    return { ok: false, reason: `the upgrader of ${this.root} stopped answering after "${(last as ControlReply | null)?.type ?? 'nothing'}"`, code: 'interrupted', transient: true };
  }

  async settle(signal: AbortSignal): Promise<void> {
    // The status files are the only record of a handoff this process did not ask for; a local read, cheap.
    while (!signal.aborted && this.view().busy) await new Promise((r) => setTimeout(r, this.settlePollMs));
  }
}
