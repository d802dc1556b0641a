/**
 * The upgrader's log: JSON lines on stderr (pino), handed to the stderr queue (stderr.ts) as each is
 * made, so that they keep their order with the agents' own stderr lines and are written at once when
 * the reader keeps up. Writing a log line never waits: a line that cannot be written is dropped and
 * counted, and the count is logged once stderr takes lines again. Logging never stops the upgrader.
 */
import pino, { type Logger } from 'pino';
import { onStderrRecovered, writeStderr } from './stderr.js';

export type { Logger };

/** While set, log lines are collected here instead of written (see holdLogLines). */
let held: string[] | null = null;

/** Errors are never held back: a failed write or a lost root must be seen, whatever else repeats. */
const isError = (line: string) => line.startsWith('{"level":"error"') || line.startsWith('{"level":"fatal"');

const destination = {
  write(line: string): void {
    if (held && !isError(line)) held.push(line);
    else writeStderr(Buffer.from(line));
  },
};

export function createLogger(level = process.env.UPGRADER_LOG_LEVEL ?? 'info'): Logger {
  const log = pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } }, destination);
  onStderrRecovered((dropped) => log.warn({ droppedLines: dropped }, `${dropped} lines were dropped while stderr was blocked (log lines and agents' stderr)`));
  return log;
}

/**
 * Runs `fn` and returns the log lines it made instead of writing them, so that the caller can decide,
 * once it knows what `fn` did, whether they are worth writing (writeLogLines) or only worth counting.
 * Errors are written at once; if `fn` throws, its lines are written.
 */
export function holdLogLines(fn: () => void): string[] {
  const outer = held;
  const lines: string[] = [];
  held = lines;
  try {
    fn();
  } catch (error) {
    held = outer;
    writeLogLines(lines);
    throw error;
  } finally {
    held = outer;
  }
  return lines;
}

export function writeLogLines(lines: string[]): void {
  for (const line of lines) destination.write(line);
}
