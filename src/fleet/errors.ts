/**
 * Errors of the fleet layer. Their codes end up in etcd host records (`code`) and in scripts, so they are
 * a closed list of short lowercase words; the message is one sentence for the operator, naming the value
 * at fault.
 */
export const FLEET_ERROR_CODES = [
  'bad-source',
  'download-failed',
  'too-large',
  'digest-mismatch',
  'disk-full',
  'install-refused',
  'bad-archive',
  'bad-manifest',
  'bad-options',
  'aborted',
  // Refusals of the fleet commands (exit 1 unless cli.ts says otherwise).
  'no-release',
  'release-exists',
  'rollout-active',
  'no-hosts',
  'no-rollout',
  'wrong-state',
  'in-flight',
  'nothing-moved',
  'conflict',
  'bad-plan',
  'needs-barrier',
  'barrier-blocked',
  'migration-interrupted',
  'migration-failed',
  'halt-failed',
] as const;

export type FleetErrorCode = (typeof FLEET_ERROR_CODES)[number];

/** What a code must look like to be stored in a host record. */
export const FLEET_CODE_PATTERN = /^[a-z][a-z-]{0,31}$/;

export class FleetError extends Error {
  readonly code: FleetErrorCode;
  constructor(code: FleetErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FleetError';
    this.code = code;
  }
}
