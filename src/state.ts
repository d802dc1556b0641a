/**
 * The upgrader's persistent state: <root>/state/state.json.
 *
 * It holds what a restarted upgrader needs to recover (an open handoff, the PIDs of the agents it ran)
 * and what `upgrader status` shows (versions, agent, last upgrades). It is written whole, atomically and
 * durably, wrapped in an envelope with a SHA-256 of its body, and validated when read back: a file that
 * is empty, torn, tampered with or of an unknown schema is reported and ignored, never trusted.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { z } from 'zod';
import { replaceFileAtomically } from './durable.js';
import { readSmallFile } from './safe-file.js';
import { HandoffMode } from './protocol.js';
import { VERSION_NAME } from './layout.js';
import { ProcessIdentity } from './proc.js';

export const STATE_SCHEMA = 1;
export const HISTORY_LIMIT = 20;

// A version name as layout.ts allows it: a tampered name can neither build a path nor drive a terminal.
const Version = z.string().regex(VERSION_NAME);
const Iso = z.string();

const RecordedAgent = ProcessIdentity.extend({
  version: Version,
  role: z.enum(['active', 'candidate', 'retiring']),
  ready: z.boolean(),
  since: Iso,
});
export type RecordedAgent = z.infer<typeof RecordedAgent>;

export const UpgradeResult = z.enum(['succeeded', 'failed', 'rolled-back']);
export type UpgradeResult = z.infer<typeof UpgradeResult>;

const UpgradeRecord = z.object({
  from: Version,
  to: Version,
  mode: HandoffMode,
  result: UpgradeResult,
  reason: z.string().nullable(),
  /** The refusal code of a failure (protocol.ts REFUSAL_CODES; absent in older files and on success). */
  code: z.string().regex(/^[a-z][a-z-]{0,31}$/).nullable().default(null),
  startedAt: Iso,
  at: Iso,
  durationMs: z.number().nonnegative(),
});
export type UpgradeRecord = z.infer<typeof UpgradeRecord>;

const OpenHandoff = z.object({
  from: Version,
  to: Version,
  mode: HandoffMode,
  phase: z.string(),
  startedAt: Iso,
});

/** `upgrader halt`: no agent runs until `resume` or an upgrade; `reason` says why it still holds after a failed upgrade from it. */
const Halt = z.object({ version: Version, since: Iso, by: z.string().max(256), reason: z.string().max(4096).nullable() });
export type Halt = z.infer<typeof Halt>;

/** What start-up did when `current` named a version that could not run. */
const Repair = z.object({ at: Iso, problem: z.string().max(4096), version: Version });
export type Repair = z.infer<typeof Repair>;

/** The one-word state of a running upgrader, as the state file, `status` and STATUS= show it. */
export const PublicState = z.enum(['starting', 'running', 'upgrading', 'halting', 'halted', 'stopping', 'stopped']);
export type PublicState = z.infer<typeof PublicState>;

export const PersistedState = z.object({
  state: PublicState,
  current: Version.nullable(),
  previous: Version.nullable(),
  agents: z.array(RecordedAgent),
  handoff: OpenHandoff.nullable(),
  probation: z
    .object({ version: Version, from: Version, mode: HandoffMode, startedAt: Iso, previous: Version.nullable(), halt: Halt.nullable().default(null) })
    .nullable(),
  /** An operator's halt (handoff.ts `Halt`): while set, a restarted upgrader starts no agent (absent in older files). */
  halt: Halt.nullable().default(null),
  history: z.array(UpgradeRecord).max(HISTORY_LIMIT),
  /** The last time start-up had to run another version than `current` named (absent in older files). */
  repair: Repair.nullable().default(null),
  updatedAt: Iso,
});
export type PersistedState = z.infer<typeof PersistedState>;

const Envelope = z.object({
  format: z.literal('upgrader-state'),
  schema: z.number(),
  sha256: z.string(),
  body: z.unknown(),
});

export function emptyState(): PersistedState {
  return {
    state: 'stopped',
    current: null,
    previous: null,
    agents: [],
    handoff: null,
    probation: null,
    halt: null,
    history: [],
    repair: null,
    updatedAt: new Date(0).toISOString(),
  };
}

const digest = (text: string) => createHash('sha256').update(text).digest('hex');

export function encodeState(state: PersistedState): string {
  const body = JSON.stringify(state);
  return `{"format":"upgrader-state","schema":${STATE_SCHEMA},"sha256":"${digest(body)}","body":${body}}\n`;
}

/** `unreadable`: the system refused the read (EACCES, EIO...), so nothing is known about the state. */
export type ReadState = { ok: true; state: PersistedState } | { ok: false; missing: boolean; unreadable?: boolean; problem: string };

export function decodeState(text: string): ReadState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, missing: false, problem: text.trim() === '' ? 'the state file is empty' : 'the state file is not valid JSON (torn or overwritten)' };
  }
  const envelope = Envelope.safeParse(raw);
  if (!envelope.success) return { ok: false, missing: false, problem: 'the state file is not an upgrader state file' };
  if (envelope.data.schema !== STATE_SCHEMA) {
    return { ok: false, missing: false, problem: `the state file has schema ${envelope.data.schema}; this upgrader reads schema ${STATE_SCHEMA}` };
  }
  const body = JSON.stringify(envelope.data.body);
  if (digest(body) !== envelope.data.sha256) return { ok: false, missing: false, problem: 'the state file fails its checksum' };
  const state = PersistedState.safeParse(envelope.data.body);
  if (!state.success) return { ok: false, missing: false, problem: `the state file is malformed (${state.error.issues[0]?.path.join('.')}: ${state.error.issues[0]?.message})` };
  return { ok: true, state: state.data };
}

export class StateFile {
  readonly path: string;
  constructor(stateDir: string) {
    this.path = join(stateDir, 'state.json');
  }

  read(): ReadState {
    const file = readSmallFile(this.path);
    if (file.ok) return decodeState(file.text);
    if (file.kind === 'missing') return { ok: false, missing: true, problem: 'no state file yet' };
    return { ok: false, missing: false, unreadable: file.kind === 'failed', problem: `the state file ${file.problem}` };
  }

  write(state: PersistedState): void {
    replaceFileAtomically(this.path, encodeState(state));
  }
}

/** Adds or updates (same start, same target) an upgrade in the history, newest first. */
export function withUpgrade(history: UpgradeRecord[], record: UpgradeRecord): UpgradeRecord[] {
  const rest = history.filter((r) => !(r.startedAt === record.startedAt && r.to === record.to && r.from === record.from));
  return [record, ...rest].slice(0, HISTORY_LIMIT);
}
