/** The run configuration: its defaults (documented in the README and `run --help`) and how flags become it. */
import { parseDuration } from './duration.js';
import type { Config } from './handoff.js';

export const DEFAULTS = { readyTimeout: '30s', stopTimeout: '30s', killTimeout: '5s', probation: '30s' } as const;

export function runConfig(flags: { readyTimeout: string; stopTimeout: string; killTimeout: string; probation: string }): Config {
  return {
    readyMs: parseDuration(flags.readyTimeout, '--ready-timeout'),
    stopMs: parseDuration(flags.stopTimeout, '--stop-timeout'),
    killMs: parseDuration(flags.killTimeout, '--kill-timeout'),
    probationMs: parseDuration(flags.probation, '--probation'),
  };
}
