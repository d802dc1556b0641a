/**
 * The one fact about a barrier rollout that the follower, the rollout steps and the driver all need, apart
 * from the driver itself (barrier.ts), which the others need not load.
 */
import type { Barrier } from './schema.js';

/** Whether hosts must stay halted now: the migration has started, or new versions may already run. */
export function pastNoReturn(barrier: Barrier): boolean {
  return barrier.migration !== null || barrier.phase === 'switch';
}

/** The `--by` of a halt a barrier rollout asks for: an abort before the point of no return resumes only these. */
export const haltedByRollout = (rolloutId: string): string => `fleet rollout ${rolloutId}`;
