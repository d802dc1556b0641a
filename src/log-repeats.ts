/**
 * Keeps what one agent sends from multiplying into the log: of each kind of no-op message (a second
 * `ready`, an unasked `stopped`, garbage, a refused request made again...), the first in a window is
 * logged in full, and the rest are only counted, then reported in one line per kind when the window
 * ends, or when the agent's output ends. The window's timer is armed only while counts are pending, so
 * an idle upgrader has no wake-ups.
 */
import { performance } from 'node:perf_hooks';
import { MAX_UNREAD_BYTES, type AgentHandle, type AgentLineEvent } from './agent-process.js';
import type { Logger } from './log.js';

export const REPEAT_WINDOW_MS = 10_000;
/** Kinds followed per agent; a new kind past this many is counted under OTHER_KIND. */
export const MAX_KINDS = 32;
export const OTHER_KIND = 'other';

export type Repeats = { kind: string; label: string; count: number; ms: number };

type Entry = { label: string; loggedAt: number; count: number; countingSince: number };

export class RepeatSummary {
  private readonly kinds = new Map<string, Entry>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly report: (repeats: Repeats) => void,
    private readonly windowMs = REPEAT_WINDOW_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Notes `times` occurrences of `kind` (`label` says what it is, for the summary). Returns true when the
   * first of them is to be logged in full, because its kind was not logged in the last window; every
   * other occurrence is counted, for the summary.
   */
  note(kind: string, label: string, times = 1): boolean {
    const now = this.now();
    const entry = this.kinds.get(kind);
    if (!entry && this.kinds.size >= MAX_KINDS) {
      this.count(this.otherEntry(now), times, now);
      return false;
    }
    if (!entry || (entry.count === 0 && now - entry.loggedAt >= this.windowMs)) {
      this.kinds.set(kind, { label, loggedAt: now, count: 0, countingSince: now });
      if (times > 1) this.count(this.kinds.get(kind)!, times - 1, now);
      return true;
    }
    this.count(entry, times, now);
    return false;
  }

  /** Reports every pending count now, and disarms the timer. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const now = this.now();
    for (const [kind, entry] of this.kinds) {
      if (entry.count === 0) {
        if (now - entry.loggedAt >= this.windowMs) this.kinds.delete(kind);
        continue;
      }
      this.report({ kind, label: entry.label, count: entry.count, ms: now - entry.countingSince });
      entry.count = 0;
      entry.loggedAt = now;
    }
  }

  private count(entry: Entry, times: number, now: number): void {
    if (entry.count === 0) entry.countingSince = now;
    entry.count += times;
    this.timer ??= setTimeout(() => this.flush(), this.windowMs);
  }

  private otherEntry(now: number): Entry {
    let other = this.kinds.get(OTHER_KIND);
    if (!other) {
      other = { label: 'other repeated messages', loggedAt: now, count: 0, countingSince: now };
      this.kinds.set(OTHER_KIND, other);
    }
    return other;
  }
}

/** Versions are cut to this length in a kind and a label: longer ones are invalid anyway. */
const VERSION_CHARS = 128;

/** The kind of an agent's line that changed nothing, and what to call it in a summary. */
export function repeatOf(line: Exclude<AgentLineEvent, { kind: 'end' }>): { kind: string; label: string } {
  switch (line.kind) {
    case 'message': {
      const message = line.message;
      if (message.type !== 'upgrade') return { kind: message.type, label: `${message.type} (changing nothing)` };
      const version = message.version.slice(0, VERSION_CHARS);
      return { kind: `upgrade ${message.mode} ${version}`, label: `the request for a ${message.mode} upgrade to ${version} (refused)` };
    }
    case 'invalid':
      return { kind: 'invalid', label: 'a message that breaks its schema' };
    case 'unknown':
      return { kind: 'unknown', label: 'a message of unknown type' };
    case 'garbage':
      return { kind: 'garbage', label: 'a line that is not a protocol message' };
    case 'overlong':
      return { kind: 'overlong', label: 'a line longer than the 64 KiB limit' };
    case 'bad-utf8':
      return { kind: 'bad-utf8', label: 'a line that is not valid UTF-8' };
  }
}

/** The summary line's text, e.g. "ready (changing nothing) repeated 1,234 times in the last 10 s". */
export function describeRepeats({ label, count, ms }: Repeats): string {
  return `${label} repeated ${count.toLocaleString('en-US')} time${count === 1 ? '' : 's'} in the last ${Math.max(1, Math.round(ms / 1000))} s`;
}

/** The repeats of one agent, logged through the upgrader's log. */
export class AgentRepeats {
  private readonly summary: RepeatSummary;

  constructor(
    private readonly proc: AgentHandle,
    private readonly log: Logger,
  ) {
    const who = { agentPid: proc.pid, version: proc.spec.version };
    this.summary = new RepeatSummary((r) => log.warn({ ...who, repeated: r.kind, count: r.count, seconds: Math.round(r.ms / 1000) }, describeRepeats(r)));
  }

  /** For a line that changed nothing: true if it is the first of its kind in the window, to be logged in full. */
  isFirst(line: Exclude<AgentLineEvent, { kind: 'end' }>): boolean {
    const { kind, label } = repeatOf(line);
    return this.summary.note(kind, label);
  }

  /** Replies dropped because the agent does not read its stdin (AgentHandle.send): the first is logged, the rest counted. */
  noteDroppedReplies(): void {
    const dropped = this.proc.takeDroppedReplies();
    if (dropped === 0 || !this.summary.note('dropped-reply', 'an upgrade-failed reply dropped (the agent does not read its stdin)', dropped)) return;
    const { pid, spec } = this.proc;
    this.log.warn(
      { agentPid: pid, version: spec.version, unreadLimit: MAX_UNREAD_BYTES },
      `${spec.version} (pid ${pid}) does not read its stdin: an upgrade-failed reply to it was dropped, as more than 64 KiB sent to it is unread; later ones are counted`,
    );
  }

  /** The agent's output has ended: what is pending is reported now. */
  end(): void {
    this.noteDroppedReplies();
    this.summary.flush();
  }
}
