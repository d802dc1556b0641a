/**
 * Vetting an upgrade request before it reaches the state machine, with what the machine cannot know:
 * whether the version can be launched, is quarantined, or is a jump its manifest forbids (an operator's
 * `--force` waives the last two, never the first), and whether its manifest makes the handoff sequential.
 */
import type { Event, Origin, Problem } from './handoff.js';
import { versionNameProblem, type Layout } from './layout.js';
import { jumpProblem, readManifest } from './manifest.js';
import type { HandoffMode } from './protocol.js';
import { Quarantine } from './quarantine.js';
import { exists } from './tree.js';

export type UpgradeRequest = { origin: Origin; id: number; version: string; mode: HandoffMode; force: boolean };

/** The machine's event for a request; `from` is the version the requester runs (null when no agent is active). */
export function vetUpgradeRequest(layout: Layout, request: UpgradeRequest, from: string | null): Extract<Event, { type: 'upgrade-requested' }> {
  const { version, force } = request;
  let problem = launchRefusal(layout, version);
  const read = problem === null ? readManifest(layout.versionDir(version)) : null;
  const manifest = read && 'manifest' in read ? read.manifest : {};
  if (problem === null && !force) {
    const quarantined = new Quarantine(layout.stateDir).get(version);
    if (quarantined) problem = { code: 'quarantined', reason: `${version} is quarantined since ${quarantined.at} (${quarantined.reason}); re-install it to try again` };
    else if (from) {
      const jump = jumpProblem(from, version, manifest);
      if (jump) problem = { code: 'jump-refused', reason: jump };
    }
  }
  const mode = manifest.sequential ? 'sequential' : request.mode;
  return { type: 'upgrade-requested', origin: request.origin, id: request.id, version, mode, problem, force, at: new Date().toISOString() };
}

function launchRefusal(layout: Layout, version: string): Problem | null {
  const name = versionNameProblem(version);
  if (name) return { code: 'invalid-version', reason: name };
  if (!exists(layout.versionDir(version))) return { code: 'missing', reason: `version ${version} is not installed (no ${layout.versionDir(version)})` };
  const problem = layout.launchProblem(version);
  return problem ? { code: 'unlaunchable', reason: problem } : null;
}
