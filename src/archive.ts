/**
 * Reading a .tar.gz to install. The operator's file is opened once and read once, into a private copy
 * inside versions/ while its SHA-256 is computed; the listing check and the extraction then read that
 * copy, through the same descriptor. So the bytes verified are exactly the bytes listed and unpacked,
 * whatever happens to the operator's file meanwhile (it could be replaced right after the check).
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, sep } from 'node:path';
import type { Parser, Unpack } from 'tar';
import { UpgraderError } from './errors.js';

export type ArchiveCopy = { handle: FileHandle; path: string; sha256: string };

const CHUNK = 1 << 20;

/**
 * Copies `source` into a new private file in `dir` (created exclusively, never through a link, mode
 * 0600, with a temporary name that a later start removes if this process dies), hands it to `work`, and
 * removes it whatever happens. A FIFO or a device at `source` is refused, never waited on.
 */
export async function withPrivateCopy<T>(
  source: string,
  dir: string,
  name: string,
  onProgress: ((done: number, total: number) => void) | undefined,
  work: (copy: ArchiveCopy) => Promise<T>,
): Promise<T> {
  const input = await open(source, constants.O_RDONLY | constants.O_NONBLOCK);
  let handle: FileHandle | undefined;
  const path = join(dir, `.${name}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const stat = await input.stat();
    if (!stat.isFile()) throw new UpgraderError('E_USAGE', `The archive ${source} is not a regular file (a FIFO, device or socket cannot be installed).`);
    handle = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    const sha256 = await copyHashing(input, handle, path, stat.size, onProgress);
    await input.close();
    return await work({ handle, path, sha256 });
  } finally {
    await input.close().catch(() => undefined);
    await handle?.close().catch(() => undefined);
    await rm(path, { force: true });
  }
}

async function copyHashing(input: FileHandle, output: FileHandle, outputPath: string, total: number, onProgress?: (done: number, total: number) => void): Promise<string> {
  const hash = createHash('sha256');
  const buffer = Buffer.alloc(CHUNK);
  let done = 0;
  for (;;) {
    const { bytesRead } = await input.read(buffer, 0, CHUNK, null);
    if (bytesRead === 0) break;
    const chunk = buffer.subarray(0, bytesRead);
    hash.update(chunk);
    try {
      let written = 0;
      while (written < bytesRead) written += (await output.write(chunk, written, bytesRead - written, done + written)).bytesWritten;
    } catch (error) {
      // A failed write names no file; the operator needs to know which disk is full.
      throw Object.assign(error as Error, { path: (error as NodeJS.ErrnoException).path ?? outputPath });
    }
    done += bytesRead;
    onProgress?.(done, Math.max(total, done));
  }
  return hash.digest('hex');
}

export function checkDigest(source: string, actual: string, expected: string): void {
  if (actual !== expected.toLowerCase()) {
    throw new UpgraderError('E_CHECKSUM', `The archive ${source} has SHA-256 ${actual}, not the expected ${expected.toLowerCase()}; nothing was installed.`);
  }
}

/** Why a path inside an archive, or a link's target, would land outside the version, by its text alone. */
export function escapes(path: string, linkTarget?: string): string | null {
  if (isAbsolute(path)) return `${path} is an absolute path`;
  const inside = normalize(path);
  if (inside === '..' || inside.startsWith(`..${sep}`)) return `${path} leads outside the version directory`;
  if (linkTarget !== undefined) {
    if (isAbsolute(linkTarget)) return `${path} is a link to the absolute path ${linkTarget}`;
    const resolved = normalize(join(dirname(inside), linkTarget));
    if (resolved === '..' || resolved.startsWith(`..${sep}`)) return `${path} is a link to ${linkTarget}, outside the version directory`;
  }
  return null;
}

type TarEntry = { path: string; type: string; linkpath?: string };
const ALLOWED = ['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link'];

/**
 * Lists the copy, refusing it if any entry is of another kind or would land outside by its text, then
 * unpacks it into `staging`. Where links really lead is judged afterwards, on the staged tree.
 */
export async function unpackCopy(copy: ArchiveCopy, source: string, staging: string): Promise<void> {
  const tar = await import('tar');
  const problems: string[] = [];
  await feed(copy.handle, source, tar.t({
    onReadEntry: (entry: TarEntry) => {
      if (!ALLOWED.includes(entry.type)) problems.push(`${entry.path} is a ${entry.type}, which a version may not contain`);
      const linkTarget = entry.type === 'SymbolicLink' || entry.type === 'Link' ? entry.linkpath : undefined;
      const problem = escapes(entry.path, entry.type === 'Link' ? undefined : linkTarget) ?? (entry.type === 'Link' && linkTarget ? escapes(linkTarget) : null);
      if (problem) problems.push(problem);
    },
  }));
  if (problems.length > 0) throw new UpgraderError('E_UNSAFE_ARCHIVE', `Refusing the archive ${source}: ${problems.slice(0, 3).join('; ')}${problems.length > 3 ? ` (and ${problems.length - 3} more)` : ''}.`);
  await feed(copy.handle, source, tar.x({ cwd: staging, strict: true, preserveOwner: false }));
}

/**
 * Streams the whole copy, from its first byte, into a node-tar parser; resolves when that is done. Its
 * errors name the operator's archive (node-tar names a file only when it opened it itself).
 */
function feed(handle: FileHandle, source: string, sink: Parser | Unpack): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (error: Error & { file?: string }) => reject(Object.assign(error, { file: error.file ?? source }));
    const stream = handle.createReadStream({ start: 0, autoClose: false });
    sink.on('error', fail);
    stream.on('error', fail);
    sink.on('finish', () => resolve());
    sink.on('close', () => resolve());
    stream.pipe(sink);
  });
}
