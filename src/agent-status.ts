/**
 * The agent's latest `status` message, kept in <root>/state/agent-status.json for `upgrader status`.
 * It is informative only, so it is replaced atomically but not fsynced, and writes are coalesced:
 * an agent that sends a million status lines causes a handful of writes, and an idle one causes none.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { replaceFileAtomically } from './durable.js';
import { readRecord } from './safe-file.js';

const COALESCE_MS = 200;

export const AgentStatus = z.object({
  version: z.string(),
  pid: z.number().nullable(),
  message: z.string(),
  at: z.string(),
});
export type AgentStatus = z.infer<typeof AgentStatus>;

export class AgentStatusFile {
  readonly path: string;
  private pending: AgentStatus | null = null;
  private timer: NodeJS.Timeout | null = null;
  private lastWrite = 0;

  /** `mayWrite`: asked before each (delayed) write; a process that no longer owns the root writes nothing. */
  constructor(
    stateDir: string,
    private readonly mayWrite: () => boolean = () => true,
  ) {
    this.path = join(stateDir, 'agent-status.json');
  }

  record(status: AgentStatus): void {
    this.pending = status;
    if (this.timer) return;
    const wait = this.lastWrite + COALESCE_MS - Date.now();
    if (wait <= 0) return this.flush();
    this.timer = setTimeout(() => this.flush(), wait);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.pending || !this.mayWrite()) return;
    try {
      replaceFileAtomically(this.path, `${JSON.stringify(this.pending)}\n`, { durable: false });
    } catch {
      // Losing a status line is harmless; the next one will try again.
    }
    this.pending = null;
    this.lastWrite = Date.now();
  }

  read(): AgentStatus | null {
    return readRecord(this.path, AgentStatus);
  }
}
