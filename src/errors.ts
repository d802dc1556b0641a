/**
 * Errors that reach an operator. Each carries a stable code (for scripts and logs)
 * and a sentence that names the thing at fault; the CLI maps the code to an exit status.
 */
import { relative } from 'node:path';

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
  /** Fleet commands: etcd cannot be reached. */
  unavailable: 69,
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
  | 'E_REFUSED'
  | 'E_ETCD'
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
  E_REFUSED: EXIT.refused,
  E_ETCD: EXIT.unavailable,
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
  /** See asUpgraderError. */
  static from(error: unknown): UpgraderError | null {
    return asUpgraderError(error);
  }
}

/** What node-tar adds to an error: its own code, the archive, the entry, the extraction directory. */
type SystemError = NodeJS.ErrnoException & { tarCode?: string; file?: string; symlink?: string; entry?: { path?: string }; cwd?: string };

const IO_REASONS: Record<string, string> = {
  ENOSPC: 'no space is left on its device',
  EDQUOT: 'the disk quota is used up',
  EIO: 'the device reported an I/O error',
  EROFS: 'its file system is read-only',
  EFBIG: 'the file is too large for its file system',
};

/**
 * The error as an UpgraderError with its documented status: itself if it is one, else a known system or
 * archive error (full disk, permission denied, a name too long, an archive node-tar refuses) in one
 * sentence naming the path; null for anything else, which is a bug.
 */
export function asUpgraderError(error: unknown): UpgraderError | null {
  if (error instanceof UpgraderError) return error;
  if (!(error instanceof Error)) return null;
  const e = error as SystemError;
  const code = e.code ?? '';
  const path = e.path ?? (e.entry?.path !== undefined && e.cwd ? `${e.cwd}/${e.entry.path}` : undefined) ?? 'a file';
  const options = { cause: error };
  if (code in IO_REASONS) return new UpgraderError('E_IO', `Could not write or read ${path}: ${IO_REASONS[code]} (${code}).`, options);
  if (code === 'EACCES' || code === 'EPERM') return new UpgraderError('E_PERMISSION', `Not allowed to use ${path} (${code}): check its owner and mode, and which user runs this command.`, options);
  const fromArchive = e.tarCode !== undefined || code.startsWith('TAR_');
  const archive = `The archive${e.file ? ` ${e.file}` : ''}`;
  const entry = e.entry?.path;
  if (code === 'ENAMETOOLONG') {
    return fromArchive
      ? new UpgraderError('E_UNSAFE_ARCHIVE', `${archive} has an entry whose name is too long for this file system: ${entry ?? path} (ENAMETOOLONG); nothing was installed.`, options)
      : new UpgraderError('E_USAGE', `The path ${path} is too long for the file system (ENAMETOOLONG).`, options);
  }
  if (code === 'TAR_SYMLINK_ERROR') {
    const link = e.symlink !== undefined && e.cwd ? relative(e.cwd, e.symlink) : (e.symlink ?? path);
    return new UpgraderError('E_UNSAFE_ARCHIVE', `${archive} would be unpacked through the symbolic link ${link}${entry ? ` (entry ${entry})` : ''}; nothing was installed.`, options);
  }
  if (fromArchive) {
    return new UpgraderError('E_UNSAFE_ARCHIVE', `${archive} cannot be unpacked: ${e.message.replace(/^TAR_\w+: /, '')}${entry ? ` (entry ${entry})` : ''}; nothing was installed.`, options);
  }
  return null;
}

export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !(error instanceof UpgraderError) ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
