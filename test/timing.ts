/**
 * The upgrader's timeouts in the tests: short, so that a test that waits on one takes seconds, not the
 * production defaults (ready 30 s, stop 30 s, kill 5 s, probation 30 s). One set for every test; a test
 * that needs another value changes only that one, with runArgs({ ... }), and says why.
 */
export type Timeouts = { ready: string; stop: string; kill: string; probation: string };

export const TIMEOUTS: Timeouts = { ready: '3s', stop: '2s', kill: '1s', probation: '0s' };

/** The options of `upgrader run` for TIMEOUTS with `changes`. */
export function runArgs(changes: Partial<Timeouts> = {}): string[] {
  const t = { ...TIMEOUTS, ...changes };
  return ['--ready-timeout', t.ready, '--stop-timeout', t.stop, '--kill-timeout', t.kill, '--probation', t.probation];
}

export const FAST = runArgs();
