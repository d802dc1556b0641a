/**
 * The upgrader's log: JSON lines on stderr (pino), written synchronously so that nothing is lost
 * when the process is killed, and so that lines keep their order with the agents' own stderr.
 * A log line that cannot be written (full disk, closed stderr) is dropped: logging never stops the upgrader.
 */
import { writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * Writes to the upgrader's stderr, whole, from this one thread: the upgrader's log lines and its agents'
 * stderr lines all go through here, so no line is ever cut into by another.
 */
export function writeStderr(data: Buffer): void {
  let written = 0;
  for (let attempts = 0; written < data.length && attempts < 1000; attempts++) {
    try {
      written += writeSync(2, data, written);
    } catch (error) {
      // A non-blocking stderr that is full: try again; anything else: drop the line.
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') return;
    }
  }
}

const stderr = { write: (line: string) => writeStderr(Buffer.from(line)) };

export function createLogger(level = process.env.UPGRADER_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } }, stderr);
}
