/**
 * Errors that reach an operator. Each carries a stable code (for scripts and logs)
 * and a sentence that names the thing at fault; the CLI maps the code to an exit status.
 */

export const EXIT = {
  ok: 0,
  /** Unexpected failure inside the upgrader (a bug). */
  internal: 70,
  /** The command line is wrong. */
  usage: 64,
  /** The root, a version or `current` is missing or malformed. */
  layout: 78,
  /** Another upgrader owns this root. */
  locked: 75,
  /** A file could not be read or written durably. */
  io: 74,
  /** `status`: no upgrader runs on this root. */
  notRunning: 3,
  /** `status`: an upgrader runs, but no agent has reported ready. */
  notReady: 4,
  /** `status`: a root is broken (cannot start as it is) or this user may not read it. */
  broken: 5,
  /** An archive or directory to install is refused: bad checksum, or entries that would escape. */
  badInput: 65,
  /** The version to install exists with other content. */
  exists: 73,
  /** `upgrade`/`rollback`: refused or failed. */
  refused: 1,
  /** Not allowed to reach the operator channel. */
  permission: 77,
} as const;

export type ErrorCode =
  | 'E_USAGE'
  | 'E_VERSION_NAME'
  | 'E_ROOT'
  | 'E_VERSION_MISSING'
  | 'E_ENTRY'
  | 'E_CURRENT'
  | 'E_LOCKED'
  | 'E_IO'
  | 'E_CHECKSUM'
  | 'E_UNSAFE_ARCHIVE'
  | 'E_VERSION_EXISTS'
  | 'E_PERMISSION'
  | 'E_STATE'
  | 'E_INTERNAL';

const exitByCode: Record<ErrorCode, number> = {
  E_USAGE: EXIT.usage,
  E_VERSION_NAME: EXIT.usage,
  E_ROOT: EXIT.layout,
  E_VERSION_MISSING: EXIT.layout,
  E_ENTRY: EXIT.layout,
  E_CURRENT: EXIT.layout,
  E_LOCKED: EXIT.locked,
  E_IO: EXIT.io,
  E_CHECKSUM: EXIT.badInput,
  E_UNSAFE_ARCHIVE: EXIT.badInput,
  E_VERSION_EXISTS: EXIT.exists,
  E_PERMISSION: EXIT.permission,
  E_STATE: EXIT.layout,
  E_INTERNAL: EXIT.internal,
};

export class UpgraderError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UpgraderError';
    this.code = code;
  }
  get exitCode(): number {
    return exitByCode[this.code];
  }
}

export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !(error instanceof UpgraderError) ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
