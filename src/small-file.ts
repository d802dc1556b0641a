/**
 * Reads a small file of a root (a record, a manifest) as the upgrader must: never through a symbolic link
 * (O_NOFOLLOW), never blocking (O_NONBLOCK: a FIFO planted there answers at once), only a regular file,
 * and at most MAX_SMALL_FILE bytes.
 * (Placeholder until the safe-read module of the hardening branch lands; same contract.)
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

export const MAX_SMALL_FILE = 1024 * 1024;

export type SmallFile = { text: string } | { missing: true } | { problem: string };

export function readSmallFile(path: string): SmallFile {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { missing: true };
    return { problem: code === 'ELOOP' ? `${path} is a symbolic link, which the upgrader never follows` : `${path} cannot be read (${code})` };
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) return { problem: `${path} is not a regular file` };
    if (stat.size > MAX_SMALL_FILE) return { problem: `${path} is larger than ${MAX_SMALL_FILE} bytes` };
    const buffer = Buffer.alloc(stat.size);
    let read = 0;
    while (read < buffer.length) {
      const n = readSync(fd, buffer, read, buffer.length - read, read);
      if (n === 0) break;
      read += n;
    }
    return { text: buffer.subarray(0, read).toString('utf8') };
  } finally {
    closeSync(fd);
  }
}
