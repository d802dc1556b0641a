/**
 * Reading the small files of a root (state, owner, agent status, quarantine records, manifests) without
 * trusting what sits at their names. Anyone who can write into a root can plant a symbolic link, a FIFO or
 * a device there; the upgrader often runs as root, and a blocking open or read in its single thread would
 * freeze it, deaf even to SIGTERM. So a file is opened without following a link (O_NOFOLLOW) and without
 * waiting for a writer (O_NONBLOCK), only a regular file is read, and only up to READ_LIMIT bytes of it.
 * Node opens every descriptor close-on-exec, so none of them leaks into an agent.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, type Stats } from 'node:fs';

export const READ_LIMIT = 1024 * 1024;

/**
 * `missing`: nothing at the name (ENOENT). `refused`: something the upgrader never reads (a link, a FIFO, a
 * directory, a file over the limit). `failed`: the system refused us (EACCES, EIO, EMFILE...), with `code`.
 * `problem` completes a sentence whose subject is the file: "<the state file> is a FIFO, not a regular file".
 */
export type Refusal = { ok: false; kind: 'missing' | 'refused' | 'failed'; code: string | null; problem: string };
export type SmallFile = { ok: true; text: string } | Refusal;

const SYMLINK = 'is a symbolic link, which the upgrader never follows';

const refused = (problem: string): Refusal => ({ ok: false, kind: 'refused', code: null, problem });

function failed(error: unknown): Refusal {
  const code = (error as NodeJS.ErrnoException).code ?? null;
  if (code === 'ENOENT') return { ok: false, kind: 'missing', code, problem: 'does not exist' };
  return { ok: false, kind: 'failed', code, problem: `cannot be read (${code ?? String(error)})` };
}

/** Why a file of this type is never read, or null for a regular file. */
function typeProblem(stat: Stats): string | null {
  if (stat.isFile()) return null;
  if (stat.isSymbolicLink()) return SYMLINK;
  const kind = stat.isFIFO()
    ? 'a FIFO'
    : stat.isDirectory()
      ? 'a directory'
      : stat.isSocket()
        ? 'a socket'
        : stat.isCharacterDevice() || stat.isBlockDevice()
          ? 'a device'
          : 'not a file';
  return `is ${kind}, not a regular file`;
}

/**
 * A descriptor of the regular file at `path` and its size, or why it was not opened. Never follows a link,
 * never blocks. The caller closes the descriptor.
 */
export function openRegularFile(path: string): { fd: number; size: number } | Refusal {
  // Looking first spares a device the side effects of being opened; the fstat below closes the race.
  try {
    const problem = typeProblem(lstatSync(path));
    if (problem) return refused(problem);
  } catch (error) {
    return failed(error);
  }
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    // The name was replaced since we looked: by a link (ELOOP under O_NOFOLLOW) or a socket (ENXIO).
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') return refused(SYMLINK);
    if (code === 'ENXIO') return refused('is a socket, not a regular file');
    return failed(error);
  }
  try {
    const stat = fstatSync(fd);
    const problem = typeProblem(stat);
    if (problem === null) return { fd, size: stat.size };
    closeSync(fd);
    return refused(problem);
  } catch (error) {
    closeSync(fd);
    return failed(error);
  }
}

/** The text of the regular file at `path`, at most `limit` bytes, or why it was not read. */
export function readSmallFile(path: string, limit = READ_LIMIT): SmallFile {
  const file = openRegularFile(path);
  if ('ok' in file) return file;
  try {
    if (file.size > limit) return refused(`is larger than ${describeLimit(limit)} (${file.size} bytes)`);
    const data = readAtMost(file.fd, file.size, limit);
    if (data === null) return refused(`is larger than ${describeLimit(limit)}`);
    return { ok: true, text: data.toString('utf8') };
  } catch (error) {
    return failed(error);
  } finally {
    closeSync(file.fd);
  }
}

const describeLimit = (limit: number) => (limit % (1024 * 1024) === 0 ? `${limit / (1024 * 1024)} MiB` : `${limit} bytes`);

/** Reads to the end of the file, or returns null once it holds more than `limit` bytes (it may grow as we read). */
function readAtMost(fd: number, expectedSize: number, limit: number): Buffer | null {
  // One byte over the expected size, so that a file that grew is noticed without a second allocation.
  let buffer = Buffer.allocUnsafe(Math.min(expectedSize, limit) + 1);
  let length = 0;
  for (;;) {
    if (length === buffer.length) {
      if (length > limit) return null;
      const larger = Buffer.allocUnsafe(Math.min(buffer.length * 2, limit + 1));
      buffer.copy(larger, 0, 0, length);
      buffer = larger;
    }
    const read = readSync(fd, buffer, length, buffer.length - length, null);
    if (read === 0) break;
    length += read;
  }
  return length > limit ? null : buffer.subarray(0, length);
}

/** A small JSON record read as readSmallFile does and checked against `schema`; null if absent, refused or invalid. */
export function readRecord<T>(path: string, schema: { safeParse: (value: unknown) => { success: true; data: T } | { success: false } }): T | null {
  const file = readSmallFile(path);
  if (!file.ok) return null;
  try {
    const parsed = schema.safeParse(JSON.parse(file.text));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}
