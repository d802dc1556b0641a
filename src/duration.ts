import { UpgraderError } from './errors.js';

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
/** setTimeout cannot wait longer than this (about 24.8 days). */
const MAX_MS = 2 ** 31 - 1;

/** Parses `500ms`, `30s`, `5m`, `1h` into milliseconds. A unit is required: a bare number is ambiguous. */
export function parseDuration(text: string, flag: string): number {
  const match = DURATION.exec(text.trim());
  if (!match) {
    throw new UpgraderError('E_USAGE', `${flag} must be a duration with a unit such as 500ms, 30s or 5m, not ${JSON.stringify(text)}.`);
  }
  const ms = Math.round(Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS]);
  if (ms > MAX_MS) {
    throw new UpgraderError('E_USAGE', `${flag} is too long: ${text} is more than 24 days.`);
  }
  return ms;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${Math.floor((ms % 60_000) / 1000)}s`;
  if (ms < 86_400_000) return `${Math.floor(ms / 3_600_000)}h${Math.floor((ms % 3_600_000) / 60_000)}m`;
  return `${Math.floor(ms / 86_400_000)}d${Math.floor((ms % 86_400_000) / 3_600_000)}h`;
}
