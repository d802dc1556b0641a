/**
 * The fleet's records in etcd: where each lives (keys) and what it may contain (zod). Everything read back
 * from etcd is untrusted: a record that does not parse is treated as absent and reported, never obeyed.
 * Names that reach a key or a path (fleet, host, group, version) pass the same rule as version names, so a
 * tampered record cannot build a key outside its fleet or a path outside a root. docs/fleet.md documents
 * every key and field.
 */
import { z } from 'zod';
import { VERSION_NAME } from '../layout.js';

/** Schema version of every record; a reader refuses records of another. */
export const SCHEMA = 1;
/** The largest record we write or accept (etcd refuses requests over 1.5 MiB; a plan for 10,000 hosts fits). */
export const MAX_RECORD_BYTES = 1024 * 1024;

const NAME = VERSION_NAME;
export const Name = z.string().regex(NAME, 'letters, digits and . _ + - (at most 128, not starting with a sign)');
const Iso = z.string().datetime();
const Code = z.string().regex(/^[a-z][a-z-]{0,31}$/);
const Reason = z.string().max(2048);
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, '64 lower-case hex digits');

/** `<prefix><fleet>/`: every key of one fleet. */
export function fleetPrefix(prefix: string, fleet: string): string {
  if (!/^\/([A-Za-z0-9._-]+\/)*$/.test(prefix)) throw new Error(`etcd key prefix ${JSON.stringify(prefix)} must start and end with "/" and hold only letters, digits, . _ -`);
  return `${prefix}${Name.parse(fleet)}/`;
}

/** Keys relative to the fleet prefix (the client's namespace adds it). */
export const KEYS = {
  presence: (host: string) => `presence/${host}`,
  presencePrefix: 'presence/',
  host: (host: string) => `hosts/${host}`,
  hostPrefix: 'hosts/',
  release: (version: string) => `releases/${version}`,
  /** Small, rarely-changing keys every follower watches with one watcher. */
  ctlPrefix: 'ctl/',
  rollout: 'ctl/rollout',
  desired: 'ctl/desired',
  pause: 'ctl/pause',
  /** A rollout's plan: written once with the rollout, never changed, read once per rollout by each host. */
  plan: (rolloutId: string) => `plans/${rolloutId}`,
  runPrefix: (rolloutId: string) => `runs/${rolloutId}/`,
  wavePrefix: (rolloutId: string, group: number, wave: number) => `runs/${rolloutId}/${group}.${wave}/`,
  run: (rolloutId: string, group: number, wave: number, host: string) => `runs/${rolloutId}/${group}.${wave}/${host}`,
} as const;

// ---------------------------------------------------------------- presence (lease-bound)

export const Presence = z.object({
  schema: z.literal(SCHEMA),
  pid: z.number().int().positive(),
  startedAt: Iso,
  follower: z.string().max(64),
});
export type Presence = z.infer<typeof Presence>;

// ---------------------------------------------------------------- host record (durable)

export const HOST_PHASES = ['idle', 'downloading', 'staged', 'halting', 'halted', 'upgrading', 'watching', 'succeeded', 'failed', 'rolled-back'] as const;
export const HostPhase = z.enum(HOST_PHASES);
export type HostPhase = z.infer<typeof HostPhase>;

const Problem = z.object({ message: Reason, code: Code.nullable(), at: Iso });

export const HostRecord = z.object({
  schema: z.literal(SCHEMA),
  host: Name,
  group: Name,
  root: z.string().max(4096),
  /** The upgrader's state (status.ts): starting, running, upgrading, stopping, stopped, broken, unreadable; or not-running. */
  upgrader: z.string().max(32),
  running: Name.nullable(),
  current: Name.nullable(),
  previous: Name.nullable(),
  lastUpgrade: z
    .object({ from: Name, to: Name, result: z.string().max(32), reason: Reason.nullable(), code: Code.nullable(), at: Iso })
    .nullable(),
  asked: z.object({ version: Name, rolloutId: Name.nullable() }).nullable(),
  phase: HostPhase,
  progress: z.object({ bytes: z.number().int().nonnegative(), total: z.number().int().nonnegative().nullable() }).nullable(),
  error: Problem.nullable(),
  reportedAt: Iso,
});
export type HostRecord = z.infer<typeof HostRecord>;

// ---------------------------------------------------------------- release (immutable)

export const Release = z.object({
  schema: z.literal(SCHEMA),
  version: Name,
  artifact: z.string().max(4096),
  sha256: Sha256,
  size: z.number().int().nonnegative().nullable(),
  upgradeFrom: z.string().max(1024).nullable(),
  sequential: z.boolean().nullable(),
  /** Old and new cannot run side by side anywhere in the fleet: only a barrier rollout may take hosts to it. */
  barrier: z.boolean().default(false),
  publishedAt: Iso,
});
export type Release = z.infer<typeof Release>;

// ---------------------------------------------------------------- rollout (one per fleet at a time)

export const ROLLOUT_STATES = ['running', 'paused', 'halted', 'succeeded', 'aborted'] as const;
export const RolloutState = z.enum(ROLLOUT_STATES);
export type RolloutState = z.infer<typeof RolloutState>;
/** No host starts in these; a new rollout may begin. */
export const ENDED: readonly RolloutState[] = ['halted', 'succeeded', 'aborted'];

/** Running or paused: the rollout is under way, hosts may still start in it. */
export const isActive = (state: RolloutState): boolean => !ENDED.includes(state);

export const PlanGroup = z.object({ name: Name, waves: z.array(z.array(Name)) });
export type PlanGroup = z.infer<typeof PlanGroup>;

/**
 * What a rollout does to which host, fixed when it begins and kept apart from the rollout record, which
 * changes on every wave and goes to every host: the record stays a few hundred bytes whatever the fleet's size.
 */
export const Plan = z.object({
  schema: z.literal(SCHEMA),
  id: Name,
  groups: z.array(PlanGroup),
  /** A rollback's version for each host (a rollout's is its `to`). */
  targets: z.record(Name, Name).nullable(),
  /** Hosts known but without presence when the rollout began: not in the plan, shown by status. */
  offline: z.array(Name),
});
export type Plan = z.infer<typeof Plan>;

/** A barrier rollout's phases, in order (docs/fleet.md "Barrier rollouts"). */
export const BARRIER_PHASES = ['stage', 'barrier', 'halt', 'migrate', 'switch'] as const;
export const BarrierPhase = z.enum(BARRIER_PHASES);
export type BarrierPhase = z.infer<typeof BarrierPhase>;

export const Migration = z.object({
  /** Where and by whom it ran: the machine and process of the rollout command. */
  by: z.string().max(256),
  startedAt: Iso,
  endedAt: Iso.nullable(),
  /** The command's exit status (128 + n for a signal); null while it runs or if its end was never recorded. */
  exitCode: z.number().int().nullable(),
  /** How many times it was started (more than one only with --rerun-migration). */
  runs: z.number().int().positive(),
});
export type Migration = z.infer<typeof Migration>;

export const Barrier = z.object({
  phase: BarrierPhase,
  /** The --migrate command (run by `sh -c` on the rollout command's machine), or null. */
  command: z.string().max(4096).nullable(),
  migration: Migration.nullable(),
  /** Hosts the operator let the rollout go on without (--exclude): kept halted off the old version until upgraded. */
  excluded: z.array(Name).max(10_000),
});
export type Barrier = z.infer<typeof Barrier>;

export const Rollout = z.object({
  schema: z.literal(SCHEMA),
  id: Name,
  kind: z.enum(['rollout', 'rollback']),
  /** The version every host goes to (a rollout); null for a rollback, whose plan names each host's. */
  to: Name.nullable(),
  /** The rollout a rollback undoes. */
  undoes: Name.nullable(),
  /** The plan's group names, in order (for messages; the plan itself is `plans/<id>`). */
  groupNames: z.array(Name).max(1000),
  canaries: z.number().int().nonnegative(),
  batch: z.string().regex(/^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$/),
  maxFailures: z.number().int().nonnegative(),
  pauseMs: z.number().int().nonnegative(),
  state: RolloutState,
  /** Position: index into `plan` and into its waves. */
  group: z.number().int().nonnegative(),
  wave: z.number().int().nonnegative(),
  /**
   * The hosts that may act at this position (plan.ts frontOf): the others ignore the record until it names
   * them. Null: too many to carry, or a rollback; every host reads the plan. Absent in older records: null.
   */
  front: z.array(Name).max(2048).nullable().default(null),
  /** Set for a barrier rollout (`--barrier`): its phase, migration and exclusions; null for a rolling one. */
  barrier: Barrier.nullable().default(null),
  failures: z.number().int().nonnegative(),
  failed: z.array(z.object({ host: Name, reason: Reason, code: Code.nullable() })).max(100),
  reason: Reason.nullable(),
  /** The desired version before this rollout (restored by a rollback of it), and the one it sets on success. */
  previousDesired: Name.nullable(),
  desiredAfter: Name.nullable(),
  startedAt: Iso,
  updatedAt: Iso,
});
export type Rollout = z.infer<typeof Rollout>;

/**
 * The part of a rollout record a follower needs to decide whether a change can concern it, checked with
 * cheaper rules than the full record (a name here only decides whether to wake up; the pass that follows
 * reads and validates the whole record). At 1,000 hosts every wave move is parsed by every follower.
 */
export const RolloutWake = z.object({
  id: z.string().max(128),
  kind: z.enum(['rollout', 'rollback']),
  state: RolloutState,
  group: z.number().int().nonnegative(),
  wave: z.number().int().nonnegative(),
  front: z.array(z.string().max(128)).max(2048).nullable().default(null),
  barrier: z.object({ phase: z.string().max(16) }).nullable().default(null),
});
export type RolloutWake = z.infer<typeof RolloutWake>;

export const Desired = z.object({ schema: z.literal(SCHEMA), version: Name, rolloutId: Name.nullable(), since: Iso });
export type Desired = z.infer<typeof Desired>;

/** A server-side timer between waves: bound to a lease nobody keeps alive, so it ends on time whoever dies. */
export const Pause = z.object({ schema: z.literal(SCHEMA), rolloutId: Name, group: z.number().int(), wave: z.number().int(), until: Iso });
export type Pause = z.infer<typeof Pause>;

// ---------------------------------------------------------------- a host's run in a rollout

/** `halted` and `resumed`: a barrier rollout's host halted for the migration, and resumed on its old version by an abort before it. */
export const RUN_STATES = ['staged', 'halted', 'resumed', 'upgrading', 'done', 'failed'] as const;
export const RunState = z.enum(RUN_STATES);
export type RunState = z.infer<typeof RunState>;

export const Run = z.object({
  schema: z.literal(SCHEMA),
  host: Name,
  state: RunState,
  from: Name.nullable(),
  to: Name,
  reason: Reason.nullable(),
  code: Code.nullable(),
  startedAt: Iso.nullable(),
  endedAt: Iso.nullable(),
});
export type Run = z.infer<typeof Run>;

/** Parses a record read from etcd; null (and the problem) when it is missing, too large or malformed. */
export function parseRecord<T>(schema: z.ZodType<T, z.ZodTypeDef, unknown>, raw: string | null | undefined): { value: T | null; problem: string | null } {
  if (raw === null || raw === undefined) return { value: null, problem: null };
  if (raw.length > MAX_RECORD_BYTES) return { value: null, problem: `record of ${raw.length} bytes is over the ${MAX_RECORD_BYTES}-byte limit` };
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    return { value: null, problem: 'record is not JSON' };
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { value: null, problem: `record is malformed at ${issue.path.join('.') || 'top level'}: ${issue.message}` };
  }
  return { value: parsed.data, problem: null };
}

/** Serializes a record we write, refusing one over the size limit (etcd would refuse it and trip the client's breaker). */
export function serialize(record: object): string {
  const text = JSON.stringify(record);
  if (text.length > MAX_RECORD_BYTES) throw new Error(`a fleet record of ${text.length} bytes is over the ${MAX_RECORD_BYTES}-byte limit`);
  return text;
}
