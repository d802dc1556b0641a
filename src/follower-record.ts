/**
 * <root>/state/follower.json: which `upgrader follow` follows this root, for which fleet, and whether it
 * reaches etcd. The follower claims it (one follower per root, as one upgrader per root) and rewrites it
 * when etcd's reachability changes; `upgrader status` shows it, so that a host cut off from its fleet says
 * so on the host itself, where the fleet's records cannot. Core code: it loads no etcd client.
 */
import { z } from 'zod';
import { replaceFileAtomically } from './durable.js';
import { UpgraderError } from './errors.js';
import { isSameProcessAlive, ProcessIdentity } from './proc.js';
import { claim, readClaim, recordPath, releaseClaim, selfIdentity, type ClaimSpec } from './process-claim.js';

export const FollowerRecord = ProcessIdentity.extend({
  fleet: z.string().max(256),
  host: z.string().max(256),
  group: z.string().max(256),
  etcd: z.enum(['connecting', 'reachable', 'unreachable']),
  since: z.string().datetime(),
  error: z.string().max(2048).nullable(),
});
export type FollowerRecord = z.infer<typeof FollowerRecord>;
export type FollowerFacts = Omit<FollowerRecord, keyof ProcessIdentity>;

const spec = (stateDir: string): ClaimSpec<FollowerRecord> => ({
  stateDir,
  record: 'follower.json',
  lock: 'follower.lock',
  schema: FollowerRecord,
  stale: 10_000,
  retries: { retries: 5, minTimeout: 50, maxTimeout: 500 },
});

/** Claims the root for this follower; refused (E_LOCKED, exit 75) while another live follower holds it. */
export async function claimFollower(stateDir: string, facts: FollowerFacts): Promise<void> {
  const holder = await claim(spec(stateDir), facts);
  if (holder) throw new UpgraderError('E_LOCKED', `Another follower (PID ${holder.pid}, fleet ${holder.fleet}, host ${holder.host}) already follows this root; stop it first.`);
}

/** Rewrites this follower's record (it holds the claim, so nobody else writes it); informative, not fsynced. */
export function updateFollower(stateDir: string, facts: FollowerFacts): void {
  replaceFileAtomically(recordPath(spec(stateDir)), `${JSON.stringify({ ...selfIdentity(), ...facts })}\n`, { durable: false });
}

export function releaseFollower(stateDir: string): void {
  releaseClaim(spec(stateDir));
}

/** What `upgrader status` shows: the record, and whether the process it names still runs. */
export function readFollower(stateDir: string): (FollowerRecord & { running: boolean }) | null {
  const record = readClaim(spec(stateDir));
  return record ? { ...record, running: isSameProcessAlive(record) } : null;
}
