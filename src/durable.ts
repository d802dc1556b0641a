/**
 * Atomic, durable replacement of a file or a symbolic link: write a temporary name, fsync it,
 * rename it over the target, fsync the directory. A power cut at any instant leaves the old
 * content or the new one, never a mix. These calls are synchronous on purpose: the supervisor
 * takes each step of a transition as a whole, and no other event can slip in between.
 */
import { closeSync, fsyncSync, lstatSync, openSync, readdirSync, renameSync, rmSync, symlinkSync, unlinkSync, writeSync, constants } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

const TEMP_MARK = '.tmp-';

/** Temporary names carry this mark so that a crash's leftovers can be recognised and removed at start. */
export function isTempName(name: string): boolean {
  return name.startsWith('.') && name.includes(TEMP_MARK);
}

function tempPathFor(target: string): string {
  return join(dirname(target), `.${basename(target)}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`);
}

export function fsyncDirectory(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Makes a whole tree durable before it is renamed into place: every file, then every directory. */
export function fsyncTree(dir: string): void {
  for (const name of readdirSync(dir)) {
    const full = join(dir, name);
    const stat = lstatSync(full);
    if (stat.isDirectory()) fsyncTree(full);
    else if (stat.isFile()) {
      const fd = openSync(full, constants.O_RDONLY);
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
  }
  fsyncDirectory(dir);
}

/**
 * Replaces `target` with `content`. The temporary file is created exclusively and never through a symlink.
 * With `durable: false` the fsyncs are skipped: still atomic, but a power cut may lose the new content.
 */
export function replaceFileAtomically(target: string, content: string, { mode = 0o644, durable = true } = {}): void {
  const temp = tempPathFor(target);
  const fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    try {
      const data = Buffer.from(content);
      let written = 0;
      while (written < data.length) written += writeSync(fd, data, written);
      // A failed fsync is not retried: the kernel may have dropped the dirty pages, so a second
      // "success" would prove nothing. The error propagates and the write counts as failed.
      if (durable) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, target);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
  if (durable) fsyncDirectory(dirname(target));
}

/** Points the symbolic link `link` at `targetText` (stored as given, so relative stays relative). */
export function replaceSymlinkDurably(link: string, targetText: string): void {
  const temp = tempPathFor(link);
  try {
    symlinkSync(targetText, temp);
    renameSync(temp, link);
  } catch (error) {
    try {
      unlinkSync(temp);
    } catch {
      // The temporary link was never created.
    }
    throw error;
  }
  fsyncDirectory(dirname(link));
}
