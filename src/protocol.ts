/**
 * Protocol v1: one JSON object per line on the agent's stdin and stdout.
 * Everything the agent writes is untrusted: it is bounded, decoded strictly and validated here.
 */
import { z } from 'zod';

export const PROTOCOL_VERSION = 1;
/** Longest line accepted, newline excluded. */
export const MAX_LINE_BYTES = 64 * 1024;
/** Status messages are kept for display; longer ones are cut to this many characters. */
export const MAX_STATUS_CHARS = 1024;

export const HandoffMode = z.enum(['live', 'sequential']);
export type HandoffMode = z.infer<typeof HandoffMode>;

const agentMessageSchemas = {
  ready: z.object({ type: z.literal('ready') }),
  upgrade: z.object({
    type: z.literal('upgrade'),
    version: z.string(),
    mode: HandoffMode.default('live'),
  }),
  stopped: z.object({ type: z.literal('stopped') }),
  status: z.object({ type: z.literal('status'), message: z.string() }),
};

/**
 * Why an upgrade did not happen, as a stable word beside the sentence, so that agents and the fleet layer
 * act on it without parsing English (docs/protocol.md, "Refusal codes"). Readers accept any string: a newer
 * upgrader may add codes, and protocol v1 ignores what it does not know.
 */
export const REFUSAL_CODES = [
  'in-progress',
  'busy',
  'invalid-version',
  'missing',
  'unlaunchable',
  'quarantined',
  'jump-refused',
  'running-version',
  'no-previous',
  'not-running',
  'candidate-failed',
  'rolled-back',
  'superseded',
  'interrupted',
  'io',
  'not-recorded',
  'invalid-request',
  'not-halted',
] as const;
export type RefusalCode = (typeof REFUSAL_CODES)[number];

const upgraderMessageSchemas = {
  go: z.object({ type: z.literal('go') }),
  stop: z.object({ type: z.literal('stop') }),
  'upgrade-failed': z.object({ type: z.literal('upgrade-failed'), version: z.string(), reason: z.string(), code: z.string().optional() }),
};

type Infer<T extends Record<string, z.ZodTypeAny>> = { [K in keyof T]: z.infer<T[K]> }[keyof T];
export type AgentMessage = Infer<typeof agentMessageSchemas>;
export type UpgraderMessage = Infer<typeof upgraderMessageSchemas>;

/** What one line turned out to be. Only `message` and `invalid` matter to the handoff; the rest is logged. */
export type Parsed<M> =
  | { kind: 'message'; message: M }
  | { kind: 'invalid'; type: string; detail: string; line: string }
  | { kind: 'unknown'; type: string; line: string }
  | { kind: 'garbage'; detail: string; line: string };

function parseWith<M>(schemas: Record<string, z.ZodTypeAny>, line: string): Parsed<M> {
  // Most garbage is not even shaped like an object: said so without the cost of a parser exception,
  // which matters when an agent floods (a million lines must not become a million exceptions).
  if (!/^[\s\uFEFF]*\{/.test(line)) return { kind: 'garbage', detail: 'not a JSON object', line };
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    return { kind: 'garbage', detail: 'not JSON', line };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { kind: 'garbage', detail: 'not a JSON object', line };
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string') {
    return { kind: 'garbage', detail: 'no string "type" field', line };
  }
  if (!Object.hasOwn(schemas, type)) {
    return { kind: 'unknown', type, line };
  }
  const result = schemas[type]!.safeParse(value);
  if (!result.success) {
    const detail = result.error.issues.map((i) => `${i.path.join('.') || 'message'}: ${i.message}`).join('; ');
    return { kind: 'invalid', type, detail, line };
  }
  return { kind: 'message', message: result.data as M };
}

export const parseAgentLine = (line: string): Parsed<AgentMessage> => parseWith(agentMessageSchemas, line);
export const parseUpgraderLine = (line: string): Parsed<UpgraderMessage> => parseWith(upgraderMessageSchemas, line);

export function encode(message: AgentMessage | UpgraderMessage): string {
  return `${JSON.stringify(message)}\n`;
}

export type ReaderEvent = { kind: 'line'; line: string } | { kind: 'overlong'; bytes: number } | { kind: 'bad-utf8'; bytes: number };

/**
 * Splits a byte stream into lines without ever holding more than MAX_LINE_BYTES of an unfinished line.
 * A line longer than the limit is dropped (reported once, with its length) and reading resumes after its newline.
 * Bytes are decoded strictly: a line that is not valid UTF-8 is reported, not guessed at.
 */
export class LineReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private discarding = false;
  private discardedBytes = 0;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

  constructor(
    private readonly emit: (event: ReaderEvent) => void,
    private readonly maxBytes = MAX_LINE_BYTES,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline === -1 ? chunk.length : newline;
      this.take(chunk.subarray(start, end));
      if (newline === -1) return;
      this.finishLine();
      start = newline + 1;
    }
  }

  /** The stream ended: a last line with no newline is still a line. */
  end(): void {
    if (this.pendingBytes > 0 || this.discarding) this.finishLine();
  }

  private take(part: Buffer): void {
    if (part.length === 0) return;
    if (this.discarding) {
      this.discardedBytes += part.length;
      return;
    }
    if (this.pendingBytes + part.length > this.maxBytes) {
      this.discarding = true;
      this.discardedBytes = this.pendingBytes + part.length;
      this.pending = [];
      this.pendingBytes = 0;
      return;
    }
    // Copy: the caller's chunk may be reused once we return.
    this.pending.push(Buffer.from(part));
    this.pendingBytes += part.length;
  }

  private finishLine(): void {
    if (this.discarding) {
      this.emit({ kind: 'overlong', bytes: this.discardedBytes });
      this.discarding = false;
      this.discardedBytes = 0;
      return;
    }
    const bytes = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    let line: string;
    try {
      line = this.decoder.decode(bytes);
    } catch {
      this.emit({ kind: 'bad-utf8', bytes: bytes.length });
      return;
    }
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim() === '') return;
    this.emit({ kind: 'line', line });
  }
}
